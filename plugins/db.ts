import fp from 'fastify-plugin'
import type postgres from 'postgres'
import { createContextStore, type ContextStore } from '../db/context-store.js'
import { openDatabase } from '../db/open.js'

declare module 'fastify' {
  interface FastifyInstance {
    db: {
      sql: postgres.Sql
      store: ContextStore
    }
  }
}

/** The database: connected and migrated before the server serves; closed (with the embedded server) on close. */
export default fp(async (fastify) => {
  const { config } = fastify
  const database = await openDatabase(config, (message) => fastify.log.info(message), (message) => fastify.log.warn(message))
  fastify.decorate('db', {
    sql: database.sql,
    store: createContextStore(database.sql, { maxContentBytes: config.MAX_CONTENT_BYTES })
  })
  fastify.addHook('onClose', () => database.close())
}, { name: 'db', dependencies: ['config'] })
