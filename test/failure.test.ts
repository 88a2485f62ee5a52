import { test } from 'tap'
import { buildApp } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { eventually } from './eventually.js'
import { callTool, rpc, TEST_TOKEN } from './helper.js'
import { TcpProxy, viaProxy } from './tcp-proxy.js'

test('database lost at run time: DEP_3001 while it is away, /ready 503, recovers by itself', async (t) => {
  const { url } = await testDatabase(t)
  const target = new URL(url)
  const proxy = new TcpProxy(target.hostname, Number(target.port))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: viaProxy(url, proxy), LOG_LEVEL: 'silent', DB_CONNECT_TIMEOUT_MS: '2000' }))
  t.teardown(() => app.close())
  await app.ready()

  t.equal((await callTool(app, 'write_context', { key: 'k', content: 'before' })).structuredContent.version, 1)
  t.equal((await app.inject('/ready')).statusCode, 200)

  await proxy.cut()
  // Nothing brings the database back until this call has been answered: an answer held until the
  // database returns would never come (and the test would time out).
  const failed = await rpc(app, 'tools/call', { name: 'read_context', arguments: { key: 'k' } })
  t.equal(failed.statusCode, 503, 'answered while the database is still away')
  t.equal(failed.headers['retry-after'], '2')
  t.equal(failed.json().error.data.code, 'DEP_3001')
  t.notMatch(failed.body, /ECONNREFUSED|127\.0\.0\.1|stack/, 'no internals in the answer')
  // Resources: resources/read is answered directly, resources/list by the SDK's server; both the same way.
  for (const [method, params] of [['resources/read', { uri: 'context://default/k' }], ['resources/list', {}]] as const) {
    const resource = await rpc(app, method, params)
    t.equal(resource.statusCode, 503, `${method} answered while the database is away`)
    t.equal(resource.json().error?.data?.code, 'DEP_3001', `${method}: DEP_3001`)
  }
  const ready = await app.inject('/ready')
  t.equal(ready.statusCode, 503)
  t.same(ready.json(), { status: 'unavailable', database: 'failed', redis: 'absent', identity_provider: 'absent', authorization_server: 'absent' })
  t.equal((await app.inject('/health')).statusCode, 200, 'the process itself is alive')

  await proxy.restore()
  await eventually(async () => (await app.inject('/ready')).statusCode === 200, { what: '/ready to be 200 again' })
  t.equal((await app.inject('/ready')).statusCode, 200, '/ready is 200 again')
  const read = await callTool(app, 'read_context', { key: 'k' })
  t.equal(read.structuredContent.content, 'before')
})

test('clients that disconnect mid-call leave nothing behind', async (t) => {
  const { url } = await testDatabase(t)
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  // tools/list goes through the long-lived SDK server and its transport; tools/call is answered directly.
  const bodies = [
    JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: {} }),
    JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'list_context', arguments: {} } })
  ]
  const rounds = 300
  await Promise.all(Array.from({ length: rounds }, async (_, i) => {
    const body = bodies[i % 2]
    const controller = new AbortController()
    const pending = fetch(`${base}/mcp`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
      body,
      signal: controller.signal
    }).catch(() => undefined)
    setImmediate(() => controller.abort())
    await pending
  }))
  await eventually(() => app.mcp.legacy.inFlight === 0, { what: 'the aborted exchanges to end' })
  t.equal(app.mcp.legacy.inFlight, 0, `no exchange left pending after ${rounds} aborted requests`)
  const after = await callTool(app, 'list_context', {})
  t.same(after.structuredContent.items, [], 'the server still answers')
})
