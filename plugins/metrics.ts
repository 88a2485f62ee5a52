import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { builtInIssuerOf } from '../schema/config.js'
import { errorCatalogue } from '../schema/errors.js'
import { allTools } from '../tools/index.js'

/** The grant types the built-in authorization server's token endpoint serves. */
export const OAUTH_GRANT_TYPES = ['authorization_code', 'refresh_token'] as const
export type OAuthGrantType = typeof OAUTH_GRANT_TYPES[number]
/** The error codes of RFC 6749 §5.2 and RFC 8707 a token request may end with; any other counts as `other`. */
const OAUTH_TOKEN_ERRORS = ['invalid_request', 'invalid_client', 'invalid_grant', 'unauthorized_client', 'unsupported_grant_type', 'invalid_scope', 'invalid_target'] as const

/**
 * What the built-in authorization server counts (OAUTH_SERVER=on): plugins/oauth.ts and the consent
 * routes report, this plugin keeps the counters. Calls are no-ops while the server is off.
 */
export interface OAuthMetrics {
  /** A dynamic client registration (POST /oauth/register) accepted or refused. */
  registration: (outcome: 'registered' | 'refused') => void
  /** The owner's decision on the consent page. */
  authorization: (decision: 'granted' | 'denied') => void
  /** A wrong owner password or API token on the consent page. */
  signInFailure: (method: 'password' | 'api_token') => void
  /** Tokens issued by the token endpoint. */
  tokensIssued: (grantType: string) => void
  /** A token request refused, by its OAuth error code. */
  tokenRefused: (error: string) => void
  /** An authorization code or refresh token presented a second time: its grant was ended. */
  reuseDetected: (credential: OAuthGrantType) => void
  /** A grant ended by its client through the revocation endpoint. */
  revocation: () => void
  /** Where the gauges of registered clients and active grants read their numbers at each scrape. */
  countWith: (read: () => Promise<{ clients: number, grants: number }>) => void
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: {
      /** This app's own registry (not prom-client's global one), served by GET /metrics. */
      registry: Registry
      oauth: OAuthMetrics
    }
  }
}

type CounterChild = ReturnType<Counter['labels']>
type HistogramChild = ReturnType<Histogram['labels']>

/** What a prom-client 15.1 histogram keeps per label set (its `hashMap` values), as far as observe touches it. */
interface HistogramEntry { labels: Record<string, string | number>, sum: number, count: number, bucketValues: Record<number, number> }

/**
 * observe() for one label set of a one-label histogram, counted straight into the entry that
 * histogram.zero() made. prom-client's own child converts, validates and hashes its labels on
 * every call. Relies on prom-client's internals (hashMap, upperBounds; the version is pinned in
 * package.json); when they are not as expected it falls back to the library's observe.
 * test/metrics.test.ts checks the exposed buckets, sum and count.
 */
function directObserver<T extends string> (histogram: Histogram<T>, label: T, value: string): (seconds: number) => void {
  const internals = histogram as unknown as { hashMap?: Record<string, HistogramEntry>, upperBounds?: number[] }
  const bounds = internals.upperBounds
  const entry = Object.values(internals.hashMap ?? {}).find((candidate) => candidate.labels[label] === value && Object.keys(candidate.labels).length === 1)
  if (bounds === undefined || entry === undefined || bounds.some((bound) => typeof entry.bucketValues[bound] !== 'number')) return histogram.labels(value).observe
  return (seconds) => {
    if (!Number.isFinite(seconds)) return
    entry.sum += seconds
    entry.count += 1
    // Buckets hold the count of their own range; the exposition sums them (a value above the
    // last bound is in count, the +Inf bucket, only).
    for (const bound of bounds) {
      if (seconds <= bound) {
        (entry.bucketValues[bound] as number) += 1
        break
      }
    }
  }
}

const MCP_ROUTE = '/mcp'
const UNMATCHED_ROUTE = 'unmatched'
const UNKNOWN_TOOL = 'unknown'
const OTHER_OUTCOME = 'other'
const AUTH_FAILURE_CODES = ['AUTH_1001', 'AUTH_1002', 'AUTH_1003', 'AUTH_1004', 'AUTH_1005'] as const
const OUTCOMES: ReadonlySet<string> = new Set(['ok', ...Object.keys(errorCatalogue)])
// Seconds; tool calls and store operations are mostly milliseconds, with a tail under lock waits.
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

