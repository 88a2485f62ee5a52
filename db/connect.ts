import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import type { ConnectionOptions } from 'node:tls'
import postgres from 'postgres'
import { isLoopbackHost } from '../schema/config.js'
import { guardedSocket } from './stall-guard.js'

export interface SqlOptions {
  max: number
  connectTimeoutMs: number
  /** A Unix socket file to connect to instead of the URL's host and port (the embedded database's). */
  path?: string
  onnotice?: (notice: postgres.Notice) => void
  /** DB_SSL_CA / DB_SSL_VERIFY; default: no extra CA, verification on. */
  tls?: TlsSettings
  /**
   * DB_STATEMENT_TIMEOUT_MS: the server cancels a statement that runs longer (statement_timeout),
   * and a plain connection whose server owes an answer and sends nothing for this long plus
   * STALL_GRACE_MS is destroyed (db/stall-guard.ts). Unset: neither.
   */
  statementTimeoutMs?: number
  /**
   * A listening connection (db/change-listener.ts): never closed for idleness or age, told each
   * notification and each time a connection closes.
   */
  listener?: { onnotify: (channel: string, payload: string) => void, onclose: () => void }
}

// How much longer than the statement timeout a silent server is given before its connection is
// dropped: the server's own cancellation (an ErrorResponse) should come first.
export const STALL_GRACE_MS = 1000

// Seconds before reconnecting after a connection failed, by how many failed in a row. postgres.js's
// default grows to 20 s, which keeps an instance failing long after the database is back.
const reconnectDelaySeconds = (failures: number) => Math.min(0.05 * 2 ** failures, 1)

const INT8_OID = 20

// int8 (versions, counts, ids) arrives as a JS number rather than a string. Safe: versions and
// counts stay far below 2^53.
const int8AsNumber = {
  to: INT8_OID,
  from: [INT8_OID],
  serialize: (value: number) => String(value),
  parse: (value: string) => Number(value)
}

// One query in flight per connection; more wait in the pool's queue for the next free one.
// With pipelining (the default, 100), postgres.js keeps its busy connections in an array that
// only compacts when it empties, which under steady load it never does: each query's
// indexOf/splice walks a longer array, and the client CPU per query rose by half within
// seconds (measured: 10 connections, 32 concurrent callers). postgres.js's types omit the option.
const ONE_QUERY_PER_CONNECTION = { max_pipeline: 1 }

export function createSql (url: string, options: SqlOptions): postgres.Sql {
  const tls = planTls(url, options.tls)
  const timeoutMs = options.statementTimeoutMs
  const guard = timeoutMs !== undefined && tls.ssl === false ? stallGuardedSockets(tls.url, options.path, timeoutMs + STALL_GRACE_MS) : undefined
  const sql = postgres(tls.url, {
    ssl: tls.ssl,
    ...(options.path !== undefined && { path: options.path }),
    max: options.max,
    connect_timeout: Math.max(1, Math.ceil(options.connectTimeoutMs / 1000)),
    idle_timeout: options.listener === undefined ? 60 : 0, // 0: never
    // The listener reads no arrays, so it skips the array-type query (see typesKnown).
    ...(options.listener !== undefined && { max_lifetime: null, onnotify: options.listener.onnotify, onclose: options.listener.onclose, fetch_types: false }),
    backoff: reconnectDelaySeconds,
    ...(guard !== undefined && { socket: guard }),
    // Named prepared statements are also what keeps concurrent connections to the embedded
    // PGlite socket server from overwriting each other's unnamed statement (see embedded.ts).
    prepare: true,
    ...ONE_QUERY_PER_CONNECTION,
    onnotice: options.onnotice ?? (() => {}),
    // JIT compilation costs 50-100 ms for a statement whose estimate passes jit_above_cost (the
    // search statement's does on a large store), and no statement here runs long enough to gain.
    // Generic plans: a custom plan for every execution of a prepared statement cost the search
    // statement 1 ms of planning each time, and the statements here gain nothing from seeing their
    // parameters (the export asks for custom plans itself).
    connection: {
      application_name: 'shared-context-mcp',
      jit: 'off',
      plan_cache_mode: 'force_generic_plan',
      ...(timeoutMs !== undefined && { statement_timeout: timeoutMs })
    },
    types: { int8AsNumber }
  })
  // The custom type only changes how int8 is parsed; callers need no typed helper for it.
  return sql as unknown as postgres.Sql
}

