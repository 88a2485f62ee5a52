/** What shutdown keeps of SHUTDOWN_TIMEOUT_MS for closing after the calls in flight have had their time. */
export const SHUTDOWN_RESERVE_MS = 2000

const deadlines = new WeakMap<object, number>()

/**
 * The one deadline of every preClose drain of a server (keyed by its config object): fixed by the
 * first drain that asks, so that drains running one after the other share SHUTDOWN_TIMEOUT_MS
 * instead of each taking all of it, and part of it is left for closing the pool and the database.
 */
export function drainDeadline (config: { SHUTDOWN_TIMEOUT_MS: number }, now: () => number = Date.now): number {
  let deadline = deadlines.get(config)
  if (deadline === undefined) {
    const budgetMs = config.SHUTDOWN_TIMEOUT_MS
    deadline = now() + Math.max(budgetMs / 2, budgetMs - SHUTDOWN_RESERVE_MS)
    deadlines.set(config, deadline)
  }
  return deadline
}
