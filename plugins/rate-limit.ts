import { createRequire } from 'node:module'
import rateLimit, { normalizeIP } from '@fastify/rate-limit'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { AppError, type ErrorCode } from '../schema/errors.js'
import { tierOf, type RateLimitTier } from '../schema/principal.js'
import { parseRateLimits, type RateLimits, type WindowLimits } from '../schema/rate-limits.js'

export type RequestHook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>
/** A callback-style hook: `done()` to go on, `done(error)` to answer with the error. */
export type CallbackHook = (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void) => void

declare module 'fastify' {
  interface FastifyInstance {
    rateLimits: {
      /** RATE_LIMITS, parsed. */
      limits: RateLimits | 'off'
      /**
       * preHandler for routes that run after authentication: counts the call against the
       * principal's per-minute and per-hour limits (by tier) and answers 429 REQ_1103 beyond either.
       * Sets RateLimit-Limit / -Remaining / -Reset for the tighter window.
       */
      limitPrincipal: CallbackHook
      /**
       * The failed-authentication budget of the client address. `check` answers 429 REQ_1103 when
       * it is spent — call it before work a wrong token can make costly (a database lookup, a JWT
       * verification); `countFailure` records a presented token that was wrong.
       */
      addressBudget: {
        check: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
        countFailure: (request: FastifyRequest, error: unknown) => Promise<void>
      }
      /** Wraps an authentication hook in the address budget: checked before it runs, failures counted. */
      guardAuthentication: (authenticate: RequestHook) => RequestHook
    }
  }
}

type StoreCallback = (error: Error | null, result?: { current: number, ttl: number }) => void
type StoreMethod = 'incr' | 'read'

/** The store interface @fastify/rate-limit calls (incr, read for `{ increment: false }`, child per limiter). */
interface LimiterStore {
  incr: (key: string, callback: StoreCallback, timeWindow: number, max: number) => void
  read: (key: string, callback: StoreCallback, timeWindow: number, max: number) => void
  child: (options: object) => LimiterStore
}
interface StoreOptions { continueExceeding?: boolean, exponentialBackoff?: boolean, cache?: number }

// The library's own stores; the package ships them without type declarations.
const require = createRequire(import.meta.url)
const LocalStore = require('@fastify/rate-limit/store/LocalStore.js') as new (continueExceeding?: boolean, exponentialBackoff?: boolean, cache?: number) => LimiterStore
const RedisStore = require('@fastify/rate-limit/store/RedisStore.js') as new (continueExceeding: boolean, exponentialBackoff: boolean, redis: Redis, key: string) => LimiterStore

// Keys each in-memory limiter keeps (least recently used ones are dropped).
const LOCAL_KEYS = 20_000

/**
 * A store class for @fastify/rate-limit: counts in Redis (the library's RedisStore) while Redis is
 * ready, otherwise in this instance's memory (its LocalStore). A failed Redis command falls back
 * to memory for that request, so limits hold when Redis goes away — never unlimited, never
 * refusing everyone.
 */
export function failoverStoreClass (redis: FastifyInstance['redis'], keyPrefix: string, onRedisError: (error: Error) => void) {
  const shared = redis.client === null ? undefined : new RedisStore(false, false, redis.client, keyPrefix)
  return class FailoverStore implements LimiterStore {
    private readonly local: LimiterStore

    // The library passes its merged limiter options (typed by it as route options).
    constructor (options: object) {
      const { continueExceeding, exponentialBackoff, cache } = options as StoreOptions
      this.local = new LocalStore(continueExceeding, exponentialBackoff, cache ?? LOCAL_KEYS)
    }

    incr (key: string, callback: StoreCallback, timeWindow: number, max: number): void {
      this.count('incr', key, callback, timeWindow, max)
    }

    read (key: string, callback: StoreCallback, timeWindow: number, max: number): void {
      this.count('read', key, callback, timeWindow, max)
    }

    child (options: object): LimiterStore {
      return new FailoverStore(options)
    }

    private count (method: StoreMethod, key: string, callback: StoreCallback, timeWindow: number, max: number): void {
      if (shared === undefined || redis.status() !== 'ok') {
        this.local[method](key, callback, timeWindow, max)
        return
      }
      shared[method](key, (error, result) => {
        if (error === null) {
          callback(null, result)
          return
        }
        onRedisError(error)
        this.local[method](key, callback, timeWindow, max)
      }, timeWindow, max)
    }
  }
}

