import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { buildApp } from '../../app.js'
import { STALL_GRACE_MS } from '../../db/connect.js'
import { loadConfig } from '../../schema/config.js'
import { holdEntryLock, ON_PGLITE, testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'
import { callTool, rpc, TEST_TOKEN, toolErrorOf } from '../helper.js'
import { TcpProxy, viaProxy } from '../tcp-proxy.js'

// The database under faults, beyond test/failure.test.ts (one call after a cut): calls in flight
// when the connection is cut, a database that stalls instead of failing, a statement that runs
// past DB_STATEMENT_TIMEOUT_MS. No assertion here is about speed: each pins that the answer comes
// while the fault is still in place (nothing restores the database before it), so an answer held
// until the database returned would never come and the test would fail on its timeout. What
// bounds the wait is DB_STATEMENT_TIMEOUT_MS + STALL_GRACE_MS, and the comments print it.

const STATEMENT_TIMEOUT_MS = 500
const POOL_MAX = 2

interface Setup { app: FastifyInstance, proxy: TcpProxy, sql: Awaited<ReturnType<typeof testDatabase>>['sql'] }

async function setup (t: Test): Promise<Setup> {
  const { url, sql } = await testDatabase(t)
  const target = new URL(url)
  const proxy = new TcpProxy(target.hostname, Number(target.port))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const app = await buildApp(loadConfig({
    AUTH_TOKEN: TEST_TOKEN,
    DATABASE_URL: viaProxy(url, proxy),
    LOG_LEVEL: 'silent',
    DB_CONNECT_TIMEOUT_MS: '2000',
    DB_POOL_MAX: String(POOL_MAX),
    DB_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
    RATE_LIMITS: 'off'
  }))
  t.teardown(() => app.close())
  await app.ready()
  return { app, proxy, sql }
}

const codeOf = async (app: FastifyInstance, name: string, args: Record<string, unknown>): Promise<string> => {
  const response = await rpc(app, 'tools/call', { name, arguments: args })
  const body = response.json() as { result?: { isError?: boolean, _meta?: Record<string, unknown> }, error?: { data?: { code?: string } } }
  if (body.result !== undefined) return toolErrorOf(body.result)?.code ?? 'ok'
  return `${response.statusCode} ${body.error?.data?.code ?? 'no code'}`
}

test('database cut while calls wait on it: every one is answered DEP_3001 before it is back, and it recovers without a restart', async (t) => {
  const { app, proxy, sql } = await setup(t)
  t.equal((await callTool(app, 'write_context', { key: 'hot', content: 'v1' })).structuredContent.version, 1)
  // Writers queue behind a row lock held outside the proxy, so they are in the database when it is cut.
  const lock = await holdEntryLock(sql, 'default', 'hot')
  const sent = proxy.forwarded
  const inFlight = Array.from({ length: 6 }, (_, i) => codeOf(app, 'write_context', { key: 'hot', content: `w${i}` }))
  await eventually(() => proxy.forwarded > sent, { what: 'the writes to reach the database' })
  const started = performance.now()
  await proxy.cut()
  const codes = await Promise.all(inFlight)
  t.comment(`in-flight calls answered ${Math.round(performance.now() - started)} ms after the cut`)
  await lock.release()
  t.ok(codes.every((code) => code === '503 DEP_3001' || code === 'ok'), `each answered, DEP_3001 or done: ${codes.join(', ')}`)
  t.ok(codes.includes('503 DEP_3001'), 'the calls the cut reached failed with DEP_3001')
  t.equal((await app.inject('/ready')).statusCode, 503, '/ready says unavailable while it is cut')
  t.equal(await codeOf(app, 'read_context', { key: 'hot' }), '503 DEP_3001', 'a new call too')

  await proxy.restore()
  await eventually(async () => (await app.inject('/ready')).statusCode === 200, { what: '/ready to be 200 again' })
  const read = await callTool(app, 'read_context', { key: 'hot' })
  t.equal(toolErrorOf(read), undefined, 'reads work again')
  const history = await sql<Array<{ version: number }>>`select version from context_history where key = 'hot' order by version`
  t.same(history.map((row) => row.version), Array.from({ length: history.length }, (_, i) => i + 1), 'history has no gap or duplicate')
  t.equal(read.structuredContent.version, history.length, 'and the entry is its last version')
})

test('database stalled (accepts, never answers): calls get DEP_3001 while it stays stalled, the pool is not held for ever, recovery after', async (t) => {
  const { app, proxy } = await setup(t)
  t.equal((await callTool(app, 'write_context', { key: 'k', content: 'before' })).structuredContent.version, 1)
  proxy.stall()
  t.comment(`bound the code enforces: DB_STATEMENT_TIMEOUT_MS ${STATEMENT_TIMEOUT_MS} + ${STALL_GRACE_MS} ms grace per stalled connection`)
  const started = performance.now()
  // Twice the pool: if stalled connections were never given up, the later calls would wait for ever.
  const codes = await Promise.all(Array.from({ length: POOL_MAX * 2 }, (_, i) => codeOf(app, i % 2 === 0 ? 'read_context' : 'write_context', { key: 'k', ...(i % 2 === 1 && { content: `during ${i}` }) })))
  t.comment(`${codes.length} calls answered ${Math.round(performance.now() - started)} ms into the stall`)
  t.same(new Set(codes), new Set(['503 DEP_3001']), `all DEP_3001: ${codes.join(', ')}`)
  t.equal(proxy.state, 'stalled', 'answered while the database was still stalled')

  const restoring = performance.now()
  await proxy.restore()
  await eventually(async () => await codeOf(app, 'read_context', { key: 'k' }) === 'ok', { what: 'reads to work again' })
  t.comment(`recovered ${Math.round(performance.now() - restoring)} ms after the restore`)
  const read = await callTool(app, 'read_context', { key: 'k' })
  t.ok(['before', ...codes.map((_, i) => `during ${i}`)].includes(read.structuredContent.content as string), 'the entry holds a value that was written')
  t.equal((await app.inject('/ready')).statusCode, 200)
})

test('a statement blocked past DB_STATEMENT_TIMEOUT_MS is DEP_3001, frees its connection, and says what it may have changed', async (t) => {
  const { app, sql } = await setup(t)
  t.equal((await callTool(app, 'write_context', { key: 'locked', content: 'v1' })).structuredContent.version, 1)
  const lock = await holdEntryLock(sql, 'default', 'locked')
  let messages: string[]
  try {
    // PostgreSQL cancels it (statement_timeout, 57014): nothing changed. The embedded database,
    // which queues the other connections while one holds a transaction, is left by the stall
    // guard; it may still run the write it had received once the lock is gone.
    const answers = await Promise.all(Array.from({ length: POOL_MAX + 1 }, () => rpc(app, 'tools/call', { name: 'write_context', arguments: { key: 'locked', content: 'late' } })))
    t.same(new Set(answers.map((answer) => `${answer.statusCode} ${String(answer.json().error?.data?.code)}`)), new Set(['503 DEP_3001']), 'answered DEP_3001 while the lock is still held')
    messages = answers.map((answer) => String(answer.json().error?.message))
  } finally {
    await lock.release()
  }
  await eventually(async () => await codeOf(app, 'write_context', { key: 'other', content: 'x' }) === 'ok', { what: 'writes to work again' })
  const rows = await sql<Array<{ content: string, version: number }>>`select content, version from context_entries where key = 'locked'`
  const history = await sql<Array<{ version: number, content: string }>>`select version, content from context_history where key = 'locked' order by version`
  t.same(history.map((row) => row.version), Array.from({ length: history.length }, (_, i) => i + 1), 'whole writes only: the history has no gap')
  t.same(rows.map((row) => [row.version, row.content]), [[history.length, history.at(-1)?.content]], 'and the entry is its last version')
  if (ON_PGLITE) {
    t.ok(messages.every((message) => /may or may not have been made/.test(message)), `the answers say the outcome is unknown: ${messages[0]}`)
  } else {
    t.same(rows, [{ content: 'v1', version: 1 }], 'the cancelled writes left nothing')
    t.ok(messages.every((message) => /Nothing was changed/.test(message)), `and the answers say so: ${messages[0]}`)
  }
})
