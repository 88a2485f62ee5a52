import { randomBytes } from 'node:crypto'
import { readFileSync, readlinkSync } from 'node:fs'
import { lstat, open, readFile, rm, rmdir, stat, type FileHandle } from 'node:fs/promises'
import { connect } from 'node:net'
import { hostname, tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'

/**
 * Who holds a data folder: written once, when the lock file is created. `socket` is where the
 * holder serves the database, so that the CLI can find it.
 */
export interface LockRecord {
  /** Random, per holder: tells this holder's lock file from a later one at the same path. */
  id: string
  pid: number
  host: string
  /** Linux: the kernel's boot id and the holder's PID namespace; where both equal ours, `pid` means a process we can see. */
  bootId?: string
  pidNamespace?: string
  /** Linux: the holder's start time in clock ticks since boot (/proc/PID/stat), which a reused PID does not share. */
  processStart?: string
  socket: string
}

export const LOCK_FILE = 'shared-context-mcp.lock'
/** The database socket's file name: in the data folder, or in a private `scm-db-*` folder under the OS temp folder. */
export const SOCKET_FILE = 'postgres.sock'
export const PRIVATE_SOCKET_FOLDER_PREFIX = 'scm-db-'

/**
 * Whether a socket path read from a lock file is one a server of ours would use. The lock file is
 * outside input (anyone who can write the folder can write it): a path it names is probed, removed
 * and connected to only if it is one of these, never an arbitrary file.
 */
export function isServerSocketPath (dataDir: string, path: string): boolean {
  if (basename(path) !== SOCKET_FILE) return false
  const folder = dirname(path)
  return folder === dataDir || (dirname(folder) === tmpdir() && basename(folder).startsWith(PRIVATE_SOCKET_FOLDER_PREFIX))
}
/** The holder renews its lease (the lock file's mtime) this often ... */
const LEASE_RENEW_MS = 5_000
/** ... and a lease younger than this is live whatever else we can tell. */
const LEASE_MS = 30_000
/** How long a newcomer waits for another one that is replacing a stale lock (a few file operations). */
const TAKEOVER_WAIT_MS = 5_000

export class DataDirInUseError extends Error {
  override readonly name = 'DataDirInUseError'
  constructor (message: string, readonly holder: LockRecord | undefined, readonly socketAnswers: boolean) {
    super(message)
  }
}

export interface DataDirLock {
  /** Removes the lock file if it is still ours. */
  release: () => Promise<void>
}

/**
 * PGlite does not protect its data folder against a second process; two writers corrupt it. The
 * lock file is created exclusively and never rewritten; its holder renews the file's mtime every
 * few seconds (the lease). A PID alone proves nothing across containers (each one's server is PID
 * 1), so a newcomer judges a lock it finds like this:
 * - the holder's socket accepts a connection: live (the kernel accepts into the listen backlog even
 *   while the holder's event loop is busy);
 * - the holder is in our PID namespace on our boot (Linux): live while that PID runs and started at
 *   the recorded time;
 * - the socket refuses: stale (a server that died leaves its socket file behind; one that closes
 *   removes it before it lets go of the database);
 * - otherwise (the holder is starting, closing, or in another container): live while the lease is fresh.
 * A stale lock is replaced under a second, short-lived guard file, so that two newcomers cannot
 * both take it over.
 */
export async function lockDataDir (dataDir: string, socket: string): Promise<DataDirLock> {
  const lockPath = join(dataDir, LOCK_FILE)
  const record: LockRecord = { id: randomBytes(12).toString('hex'), ...ownIdentity(), socket }
  const deadline = Date.now() + TAKEOVER_WAIT_MS
  while (Date.now() < deadline) {
    const handle = await createExclusive(lockPath, JSON.stringify(record))
    if (handle !== undefined) return holdLease(lockPath, handle, record.id)

    const found = await readLock(lockPath)
    if (found === undefined) continue // released meanwhile
    const verdict = await judge(dataDir, found)
    if (verdict.live) throw inUse(dataDir, found, verdict.socketAnswers)
    if (await replaceStale(dataDir, lockPath, found) === 'busy') await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`Could not lock the data folder ${dataDir}: other processes keep taking it. Try again.`)
}

interface FoundLock {
  /** Undefined while the holder is still writing it, or if it is not ours. */
  record: LockRecord | undefined
  /** The lock file of a build before leases: just a PID. */
  legacyPid?: number
  ino: number
  mtimeMs: number
}

async function readLock (lockPath: string): Promise<FoundLock | undefined> {
  try {
    const [text, stats] = await Promise.all([readFile(lockPath, 'utf8'), stat(lockPath)])
    const legacyPid = /^\d+$/.test(text.trim()) ? Number(text.trim()) : undefined
    return { record: parseRecord(text), ino: stats.ino, mtimeMs: stats.mtimeMs, ...(legacyPid !== undefined && { legacyPid }) }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw error
  }
}

function parseRecord (text: string): LockRecord | undefined {
  try {
    const value = JSON.parse(text) as Partial<LockRecord>
    return typeof value.id === 'string' && typeof value.pid === 'number' && typeof value.socket === 'string' ? value as LockRecord : undefined
  } catch {
    return undefined
  }
}

async function judge (dataDir: string, { record, mtimeMs, legacyPid }: FoundLock): Promise<{ live: boolean, socketAnswers: boolean }> {
  // A build before leases wrote only its PID. Our own PID there may be another container's PID 1:
  // live too (inUse says how to remove the file when no older server runs).
  if (legacyPid !== undefined) return { live: legacyPid === process.pid || isAlive(legacyPid), socketAnswers: false }
  const leaseFresh = Date.now() - mtimeMs < LEASE_MS
  if (record === undefined) return { live: leaseFresh, socketAnswers: false }
  const socket = isServerSocketPath(dataDir, record.socket) ? await probeSocket(record.socket) : 'absent'
  if (socket === 'answers') return { live: true, socketAnswers: true }
  const own = ownIdentity()
  const sameKernel = own.bootId !== undefined && record.bootId === own.bootId
  if (sameKernel && own.pidNamespace !== undefined && record.pidNamespace === own.pidNamespace) {
    const running = record.processStart === undefined ? isAlive(record.pid) && leaseFresh : processStartOf(record.pid) === record.processStart
    return { live: running, socketAnswers: false }
  }
  // A refusing socket proves a dead server only on this kernel: seen over a network filesystem
  // (NFS, EFS, SMB) another machine's live socket refuses too, so there the lease decides.
  return { live: !(sameKernel && socket === 'refused') && leaseFresh, socketAnswers: false }
}

async function probeSocket (path: string): Promise<'answers' | 'refused' | 'absent'> {
  return await new Promise((resolve) => {
    const socket = connect(path)
    socket.once('connect', () => {
      socket.destroy()
      resolve('answers')
    })
    socket.once('error', (error: NodeJS.ErrnoException) => {
      resolve(error.code === 'ECONNREFUSED' ? 'refused' : 'absent')
    })
  })
}

async function createExclusive (path: string, text: string): Promise<FileHandle | undefined> {
  let handle: FileHandle
  try {
    handle = await open(path, 'wx', 0o600)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return undefined
    throw error
  }
  try {
    await handle.writeFile(text)
    await handle.sync()
    return handle
  } catch (error) {
    await handle.close()
    await rm(path, { force: true })
    throw error
  }
}

/** Removes the stale lock `found` (and its dead server's socket), unless someone replaced it meanwhile. */
async function replaceStale (dataDir: string, lockPath: string, found: FoundLock): Promise<'done' | 'busy'> {
  const guardPath = `${lockPath}.takeover`
  let guard = await createExclusive(guardPath, String(process.pid))
  if (guard === undefined) {
    // Another newcomer is replacing it right now; a guard older than a lease was left by a crash.
    const left = await stat(guardPath).catch(() => undefined)
    if (left === undefined) return 'done'
    if (Date.now() - left.mtimeMs < LEASE_MS) return 'busy'
    await rm(guardPath, { force: true })
    guard = await createExclusive(guardPath, String(process.pid))
    if (guard === undefined) return 'busy'
  }
  try {
    const now = await readLock(lockPath)
    if (now === undefined || now.ino !== found.ino || now.record?.id !== found.record?.id) return 'done'
    if (found.record !== undefined && isServerSocketPath(dataDir, found.record.socket)) {
      const left = await lstat(found.record.socket).catch(() => undefined)
      if (left?.isSocket() === true) await rm(found.record.socket, { force: true })
      // A socket outside the data folder was in a private temp folder of its own; rmdir takes only an empty one.
      if (dirname(found.record.socket) !== dataDir) await rmdir(dirname(found.record.socket)).catch(() => {})
    }
    await rm(lockPath, { force: true })
    return 'done'
  } finally {
    await guard.close()
    await rm(guardPath, { force: true })
  }
}

function holdLease (lockPath: string, handle: FileHandle, id: string): DataDirLock {
  // Renewed through our own file handle: should the path ever name another file, that one is not touched.
  const timer = setInterval(() => {
    const now = new Date()
    handle.utimes(now, now).catch(() => {})
  }, LEASE_RENEW_MS)
  timer.unref()
  let released: Promise<void> | undefined
  return {
    release: async () => {
      released ??= (async () => {
        clearInterval(timer)
        await handle.close()
        const now = await readLock(lockPath)
        if (now?.record?.id === id) await rm(lockPath, { force: true })
      })()
      return await released
    }
  }
}

function inUse (dataDir: string, { record, legacyPid }: FoundLock, socketAnswers: boolean): DataDirInUseError {
  if (legacyPid !== undefined) {
    return new DataDirInUseError(
      `The data folder ${dataDir} is locked by process ${legacyPid} of an older version of this server. ` +
      `Stop that server first; if none runs (it crashed, or ran in another container), remove ${join(dataDir, LOCK_FILE)} and start again.`,
      undefined,
      false
    )
  }
  return new DataDirInUseError(
    `The data folder ${dataDir} is in use by ${describeHolder(record)}${socketAnswers ? ', a running server' : ''}. ` +
    'One server at a time opens it: stop that one first, point DATA_DIR elsewhere, or set DATABASE_URL to use a PostgreSQL server. ' +
    'Admin commands need no second server: they use the running one (e.g. node dist/cli.js token create --name NAME).',
    record,
    socketAnswers
  )
}

/** "process N on HOST", for messages about a lock's holder. */
export function describeHolder (holder: LockRecord | undefined): string {
  return holder === undefined ? 'another process' : `process ${holder.pid} on ${holder.host}`
}

let identity: Omit<LockRecord, 'id' | 'socket'> | undefined

function ownIdentity (): Omit<LockRecord, 'id' | 'socket'> {
  identity ??= {
    pid: process.pid,
    host: hostname(),
    ...optional('bootId', () => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()),
    ...optional('pidNamespace', () => readlinkSync('/proc/self/ns/pid')),
    ...optional('processStart', () => processStartOf(process.pid))
  }
  return identity
}

function optional<K extends string> (key: K, read: () => string | undefined): Partial<Record<K, string>> {
  try {
    const value = read()
    return value === undefined || value === '' ? {} : { [key]: value } as Record<K, string>
  } catch {
    return {} // not Linux, or /proc not mounted
  }
}

/** Field 22 of /proc/PID/stat; undefined if no such process. The name (field 2) may hold spaces and parentheses. */
function processStartOf (pid: number): string | undefined {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}
