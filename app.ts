import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import pino from 'pino'
import configPlugin from './plugins/config.js'
import dbPlugin from './plugins/db.js'
import expiryPlugin from './plugins/expiry.js'
import hostCheckPlugin from './plugins/host-check.js'
import authPlugin from './plugins/auth.js'
import oauthPlugin from './plugins/oauth.js'
import redisPlugin from './plugins/redis.js'
import rateLimitPlugin from './plugins/rate-limit.js'
import corsPlugin from './plugins/cors.js'
import sensiblePlugin from './plugins/sensible.js'
import livePlugin from './plugins/live.js'
import gatewayPlugin from './plugins/gateway.js'
import mcpPlugin from './plugins/mcp.js'
import metricsPlugin from './plugins/metrics.js'
import healthRoutes from './routes/health.js'
import wellKnownRoutes from './routes/well-known.js'
import mcpRoutes from './routes/mcp.js'
import metricsRoutes from './routes/metrics.js'
import oauthRoutes from './routes/oauth.js'
import type { Config } from './schema/config.js'
import { AppError } from './schema/errors.js'
import { toAppError } from './db/errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** `closing` turns true when shutdown begins: routes then refuse new work with SRV_9002. */
    lifecycle: { closing: boolean }
  }
}

export interface BuildOptions {
  logger?: FastifyServerOptions['logger']
  /** Benchmarks and scripts/conformance-server.ts only: see AuthPluginOptions. Not settable from the environment. */
  withoutAuthentication?: boolean
  /** Benchmarks only: see MetricsPluginOptions. Not settable from the environment. */
  withoutMetrics?: boolean
  /** Tests only: how the built-in authorization server fetches Client ID Metadata Documents (see OAuthPluginOptions). */
  oauthFetch?: typeof globalThis.fetch
}

/** Secrets and stored content never reach the log (database errors carry their query parameters). */
export const LOG_REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'headers.authorization',
  'authorization',
  'token',
  'content',
  '*.content',
  'arguments.content',
  'err.parameters',
  'err.args',
  'err.detail',
  'err.where'
]

export type LogDestination = ReturnType<typeof pino.destination>

// Log lines are written in batches of up to this many bytes: one write(2) per request line was
// about 10% of the hot path's CPU. A line waits at most LOG_FLUSH_MS for the rest of its batch.
const LOG_BATCH_BYTES = 8192
const LOG_FLUSH_MS = 200

/**
 * Standard output for JSON log lines, written in batches (synchronously, so a batch is never half
 * written at exit). Whoever owns the process must call flushSync() when it exits (server.ts does
 * on 'exit', which every way out of the process passes, crashes included).
 */
export function logDestination (fd = 1): LogDestination {
  return pino.destination({ dest: fd, sync: true, minLength: LOG_BATCH_BYTES, periodicFlush: LOG_FLUSH_MS })
}

/**
 * pino options: JSON lines (into `destination` when given, else written one by one to stdout),
 * pretty only on a terminal, secrets redacted.
 */
export function loggerOptions (level: Config['LOG_LEVEL'], pretty: boolean, destination?: LogDestination): Exclude<FastifyServerOptions['logger'], boolean | undefined> {
  return {
    level,
    redact: { paths: LOG_REDACT_PATHS, censor: '[redacted]' },
    ...(pretty
      ? { transport: { target: 'pino-pretty', options: { translateTime: 'HH:MM:ss', ignore: 'pid,hostname' } } }
      : destination !== undefined && { stream: destination })
  }
}

/** Fastify's own errors, mapped to the catalogue. */
function appErrorOf (error: FastifyError): AppError {
  if (error instanceof AppError) return error
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new AppError('REQ_1102', 'Request body too large. Content is limited by MAX_CONTENT_BYTES; split large content across several keys.')
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new AppError('REQ_1101', 'Content-Type must be application/json.', undefined, 415)
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new AppError('REQ_1101', 'The request body is empty: send one JSON-RPC message.')
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new AppError('REQ_1101', 'Content-Length does not match the body.')
  }
  if (error.validation !== undefined) return new AppError('REQ_1101', `Invalid request: ${error.message}`)
  if (error instanceof SyntaxError || error.code === 'FST_ERR_CTP_INVALID_JSON_BODY') {
    return new AppError('REQ_1101', 'The request body is not valid JSON.')
  }
  if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
    return new AppError('REQ_1101', error.message, undefined, error.statusCode)
  }
  return toAppError(error)
}

