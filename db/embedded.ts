import { existsSync } from 'node:fs'
import { mkdir, open, readFile, rm } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

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
  /** postgres:// URL on 127.0.0.1 for postgres.js. */
  url: string
  close(): Promise<void>
}

const DEFAULT_MAX_CONNECTIONS = 32
const LOCK_FILE = 'shared-context-mcp.lock'

/**
 * PGlite (PostgreSQL compiled to WASM, one backend in this process) behind a loopback socket, so
 * the application talks to it with postgres.js exactly as it does to a real server.
 *
 * The socket server runs one protocol message at a time against the single backend. While one
 * connection is inside an explicit transaction, messages from the other connections wait. Only
 * named prepared statements are safe with several connections: an unnamed statement parsed by one
 * connection can be replaced by another's between its Parse and its Bind (createSql uses
 * prepare: true).
 */
export async function startEmbeddedPostgres (options: EmbeddedPostgresOptions = {}): Promise<EmbeddedPostgres> {
  const started = performance.now()
  const dataDir = options.dataDir === undefined ? undefined : resolve(options.dataDir)
  let releaseLock = async (): Promise<void> => {}
  if (dataDir !== undefined) {
    await mkdir(dataDir, { recursive: true })
    releaseLock = await lockDataDir(dataDir)
  }

  let db: PGlite | undefined
  let server: PGLiteSocketServer | undefined
  try {
    const isNew = dataDir === undefined || !existsSync(join(dataDir, 'PG_VERSION'))
    db = await PGlite.create({
      ...(dataDir !== undefined && { dataDir }),
      ...(isNew && options.loadDataDir !== undefined && { loadDataDir: options.loadDataDir })
    })
    server = new PGLiteSocketServer({
      db,
      host: '127.0.0.1',
      port: 0, // the OS picks a free port; the server reads it back after listen
      maxConnections: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS
    })
    await server.start()
  } catch (error) {
    await db?.close().catch(() => {})
    await releaseLock()
    throw error
  }

  const address = server.getServerConn()
  const elapsed = Math.round(performance.now() - started)
  options.log?.(`embedded PostgreSQL (PGlite) listening on ${address} after ${elapsed} ms, data: ${dataDir ?? 'in memory'}`)

  let closing: Promise<void> | undefined
  const runningServer = server
  const runningDb = db
  return {
    url: `postgres://postgres@${address}/postgres`,
    close: async () => {
      closing ??= (async () => {
        try {
          await runningServer.stop()
        } finally {
          try {
            if (!runningDb.closed) await runningDb.close()
          } finally {
            await releaseLock()
          }
        }
      })()
      return await closing
    }
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

const dataDirsOpenInThisProcess = new Set<string>()

/**
 * PGlite does not protect its data folder against a second process; two writers corrupt it.
 * A lock file with our pid does, and one left behind by a dead process is taken over. A lock file
 * with our own pid is stale too (a container restarted as pid 1 again): this process tracks its
 * own open folders in memory.
 */
async function lockDataDir (dataDir: string): Promise<() => Promise<void>> {
  if (dataDirsOpenInThisProcess.has(dataDir)) {
    throw new Error(`The data folder ${dataDir} is already open in this process.`)
  }
  dataDirsOpenInThisProcess.add(dataDir)
  try {
    return await takeLockFile(dataDir)
  } catch (error) {
    dataDirsOpenInThisProcess.delete(dataDir)
    throw error
  }
}

async function takeLockFile (dataDir: string): Promise<() => Promise<void>> {
  const lockPath = join(dataDir, LOCK_FILE)
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(lockPath, 'wx')
      await handle.writeFile(String(process.pid))
      await handle.close()
      return async () => {
        dataDirsOpenInThisProcess.delete(dataDir)
        await rm(lockPath, { force: true })
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
      const owner = Number((await readFile(lockPath, 'utf8').catch(() => '')).trim())
      if (owner > 0 && owner !== process.pid && isAlive(owner)) {
        throw new Error(
          `The data folder ${dataDir} is in use by process ${owner}. Stop that process first, ` +
          'or point DATA_DIR elsewhere (or set DATABASE_URL to use a PostgreSQL server).'
        )
      }
      await rm(lockPath, { force: true })
    }
  }
  throw new Error(`Could not lock the data folder ${dataDir}; remove ${lockPath} if no server is running.`)
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}