/**
 * postgres.js's `socket` option: connections made here, each watched by the stall guard. Only for
 * a URL with one host (postgres.js picks among several itself, which a socket factory bypasses).
 */
function stallGuardedSockets (url: string, path: string | undefined, deadlineMs: number) {
  const hosts = urlHosts(url)
  if (path === undefined && hosts.length !== 1) return undefined
  const parsed = URL.parse(url)
  const host = unbracket(hosts[0] === '' || hosts[0] === undefined ? (process.env.PGHOST ?? 'localhost') : hosts[0])
  if (path === undefined && host.includes('/')) return undefined // a Unix socket directory: postgres.js's own way
  const port = Number(parsed?.port === '' || parsed === null ? (process.env.PGPORT ?? 5432) : parsed.port)
  return () => guardedSocket(path !== undefined ? { host, port, path } : { host, port }, deadlineMs)
}

export class DatabaseUnavailableError extends Error {
  override readonly name: string = 'DatabaseUnavailableError'
}

/** The server's certificate failed verification; retrying cannot help. */
export class DatabaseTlsError extends DatabaseUnavailableError {
  override readonly name = 'DatabaseTlsError'
}

/** DATABASE_URL's TLS parameters, DB_SSL_CA or DB_SSL_VERIFY are wrong or contradict each other. */
export class TlsSettingsError extends Error {
  override readonly name = 'TlsSettingsError'
}

export interface TlsSettings {
  /** DB_SSL_CA: a PEM file path, or the PEM itself. */
  ca?: string
  /** DB_SSL_VERIFY; false is the explicit opt-out of certificate verification. */
  verify: boolean
}

export interface TlsPlan {
  /** The URL without sslmode/sslrootcert: postgres.js would apply its own meaning to sslmode and send sslrootcert to the server as a setting. */
  url: string
  ssl: false | ConnectionOptions
  /** 'full': chain and host name; 'ca': chain only; 'none': encrypted, server not authenticated. */
  verification?: 'full' | 'ca' | 'none'
  /** What the connection does, for the start-up log. */
  summary: string
  /** Set when verification is off: to be logged as a warning at every start. */
  warning?: string
}

const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']
// sslnegotiation is postgres.js's own (direct TLS) and passes through.
const TLS_PARAMS = ['sslmode', 'sslrootcert', 'sslnegotiation']

/**
 * postgres.js's `ssl` option for DATABASE_URL (see README "Database TLS"):
 * - sslmode=disable: no TLS. verify-ca: chain only. verify-full: chain and host name.
 * - sslmode=require: TLS verified like verify-full unless DB_SSL_VERIFY=false. Unlike libpq, which
 *   skips verification here, so that a URL copied from a provider does not silently drop it.
 * - no sslmode (or allow/prefer): loopback or Unix-socket hosts get no TLS; any other host gets TLS
 *   verified like verify-full.
 * - CA: sslrootcert in the URL (`system`: the default trust store), else DB_SSL_CA, else the
 *   default trust store. A given CA replaces the default store.
 * The certificate must name the host as written in the URL (a DNS name, or an IP address entry).
 */
