import { resolve } from 'node:path'
import fp from 'fastify-plugin'
import type postgres from 'postgres'
import { createSql, waitForDatabase } from '../db/connect.js'
import { createContextStore, type ContextStore } from '../db/context-store.js'
import { startEmbeddedPostgres } from '../db/embedded.js'
import { migrate } from '../db/migrate.js'

declare module 'fastify' {
  interface FastifyInstance {
    db: {
      sql: postgres.Sql
      store: ContextStore
      /** True when the server runs its own embedded PostgreSQL (PGlite) in DATA_DIR. */
      embedded: boolean
    }
  }
}

// The embedded server lets one connection at a time hold a transaction; a small pool keeps the queue short.
const EMBEDDED_POOL_MAX = 4

/**
 * Connects to PostgreSQL (DATABASE_URL, or an embedded PGlite in DATA_DIR), waits for it with a
 * bounded retry, applies pending migrations, and exposes the pool and the context store.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  const log = (message: string) => fastify.log.info(message)
  const embedded = config.DATABASE_URL === undefined
    ? await startEmbeddedPostgres({ dataDir: resolve(config.DATA_DIR), log })
    : undefined
  const url = embedded?.url ?? config.DATABASE_URL as string
  const sql = createSql(url, {
    max: embedded === undefined ? config.DB_POOL_MAX : EMBEDDED_POOL_MAX,
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS
  })
  try {
    await waitForDatabase(sql, { timeoutMs: config.DB_CONNECT_TIMEOUT_MS, log })
    await migrate(sql, { log })
  } catch (error) {
    await sql.end({ timeout: 1 }).catch(() => {})
    await embedded?.close()
    throw error
  }

  fastify.decorate('db', {
    sql,
    store: createContextStore(sql, { maxContentBytes: config.MAX_CONTENT_BYTES }),
    embedded: embedded !== undefined
  })

  fastify.addHook('onClose', async () => {
    await sql.end({ timeout: 5 })
    await embedded?.close()
  })
}, { name: 'db', dependencies: ['config'] })
