import fp from 'fastify-plugin'
import { createMaintenanceStore } from '../db/context-store.js'

/** Rows per delete statement: each batch is one short transaction (the embedded database serves one at a time). */
export const SWEEP_BATCH = 500

/**
 * Every EXPIRY_SWEEP_SECONDS, deletes the entries whose TTL has passed (expired entries are already
 * invisible; this only reclaims their rows, their history stays). Safe on every instance at once:
 * the sweep skips rows another sweep or a writer holds. A sweep starts only after the previous one
 * ended; close waits for a running one before the database closes.
 */
export default fp(async (fastify) => {
  const seconds = fastify.config.EXPIRY_SWEEP_SECONDS
  if (seconds === 0) return
  const store = createMaintenanceStore(fastify.db.sql)
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> | undefined
  let closed = false

  const schedule = (): void => {
    timer = setTimeout(() => { running = sweep() }, seconds * 1000)
    timer.unref()
  }

  async function sweep (): Promise<void> {
    try {
      const removed = await store.sweepExpired(SWEEP_BATCH)
      if (removed > 0) fastify.log.info({ removed }, 'expiry sweep removed expired entries')
    } catch (error) {
      fastify.log.warn({ err: error }, 'expiry sweep failed; trying again at the next interval')
    } finally {
      running = undefined
      if (!closed) schedule()
    }
  }

  fastify.addHook('onReady', async () => { schedule() })
  // onClose hooks run in reverse registration order: this one before the db plugin closes the pool.
  fastify.addHook('onClose', async () => {
    closed = true
    clearTimeout(timer)
    await running
  })
}, { name: 'expiry', dependencies: ['config', 'db'] })
