import { isIPv4 } from 'node:net'
import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { rateLimitsProblems } from './rate-limits.js'
import { jwtConfigProblems } from '../auth/roles.js'
import { loadUpstreams, type UpstreamConfig } from '../gateway/config.js'

/** The most clock skew a JWT's exp may be given (JWT_CLOCK_SKEW_SECONDS); revocations outlive exp by this much. */
export const MAX_JWT_CLOCK_SKEW_SECONDS = 300

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** Every environment variable the server reads (design.md §7). Defaults make `npm start` work with nothing set. */
export const ConfigSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  HOST: Type.String({ minLength: 1, default: '127.0.0.1' }),
  PUBLIC_URL: Type.Optional(Type.String({ pattern: '^https?://[^\\s]+$', description: 'External base URL, e.g. https://ctx.example.com' })),
  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://', description: 'PostgreSQL URL; unset runs the embedded database' })),
  DATA_DIR: Type.String({ minLength: 1, default: './data' }),
  DB_POOL_MAX: Type.Integer({ minimum: 1, maximum: 100, default: 10 }),
  DB_CONNECT_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 600000, default: 15000 }),
  DB_STATEMENT_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 600000, default: 30000, description: 'The database cancels a statement that runs longer (statement_timeout), and a connection whose server stays silent this long plus a second while owing an answer is dropped; the request gets DEP_3001. Bounds migrations and re-indexing too: raise it for a very large store' }),
  DB_SSL_CA: Type.Optional(Type.String({ minLength: 1, description: "CA certificate for the database server's TLS certificate: a PEM file path, or the PEM itself" })),
  DB_SSL_VERIFY: Type.Union([Type.Literal('true'), Type.Literal('false')], { default: 'true', description: 'false turns database TLS certificate verification off (logged as a warning at every start)' }),
  AUTH_TOKEN: Type.Optional(Type.String({ minLength: 32, description: 'Static bearer token, at least 32 characters' })),
  METRICS_TOKEN: Type.Optional(Type.String({ minLength: 32, description: 'Bearer token GET /metrics requires, at least 32 characters; unset leaves /metrics open' })),
  CORS_ORIGINS: Type.String({ default: '', description: 'Comma-separated origins allowed to call /mcp from a browser' }),
  ALLOWED_HOSTS: Type.String({ default: '', description: 'Comma-separated Host names accepted besides loopback and PUBLIC_URL' }),
  TRUST_PROXY: Type.Union([Type.Literal('false'), Type.Literal('true'), Type.String({ pattern: '^[0-9a-fA-F.:/, ]+$' })], { default: 'false', description: 'Whether to trust X-Forwarded-For: false, true (any proxy), a number of proxy hops (2 on Fly.io, whose proxy also appends the app address), or a comma-separated list of proxy addresses/CIDRs' }),
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://', description: 'Redis for shared rate-limit counters and the revocation cache; unset keeps both in process' })),
  RATE_LIMIT_KEY_PREFIX: Type.String({ pattern: '^[A-Za-z0-9:_.-]{1,64}$', default: 'scm:rate:', description: 'Prefix of the rate-limit counters in Redis: deployments (or test runs) sharing one Redis keep their counters apart with their own' }),
  RATE_LIMITS: Type.String({ default: 'admin=20000/h 1200/m; writer=10000/h 600/m; reader=5000/h 300/m; default=1000/h 60/m; ip=300/m', description: 'Per-principal limits by tier (hourly and per-minute burst), and failed-authentication attempts per client address; "off" turns limiting off' }),
  OIDC_ISSUER: Type.Optional(Type.String({ pattern: '^https?://[^\\s]+$', description: 'Issuer whose JWTs are accepted (iss claim); enables the OIDC/JWT resource server' })),
  JWKS_URL: Type.Optional(Type.String({ pattern: '^https?://[^\\s]+$', description: "The issuer's JSON Web Key Set; unset discovers it from OIDC_ISSUER/.well-known/openid-configuration" })),
  JWT_AUDIENCE: Type.Optional(Type.String({ minLength: 1, description: 'Required aud claim; defaults to PUBLIC_URL/mcp' })),
  JWT_ROLE_MAP: Type.String({ default: '{}', description: 'JSON: role name -> { scopes: [...], namespace? }; roles come from realm_access.roles and resource_access.<client>.roles' }),
  JWT_ROLE_CLIENT: Type.Optional(Type.String({ minLength: 1, maxLength: 255, description: "The client whose resource_access.<client>.roles count; unset: the token's azp" })),
  JWT_CLOCK_SKEW_SECONDS: Type.Integer({ minimum: 0, maximum: MAX_JWT_CLOCK_SKEW_SECONDS, default: 30 }),
  JWT_TRUST_SCOPE_CLAIM: Type.Union([Type.Literal('false'), Type.Literal('true')], { default: 'false', description: "true: this server's scope names in a JWT's scope/scp claim grant those scopes in the default namespace (never context:admin); false: only JWT_ROLE_MAP roles grant anything" }),
  OAUTH_SERVER: Type.Union([Type.Literal('off'), Type.Literal('on')], { default: 'off', description: 'on: this server is its own OAuth 2.1 authorization server (for Claude.ai connectors), at PUBLIC_URL; needs PUBLIC_URL and no OIDC_ISSUER' }),
  OAUTH_ACCESS_TOKEN_SECONDS: Type.Integer({ minimum: 60, maximum: 86400, default: 900, description: 'Lifetime of the access tokens the built-in authorization server issues; clients refresh them' }),
  OAUTH_REFRESH_TOKEN_DAYS: Type.Integer({ minimum: 1, maximum: 365, default: 30, description: 'How long a connection signed in through the built-in authorization server lasts unused (each refresh rotates the refresh token); at most a year in all' }),
  REVOCATION_FAIL_MODE: Type.Union([Type.Literal('closed'), Type.Literal('open'), Type.Literal('reads-open')], { default: 'reads-open', description: 'What a JWT request gets when neither Redis nor PostgreSQL can say whether its jti is revoked' }),
  REVOCATION_FAIL_OPEN_SECONDS: Type.Integer({ minimum: 0, maximum: 3600, default: 300, description: 'With REVOCATION_FAIL_MODE open or reads-open: how long after the last successful check requests are let through' }),
  AUTH_CACHE_SECONDS: Type.Integer({ minimum: 0, maximum: 300, default: 5, description: 'How long an instance trusts a positive token lookup or a "not revoked" answer; bounds how fast revocation reaches every instance' }),
  MAX_CONTENT_BYTES: Type.Integer({ minimum: 1024, maximum: 16 * 1024 * 1024, default: 100 * 1024 }),
  SHUTDOWN_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 600000, default: 30000 }),
  SSE_HEARTBEAT_MS: Type.Integer({ minimum: 1000, maximum: 600000, default: 15000, description: 'How often every open SSE stream gets a heartbeat comment, so that proxies with an idle timeout keep it open' }),
  SSE_RETRY_MS: Type.Integer({ minimum: 100, maximum: 600000, default: 3000, description: 'The retry: every SSE stream announces: how long a client waits before it reconnects' }),
  MCP_SESSIONS_MAX: Type.Integer({ minimum: 0, maximum: 1000000, default: 10000, description: 'Sessions (2025-era clients, for live updates) one instance holds at most; past it, clients are served without a session' }),
  MCP_SESSIONS_PER_PRINCIPAL: Type.Integer({ minimum: 1, maximum: 10000, default: 20, description: "Sessions one principal holds at most on one instance; a new one replaces that principal's longest-idle session without a stream" }),
  MCP_SESSION_IDLE_SECONDS: Type.Integer({ minimum: 10, maximum: 604800, default: 3600, description: 'A session without an open stream and without requests for this long is forgotten (its client gets 404 and initializes again)' }),
  FLY_MACHINE_ID: Type.Optional(Type.String({ pattern: '^[a-z0-9]{1,64}$', description: "Set by Fly.io on each machine: session ids then name their machine, and a session's stream or subscription that reaches another machine is replayed to it (fly-replay)" })),
  MCP_SUBSCRIPTIONS_PER_SESSION: Type.Integer({ minimum: 1, maximum: 100000, default: 1000, description: 'Resources one session may subscribe to' }),
  SEARCH_LANGUAGE: Type.String({ pattern: '^[a-z][a-z0-9_]{0,62}$', default: 'simple', description: 'PostgreSQL text search configuration for search_context: simple (no stemming, any language, code), or english, german, french, ... (stemming and stop words of that language); changing it re-indexes every entry at the next start' }),
  EXPIRY_SWEEP_SECONDS: Type.Integer({ minimum: 0, maximum: 86400, default: 60, description: 'How often each instance deletes entries whose TTL has passed (their history stays); 0 turns the sweep off' }),
  UPSTREAMS_FILE: Type.Optional(Type.String({ minLength: 1, description: 'JSON file of upstream MCP servers to federate (the gateway); unset: no gateway' })),
  GATEWAY_IDENTITY_KEY: Type.Optional(Type.String({ minLength: 32, description: 'HMAC key (at least 32 characters) signing the short-lived principal JWT sent to upstreams that ask for one (their `identity` setting)' })),
  APPROVAL_MODE: Type.Optional(Type.Union([Type.Literal('in-band'), Type.Literal('out-of-band')], { description: "How a person approves calls that need it, unless an upstream's `approval` says otherwise: in-band (the client asks its user: elicitation / input-required) or out-of-band (`cli approvals`); default: in-band on a loopback HOST without a public PUBLIC_URL, else out-of-band" })),
  APPROVAL_EXPIRES_SECONDS: Type.Integer({ minimum: 10, maximum: 604800, default: 3600, description: 'How long a pending approval waits for a decision before it expires (the call is then cancelled)' }),
  GATEWAY_INPUT_WAIT_SECONDS: Type.Integer({ minimum: 1, maximum: 3600, default: 600, description: 'How long an upstream call that asked a 2026-07-28 client something (elicitation, sampling) is held for its answer before it is cancelled upstream' }),
  APPROVE_CONTEXT_TOOLS: Type.String({ default: '', pattern: '^(|(delete_context|restore_context)(,(delete_context|restore_context))?)$', description: 'Comma-separated context tools that need the same approval as destructive upstream tools: delete_context, restore_context' }),
  LOG_LEVEL: Type.Union(LOG_LEVELS.map((level) => Type.Literal(level)), { default: 'info' })
}, { additionalProperties: false })

