import { Agent, request as httpRequest } from 'node:http'

// Calls at a fixed rate, evenly spaced: call i is due at start + i / rate, sent then on a free
// keep-alive connection of at most `connections` (or, when all are busy, on the first to come
// free), and timed from when it was due to its answer, so a call that waited for a connection
// counts its wait (no coordinated omission). autocannon's own fixed rate (overallRate) is no fixed
// rate: each connection sends its quota for the second back to back, then waits for the next
// second, so at half the capacity every connection ran saturated for half of each second.

export interface PacedCall {
  body: string
  /** What is wrong with the answer, if anything. */
  check: (status: number, body: string) => string | undefined
}

export interface PacedOptions {
  url: string
  headers: Record<string, string>
  rate: number
  durationSeconds: number
  connections: number
  /** The next call; `index` counts from 0. */
  next: (index: number) => PacedCall
  /** Called with each answered call's latency (from its due time) and what was wrong with it. */
  onAnswer?: (index: number, ms: number, problem: string | undefined, body: string) => void
}

export interface PacedResult {
  requestsPerSecond: number
  /** Latencies of the answered calls, from their due times, sorted. */
  latenciesMs: number[]
  /** Answers whose check found a problem. */
  failures: number
  /** Timeouts and connection errors. */
  transportErrors: number
  /** How long calls waited past their due time for a free connection, sorted. */
  sendWaitsMs: number[]
  /** The first problems found, with the start of their answers. */
  samples: string[]
}

const MAX_SAMPLES = 5
const stop = { requested: false }

/** Ends the paced run in progress after the calls already sent. */
export function stopPaced (): void {
  stop.requested = true
}

export function percentile (sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
}

export async function runPacedCalls (options: PacedOptions): Promise<PacedResult> {
  stop.requested = false
  const url = new URL(options.url)
  const agent = new Agent({ keepAlive: true, maxSockets: options.connections, maxFreeSockets: options.connections })
  const latencies: number[] = []
  const waits: number[] = []
  const samples: string[] = []
  let failures = 0
  let transportErrors = 0
  let inFlight = 0
  const queue: Array<{ index: number, call: PacedCall, dueAt: number }> = []
  let settle: () => void = () => {}
  const drained = new Promise<void>((resolve) => { settle = resolve })
  let scheduling = true

  const send = (index: number, call: PacedCall, dueAt: number): void => {
    inFlight++
    waits.push(performance.now() - dueAt)
    let settled = false
    const answered = (status: number, body: string): void => {
      if (settled) return
      settled = true
      const ms = performance.now() - dueAt
      latencies.push(ms)
      const problem = call.check(status, body)
      if (problem !== undefined) {
        failures++
        if (samples.length < MAX_SAMPLES) samples.push(`${problem}: ${body.slice(0, 200)}`)
      }
      options.onAnswer?.(index, ms, problem, body)
      done()
    }
    const failed = (): void => {
      if (settled) return
      settled = true
      transportErrors++
      done()
    }
    const req = httpRequest({
      agent,
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      method: 'POST',
      headers: { ...options.headers, 'content-length': Buffer.byteLength(call.body) },
      timeout: 10_000
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => answered(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8')))
      res.on('error', failed)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', failed)
    req.end(call.body)
  }
  const done = (): void => {
    inFlight--
    const waiting = queue.shift()
    if (waiting !== undefined) send(waiting.index, waiting.call, waiting.dueAt)
    else if (!scheduling && inFlight === 0) settle()
  }

  const started = performance.now()
  const total = Math.round(options.rate * options.durationSeconds)
  const interval = 1000 / options.rate
  let sent = 0
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now()
      while (sent < total && started + sent * interval <= now && !stop.requested) {
        const dueAt = started + sent * interval
        const index = sent++
        const call = options.next(index)
        if (inFlight < options.connections) send(index, call, dueAt)
        else queue.push({ index, call, dueAt })
      }
      if (sent >= total || stop.requested) { resolve(); return }
      setTimeout(tick, Math.max(0, started + sent * interval - performance.now()))
    }
    tick()
  })
  scheduling = false
  if (inFlight > 0 || queue.length > 0) await drained
  const elapsedSeconds = (performance.now() - started) / 1000
  agent.destroy()
  return {
    requestsPerSecond: latencies.length / elapsedSeconds,
    latenciesMs: latencies.sort((a, b) => a - b),
    failures,
    transportErrors,
    sendWaitsMs: waits.sort((a, b) => a - b),
    samples
  }
}
