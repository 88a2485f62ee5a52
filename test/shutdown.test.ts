import { test } from 'tap'
import { createContextStore } from '../db/context-store.js'
import { holdEntryLock, testDatabase } from './db-helper.js'
import { eventually } from './eventually.js'
import { TEST_TOKEN } from './helper.js'
import { servingUrl, startServer, waitFor } from './process-helper.js'

test('SIGTERM lets an in-flight call commit, then exits 0', async (t) => {
  const { url, sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: 102400 })
  await store.write('default', 'busy', 'v1', {}, { principal: 'test', client: null })

  const server = startServer({ DATABASE_URL: url, AUTH_TOKEN: TEST_TOKEN, PORT: '0', SHUTDOWN_TIMEOUT_MS: '10000' })
  t.teardown(() => server.child.kill('SIGKILL'))
  await waitFor(server, (output) => output.includes('serving MCP at'))
  const mcpUrl = servingUrl(server)

  // Hold the row so that the server's write has to wait for us.
  const rowLock = await holdEntryLock(sql, 'default', 'busy')

  const inFlight = fetch(mcpUrl, {
    method: 'POST',
    headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'write_context', arguments: { key: 'busy', content: 'v2' } } })
  })
  // The call has reached the store and waits there for our lock.
  const metricsUrl = new URL('/metrics', mcpUrl)
  await eventually(async () => /^scm_db_operations_in_flight 1$/m.test(await (await fetch(metricsUrl)).text()), { what: 'the write to wait in the store' })
  server.child.kill('SIGTERM')
  // Shutdown has begun and got as far as closing the listening socket; what is left is the call.
  const refusesConnections = (url: URL) => fetch(url).then(async (response) => { await response.body?.cancel(); return false }, (error: { cause?: { code?: string } }) => error.cause?.code === 'ECONNREFUSED')
  await waitFor(server, (output) => output.includes('"msg":"shutting down"'))
  await eventually(() => refusesConnections(metricsUrl), { what: 'the server to stop accepting connections' })
  t.equal(server.child.exitCode, null, 'still running while a call is in flight')
  await rowLock.release()

  const response = await inFlight
  t.equal(response.status, 200)
  const body = await response.json() as { result: { structuredContent: { version: number } } }
  t.equal(body.result.structuredContent.version, 2, 'the in-flight write committed')
  t.equal(await server.exited, 0, 'exit 0 after draining')
  const entry = await store.read('default', 'busy')
  t.equal(entry?.content, 'v2')
})
