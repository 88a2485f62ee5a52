import { existsSync, readdirSync } from 'node:fs'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { createSql } from '../../db/connect.js'
import { createDataDirTemplate, startEmbeddedPostgres, type EmbeddedPostgres } from '../../db/embedded.js'
import { LOCK_FILE } from '../../db/embedded-lock.js'
import { migrate } from '../../db/migrate.js'

function sqlFor (embedded: EmbeddedPostgres, max: number) {
  return createSql(embedded.url, { max, connectTimeoutMs: 5000, ...(embedded.socketPath !== undefined && { path: embedded.socketPath }) })
}

const SHIPPED_MIGRATIONS = readdirSync(new URL('../../db/migrations/', import.meta.url)).filter((file) => /^\d+_.+\.sql$/.test(file)).sort()

test('embedded PostgreSQL (PGlite behind a Unix socket in its data folder)', async (t) => {
  const dataDir = join(await mkdtemp(join(tmpdir(), 'scm-embedded-')), 'data')
  t.teardown(async () => { await rm(join(dataDir, '..'), { recursive: true, force: true }) })
  let running: EmbeddedPostgres | undefined
  t.teardown(async () => { await running?.close() })

  await t.test('creates the data folder (0700), serves it on a Unix socket inside it, keeps data, opens it only once', async (t) => {
    const first = await startEmbeddedPostgres({ dataDir })
    t.equal(first.socketPath, join(dataDir, 'postgres.sock'))
    t.equal((await stat(dataDir)).mode & 0o777, 0o700)
    t.ok((await stat(join(dataDir, 'postgres.sock'))).isSocket())
    const sql = sqlFor(first, 4)
    t.same(await migrate(sql), { applied: SHIPPED_MIGRATIONS })
    await sql`insert into revoked_jtis (jti, expires_at) values ('kept', now() + interval '1 day')`
    await sql.end()
    await t.rejects(startEmbeddedPostgres({ dataDir }), { name: 'DataDirInUseError', message: new RegExp(`in use by process ${process.pid} on .*, a running server`) })
    await first.close()
    await t.resolves(first.close(), 'close is idempotent')
    t.notOk(existsSync(join(dataDir, 'postgres.sock')), 'the socket is gone')
    t.notOk(existsSync(join(dataDir, LOCK_FILE)), 'the lock is released')
  })

  await t.test('reopens an existing data folder, over the stale lock file of an older build', async (t) => {
    await writeFile(join(dataDir, LOCK_FILE), '2147483646') // no such process
    const logged: string[] = []
    running = await startEmbeddedPostgres({ dataDir, log: (msg) => logged.push(msg) })
    const sql = sqlFor(running, 4)
    t.teardown(async () => { await sql.end() })
    t.same(await migrate(sql), { applied: [] })
    t.same(await sql`select jti from revoked_jtis`, [{ jti: 'kept' }], 'data survived the restart')
    t.match(logged, [new RegExp(`listening on ${join(dataDir, 'postgres.sock')} after \\d+ ms`)])
  })

  await t.test('several postgres.js connections share the single backend safely', async (t) => {
    if (running === undefined) throw new Error('not running')
    const sql = sqlFor(running, 8)
    const other = sqlFor(running, 1)
    t.teardown(async () => { await Promise.all([sql.end(), other.end()]) })
    await sql`create table items (id int primary key, label text not null)`

    const results = await Promise.all(Array.from({ length: 400 }, async (_, i) => {
      const [row] = i % 2 === 0
        ? await sql<[{ id: number, label: string }]>`insert into items (id, label) values (${i}, ${`item-${i}`}) returning id, label`
        : await sql<[{ id: number, label: string }]>`select ${i}::int as id, ${`item-${i}`}::text as label`
      return row.id === i && row.label === `item-${i}`
    }))
    t.equal(results.filter(ok => !ok).length, 0, 'every query got its own answer')

    // While one connection holds a transaction, the other connections' statements wait for it.
    const holder = await other.reserve()
    await holder`begin`
    await holder`insert into items (id, label) values (-1, 'uncommitted')`
    let readerDone = false
    const reader = sql<[{ count: number }]>`select count(*) as count from items where id = -1`.then((rows) => {
      readerDone = true
      return rows[0].count
    })
    // Statements are served in the order they arrive: had the reader not been held, it would be
    // answered before these later statements of the transaction.
    for (let i = 0; i < 3; i++) await holder`select 1`
    t.equal(readerDone, false, 'another connection waits while the transaction is open')
    await holder`commit`
    holder.release()
    t.equal(await reader, 1, 'and then sees the committed row')
  })
})

test('a new data folder starts from the template; an existing one ignores it', async (t) => {
  const dataDir = join(await mkdtemp(join(tmpdir(), 'scm-template-')), 'data')
  t.teardown(async () => { await rm(join(dataDir, '..'), { recursive: true, force: true }) })
  const template = await createDataDirTemplate()

  const first = await startEmbeddedPostgres({ dataDir, loadDataDir: template })
  const sql = sqlFor(first, 2)
  t.same((await migrate(sql)).applied, SHIPPED_MIGRATIONS, 'an empty database came from the template')
  await sql`insert into revoked_jtis (jti, expires_at) values ('mine', now() + interval '1 day')`
  await sql.end()
  await first.close()

  const second = await startEmbeddedPostgres({ dataDir, loadDataDir: template })
  const again = sqlFor(second, 2)
  t.teardown(async () => { await again.end(); await second.close() })
  t.same(await again`select jti from revoked_jtis`, [{ jti: 'mine' }], 'the template did not overwrite existing data')
})

test('regression: a statement on one connection while others run transactions got `portal "" does not exist` (the socket server interleaved its Bind and Execute)', async (t) => {
  const embedded = await startEmbeddedPostgres()
  t.teardown(() => embedded.close())
  const sql = sqlFor(embedded, 8)
  t.teardown(() => sql.end())
  for (let round = 0; round < 10; round++) {
    const answers = await Promise.all(Array.from({ length: 8 }, async (_, i) => {
      const n = round * 100 + i
      const rows = i % 2 === 0
        ? await sql.begin(async (tx) => { await tx`select 1`; return await tx`select ${n}::int as n` })
        : await sql`select ${n}::int as n`
      return rows[0]?.n === n
    }))
    t.same(answers, Array(8).fill(true), `round ${round}: every statement answered, each with its own result`)
  }
})
