import { existsSync } from 'node:fs'
import { chmod, lstat, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import { pg_trgm as pgTrgm } from '@electric-sql/pglite/contrib/pg_trgm'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'
import { PRIVATE_SOCKET_FOLDER_PREFIX, SOCKET_FILE, lockDataDir, type DataDirLock } from './embedded-lock.js'

export interface EmbeddedPostgresOptions {
  /** Folder that holds the database; created if missing. Undefined: in memory, gone on close. */
  dataDir?: string
  log?: (msg: string) => void
  /**
   * Connections the socket server accepts at once (its own default is 1). Must be at least the
   * pool size of every client together; a connection over the limit gets a non-protocol reply.
   */
  maxConnections?: number
  /**
   * Initial contents of a new database — in memory, or in a dataDir that holds none yet: a tarball
   * from createDataDirTemplate(). Loading it takes a fraction of the seconds initdb needs.
   */
  loadDataDir?: Blob
}

export interface EmbeddedPostgres {
  /**
   * postgres:// URL for postgres.js. In memory: on a loopback port (tests only). With a data
   * folder its host is a placeholder: connect through `socketPath`.
   */
  url: string
  /** The Unix socket the database is served on (data folder only); createSql's `path`. */
  socketPath?: string
  close(): Promise<void>
}

const DEFAULT_MAX_CONNECTIONS = 32
// Extensions a migration creates (005_search: pg_trgm). PGlite must load their code every time it
// opens a database, or the objects they made stop working.
const EXTENSIONS = { pg_trgm: pgTrgm }
// sun_path holds 108 bytes on Linux, 104 on macOS, the terminating NUL included.
const MAX_SOCKET_PATH_BYTES = 103

// Extended-query messages that leave an exchange open until the client's Sync: Parse, Bind, Describe, Execute, Close, Flush.
const EXCHANGE_MESSAGES = new Set(['P', 'B', 'D', 'E', 'C', 'H'].map((type) => type.charCodeAt(0)))

/**
 * The socket server hands the single backend to one connection only while PGlite reports a
 * transaction, and otherwise takes the next message of any connection. So between one
 * connection's Bind and its Execute another could run a whole transaction, whose statements
 * replace the unnamed portal: the first then got `portal "" does not exist` (and its connection
 * was dropped), or another's rows. This makes an exchange in progress — from the first of these
 * messages to Sync — count as a transaction for the socket server, so that it finishes first.
 */
function holdingExchanges (db: PGlite): PGlite {
  let exchangeOpen = false
  const notifications = new NotificationRelay()
  return new Proxy(db, {
    get (target, property) {
      if (property === 'isInTransaction') return () => exchangeOpen || target.isInTransaction()
      if (property === 'execProtocolRawStream') {
        return async (message: Uint8Array, options: Parameters<PGlite['execProtocolRawStream']>[1]) => {
          const type = message[0] ?? 0
          if (isListenStatement(message)) notifications.addSink(options.onRawData)
          const output = notifications.filter(options.onRawData)
          try {
            return await target.execProtocolRawStream(message, { ...options, onRawData: output.write })
          } finally {
            output.end()
            exchangeOpen = EXCHANGE_MESSAGES.has(type)
          }
        }
      }
      const value: unknown = Reflect.get(target, property, target)
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value
    }
  })
}

const QUERY = 'Q'.charCodeAt(0)
const PARSE = 'P'.charCodeAt(0)
const NOTIFICATION_RESPONSE = 'A'.charCodeAt(0)
const LISTEN_STATEMENT = /^\s*listen\s/i
/** Connections that ran LISTEN whose outputs a notification is copied to; the oldest are forgotten past this. */
const MAX_NOTIFICATION_SINKS = 16

/** Whether a frontend message is a simple query or a Parse whose statement is a LISTEN. */
function isListenStatement (message: Uint8Array): boolean {
  const type = message[0]
  if (type !== QUERY && type !== PARSE) return false
  let start = 5
  if (type === PARSE) { // statement name, NUL-terminated, before the query
    while (start < message.length && message[start] !== 0) start++
    start++
  }
  const text = Buffer.from(message.buffer, message.byteOffset + start, Math.min(64, Math.max(0, message.length - start))).toString('latin1')
  return LISTEN_STATEMENT.test(text)
}

type RawSink = (data: Uint8Array) => void

/**
 * LISTEN/NOTIFY through the socket server. PGlite has one backend for every connection, so a
 * NotificationResponse comes out in the output of whichever connection's statement committed the
 * NOTIFY — to the writer, which ignores it — never to the connection that ran LISTEN (checked:
 * postgres.js's sql.listen on one connection and pg_notify on another delivered nothing). This
 * takes NotificationResponse messages out of every output and writes them to the connections that
 * ran LISTEN instead (each connection's output callback writes to its own socket, and is a no-op
 * once that socket has closed). Messages of one output may be split across chunks; a partial one
 * is held until its rest arrives.
 */
class NotificationRelay {
  private readonly sinks: RawSink[] = []

  addSink (sink: RawSink): void {
    this.sinks.push(sink)
    if (this.sinks.length > MAX_NOTIFICATION_SINKS) this.sinks.shift()
  }

  filter (forward: RawSink): { write: RawSink, end: () => void } {
    let held: Buffer | undefined
    const write = (chunk: Uint8Array): void => {
      const data = held === undefined ? chunk : Buffer.concat([held, chunk])
      held = undefined
      let offset = 0
      let passedFrom = 0
      const passed: Uint8Array[] = []
      while (offset + 5 <= data.length) {
        const length = 1 + Buffer.from(data.buffer, data.byteOffset + offset + 1, 4).readInt32BE(0)
        if (offset + length > data.length) break
        if (data[offset] === NOTIFICATION_RESPONSE) {
          if (offset > passedFrom) passed.push(data.subarray(passedFrom, offset))
          const notification = data.slice(offset, offset + length)
          for (const sink of this.sinks) sink(notification)
          passedFrom = offset + length
        }
        offset += length
      }
      if (offset < data.length) held = Buffer.from(data.subarray(offset))
      if (passedFrom === 0 && offset === data.length) forward(data)
      else {
        if (offset > passedFrom) passed.push(data.subarray(passedFrom, offset))
        for (const part of passed) forward(part)
      }
    }
    return {
      write,
      end: () => {
        if (held !== undefined) forward(held)
        held = undefined
      }
    }
  }
}

/**
 * PGlite (PostgreSQL compiled to WASM, one backend in this process) behind a socket, so the
 * application talks to it with postgres.js exactly as it does to a real server.
 *
 * With a data folder the socket is a Unix socket inside it (DATA_DIR is 0700, so only its owner
 * can connect; PGlite asks for no password), or, where that path is too long for a socket, in a
 * private 0700 folder under the OS temp folder; the lock file records which (see embedded-lock.ts),
 * so that the CLI can reach a running server's database.
 *
 * The socket server runs one protocol message at a time against the single backend. While one
 * connection is inside an explicit transaction, or between the first message of an extended-query
 * exchange and its Sync (holdingExchanges), messages from the other connections wait.
 */
export async function startEmbeddedPostgres (options: EmbeddedPostgresOptions = {}): Promise<EmbeddedPostgres> {
  const started = performance.now()
  const dataDir = options.dataDir === undefined ? undefined : resolve(options.dataDir)
  let socket: PrivateSocket | undefined
  let lock: DataDirLock | undefined
  if (dataDir !== undefined) {
    await mkdir(dataDir, { recursive: true, mode: 0o700 })
    socket = await privateSocketPath(dataDir)
    try {
      lock = await lockDataDir(dataDir, socket.path)
      // Left by a server that died; its lock was stale, or we would not hold it now.
      await rm(socket.path, { force: true })
      await chmod(dataDir, 0o700).catch((error: NodeJS.ErrnoException) => {
        // A mount point owned by someone else (root, a world-writable bind mount): the files inside still are ours only.
        options.log?.(`could not make the data folder ${dataDir} owner-only (${error.code ?? String(error)}); make it 0700 yourself`)
      })
    } catch (error) {
      if (lock === undefined) await socket.discard() // never the socket of the server that holds the folder
      else {
        await socket.remove()
        await lock.release()
      }
      throw error
    }
  }

  let db: PGlite | undefined
  let server: PGLiteSocketServer | undefined
  try {
    const isNew = dataDir === undefined || !existsSync(join(dataDir, 'PG_VERSION'))
    db = await PGlite.create({
      extensions: EXTENSIONS,
      ...(dataDir !== undefined && { dataDir }),
      ...(isNew && options.loadDataDir !== undefined && { loadDataDir: options.loadDataDir })
    })
    if (dataDir !== undefined) await ownerOnly(dataDir)
    const maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS
    const served = holdingExchanges(db)
    server = new PGLiteSocketServer(socket === undefined
      ? { db: served, host: '127.0.0.1', port: 0, maxConnections } // port 0: the OS picks a free one, read back after listen
      : { db: served, path: socket.path, maxConnections })
    await server.start()
    if (socket !== undefined) await chmod(socket.path, 0o600)
  } catch (error) {
    await server?.stop().catch(() => {})
    await db?.close().catch(() => {})
    await socket?.remove() // before the lock goes: then the path may be the next holder's
    await lock?.release()
    throw error
  }

  const address = server.getServerConn()
  const elapsed = Math.round(performance.now() - started)
  options.log?.(`embedded PostgreSQL (PGlite) listening on ${address} after ${elapsed} ms, data: ${dataDir ?? 'in memory'}`)

  let closing: Promise<void> | undefined
  const runningServer = server
  const runningDb = db
  return {
    ...(socket === undefined ? { url: `postgres://postgres@${address}/postgres` } : { url: SOCKET_URL, socketPath: socket.path }),
    close: async () => {
      closing ??= (async () => {
        try {
          await runningServer.stop() // removes the socket file: until the lock goes, a newcomer judges by PID or lease
        } finally {
          try {
            if (!runningDb.closed) await runningDb.close()
          } finally {
            await socket?.remove()
            await lock?.release()
          }
        }
      })()
      return await closing
    }
  }
}

/** For a Unix socket: postgres.js takes the user and database from it, and connects to `path`. */
export const SOCKET_URL = 'postgres://postgres@localhost/postgres'

interface PrivateSocket {
  path: string
  /** Removes the socket file, and the private folder it was made in, if any: only while holding the lock. */
  remove: () => Promise<void>
  /** Removes the private folder made for it, if any. */
  discard: () => Promise<void>
}

async function privateSocketPath (dataDir: string): Promise<PrivateSocket> {
  const inDataDir = join(dataDir, SOCKET_FILE)
  if (Buffer.byteLength(inDataDir) <= MAX_SOCKET_PATH_BYTES) {
    return { path: inDataDir, remove: async () => { await rm(inDataDir, { force: true }) }, discard: async () => {} }
  }
  const folder = await mkdtemp(join(tmpdir(), PRIVATE_SOCKET_FOLDER_PREFIX)) // created 0700
  const path = join(folder, SOCKET_FILE)
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    await rm(folder, { recursive: true, force: true })
    throw new Error(`Neither ${inDataDir} nor ${path} is short enough for a Unix socket (${MAX_SOCKET_PATH_BYTES} bytes): use a shorter DATA_DIR or TMPDIR.`)
  }
  const removeFolder = async (): Promise<void> => { await rm(folder, { recursive: true, force: true }) }
  return { path, remove: removeFolder, discard: removeFolder }
}

/**
 * Everything in the data folder: owner only. PGlite gives the files it unpacks from a template
 * (and older builds gave every file) modes such as 0666; files it creates later follow the
 * umask, which the entry points set to 077.
 */
async function ownerOnly (dataDir: string): Promise<void> {
  for (const name of await readdir(dataDir, { recursive: true })) {
    const path = join(dataDir, name)
    const stats = await lstat(path)
    if ((stats.mode & 0o077) !== 0 && !stats.isSymbolicLink()) await chmod(path, stats.mode & 0o700)
  }
}

/** A freshly initialised, empty PGlite data folder as an uncompressed tarball (see loadDataDir). */
export async function createDataDirTemplate (): Promise<Blob> {
  const db = await PGlite.create()
  try {
    return await db.dumpDataDir('none')
  } finally {
    await db.close()
  }
}