function hooksOf<T> (hooks: T | T[] | undefined): T[] {
  return hooks === undefined ? [] : Array.isArray(hooks) ? hooks : [hooks]
}

export interface MetricsPluginOptions {
  /**
   * Benchmarks only (bench/, never reachable from configuration): false registers no hook and
   * leaves the store untimed, so that what metrics cost per request can be measured. /metrics then
   * serves an empty registry.
   */
  enabled?: boolean
}

/**
 * Prometheus metrics on a registry of this app's own. The request path only increments: every
 * label value comes from a fixed list (route patterns, status codes, tool names, catalogue codes,
 * store operations), and the children for them are made once and kept.
 */
export default fp<MetricsPluginOptions>(async (fastify, options) => {
  const registry = new Registry()
  if (options.enabled === false) {
    fastify.decorate('metrics', { registry, oauth: oauthMetrics(registry, false, fastify.log) })
    return
  }
  collectDefaultMetrics({ register: registry })
  const registers = [registry]

  let openStreams = 0
  let storeCallsInFlight = 0
  const poolMax = fastify.db.sql.options.max

  const requests = new Counter({
    name: 'scm_http_requests_total',
    help: 'HTTP responses sent, by route pattern ("unmatched" when no route matched) and status code.',
    labelNames: ['route', 'status'] as const,
    registers
  })
  const toolCalls = new Counter({
    name: 'scm_tool_calls_total',
    help: 'MCP tool calls, by tool ("unknown" for a name the server does not offer) and outcome ("ok" or an error catalogue code).',
    labelNames: ['tool', 'outcome'] as const,
    registers
  })
  const toolDuration = new Histogram({
    name: 'scm_tool_call_duration_seconds',
    help: 'Time from receiving a tools/call request to sending its answer, by tool.',
    labelNames: ['tool'] as const,
    buckets: LATENCY_BUCKETS,
    registers
  })
  const rateLimited = new Counter({
    name: 'scm_rate_limited_total',
    help: 'Requests refused with REQ_1103 (429), by limiter: "principal" (per-principal tier limits) or "address" (failed-authentication budget of a client address).',
    labelNames: ['limiter'] as const,
    registers
  })
  const authFailures = new Counter({
    name: 'scm_auth_failures_total',
    help: 'Requests refused by authentication or authorization, by catalogue code (AUTH_1001 missing token … AUTH_1005 Origin/Host not allowed); AUTH_1004 includes tool calls refused for scope.',
    labelNames: ['code'] as const,
    registers
  })
  registry.registerMetric(new Gauge({
    name: 'scm_mcp_open_streams',
    help: 'Authenticated MCP requests in flight on /mcp: POSTs awaiting their answer, and open live-update streams (scm_live_open_streams counts those alone).',
    registers: [],
    collect () { this.set(openStreams) }
  }))
  registry.registerMetric(new Gauge({
    name: 'scm_db_pool_max',
    help: 'Connections the database pool may open (DB_POOL_MAX; 4 with the embedded database).',
    registers: [],
    collect () { this.set(poolMax) }
  }))
  registry.registerMetric(new Gauge({
    name: 'scm_db_operations_in_flight',
    help: 'Context-store operations running now. Each holds or waits for a pool connection; postgres.js does not expose its own busy/queued counts, so more operations than scm_db_pool_max means some wait.',
    registers: [],
    collect () { this.set(storeCallsInFlight) }
  }))
  const storeDuration = new Histogram({
    name: 'scm_db_operation_duration_seconds',
    help: 'Duration of context-store operations (one or a few SQL statements, or one transaction), including the wait for a pool connection, by operation.',
    labelNames: ['operation'] as const,
    buckets: LATENCY_BUCKETS,
    registers
  })

  // Series for the fixed label values exist from the start, so that they read 0 rather than absent.
  function counterChild<T extends string> (counter: Counter<T>, ...values: string[]): CounterChild {
    const child = counter.labels(...values)
    child.inc(0)
    return child
  }
  function histogramChild<T extends string> (histogram: Histogram<T>, label: T, value: string): HistogramChild {
    histogram.zero({ [label]: value } as Partial<Record<T, string>>)
    return { ...histogram.labels(value), observe: directObserver(histogram, label, value) }
  }

  interface ToolMetrics { duration: HistogramChild, outcomes: Map<string, CounterChild> }
  const toolMetricsFor = (tool: string): ToolMetrics => ({
    duration: histogramChild(toolDuration, 'tool', tool),
    outcomes: new Map(tool === UNKNOWN_TOOL ? [] : [['ok', counterChild(toolCalls, tool, 'ok')]])
  })
  const toolMetrics = new Map(allTools.map((tool) => [tool.name, toolMetricsFor(tool.name)]))
  const unknownTool = toolMetricsFor(UNKNOWN_TOOL)
  const authFailureByCode = new Map(AUTH_FAILURE_CODES.map((code) => [code as string, counterChild(authFailures, code)]))
  const rateLimitedPrincipal = counterChild(rateLimited, 'principal')
  const rateLimitedAddress = counterChild(rateLimited, 'address')
  const requestsByRoute = new Map<string, Map<number, CounterChild>>()
  function statusCountersOf (route: string): Map<number, CounterChild> {
    let byStatus = requestsByRoute.get(route)
    if (byStatus === undefined) requestsByRoute.set(route, byStatus = new Map())
    return byStatus
  }
  function countResponse (route: string, byStatus: Map<number, CounterChild>, status: number): void {
    let child = byStatus.get(status)
    if (child === undefined) byStatus.set(status, child = requests.labels(route, String(status)))
    child.inc()
  }

  function countToolCall (tool: string, outcome: string | null, seconds: number): void {
    const metrics = toolMetrics.get(tool) ?? unknownTool
    const label = outcome !== null && OUTCOMES.has(outcome) ? outcome : OTHER_OUTCOME
    let child = metrics.outcomes.get(label)
    if (child === undefined) {
      const toolLabel = metrics === unknownTool ? UNKNOWN_TOOL : tool
      metrics.outcomes.set(label, child = toolCalls.labels(toolLabel, label))
    }
    child.inc()
    metrics.duration.observe(seconds)
  }

  function streamClosed (): void {
    openStreams--
  }
  function openStream (_request: FastifyRequest, reply: FastifyReply, done: () => void): void {
    openStreams++
    // 'close' comes exactly once per response, also when the client goes away before the answer
    // (when onResponse never runs).
    reply.raw.on('close', streamClosed)
    done()
  }

  // Each route gets its own hooks with its label resolved here, at registration: reading
  // request.routeOptions builds a new object on every access.
  fastify.addHook('onRoute', (route) => {
    const url = route.url
    const byStatus = statusCountersOf(url)
    const counted = (_request: FastifyRequest, reply: FastifyReply, done: () => void): void => {
      countResponse(url, byStatus, reply.statusCode)
      done()
    }
    route.onResponse = [counted, ...hooksOf(route.onResponse)]
    if (url === MCP_ROUTE) route.onRequest = [openStream, ...hooksOf(route.onRequest)]
  })

  const unmatched = statusCountersOf(UNMATCHED_ROUTE)
  fastify.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
    if (request.is404) countResponse(UNMATCHED_ROUTE, unmatched, reply.statusCode)
    const record = request.callRecord
    if (record !== null) {
      if (record.tool !== null) countToolCall(record.tool, record.outcome, reply.elapsedTime / 1000)
      if (record.outcome === 'REQ_1103') (request.principal === null ? rateLimitedAddress : rateLimitedPrincipal).inc()
      else if (record.outcome !== null) authFailureByCode.get(record.outcome)?.inc()
    }
    done()
  })

  // Wraps the stores that the db plugin decorated, so that every plugin and route registered after
  // this one (auth, mcp, health) times its database work without the stores knowing about metrics.
  // Typed so that a store method that is not async fails to compile rather than be made async here.
  function timedStore<S extends Record<keyof S, (...args: never[]) => Promise<unknown>>> (store: S): S {
    const timed: Record<string, (...args: unknown[]) => Promise<unknown>> = {}
    for (const [operation, method] of Object.entries<(...args: never[]) => Promise<unknown>>(store)) {
      const run = method as (...args: unknown[]) => Promise<unknown>
      const duration = histogramChild(storeDuration, 'operation', operation)
      // Not an async function: one promise (then) per call rather than an async frame and its await.
      timed[operation] = (...args) => {
        const start = performance.now()
        storeCallsInFlight++
        const ended = (): void => {
          storeCallsInFlight--
          duration.observe((performance.now() - start) / 1000)
        }
        let pending: Promise<unknown>
        try {
          pending = run(...args)
        } catch (error) {
          ended()
          return Promise.reject(error)
        }
        return pending.then((result) => { ended(); return result }, (error: unknown) => { ended(); throw error })
      }
    }
    return timed as unknown as S
  }
  fastify.db.store = timedStore(fastify.db.store)
  fastify.db.tokens = timedStore(fastify.db.tokens)

  fastify.decorate('metrics', { registry, oauth: oauthMetrics(registry, builtInIssuerOf(fastify.config) !== undefined, fastify.log) })
}, { name: 'metrics', dependencies: ['config', 'db'] })

