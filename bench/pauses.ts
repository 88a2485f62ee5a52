import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'

// Where a round's latency tail can come from besides the server's work: pauses of the bench
// process itself (its garbage collections and event-loop delay time every call in flight) and
// of the server process (its collections and event-loop delay, from prom-client's default
// metrics on /metrics).

/** Pauses seen over a stretch of time. */
export interface Pauses {
  /** Collections that paused the process longer than LONG_GC_MS. */
  longCollections: number
  longestCollectionMs: number
  /** The longest the event loop was held (past its sampling interval), ms. */
  longestDelayMs: number
}

/** What the server's metrics can tell of its pauses (prom-client's buckets give no longest collection). */
export type ServerPauses = Omit<Pauses, 'longestCollectionMs'>

const LONG_GC_MS = 10
// The event-loop delay histograms record the time between samples, so the sampling interval is
// taken off: what is left is how long the loop was held. prom-client samples every 10 ms
// (its eventLoopMonitoringPrecision, which the server leaves at its default); this process every 1 ms.
const SERVER_SAMPLE_MS = 10
const OWN_SAMPLE_MS = 1

/** Watches this process until the returned function is called; that returns what it saw. */
export function watchOwnPauses (): () => Pauses {
  let longCollections = 0
  let longestCollectionMs = 0
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (entry.duration > LONG_GC_MS) longCollections++
      longestCollectionMs = Math.max(longestCollectionMs, entry.duration)
    }
  })
  observer.observe({ entryTypes: ['gc'] })
  const delay = monitorEventLoopDelay({ resolution: OWN_SAMPLE_MS })
  delay.enable()
  return () => {
    observer.disconnect()
    delay.disable()
    return { longCollections, longestCollectionMs, longestDelayMs: Math.max(0, delay.max / 1e6 - OWN_SAMPLE_MS) }
  }
}

interface ServerCounters { collections: number, shortCollections: number, longestDelayMs: number }

/**
 * The server's collection counts and its event-loop delay since the last scrape (prom-client resets
 * it at each). Read line by line: parse-prometheus-text-format, which the tests use, folds
 * prom-client's GC histogram (labels after `le`) into one series of the last `kind` and drops the
 * counts.
 */
async function scrape (metricsUrl: string): Promise<ServerCounters> {
  const response = await fetch(metricsUrl)
  if (!response.ok) throw new Error(`GET ${metricsUrl} answered HTTP ${response.status}`)
  const text = await response.text()
  let collections = 0
  let shortCollections = 0
  let longestDelayMs = 0
  for (const line of text.split('\n')) {
    const [name, value] = line.split(' ')
    if (name === undefined || value === undefined) continue
    if (name.startsWith('nodejs_gc_duration_seconds_count')) collections += Number(value)
    else if (name.startsWith('nodejs_gc_duration_seconds_bucket') && name.includes(`le="${LONG_GC_MS / 1000}"`)) shortCollections += Number(value)
    else if (name === 'nodejs_eventloop_lag_max_seconds') longestDelayMs = Math.max(0, Number(value) * 1000 - SERVER_SAMPLE_MS)
  }
  return { collections, shortCollections, longestDelayMs }
}

/**
 * Watches the server behind `metricsUrl` until the returned function is called; that returns how
 * many of its collections took longer than LONG_GC_MS (prom-client's buckets say no more) and the
 * longest its event loop was held.
 */
export async function watchServerPauses (metricsUrl: string): Promise<() => Promise<ServerPauses>> {
  const before = await scrape(metricsUrl)
  return async () => {
    const after = await scrape(metricsUrl)
    return {
      longCollections: (after.collections - after.shortCollections) - (before.collections - before.shortCollections),
      longestDelayMs: after.longestDelayMs
    }
  }
}
