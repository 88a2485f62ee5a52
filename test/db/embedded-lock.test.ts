import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync, readlinkSync } from 'node:fs'
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { test } from 'tap'
import { createSql } from '../../db/connect.js'
import { createDataDirTemplate, startEmbeddedPostgres, type EmbeddedPostgres } from '../../db/embedded.js'
import { LOCK_FILE } from '../../db/embedded-lock.js'
import { callToolOverHttp, servingUrl, startServer, waitFor } from '../process-helper.js'

function sqlFor (embedded: EmbeddedPostgres, max: number) {
  return createSql(embedded.url, { max, connectTimeoutMs: 5000, ...(embedded.socketPath !== undefined && { path: embedded.socketPath }) })
}

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

const OWN_BOOT_ID = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
/** A holder in another container on this machine: the same kernel, another PID namespace, PID 1. */
const OTHER_CONTAINER = { pid: 1, bootId: OWN_BOOT_ID, pidNamespace: 'pid:[1]' }
/** A holder on another machine that shares the folder over a network filesystem. */
const OTHER_MACHINE = { pid: 1, bootId: 'another-kernel', pidNamespace: 'pid:[1]' }

/** A socket file whose server died: connecting to it is refused. */
async function deadSocket (dataDir: string): Promise<string> {
  await mkdir(dataDir, { recursive: true })
  const socket = join(dataDir, 'postgres.sock')
  // A process that dies while listening leaves its socket file behind.
  const child = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(socket)}, () => process.kill(process.pid, 'SIGKILL'))`])
  await once(child, 'exit')
  return socket
}

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
    const socket = await deadSocket(dataDir)
    t.ok((await stat(socket)).isSocket(), 'a dead server\'s socket')
    await plantLock(dataDir, OTHER_CONTAINER)
    const embedded = await start(dataDir)
    const sql = sqlFor(embedded, 1)
    t.teardown(() => sql.end())
    t.same(await sql`select 1 as one`, [{ one: 1 }], 'serving on the same socket path now')
  })

  await t.test('another machine over a network filesystem, lease fresh: refused although its socket refuses (a socket seen from another kernel always does)', async (t) => {
    const dataDir = join(root, 'network')
    await deadSocket(dataDir)
    const planted = await plantLock(dataDir, OTHER_MACHINE)
    await t.rejects(startEmbeddedPostgres({ dataDir }), { name: 'DataDirInUseError' })
    t.equal(await readFile(join(dataDir, LOCK_FILE), 'utf8'), planted, 'the lock untouched')
    t.ok((await stat(join(dataDir, 'postgres.sock'))).isSocket(), 'and its socket too')
  })

  await t.test('a lock file naming a socket path no server of ours uses: that file is never removed', async (t) => {
    const dataDir = join(root, 'foreign-path')
    const victim = join(root, 'important.db')
    await writeFile(victim, 'keep me')
    await plantLock(dataDir, { ...OTHER_CONTAINER, socket: victim }, 120_000)
    await start(dataDir)
    t.equal(await readFile(victim, 'utf8'), 'keep me', 'the stale lock was replaced, the file it named left alone')
  })

  await t.test('an older build\'s lock naming our own PID (another container\'s PID 1): refused, saying how to clear it', async (t) => {
    const dataDir = join(root, 'legacy-own-pid')
    await mkdir(dataDir, { recursive: true })
    await writeFile(join(dataDir, LOCK_FILE), String(process.pid))
    await t.rejects(startEmbeddedPostgres({ dataDir }), { name: 'DataDirInUseError', message: /older version of this server.*remove .*shared-context-mcp\.lock/ })
    t.equal(await readFile(join(dataDir, LOCK_FILE), 'utf8'), String(process.pid), 'the lock untouched')
  })

  await t.test('this PID namespace, the holder\'s process gone: taken over at once, whatever the lease', async (t) => {
    const dataDir = join(root, 'gone')
    const [bootId, pidNamespace] = [readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(), readlinkSync('/proc/self/ns/pid')]
    await plantLock(dataDir, { pid: process.pid, host: hostname(), bootId, pidNamespace, processStart: '1' }) // our PID, another start: a previous process
    await start(dataDir)
    t.match(JSON.parse(await readFile(join(dataDir, LOCK_FILE), 'utf8')), { pid: process.pid, bootId, pidNamespace })
  })

  await t.test('two newcomers over one stale lock: exactly one takes it over', async (t) => {
    const dataDir = join(root, 'race')
    await plantLock(dataDir, OTHER_CONTAINER, 120_000)
    const results = await Promise.allSettled([start(dataDir), start(dataDir)])
    t.equal(results.filter((result) => result.status === 'fulfilled').length, 1, 'one opened it')
    t.match(results.find((result) => result.status === 'rejected'), { reason: { name: 'DataDirInUseError' } }, 'the other was refused')
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

test('the data-folder lock in containers: a holder whose PID equals the newcomer\'s keeps the folder', async (t) => {
  t.setTimeout(120_000)
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-data-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const holder = startServer({ DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'warn' })
  t.teardown(() => holder.child.kill('SIGKILL'))
  await waitFor(holder, (output) => output.includes('claude mcp add'))
  const token = /^\s+(scm_\S+)$/m.exec(holder.stdout())?.[1] as string
  const url = servingUrl(holder)

  // As another container's server would have written it: its PID (1 there) is ours, its PID namespace is not.
  const lockPath = join(dataDir, LOCK_FILE)
  const record = JSON.parse(await readFile(lockPath, 'utf8')) as Record<string, unknown>
  const planted = JSON.stringify({ ...record, pid: process.pid, host: 'other-container', pidNamespace: 'pid:[1]' })
  await writeFile(lockPath, planted)

  await t.rejects(startEmbeddedPostgres({ dataDir }), { name: 'DataDirInUseError', message: /in use by process \d+ on other-container, a running server/ }, 'a newcomer in this process is refused')
  const second = startServer({ DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'warn' })
  t.teardown(() => second.child.kill('SIGKILL'))
  t.equal(await second.exited, 1, 'a second server exits')
  t.match(second.stderr(), /is in use by process \d+ on other-container, a running server\. .*node dist\/cli\.js token create --name NAME/)
  t.equal(await readFile(lockPath, 'utf8'), planted, 'the holder\'s lock is untouched')

  const written = await callToolOverHttp(url, token, 'write_context', { key: 'still-mine', content: 'the holder writes on' })
  t.equal(written.status, 200)
  t.notOk(written.body.result?.isError)
  const read = await callToolOverHttp(url, token, 'read_context', { key: 'still-mine' })
  t.equal(read.body.result?.structuredContent.content, 'the holder writes on')
  holder.child.kill('SIGTERM')
  t.equal(await holder.exited, 0)
  t.notOk(existsSync(lockPath), 'released by its holder on exit')
})
