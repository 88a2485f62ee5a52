import { createServer, type Socket } from 'node:net'
import { test } from 'tap'
import { createSql, DatabaseUnavailableError, waitForDatabase } from '../../db/connect.js'
import { testDatabase } from '../db-helper.js'

const PASSWORD = 'sup3r-secret-passw0rd'

test('waitForDatabase gives up on a closed port after the timeout, without leaking the password', async (t) => {
  const sql = createSql(`postgres://scm:${PASSWORD}@127.0.0.1:1/scm`, { max: 1, connectTimeoutMs: 1000 })
  t.teardown(async () => { await sql.end({ timeout: 1 }) })
  const logged: string[] = []
  const started = Date.now()
  const error = await waitForDatabase(sql, { timeoutMs: 800, log: (msg) => logged.push(msg) }).then(() => null, (err: unknown) => err)
  const elapsed = Date.now() - started

  t.ok(error instanceof DatabaseUnavailableError, 'DatabaseUnavailableError')
  const message = (error as Error).message
  t.match(message, '127.0.0.1:1')
  t.notMatch(message, PASSWORD)
  t.ok(elapsed >= 700 && elapsed < 10_000, `gave up after ${elapsed} ms, not before the timeout and without hanging`)
  t.ok(logged.length >= 2, `retried with backoff (${logged.length} log lines)`)
  t.notMatch(logged.join('\n'), PASSWORD)
})

test('waitForDatabase keeps to its timeout when the server accepts but never answers', async (t) => {
  const sockets = new Set<Socket>()
  const silent = createServer((socket) => { sockets.add(socket) })
  await new Promise<void>(resolve => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise(resolve => silent.close(resolve))
  })
  const address = silent.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  const sql = createSql(`postgres://scm:${PASSWORD}@127.0.0.1:${address.port}/scm`, { max: 1, connectTimeoutMs: 30_000 })
  t.teardown(async () => { await sql.end({ timeout: 0 }) })

  const started = Date.now()
  await t.rejects(waitForDatabase(sql, { timeoutMs: 500 }), DatabaseUnavailableError)
  const elapsed = Date.now() - started
  t.ok(elapsed >= 450 && elapsed < 10_000, `gave up after ${elapsed} ms, not before the timeout and without hanging`)
})

test('createSql against the test database', async (t) => {
  const { sql } = await testDatabase(t)
  await t.resolves(waitForDatabase(sql, { timeoutMs: 5000 }))
  const [row] = await sql<[{ big: number, count: number, small: number }]>`
    select 9007199254740991::bigint as big, (select count(*) from context_entries) as count, 7::int as small`
  t.same(row, { big: Number.MAX_SAFE_INTEGER, count: 0, small: 7 }, 'int8 comes back as a JS number')
  t.equal(typeof row.big, 'number')
  const [version] = await sql<[{ v: number }]>`select ${5}::bigint + 1 as v`
  t.equal(version.v, 6, 'numbers go in as int8 parameters too')
})