export function planTls (url: string, settings: TlsSettings = { verify: true }): TlsPlan {
  const queryAt = url.indexOf('?')
  const params = new URLSearchParams(queryAt === -1 ? '' : url.slice(queryAt + 1))
  for (const name of params.keys()) {
    if (name.startsWith('ssl') && !TLS_PARAMS.includes(name)) {
      throw new TlsSettingsError(`DATABASE_URL parameter ${name} is not supported; the TLS parameters understood are sslmode and sslrootcert (DB_SSL_CA and DB_SSL_VERIFY besides)`)
    }
  }
  const mode = params.get('sslmode') ?? undefined
  const rootcert = params.get('sslrootcert') ?? undefined
  if (mode !== undefined && !SSL_MODES.includes(mode)) {
    throw new TlsSettingsError(`DATABASE_URL: sslmode=${mode} is not one of ${SSL_MODES.join(', ')}`)
  }
  let stripped = url
  if (mode !== undefined || rootcert !== undefined) {
    params.delete('sslmode')
    params.delete('sslrootcert')
    const rest = params.toString()
    stripped = url.slice(0, queryAt) + (rest === '' ? '' : `?${rest}`)
  }
  const off = (why: string): TlsPlan => ({ url: stripped, ssl: false, summary: `database TLS: off (${why})` })

  const hosts = urlHosts(url)
  let verification: 'full' | 'ca' | 'none'
  if (mode === 'disable') return off('sslmode=disable')
  if (mode === 'verify-ca' || mode === 'verify-full') {
    if (!settings.verify) {
      throw new TlsSettingsError(`DATABASE_URL asks for sslmode=${mode} but DB_SSL_VERIFY=false turns verification off; remove one of the two`)
    }
    verification = mode === 'verify-ca' ? 'ca' : 'full'
  } else if (mode === 'require') {
    verification = settings.verify ? 'full' : 'none'
  } else {
    if (hosts.every(isLocalHost)) return off('loopback host; sslmode=require or verify-full in DATABASE_URL turns it on')
    verification = settings.verify ? 'full' : 'none'
  }

  if (verification === 'none') {
    return {
      url: stripped,
      ssl: { rejectUnauthorized: false },
      verification,
      summary: 'database TLS: on, certificate not verified',
      warning: 'database TLS certificate verification is OFF (DB_SSL_VERIFY=false): the connection is encrypted but the server is not authenticated'
    }
  }
  let ca: string | undefined
  let caSource = 'the default trust store'
  if (rootcert !== undefined && rootcert !== 'system') {
    ca = readPem(rootcert, 'sslrootcert in DATABASE_URL')
    caSource = `sslrootcert ${rootcert}`
  } else if (rootcert === undefined && settings.ca !== undefined) {
    ca = readPem(settings.ca, 'DB_SSL_CA')
    caSource = 'DB_SSL_CA'
  }
  const ssl: ConnectionOptions = { rejectUnauthorized: true }
  if (ca !== undefined) ssl.ca = ca
  if (verification === 'ca') ssl.checkServerIdentity = () => undefined
  else {
    // postgres.js passes servername only for host names; without it Node checks the certificate
    // against `host`, which defaults to localhost, so an IP address must be given here.
    const addresses = hosts.filter((host) => isIP(unbracket(host)) !== 0)
    if (addresses.length > 0 && hosts.length > 1) {
      throw new TlsSettingsError('DATABASE_URL lists several hosts, some by IP address: their certificates cannot be checked per host; use host names, or sslmode=verify-ca to check the chain only')
    }
    if (addresses.length === 1) ssl.host = unbracket(addresses[0] as string)
  }
  const checked = verification === 'full' ? 'certificate and host name verified' : 'certificate verified, host name not (sslmode=verify-ca)'
  return { url: stripped, ssl, verification, summary: `database TLS: on, ${checked} against ${caSource}` }
}

/** The hosts postgres.js will connect to, read from the URL the way postgres.js reads them. */
function urlHosts (url: string): string[] {
  const afterScheme = url.slice(url.indexOf('://') + 3).split(/[?/]/)[0] ?? ''
  let hosts: string
  try {
    hosts = decodeURIComponent(afterScheme.slice(afterScheme.indexOf('@') + 1))
  } catch {
    hosts = ''
  }
  return hosts.split(',').map((host) => {
    if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1)
    return host.split(':')[0] ?? ''
  })
}

function unbracket (host: string): string {
  return host.startsWith('[') ? host.slice(1, -1) : host
}

function isLocalHost (host: string): boolean {
  // An empty host means PGHOST or localhost to postgres.js; a host with a slash is a Unix socket directory.
  const effective = host === '' ? (process.env.PGHOST ?? 'localhost') : host
  return effective.includes('/') || isLoopbackHost(effective.toLowerCase())
}

function readPem (value: string, source: string): string {
  // Platforms that take one-line secrets often hold a PEM with its newlines written as \n.
  const inline = value.trimStart().startsWith('-----BEGIN') ? value.replace(/\\n/g, '\n') : undefined
  let pem = inline
  if (pem === undefined) {
    try {
      pem = readFileSync(value, 'utf8')
    } catch (error) {
      throw new TlsSettingsError(`${source}: cannot read the CA file ${value} (${(error as NodeJS.ErrnoException).code ?? String(error)})`)
    }
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new TlsSettingsError(`${source}: ${inline === undefined ? `${value} holds` : 'the value is'} no PEM certificate (-----BEGIN CERTIFICATE-----)`)
  }
  return pem
}

export interface WaitOptions {
  timeoutMs: number
  log?: (msg: string) => void
}

