import { readFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import type postgres from 'postgres'
import type { Config } from '../schema/config.js'
import { createSql, planTls, waitForDatabase } from './connect.js'
import { startEmbeddedPostgres } from './embedded.js'
import { migrate } from './migrate.js'

// The embedded server lets one connection at a time hold a transaction; a small pool keeps the queue short.
const EMBEDDED_POOL_MAX = 4

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
}

export interface OpenOptions {
  /** Apply pending migrations (default true); false leaves the schema as it is (cli export). */
  migrate?: boolean
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
  const embedded = config.DATABASE_URL === undefined
    ? await startEmbeddedPostgres({ dataDir: resolve(config.DATA_DIR), log, loadDataDir: await readTemplate() })
    : undefined
  const sql = createSql(embedded?.url ?? config.DATABASE_URL as string, {
    max: embedded === undefined ? config.DB_POOL_MAX : EMBEDDED_POOL_MAX,
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
    tls
  })
  const close = async () => {
    await sql.end({ timeout: 5 })
    await embedded?.close()
  }
  try {
    await waitForDatabase(sql, { timeoutMs: config.DB_CONNECT_TIMEOUT_MS, log })
    if (options.migrate !== false) await migrate(sql, { log })
  } catch (error) {
    await close().catch(() => {})
    throw error
  }
  return { sql, close }
}