/** The built-in authorization server's counters and gauges; none are registered while it is off. */
function oauthMetrics (registry: Registry, enabled: boolean, log: { warn: (object: Record<string, unknown>, message: string) => void }): OAuthMetrics {
  const ignore = (): void => {}
  if (!enabled) {
    return { registration: ignore, authorization: ignore, signInFailure: ignore, tokensIssued: ignore, tokenRefused: ignore, reuseDetected: ignore, revocation: ignore, countWith: ignore }
  }
  const registers = [registry]
  const labelled = <T extends string>(name: string, help: string, label: T, values: readonly string[]): Map<string, CounterChild> => {
    const counter = new Counter({ name, help, labelNames: [label], registers })
    return new Map(values.map((value) => {
      const child = counter.labels(value)
      child.inc(0)
      return [value, child]
    }))
  }
  const registrations = labelled('scm_oauth_registrations_total', 'Dynamic client registrations (POST /oauth/register), by outcome: "registered", or "refused" (invalid metadata such as a redirect URI the policy forbids).', 'outcome', ['registered', 'refused'])
  const authorizations = labelled('scm_oauth_authorizations_total', 'The owner\'s decisions on the consent page: "granted" (a grant was made) or "denied".', 'decision', ['granted', 'denied'])
  const signInFailures = labelled('scm_oauth_sign_in_failures_total', 'Wrong credentials on the consent page, by what was tried: "password" (the owner password) or "api_token".', 'method', ['password', 'api_token'])
  const tokensIssued = labelled('scm_oauth_tokens_issued_total', 'Successful token requests (an access token, and a new refresh token), by grant type.', 'grant_type', OAUTH_GRANT_TYPES)
  const tokenErrors = labelled('scm_oauth_token_errors_total', 'Refused token requests, by OAuth error code ("other" for any code not listed); invalid_client is what a forgotten client gets before it registers again.', 'error', [...OAUTH_TOKEN_ERRORS, 'other'])
  const reuse = labelled('scm_oauth_reuse_detected_total', 'An authorization code or a refresh token presented a second time (replay, or a stolen copy): its grant was ended, refresh tokens and access tokens alike.', 'credential', OAUTH_GRANT_TYPES)
  const revocations = new Counter({ name: 'scm_oauth_revocations_total', help: 'Grants ended by their client through the revocation endpoint (POST /oauth/revoke with a refresh token). The CLI\'s revocations run in another process and are not counted here.', registers })
  revocations.inc(0)

  let readCounts: (() => Promise<{ clients: number, grants: number }>) | undefined
  // An unreadable database reads as NaN (unknown) rather than failing the whole scrape.
  const countsNow = async (): Promise<{ clients: number, grants: number } | undefined> => {
    try {
      return await readCounts?.()
    } catch (error) {
      log.warn({ err: error }, 'metrics: could not count the authorization server\'s clients and grants')
      return undefined
    }
  }
  registry.registerMetric(new Gauge({
    name: 'scm_oauth_clients',
    help: 'Clients registered with the built-in authorization server (Client ID Metadata Document clients are not stored and not counted), read from the database at each scrape.',
    registers: [],
    async collect () { this.set((await countsNow())?.clients ?? Number.NaN) }
  }))
  registry.registerMetric(new Gauge({
    name: 'scm_oauth_active_grants',
    help: 'Grants of the built-in authorization server that have not expired or been revoked (connections the owner allowed), read from the database at each scrape.',
    registers: [],
    async collect () { this.set((await countsNow())?.grants ?? Number.NaN) }
  }))

  return {
    registration: (outcome) => registrations.get(outcome)?.inc(),
    authorization: (decision) => authorizations.get(decision)?.inc(),
    signInFailure: (method) => signInFailures.get(method)?.inc(),
    tokensIssued: (grantType) => tokensIssued.get(grantType)?.inc(),
    tokenRefused: (error) => (tokenErrors.get(error) ?? tokenErrors.get('other'))?.inc(),
    reuseDetected: (credential) => reuse.get(credential)?.inc(),
    revocation: () => revocations.inc(),
    countWith: (read) => { readCounts = read }
  }
}
