import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
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
    await new Promise(resolve => setTimeout(resolve, 200))
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

/** A lock file as a holder elsewhere wrote it, `ageMs` old. */
async function plantLock (dataDir: string, record: Record<string, unknown>, ageMs = 0): Promise<string> {
  await mkdir(dataDir, { recursive: true })
  const path = join(dataDir, LOCK_FILE)
  const text = JSON.stringify({ id: 'planted', host: 'elsewhere', socket: join(dataDir, 'postgres.sock'), ...record })
  await writeFile(path, text)
  const at = new Date(Date.now() - ageMs)
  await utimes(path, at, at)
  return text
}

const OTHER_CONTAINER = { pid: 1, bootId: 'another-kernel', pidNamespace: 'pid:[1]' }

test('the data-folder lock: a live holder keeps it, a dead one loses it', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'scm-lock-'))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  const start = async (dataDir: string) => {
    const embedded = await startEmbeddedPostgres({ dataDir, loadDataDir: template })
    t.teardown(() => embedded.close())
    return embedded
  }
  const template = await createDataDirTemplate()

  await t.test('another container, lease fresh, no socket to ask: refused, the lock untouched', async (t) => {
    const dataDir = join(root, 'fresh')
    const planted = await plantLock(dataDir, OTHER_CONTAINER)
    await t.rejects(startEmbeddedPostgres({ dataDir }), { name: 'DataDirInUseError', message: /in use by process 1 on elsewhere/ })
    t.equal(await readFile(join(dataDir, LOCK_FILE), 'utf8'), planted)
  })

  await t.test('another container, lease expired: taken over', async (t) => {
    const dataDir = join(root, 'expired')
    await plantLock(dataDir, OTHER_CONTAINER, 120_000)
    const embedded = await start(dataDir)
    t.match(JSON.parse(await readFile(join(dataDir, LOCK_FILE), 'utf8')), { pid: process.pid, socket: embedded.socketPath })
  })

  await t.test('another container, lease fresh, but its socket refuses (the server died): taken over', async (t) => {
    const dataDir = join(root, 'died')
    await mkdir(dataDir, { recursive: true })
    const socket = join(dataDir, 'postgres.sock')
    // A process that dies while listening leaves its socket file behind.
    const child = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(socket)}, () => process.kill(process.pid, 'SIGKILL'))`])
    await once(child, 'exit')
    t.ok((await stat(socket)).isSocket(), 'a dead server\'s socket')
    await plantLock(dataDir, OTHER_CONTAINER)
    const embedded = await start(dataDir)
    const sql = sqlFor(embedded, 1)
    t.teardown(() => sql.end())
    t.same(await sql`select 1 as one`, [{ one: 1 }], 'serving on the same socket path now')
  })

  await t.test('this PID namespace, the holder\'s process gone: taken over at once, whatever the lease', async (t) => {
    const dataDir = join(root, 'gone')
    const [bootId, pidNamespace] = [readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(), readlinkSync('/proc/self/ns/pid')]
    await plantLock(dataDir, { pid: process.pid, host: hostname(), bootId, pidNamespace, processStart: '1' }) // our PID, another start: a previous process
    await start(dataDir)
    t.match(JSON.parse(await readFile(join(dataDir, LOCK_FILE), 'utf8')), { pid: process.pid, bootId, pidNamespace })
  })

  await t.test('the holder renews its lease', async (t) => {
    const dataDir = join(root, 'renewed')
    await start(dataDir)
    const lock = join(dataDir, LOCK_FILE)
    await utimes(lock, new Date(0), new Date(0))
    const deadline = Date.now() + 20_000
    while ((await stat(lock)).mtimeMs < 1000 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100))
    t.ok((await stat(lock)).mtimeMs > Date.now() - 60_000, 'the mtime is recent again')
  })

  await t.test('a data folder too deep for a socket path: the socket lives in a private temp folder, named in the lock', async (t) => {
    const dataDir = join(root, 'deep', 'x'.repeat(60), 'y'.repeat(60))
    const embedded = await start(dataDir)
    const socketPath = embedded.socketPath as string
    t.equal(dirname(dirname(socketPath)), tmpdir())
    t.equal((await stat(dirname(socketPath))).mode & 0o777, 0o700)
    t.equal(JSON.parse(await readFile(join(dataDir, LOCK_FILE), 'utf8')).socket, socketPath)
    const sql = sqlFor(embedded, 1)
    t.same(await sql`select 2 as two`, [{ two: 2 }])
    await sql.end()
    await embedded.close()
    t.notOk(existsSync(dirname(socketPath)), 'removed on close')
  })

  await t.test('a data folder an older build left group/world-readable: owner only after start', async (t) => {
    const dataDir = join(root, 'old-modes')
    const first = await start(dataDir)
    await first.close()
    await chmod(dataDir, 0o755)
    await chmod(join(dataDir, 'base'), 0o755)
    await chmod(join(dataDir, 'PG_VERSION'), 0o666)
    await start(dataDir)
    t.same(await groupOrWorldAccessible(dataDir), [])
  })
})

async function groupOrWorldAccessible (dir: string): Promise<string[]> {
  const names = ['.', ...await readdir(dir, { recursive: true })]
  const modes = await Promise.all(names.map(async (name) => ({ name, mode: (await lstat(join(dir, name))).mode })))
  return modes.filter(({ mode }) => (mode & 0o077) !== 0).map(({ name, mode }) => `${name} ${(mode & 0o777).toString(8)}`)
}