export type Config = Static<typeof ConfigSchema> & {
  /** The upstreams UPSTREAMS_FILE names, validated at start (absent when the gateway is off). */
  upstreams?: UpstreamConfig[]
}

export class ConfigError extends Error {
  readonly problems: string[]
  constructor (problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

const SECRET_KEYS = new Set(['AUTH_TOKEN', 'DATABASE_URL', 'REDIS_URL', 'METRICS_TOKEN', 'GATEWAY_IDENTITY_KEY'])

/**
 * Reads the known variables from `env`, applies defaults and types, and validates them.
 * Throws a ConfigError listing every problem (never the value of a secret).
 */
export function loadConfig (env: Record<string, string | undefined>): Config {
  const raw: Record<string, unknown> = {}
  for (const name of Object.keys(ConfigSchema.properties)) {
    const value = env[name]
    if (value !== undefined && value !== '') raw[name] = value
  }
  const withDefaults = Value.Default(ConfigSchema, raw)
  const converted = Value.Convert(ConfigSchema, withDefaults)
  const problems: string[] = []
  for (const error of Value.Errors(ConfigSchema, converted)) {
    const name = error.path.replace(/^\//, '')
    const shown = SECRET_KEYS.has(name) ? '' : ` (got ${JSON.stringify(raw[name])})`
    problems.push(`${name}: ${error.message}${shown}`)
  }
  problems.push(...jwtConfigProblems(converted as Partial<Config>))
  problems.push(...rateLimitsProblems((converted as Partial<Config>).RATE_LIMITS))
  problems.push(...oauthServerProblems(converted as Partial<Config>))
  const upstreamsFile = (converted as Partial<Config>).UPSTREAMS_FILE
  const gateway = typeof upstreamsFile === 'string' ? loadUpstreams(upstreamsFile, env) : undefined
  if (gateway !== undefined) {
    problems.push(...gateway.problems)
    const identityWanted = gateway.upstreams.some((upstream) => upstream.identity !== undefined)
    if (identityWanted && (converted as Partial<Config>).GATEWAY_IDENTITY_KEY === undefined) problems.push('GATEWAY_IDENTITY_KEY: required when an upstream has an `identity` setting (it signs the principal JWT sent there)')
  }
  if (problems.length > 0) throw new ConfigError(problems)
  return gateway === undefined ? converted as Config : { ...converted as Config, upstreams: gateway.upstreams }
}

function oauthServerProblems (config: Partial<Config>): string[] {
  if (config.OAUTH_SERVER !== 'on') return []
  const problems: string[] = []
  if (config.PUBLIC_URL === undefined) problems.push('OAUTH_SERVER: on needs PUBLIC_URL, the address clients reach this server at (it is the authorization server\'s issuer), e.g. https://ctx.example.com')
  else if ((URL.parse(config.PUBLIC_URL)?.pathname ?? '/').replace(/\/+$/, '') !== '') problems.push(`OAUTH_SERVER: on needs a PUBLIC_URL without a path (got ${JSON.stringify(config.PUBLIC_URL)}): OAuth clients look for the authorization server's metadata at the root of its origin`)
  if (config.OIDC_ISSUER !== undefined) problems.push('OAUTH_SERVER: on and OIDC_ISSUER cannot both be set: tokens come either from your identity provider or from this server\'s own authorization server')
  return problems
}

/** The built-in authorization server's issuer (PUBLIC_URL without a trailing slash), or undefined when OAUTH_SERVER is off. */
export function builtInIssuerOf (config: Pick<Config, 'OAUTH_SERVER' | 'PUBLIC_URL'>): string | undefined {
  if (config.OAUTH_SERVER !== 'on' || config.PUBLIC_URL === undefined) return undefined
  return config.PUBLIC_URL.replace(/\/+$/, '')
}

/** The request body limit: room for the largest content fully JSON-escaped (6 bytes a byte), plus the envelope. */
export function maxBodyBytes (config: Config): number {
  return config.MAX_CONTENT_BYTES * 6 + 64 * 1024
}

export function splitList (value: string): string[] {
  return value.split(',').map((item) => item.trim()).filter((item) => item.length > 0)
}

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '::1', '[::1]'])

export function isLoopbackHost (host: string): boolean {
  return LOOPBACK_HOSTS.has(host) || (isIPv4(host) && host.startsWith('127.'))
}
