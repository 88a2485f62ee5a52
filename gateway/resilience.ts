/**
 * What keeps one upstream's trouble from becoming everyone's: a circuit breaker, a concurrency
 * limit, and retries with exponential backoff and jitter for transient failures of safe calls.
 */

export type BreakerState = 'closed' | 'open' | 'half_open'

/**
 * Opens after `failures` consecutive failed calls; while open, calls are refused at once. After
 * `openMs` one probe call is let through (half-open): its success closes the breaker, its failure
 * opens it again for another `openMs`.
 */
export class CircuitBreaker {
  private consecutiveFailures = 0
  private openedAt = 0
  private probing = false
  state: BreakerState = 'closed'

  constructor (private readonly options: { failures: number, openMs: number }, private readonly onChange: (state: BreakerState) => void = () => {}, private readonly now: () => number = Date.now) {}

  /** Whether a call may go upstream now; in half-open, true once, for the probe. */
  allow (): boolean {
    if (this.state === 'closed') return true
    if (this.state === 'open') {
      if (this.now() - this.openedAt < this.options.openMs) return false
      this.set('half_open')
    }
    if (this.probing) return false
    this.probing = true
    return true
  }

  /** The probe, or any call, answered: the upstream works. */
  succeeded (): void {
    this.consecutiveFailures = 0
    this.probing = false
    if (this.state !== 'closed') this.set('closed')
  }

  failed (): void {
    this.consecutiveFailures++
    const wasProbe = this.probing
    this.probing = false
    if (this.state === 'half_open' || (wasProbe && this.state !== 'closed') || this.consecutiveFailures >= this.options.failures) {
      this.openedAt = this.now()
      if (this.state !== 'open') this.set('open')
    }
  }

  /** A call that was let through ended without telling whether the upstream works (cancelled by the client). */
  released (): void {
    this.probing = false
  }

  /** Milliseconds until an open breaker lets a probe through (0 unless open). */
  retryAfterMs (): number {
    return this.state === 'open' ? Math.max(0, this.options.openMs - (this.now() - this.openedAt)) : 0
  }

  private set (state: BreakerState): void {
    this.state = state
    this.onChange(state)
  }
}

export class LimitWaitAborted extends Error {
  constructor () {
    super('gave up waiting for a free upstream slot')
    this.name = 'LimitWaitAborted'
  }
}

/** At most `limit` holders at once; the rest wait in order (or give up when their signal aborts). */
export class ConcurrencyLimit {
  private active = 0
  private readonly waiting: Array<() => void> = []

  constructor (private readonly limit: number) {}

  get inFlight (): number {
    return this.active
  }

  get queued (): number {
    return this.waiting.length
  }

  /** Resolves with a release function once a slot is free. */
  async acquire (signal?: AbortSignal): Promise<() => void> {
    if (this.active < this.limit && this.waiting.length === 0) {
      this.active++
      return this.releaser()
    }
    if (signal?.aborted === true) throw new LimitWaitAborted()
    // A releaser hands its slot straight to the first waiter (`active` stays as it is), so that
    // an acquire running before the waiter resumes cannot take the slot as well.
    await new Promise<void>((resolve, reject) => {
      const wake = (): void => {
        signal?.removeEventListener('abort', abandon)
        resolve()
      }
      const abandon = (): void => {
        const index = this.waiting.indexOf(wake)
        if (index >= 0) this.waiting.splice(index, 1)
        reject(new LimitWaitAborted())
      }
      this.waiting.push(wake)
      signal?.addEventListener('abort', abandon, { once: true })
    })
    return this.releaser()
  }

  private releaser (): () => void {
    let released = false
    return () => {
      if (released) return
      released = true
      const next = this.waiting.shift()
      if (next !== undefined) next()
      else this.active--
    }
  }
}

/** The wait before retry `retry` (1-based): base·2^(retry-1), capped, with ±20% jitter — about 200/400/800 ms by default. */
export function backoffDelayMs (retry: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const exact = Math.min(maxMs, baseMs * 2 ** (retry - 1))
  return Math.round(exact * (0.8 + 0.4 * random()))
}

/** Sleeps `ms`, or rejects as soon as `signal` aborts. */
export function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(new Error('aborted', { cause: signal.reason }))
      return
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', stop)
      resolve()
    }, ms)
    const stop = (): void => {
      clearTimeout(timer)
      reject(new Error('aborted', { cause: signal?.reason }))
    }
    signal?.addEventListener('abort', stop, { once: true })
  })
}

/** How one failed attempt of an upstream call ended. */
export interface FailureKind {
  /** timeout: no answer in time; unreachable: no working connection; upstream_error: it answered with a failure. */
  kind: 'timeout' | 'unreachable' | 'upstream_error'
  /** Worth another attempt (connection refused/reset, DNS, connect timeout, HTTP 502/503/504) — if safe, see mayHaveReached. */
  transient: boolean
  /** Whether the request may have reached the upstream (then only read-only or idempotent calls are repeated). */
  mayHaveReached: boolean
  /** For logs and metrics: a short, secret-free name of what happened. */
  reason: string
}

