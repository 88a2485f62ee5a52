import fp from 'fastify-plugin'
import type postgres from 'postgres'
import { createContextStore, createMaintenanceStore, type ContextStore } from '../db/context-store.js'
import { openDatabase, type OpenDatabase } from '../db/open.js'
import { createTokenStore, type TokenStore } from '../db/token-store.js'

declare module 'fastify' {
  interface FastifyInstance {
    db: {
      sql: postgres.Sql
      store: ContextStore
      tokens: TokenStore
      /** One more connection to the same database, for LISTEN (plugins/live.ts). */
      connectListener: OpenDatabase['connectListener']
    }
  }
}

/** The database: connected and migrated before the server serves; closed (with the embedded server) on close. */
export default fp(async (fastify) => {
  const { config } = fastify
  const database = await openDatabase(config, (message) => fastify.log.info(message), (message) => fastify.log.warn(message))
  try {
    const started = performance.now()
    const changed = await createMaintenanceStore(database.sql).applySearchLanguage(config.SEARCH_LANGUAGE)
    if (changed !== null) {
      fastify.log.info(`search language changed from ${changed.previous} to ${config.SEARCH_LANGUAGE}: ${changed.entries} entries re-indexed in ${Math.round(performance.now() - started)} ms`)
    }
  } catch (error) {
    await database.close()
    throw error
  }
  fastify.decorate('db', {
    sql: database.sql,
    store: createContextStore(database.sql, { maxContentBytes: config.MAX_CONTENT_BYTES }),
    tokens: createTokenStore(database.sql),
    connectListener: database.connectListener
  })
  fastify.addHook('onClose', () => database.close())
}, { name: 'db', dependencies: ['config'] })
