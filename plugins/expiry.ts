import fp from 'fastify-plugin'
import { createMaintenanceStore } from '../db/context-store.js'

/** Rows per delete statement: each batch is one short transaction (the embedded database serves one at a time). */
export const SWEEP_BATCH = 500
/** Statements per sweep: a backlog larger than this many batches is left for the following sweeps. */
export const SWEEP_MAX_BATCHES = 20

export interface ExpiryPluginOptions {
  /** Rows per statement; default SWEEP_BATCH. */
  batchSize?: number
  /** Statements per sweep; default SWEEP_MAX_BATCHES. */
  maxBatches?: number
}

declare module 'fastify' {
  interface FastifyInstance {
    expiry: {
      /** Sweeps finished since start, whether they removed rows, none, or failed (always 0 with the sweep off). */
      completedSweeps: () => number
    }
  }
}

/**
 * Every EXPIRY_SWEEP_SECONDS, deletes the entries whose TTL has passed (expired entries are already
 * invisible; this only reclaims their rows, their history stays), at most `maxBatches` statements
 * of `batchSize` rows per sweep, then the revoked_jtis rows of JWTs that have expired. Safe on
 * every instance at once: the sweep skips rows another sweep or a writer holds. A sweep starts only after the previous one ended. Once the app starts
 * closing (preClose) a running sweep stops after the statement in flight, and close waits only for
 * that one before the database closes; what is left goes to the next start.
 */
export default fp<ExpiryPluginOptions>(async (fastify, options) => {
  let completed = 0
  fastify.decorate('expiry', { completedSweeps: () => completed })
  const seconds = fastify.config.EXPIRY_SWEEP_SECONDS
  if (seconds === 0) return
  const batchSize = options.batchSize ?? SWEEP_BATCH
  const maxBatches = options.maxBatches ?? SWEEP_MAX_BATCHES
  const store = createMaintenanceStore(fastify.db.sql)
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> | undefined
  let closed = false

  const schedule = (): void => {
    timer = setTimeout(() => { running = sweep() }, seconds * 1000)
    timer.unref()
  }

  async function sweepEntries (): Promise<void> {
    try {
      const removed = await store.sweepExpired(batchSize, { maxBatches, shouldStop: () => closed })
      // Every batch came back full: more may be waiting; the next sweeps take it on.
      const backlog = removed >= batchSize * maxBatches
      if (removed > 0) fastify.log.info({ removed, ...(backlog && { backlog }) }, 'expiry sweep removed expired entries')
    } catch (error) {
      fastify.log.warn({ err: error }, 'expiry sweep failed; trying again at the next interval')
    }
  }

  // A revoked jti needs its row only until the token expires; after that the token is refused anyway.
  async function purgeRevocations (): Promise<void> {
    try {
      const purged = await fastify.db.tokens.purgeExpiredJtis()
      if (purged > 0) fastify.log.info({ purged }, 'expiry sweep purged the revocations of expired JWTs')
    } catch (error) {
      fastify.log.warn({ err: error }, 'expiry sweep could not purge expired JWT revocations; trying again at the next interval')
    }
  }

  async function sweep (): Promise<void> {
    try {
      fastify.log.debug('expiry sweep started')
      await sweepEntries()
      if (!closed) await purgeRevocations()
      fastify.log.debug('expiry sweep finished')
    } finally {
      completed++
      running = undefined
      if (!closed) schedule()
    }
  }

  fastify.addHook('onReady', async () => { schedule() })
  // preClose: shutdown has begun, so no further statement starts.
  fastify.addHook('preClose', async () => {
    closed = true
    clearTimeout(timer)
  })
  // onClose hooks run in reverse registration order: this one before the db plugin closes the pool.
  fastify.addHook('onClose', async () => {
    closed = true
    clearTimeout(timer)
    await running
  })
}, { name: 'expiry', dependencies: ['config', 'db'] })