// pino's numeric levels, to tell whether a line would be written before building it.
const LEVEL_VALUES: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity }

type LogMethod = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
type ChildLoggerArguments = Parameters<FastifyBaseLogger['child']>

/**
 * request.log, made when something first logs through it. Most requests log nothing but their
 * request line, which is written without it (see the onResponse hook); Fastify's own child logger
 * per request (it passes options, so pino takes its slow path: formatters and serializers copied)
 * cost about 3% of the hot path's CPU.
 */
class LazyRequestLogger implements FastifyBaseLogger {
  private made: FastifyBaseLogger | undefined
  constructor (private readonly parent: FastifyBaseLogger, private readonly bindings: ChildLoggerArguments[0], private readonly options: ChildLoggerArguments[1]) {}

  private get logger (): FastifyBaseLogger {
    // Without route-level log options, pino's fast path (no options argument) gives the same logger.
    this.made ??= this.options === undefined || Object.keys(this.options).length === 0
      ? this.parent.child(this.bindings)
      : this.parent.child(this.bindings, this.options)
    return this.made
  }

  get level (): string { return this.made?.level ?? this.options?.level ?? this.parent.level }
  set level (level: string) { this.logger.level = level }
  child (...args: ChildLoggerArguments): FastifyBaseLogger { return this.logger.child(...args) }
  // Methods on the prototype, not arrow-function fields: no closures made per request.
  fatal (...args: unknown[]): void { this.log('fatal', args) }
  error (...args: unknown[]): void { this.log('error', args) }
  warn (...args: unknown[]): void { this.log('warn', args) }
  info (...args: unknown[]): void { this.log('info', args) }
  debug (...args: unknown[]): void { this.log('debug', args) }
  trace (...args: unknown[]): void { this.log('trace', args) }
  silent (): void {}

  private log (method: LogMethod, args: unknown[]): void {
    const logger = this.logger
    ;(logger[method] as (...values: unknown[]) => void).apply(logger, args)
  }
}

const FORWARDED_REQUEST_ID = /^[\w.:-]{1,128}$/

/** A proxy's X-Request-Id when it is a sane token (it reaches every log line), else a new UUID. */
function requestIdOf (request: { headers: Record<string, string | string[] | undefined> }): string {
  const forwarded = request.headers['x-request-id']
  return typeof forwarded === 'string' && FORWARDED_REQUEST_ID.test(forwarded) ? forwarded : crypto.randomUUID()
}

/**
 * TRUST_PROXY as Fastify's trustProxy: request.ip is then the client address the trusted proxies
 * forwarded. A number trusts that many hops (2 on Fly.io), so a client cannot pick its
 * own address by sending X-Forwarded-For.
 */
function trustProxyOf (value: Config['TRUST_PROXY']): boolean | string | ((address: string, hop: number) => boolean) {
  if (value === 'true' || value === 'false') return value === 'true'
  if (!/^\d+$/.test(value)) return value
  const hops = Number(value)
  return (_address, hop) => hop < hops
}

export const HEADERS_TIMEOUT_MS = 10_000
export const REQUEST_TIMEOUT_MS = 30_000
export const KEEP_ALIVE_TIMEOUT_MS = 72_000
export const CONNECTIONS_CHECK_MS = 2_000
/** Open connections one instance accepts; beyond it new ones are closed at once (the process has file descriptors for more). */
export const MAX_CONNECTIONS = 4096