interface Window {
  field: keyof WindowLimits
  ms: number
  name: 'minute' | 'hour'
}
const WINDOWS: readonly Window[] = [
  { field: 'perMinute', ms: 60_000, name: 'minute' },
  { field: 'perHour', ms: 3_600_000, name: 'hour' }
]
const TIERS: readonly RateLimitTier[] = ['admin', 'writer', 'reader', 'default']
// Presented tokens that turned out wrong. A request with no token at all (AUTH_1001) is how every
// OAuth client starts and costs no lookup; counting it would let one client behind a shared
// address (Claude.ai's, say) lock out all the others.
const AUTH_FAILURES: ReadonlySet<ErrorCode> = new Set(['AUTH_1002', 'AUTH_1003'])

type Check = ReturnType<FastifyInstance['createRateLimit']>
type CheckResult = Awaited<ReturnType<Check>>
interface Limiter { check: Check, window: Window }
interface Outcome { window: Window, max: number, remaining: number, exceeded: boolean, ttl: number, retryAfter: number }
/** One window of a tier's principal limit, counted straight in the store (see limitPrincipal). */
interface Counter { window: Window, max: number, store: LimiterStore }

/** The outcomes of a request under each limiter that applies to it. */
function outcomes (limiters: readonly Limiter[], results: readonly CheckResult[]): Outcome[] {
  const list: Outcome[] = []
  results.forEach((result, index) => {
    if (result.isAllowed) return
    list.push({ window: limiters[index]!.window, max: result.max, remaining: result.remaining, exceeded: result.isExceeded, ttl: result.ttl, retryAfter: Math.max(1, result.ttlInSeconds) })
  })
  return list
}

/** The latest to clear of the outcomes that refuse the request (it may pass only when all have). */
function longestRefusal (list: readonly Outcome[], refuses: (outcome: Outcome) => boolean): Outcome | undefined {
  return list.filter(refuses).reduce<Outcome | undefined>((longest, outcome) => longest === undefined || outcome.ttl > longest.ttl ? outcome : longest, undefined)
}

// The IETF draft headers, as @fastify/rate-limit names them with enableDraftSpec.
function setHeaders (reply: FastifyReply, outcome: Outcome, refused: boolean): void {
  reply.header('ratelimit-limit', outcome.max)
  reply.header('ratelimit-remaining', refused ? 0 : outcome.remaining)
  reply.header('ratelimit-reset', outcome.retryAfter)
  if (refused) reply.header('retry-after', outcome.retryAfter)
}

/**
 * Rate limits (RATE_LIMITS): per principal by tier, per minute and per hour; failed
 * authentication per client address. Counters live in Redis when it is configured and reachable,
 * else in memory. Also registers @fastify/rate-limit (no global limit) with the same store, for
 * routes that want `config: { rateLimit }`.
 */
