import { setTimeout as sleep } from 'node:timers/promises'

export interface EventuallyOptions {
  /** What is awaited, for the failure message ("the sweep to remove the rows"). */
  what: string
  /** Give up after this long. Generous by default: a passing check returns as soon as it holds. */
  timeoutMs?: number
  intervalMs?: number
}

/**
 * Runs `check` until it returns a truthy value, and returns that value; after `timeoutMs` without
 * one it throws, naming `what` and the last value seen. For background work that gives no event
 * to await. An error thrown by `check` is not retried: it fails at once.
 */
export async function eventually<T> (check: () => T | Promise<T>, options: EventuallyOptions): Promise<T> {
  const { what, timeoutMs = 30_000, intervalMs = 50 } = options
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last value: ${String(value)})`)
    await sleep(intervalMs)
  }
}