// SdkErrorCode values of @modelcontextprotocol/client.
const SDK_REQUEST_TIMEOUT = 'REQUEST_TIMEOUT'
const SDK_CONNECTION_CLOSED = 'CONNECTION_CLOSED'
const SDK_ERA_NEGOTIATION_FAILED = 'ERA_NEGOTIATION_FAILED'
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT', 'ECONNABORTED'])
const MAYBE_SENT_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'ETIMEDOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT'])

function causeCodes (error: unknown): string[] {
  const codes: string[] = []
  let current: unknown = error
  for (let depth = 0; depth < 5 && typeof current === 'object' && current !== null; depth++) {
    const code = (current as { code?: unknown }).code
    if (typeof code === 'string') codes.push(code)
    const errors = (current as { errors?: unknown }).errors
    if (Array.isArray(errors)) for (const inner of errors) codes.push(...causeCodes(inner))
    current = (current as { cause?: unknown }).cause
  }
  return codes
}

/** The HTTP status an SDK transport error carries (SdkHttpError's data.status), if any. */
function httpStatusOf (error: unknown): number | undefined {
  const data = (error as { data?: { status?: unknown } } | null)?.data
  return typeof data?.status === 'number' ? data.status : undefined
}

/**
 * Classifies an error thrown by the SDK client (or by fetch under it). Errors the upstream's MCP
 * server answered (JSON-RPC errors) are `upstream_error`, not transient, and reached.
 */
export function classifyFailure (error: unknown): FailureKind {
  if (error instanceof UpstreamClosed) return { kind: 'unreachable', transient: false, mayHaveReached: false, reason: 'shutting_down' }
  if (error instanceof UpstreamTimeout) return { kind: 'timeout', transient: false, mayHaveReached: true, reason: 'timeout' }
  // The upstream answered, but with no JSON-RPC answer: it is broken, not down; repeating will not help.
  if (error instanceof UpstreamMalformed) return { kind: 'upstream_error', transient: false, mayHaveReached: true, reason: 'malformed_answer' }
  const codes = causeCodes(error)
  const notSent = codes.find((code) => NOT_SENT_CODES.has(code))
  if (notSent !== undefined) return { kind: 'unreachable', transient: true, mayHaveReached: false, reason: notSent.toLowerCase() }
  // The SDK client's own errors (their causes, above, say more when there are any): a request (the
  // call, or the connection's initialize) unanswered within its timeout, the protocol version not
  // agreed, the connection gone.
  if (codes.includes(SDK_REQUEST_TIMEOUT)) return { kind: 'timeout', transient: false, mayHaveReached: true, reason: 'timeout' }
  if (codes.includes(SDK_ERA_NEGOTIATION_FAILED)) return { kind: 'unreachable', transient: true, mayHaveReached: false, reason: 'negotiation_failed' }
  if (codes.includes(SDK_CONNECTION_CLOSED)) return { kind: 'unreachable', transient: true, mayHaveReached: true, reason: 'connection_closed' }
  const maybeSent = codes.find((code) => MAYBE_SENT_CODES.has(code))
  if (maybeSent !== undefined) return { kind: 'unreachable', transient: true, mayHaveReached: true, reason: maybeSent.toLowerCase() }
  const status = httpStatusOf(error)
  if (status !== undefined) {
    // Worth another attempt, but only of a safe call: an application may answer 503 after its side
    // effects, and a proxy's 502/504 may come after it passed the request on.
    if (status === 502 || status === 503 || status === 504) return { kind: 'upstream_error', transient: true, mayHaveReached: true, reason: `http_${status}` }
    if (status === 404) return { kind: 'upstream_error', transient: true, mayHaveReached: false, reason: 'http_404' }
    return { kind: 'upstream_error', transient: false, mayHaveReached: true, reason: `http_${status}` }
  }
  const name = (error as { name?: unknown } | null)?.name
  const message = String((error as { message?: unknown } | null)?.message ?? '')
  if (name === 'TypeError' && /fetch failed/i.test(message)) return { kind: 'unreachable', transient: true, mayHaveReached: true, reason: 'fetch_failed' }
  if (/SSE stream disconnected|terminated|other side closed|socket hang up/i.test(message)) return { kind: 'unreachable', transient: true, mayHaveReached: true, reason: 'disconnected' }
  if (/Connection closed/i.test(message)) return { kind: 'unreachable', transient: true, mayHaveReached: true, reason: 'connection_closed' }
  // Only a JSON-RPC error (a numeric code) is the upstream's answer; anything else failed here.
  if (typeof (error as { code?: unknown } | null)?.code === 'number') return { kind: 'upstream_error', transient: false, mayHaveReached: true, reason: 'error' }
  return { kind: 'upstream_error', transient: false, mayHaveReached: true, reason: 'local' }
}

/** An attempt that got no answer within the upstream's timeoutMs. */
export class UpstreamTimeout extends Error {
  constructor (readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`)
    this.name = 'UpstreamTimeout'
  }
}

/** A call that the gateway would not start, or cut off, because the server is shutting down. */
export class UpstreamClosed extends Error {
  constructor () {
    super('the server is shutting down')
    this.name = 'UpstreamClosed'
  }
}

/** An upstream answer that is no JSON-RPC answer (JSON that does not parse, no result or error, a content type of neither kind). */
export class UpstreamMalformed extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'UpstreamMalformed'
  }
}
