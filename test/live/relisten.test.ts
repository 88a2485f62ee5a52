import { test } from 'tap'
import { ON_PGLITE, testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'
import { callTool } from '../helper.js'
import { TcpProxy, viaProxy } from '../tcp-proxy.js'
import { instance, instances, streamsOpen, uriOf, v1Client } from './live-helper.js'

test('the LISTEN connection drops: re-listened, and what committed meanwhile is read from the history, each change once', async (t) => {
  const database = await testDatabase(t)
  const target = new URL(database.url)
  const proxy = new TcpProxy('127.0.0.1', Number(target.port))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const { instances: [a] } = await instances(t, 1, {}, database)
  if (a === undefined) throw new Error('instance missing')
  // B reaches the database through a proxy the test can cut.
  const b = await instance(viaProxy(database.url, proxy))
  t.teardown(() => b.app.close())
  const { client, notified } = await v1Client(t, b.url)
  await client.subscribeResource({ uri: uriOf('gap/key') })
  await streamsOpen(b.app, 1)
  const versionsSeen = () => notified.filter((n) => n.method === 'notifications/resources/updated').map((n) => n.version)
  let expected = 0

  if (!ON_PGLITE) {
    // PostgreSQL: the listening backend is terminated; a write right after commits before B listens again.
    const pid = await b.app.live.listener.backendPid()
    t.type(pid, 'number', 'B listens on a backend of its own')
    await database.sql`select pg_terminate_backend(${pid})`
    await callTool(a.app, 'write_context', { key: 'gap/key', content: 'while terminated' })
    expected++
    await eventually(() => b.app.live.listener.reconnects === 1, { what: 'B to listen again' })
    await eventually(() => versionsSeen().length === expected, { what: 'the write made while B was not listening' })
  }

  // Both backends: B loses its database altogether while A keeps writing.
  await proxy.cut()
  await eventually(() => !b.app.live.listener.listening, { what: 'B to notice its LISTEN connection is gone' })
  for (const content of ['cut 1', 'cut 2', 'cut 3']) {
    await callTool(a.app, 'append_context', { key: 'gap/key', content })
    expected++
  }
  await proxy.restore()
  await eventually(() => b.app.live.listener.reconnects === (ON_PGLITE ? 1 : 2), { what: 'B to listen again after the cut' })
  await eventually(() => versionsSeen().length >= expected, { what: 'the writes made during the cut' })
  await callTool(a.app, 'append_context', { key: 'gap/key', content: 'after' })
  expected++
  await eventually(() => versionsSeen().length >= expected, { what: 'the write after reconnecting' })
  t.same(versionsSeen(), Array.from({ length: expected }, (_, index) => index + 1), 'every version once, in order')
  const metrics = await b.app.inject({ method: 'GET', url: '/metrics' })
  t.match(metrics.body, new RegExp(`^scm_live_listen_reconnects_total ${ON_PGLITE ? 1 : 2}$`, 'm'), 'reconnects are counted')
})
