import { readFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import type postgres from 'postgres'
import type { Config } from '../schema/config.js'
import { createSql, planTls, waitForDatabase, type SqlOptions } from './connect.js'
import { SOCKET_URL, startEmbeddedPostgres, type EmbeddedPostgres } from './embedded.js'
import { DataDirInUseError, describeHolder } from './embedded-lock.js'
import { migrate, pendingMigrations } from './migrate.js'

// One connection: the embedded database has one backend, and the socket server interleaves the
// extended-protocol messages of concurrent connections, so a transaction beside another statement
// fails with 'portal "" does not exist' (electric-sql/pglite#1046). postgres.js pipelines the
// statements of one connection, so a single one costs no round trips.
const EMBEDDED_POOL_MAX = 1

// Made by `npm run build` (db/build-template.ts) next to the compiled module; absent when running from source.
const TEMPLATE = new URL('./pglite-template.tar', import.meta.url)

async function readTemplate (): Promise<Blob | undefined> {
  try {
    return new Blob([await readFile(TEMPLATE)])
  } catch {
    return undefined // no template: PGlite runs initdb, which only takes longer
  }
}

export interface OpenDatabase {
  sql: postgres.Sql
  close: () => Promise<void>
  /** The database of a running server, reached through its socket (the CLI with useRunningServer). */
  viaRunningServer: boolean
  /** Opens one more connection to the same database, for LISTEN (db/change-listener.ts). */
  connectListener: (listener: NonNullable<SqlOptions['listener']>) => postgres.Sql
}

export interface OpenOptions {
  /**
   * Apply pending migrations (default true); false leaves the schema as it is (cli export). On a
   * running server's embedded database (useRunningServer) the default is false: that server
   * applied its build's migrations when it started, and only an explicit `migrate` changes them.
   */
  migrate?: boolean
  /**
   * The CLI: if a running server holds the embedded database, use it through that server's socket
   * rather than refuse. A server never does (a second one is refused).
   */
  useRunningServer?: boolean
}

/**
 * Connects to PostgreSQL (DATABASE_URL, or an embedded PGlite in DATA_DIR), waits for it with a
 * bounded retry, and applies pending migrations unless told not to. Used by the db plugin and by
 * the CLI. `warn` gets the warning that database TLS verification is off (every start while it is).
 */
export async function openDatabase (config: Config, log: (message: string) => void, warn: (message: string) => void = log, options: OpenOptions = {}): Promise<OpenDatabase> {
  const tls = config.DATABASE_URL === undefined ? undefined : { ca: config.DB_SSL_CA, verify: config.DB_SSL_VERIFY !== 'false' }
  if (tls !== undefined) {
    const plan = planTls(config.DATABASE_URL as string, tls)
    if (plan.warning !== undefined) warn(plan.warning)
    else log(plan.summary)
  }
  let embedded: EmbeddedPostgres | undefined
  let running: string | undefined
  if (config.DATABASE_URL === undefined) {
    try {
      embedded = await startEmbeddedPostgres({ dataDir: resolve(config.DATA_DIR), log, loadDataDir: await readTemplate() })
    } catch (error) {
      if (!(error instanceof DataDirInUseError) || options.useRunningServer !== true) throw error
      running = runningServerSocket(error, resolve(config.DATA_DIR))
      log(`the data folder ${resolve(config.DATA_DIR)} is in use by a running server (process ${error.holder?.pid ?? '?'}); using its database through ${running}`)
    }
  }
  const local = config.DATABASE_URL === undefined
  const connection = {
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
    ...(local && { path: running ?? embedded?.socketPath }),
    tls
  }
  const url = local ? SOCKET_URL : config.DATABASE_URL as string
  const sql = createSql(url, { ...connection, max: local ? EMBEDDED_POOL_MAX : config.DB_POOL_MAX })
  // A LISTEN holds no transaction, so beside the embedded pool's one connection it is safe (embedded.ts relays its notifications).
  const connectListener = (listener: NonNullable<SqlOptions['listener']>) => createSql(url, { ...connection, max: 1, listener })
  const close = async () => {
    await sql.end({ timeout: 5 })
    await embedded?.close()
  }
  try {
    await waitForDatabase(sql, { timeoutMs: config.DB_CONNECT_TIMEOUT_MS, log })
    if (running === undefined ? options.migrate !== false : options.migrate === true) await migrate(sql, { log })
    else if (running !== undefined) await refuseOlderSchema(sql)
  } catch (error) {
    await close().catch(() => {})
    throw error
  }
  return { sql, close, viaRunningServer: running !== undefined, connectListener }
}

/** A CLI newer than the running server (built but not restarted) would meet a schema without its migrations. */
async function refuseOlderSchema (sql: postgres.Sql): Promise<void> {
  const pending = await pendingMigrations(sql)
  if (pending.length === 0) return
  throw new Error(
    `The running server's database lacks this build's migration ${pending.join(', ')}: the server runs an older build. ` +
    'Restart it with this build (it migrates when it starts), or run node dist/cli.js migrate, then run the command again.'
  )
}

function runningServerSocket (error: DataDirInUseError, dataDir: string): string {
  if (error.socketAnswers && error.holder !== undefined) return error.holder.socket
  throw new Error(
    `The data folder ${dataDir} is in use by ${describeHolder(error.holder)}, whose database socket does not answer here: ` +
    'the server is starting or stopping (try again in a moment), or it runs in another container with its socket outside the data folder ' +
    '(run the command in that container: docker exec).',
    { cause: error }
  )
}