/** Builds the application: plugins first, then routes. No listen; server.ts and the tests do that. */
export async function buildApp (config: Config, options: BuildOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? false,
    return503OnClosing: false,
    // One line per request instead (below): principal, tool, outcome and duration included.
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: 'idle',
    // Slow or stuck clients (README "HTTP limits"): a request's headers must arrive within
    // HEADERS_TIMEOUT_MS and the whole request within REQUEST_TIMEOUT_MS (Fastify's default, 0,
    // would let a client trickling its body hold a connection for ever); Node checks every
    // CONNECTIONS_CHECK_MS. An idle keep-alive connection is closed after KEEP_ALIVE_TIMEOUT_MS,
    // longer than the idle timeouts of the usual load balancers. Answers are not bounded here:
    // a call's time is bounded by the database's (DB_STATEMENT_TIMEOUT_MS).
    requestTimeout: REQUEST_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    http: { headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: CONNECTIONS_CHECK_MS },
    // The db plugin may retry an unreachable database for DB_CONNECT_TIMEOUT_MS, then migrate;
    // Fastify's default 10 s plugin timeout would cut that short with a less useful error.
    pluginTimeout: config.DB_CONNECT_TIMEOUT_MS + 60_000,
    requestIdHeader: false,
    genReqId: requestIdOf,
    childLoggerFactory: (logger, bindings, options) => new LazyRequestLogger(logger, bindings, options),
    trustProxy: trustProxyOf(config.TRUST_PROXY)
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.server.maxConnections = MAX_CONNECTIONS

  // /mcp takes JSON only; without this, Fastify's built-in text/plain parser would let other bodies through.
  app.removeContentTypeParser('text/plain')

  const lifecycle = { closing: false }
  app.decorate('lifecycle', lifecycle)
  app.addHook('preClose', async () => {
    lifecycle.closing = true
    // close() waits for open connections; a keep-alive connection whose call was in flight when
    // close began becomes idle only after its answer, so keep reaping idle ones until all are gone.
    const reaper = setInterval(() => app.server.closeIdleConnections(), 100)
    app.server.once('close', () => clearInterval(reaper))
  })

  // The request line holds fixed fields, none of them a secret (no redaction path names one), so it
  // is written by a logger without the redaction pass (measured: 2% of the hot path's CPU, the
  // wildcard paths inspecting every field), and with the request id as a field of its own rather
  // than through request.log (LazyRequestLogger): the line reads as a request.log line would.
  const requestLines = app.log.child({}, { redact: [] })
  // Callback style: an async hook costs a promise per request.
  app.addHook('onResponse', (request, reply, done) => {
    const level = request.url === '/health' || request.url === '/ready' ? 'debug' : 'info'
    // Checked first: building the line (routeOptions makes a new object per access) costs even when it is dropped.
    if ((LEVEL_VALUES[request.log.level] ?? 0) > (level === 'info' ? 30 : 20)) {
      done()
      return
    }
    requestLines[level]({
      reqId: request.id,
      method: request.method,
      url: request.routeOptions.url ?? request.url.split('?')[0],
      statusCode: reply.statusCode,
      principal: request.principal?.id ?? null,
      tool: request.callRecord?.tool ?? null,
      outcome: request.callRecord?.outcome ?? (reply.statusCode < 400 ? 'ok' : null),
      ms: Math.round(reply.elapsedTime * 10) / 10
    }, 'request completed')
    done()
  })

  app.setErrorHandler((error: FastifyError, request, reply) => {
    const appError = appErrorOf(error)
    request.callRecord ??= { tool: null, outcome: null }
    request.callRecord.outcome = appError.code
    const status = appError.statusCode
    if (status >= 500) request.log.error({ err: error, code: appError.code }, 'request failed')
    else request.log.info({ code: appError.code, reason: appError.message }, 'request refused')
    if (status === 503 && !reply.hasHeader('retry-after')) reply.header('retry-after', '2')
    return reply.code(status).send(appError.toBody())
  })

  app.setNotFoundHandler((request, reply) => {
    return reply.code(404).send({ error: { code: 'REQ_1101', message: `No route ${request.method} ${request.url.split('?')[0]}. The MCP endpoint is POST /mcp.` } })
  })

  try {
    await app.register(configPlugin, { config })
    await app.register(sensiblePlugin)
    await app.register(dbPlugin)
    // Right after db and before every plugin that adds routes (cors) or captures the store it times.
    await app.register(metricsPlugin, { enabled: options.withoutMetrics !== true })
    // Before every other request hook (CORS, rate limits, authentication): a foreign Host or Origin costs nothing more.
    await app.register(hostCheckPlugin)
    await app.register(corsPlugin)
    await app.register(expiryPlugin)
    await app.register(redisPlugin)
    await app.register(rateLimitPlugin)
    await app.register(oauthPlugin, options.oauthFetch === undefined ? {} : { fetch: options.oauthFetch })
    await app.register(authPlugin, { withoutAuthentication: options.withoutAuthentication === true })
    await app.register(livePlugin)
    await app.register(gatewayPlugin)
    await app.register(mcpPlugin)

    await app.register(healthRoutes)
    await app.register(wellKnownRoutes)
    await app.register(mcpRoutes)
    await app.register(metricsRoutes)
    await app.register(oauthRoutes)
  } catch (error) {
    // Close what the plugins that did load opened (the pool, the embedded database and its lock).
    await app.close().catch(() => {})
    throw error
  }
  return app
}