export default fp(async (fastify) => {
  const { limits, problems } = parseRateLimits(fastify.config.RATE_LIMITS)
  if (problems.length > 0) throw new Error(`Invalid configuration:\n  - ${problems.join('\n  - ')}`)

  const Store = failoverStoreClass(fastify.redis, fastify.config.RATE_LIMIT_KEY_PREFIX, (error) => fastify.log.debug({ reason: error.message }, 'Redis rate-limit command failed; counted in memory'))
  await fastify.register(rateLimit, {
    global: false,
    enableDraftSpec: true,
    store: Store,
    errorResponseBuilder: (_request, context) => new AppError('REQ_1103', `Rate limit of ${context.max} requests reached; retry in ${Math.max(1, Math.ceil(context.ttl / 1000))} s.`)
  })

  if (limits === 'off') {
    fastify.decorate('rateLimits', {
      limits,
      limitPrincipal: (_request: FastifyRequest, _reply: FastifyReply, done: (error?: Error) => void) => { done() },
      addressBudget: { check: async () => {}, countFailure: async () => {} },
      guardAuthentication: (authenticate: RequestHook) => authenticate
    })
    return
  }

  const limitersFor = (windows: WindowLimits, key: (request: FastifyRequest) => string): Limiter[] =>
    WINDOWS.flatMap((window) => {
      const max = windows[window.field]
      if (max === undefined) return []
      return [{ window, check: fastify.createRateLimit({ max, timeWindow: window.ms, keyGenerator: (request) => `${window.name}:${key(request)}` }) }]
    })

  const addressOf = (request: FastifyRequest) => normalizeIP(request.ip)
  // Every /mcp request passes the principal limits, so they are counted in the store directly: the
  // library's per-call machinery (async key, max and window lookups, result objects) was most of
  // their cost. The rarer failed-authentication budget keeps using createRateLimit.
  const principalCounters = new Map(TIERS.map((tier) => [tier, WINDOWS.flatMap((window): Counter[] => {
    const max = limits.tiers[tier][window.field]
    return max === undefined ? [] : [{ window, max, store: new Store({}) }]
  })]))

  /** Counts one request in one window; `answer` gets the outcome (the in-memory store answers at once, Redis later). */
  function count ({ window, max, store }: Counter, id: string, answer: (error: Error | null, outcome?: Outcome) => void): void {
    store.incr(`${window.name}:${id}`, (error, result) => {
      if (error !== null || result === undefined) {
        answer(error ?? new Error('rate-limit store returned nothing'))
        return
      }
      const { current, ttl } = result
      answer(null, { window, max, remaining: Math.max(0, max - current), exceeded: current > max, ttl, retryAfter: Math.max(1, Math.ceil(ttl / 1000)) })
    }, window.ms, max)
  }
  const failureLimiters = limitersFor(limits.ip, (request) => `auth-failures:${addressOf(request)}`)

  // Callback style, without a promise per window: on the in-memory store the whole check runs
  // synchronously on every /mcp request.
  function limitPrincipal (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void {
    const tier = request.principal === null ? 'default' : tierOf(request.principal)
    const counters = principalCounters.get(tier)!
    if (counters.length === 0) {
      done()
      return
    }
    const id = request.principal?.id ?? `address:${addressOf(request)}`
    // In the counters' order whatever order the answers come in (ties go to the shorter window).
    const list: Outcome[] = new Array<Outcome>(counters.length)
    let waiting = counters.length
    let failed = false
    const settle = (index: number, error: Error | null, outcome?: Outcome): void => {
      if (failed) return
      if (error !== null || outcome === undefined) {
        failed = true
        done(error ?? new Error('rate-limit store returned nothing'))
        return
      }
      list[index] = outcome
      if (--waiting > 0) return
      const refusal = longestRefusal(list, (candidate) => candidate.exceeded)
      if (refusal !== undefined) {
        setHeaders(reply, refusal, true)
        done(new AppError('REQ_1103', `Rate limit reached: ${refusal.max} requests per ${refusal.window.name} for ${tier} principals. Retry in ${refusal.retryAfter} s.`))
        return
      }
      let tightest = list[0]!
      for (const candidate of list) if (candidate.remaining < tightest.remaining) tightest = candidate
      setHeaders(reply, tightest, false)
      done()
    }
    counters.forEach((counter, index) => { count(counter, id, (error, outcome) => { settle(index, error, outcome) }) })
  }

  async function checkAddress (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (failureLimiters.length === 0) return
    const peeked = outcomes(failureLimiters, await Promise.all(failureLimiters.map(({ check }) => check(request, { increment: false }))))
    // A peek does not count this request: the budget is spent once `max` failures are recorded.
    const refusal = longestRefusal(peeked, (outcome) => outcome.remaining === 0)
    if (refusal !== undefined) {
      setHeaders(reply, refusal, true)
      throw new AppError('REQ_1103', `Too many failed authentication attempts from this address (limit ${refusal.max} per ${refusal.window.name}). Check the token, then retry in ${refusal.retryAfter} s.`)
    }
  }

  async function countFailure (request: FastifyRequest, error: unknown): Promise<void> {
    if (error instanceof AppError && AUTH_FAILURES.has(error.code)) {
      await Promise.all(failureLimiters.map(({ check }) => check(request)))
    }
  }

  function guardAuthentication (authenticate: RequestHook): RequestHook {
    if (failureLimiters.length === 0) return authenticate
    return async (request, reply) => {
      await checkAddress(request, reply)
      try {
        await authenticate(request, reply)
      } catch (error) {
        await countFailure(request, error)
        throw error
      }
    }
  }

  fastify.decorate('rateLimits', { limits, limitPrincipal, addressBudget: { check: checkAddress, countFailure }, guardAuthentication })
}, { name: 'rate-limit', dependencies: ['config', 'redis'] })