const FIRST_RETRY_DELAY_MS = 100
const MAX_RETRY_DELAY_MS = 2000
const MIN_ATTEMPT_MS = 50

/**
 * Once a connection has answered, the pool knows the array types: later connections skip
 * postgres.js's array-type query. Besides a round trip per connection, that query is started
 * without a handler for its failure (connection.js `return fetchArrayTypes()`), so a connection
 * lost while running it — a database going away just as a connection reopens — was an unhandled
 * rejection, which stops the process. The parsers it registered stay in the pool's options.
 */
export function typesKnown (sql: postgres.Sql): void {
  sql.options.fetch_types = false
}

export async function waitForDatabase (sql: postgres.Sql, options: WaitOptions): Promise<void> {
  const deadline = Date.now() + options.timeoutMs
  let delay = FIRST_RETRY_DELAY_MS
  let attempts = 0
  let lastError: unknown
  while (true) {
    attempts++
    try {
      await withTimeout(sql`select 1`.execute(), deadline - Date.now())
      typesKnown(sql)
      return
    } catch (error) {
      lastError = error
      const tlsFailure = describeTlsFailure(error)
      if (tlsFailure !== undefined) {
        throw new DatabaseTlsError(`Database at ${describeServer(sql)} refused: ${tlsFailure}`, { cause: error })
      }
    }
    // Sleep only if there is time left for another attempt after it.
    const wait = Math.min(delay, deadline - Date.now() - MIN_ATTEMPT_MS)
    if (wait < 0) break
    options.log?.(`database ${describeServer(sql)} not reachable yet (${describeError(lastError)}); retrying in ${wait} ms`)
    await sleep(wait)
    delay = Math.min(delay * 2, MAX_RETRY_DELAY_MS)
  }
  throw new DatabaseUnavailableError(
    `Database at ${describeServer(sql)} is unavailable after ${attempts} attempts in ${options.timeoutMs} ms ` +
    `(last error: ${describeError(lastError)}). Check that PostgreSQL is running and DATABASE_URL is right, ` +
    'or raise DB_CONNECT_TIMEOUT_MS.',
    { cause: lastError }
  )
}

/** host:port list of the server, never the credentials. */
export function describeServer (sql: postgres.Sql): string {
  const { host, port, path } = sql.options
  if (typeof path === 'string') return path
  return host.map((h, i) => `${h}:${port[i] ?? port[0] ?? 5432}`).join(',')
}

const UNTRUSTED_HINT = "set DB_SSL_CA to the server's CA certificate"
const TLS_HINTS: Record<string, string> = {
  DEPTH_ZERO_SELF_SIGNED_CERT: UNTRUSTED_HINT,
  SELF_SIGNED_CERT_IN_CHAIN: UNTRUSTED_HINT,
  UNABLE_TO_GET_ISSUER_CERT: UNTRUSTED_HINT,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: UNTRUSTED_HINT,
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: UNTRUSTED_HINT,
  CERT_UNTRUSTED: UNTRUSTED_HINT,
  CERT_SIGNATURE_FAILURE: UNTRUSTED_HINT,
  INVALID_CA: UNTRUSTED_HINT,
  ERR_TLS_CERT_ALTNAME_INVALID: 'connect by a host name the certificate lists, or use sslmode=verify-ca to check the chain only',
  CERT_HAS_EXPIRED: 'the server certificate has expired; renew it',
  CERT_NOT_YET_VALID: 'the server certificate is not valid yet; check the clocks',
  CERT_REVOKED: 'the server certificate is revoked',
  CERT_REJECTED: UNTRUSTED_HINT
}

/** One line for a certificate verification failure; undefined for any other error. */
function describeTlsFailure (error: unknown): string | undefined {
  if (!(error instanceof Error)) return undefined
  const code = (error as { code?: unknown }).code
  if (typeof code !== 'string' || !(code in TLS_HINTS)) return undefined
  return `TLS certificate verification failed: ${error.message}; ${TLS_HINTS[code]}`
}

function describeError (error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code
    return typeof code === 'string' && !error.message.includes(code) ? `${code}: ${error.message}` : error.message
  }
  return String(error)
}

async function withTimeout<T> (promise: Promise<T>, timeoutMs: number): Promise<T> {
  // The query may settle after we gave up on it; swallow that late outcome.
  promise.catch(() => {})
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), Math.max(0, timeoutMs))
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}
