import type { FastifyBaseLogger } from 'fastify'
import { createLocalJWKSet, errors, type CryptoKey, type FlattenedJWSInput, type JSONWebKeySet, type JWSHeaderParameters } from 'jose'

/** The issuer's keys cannot be obtained: the JWKS (or the discovery document) is unreachable or invalid. */
export class JwksUnavailableError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'JwksUnavailableError'
  }
}

export interface JwksCacheOptions {
  /** The JWKS address; when undefined it is discovered from `${issuer}/.well-known/openid-configuration`. */
  jwksUrl?: string | undefined
  issuer: string
  /** Least time between two fetches caused by unknown kids; failed fetches count too. */
  cooldownMs?: number
  /** Background refresh period after a successful fetch (after a failed one, the cooldown). */
  refreshIntervalMs?: number
  timeoutMs?: number
  maxBytes?: number
  /** Clock for the cooldown; tests pass a controllable one. */
  now?: () => number
  log?: FastifyBaseLogger | undefined
}

export interface JwksCache {
  /** A jose key resolver for jwtVerify. Throws JwksUnavailableError when a needed key cannot be fetched. */
  getKey: (protectedHeader: JWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>
  status: () => 'ok' | 'degraded'
  close: () => void
}

export const JWKS_DEFAULTS = {
  cooldownMs: 30_000,
  refreshIntervalMs: 600_000,
  timeoutMs: 5_000,
  maxBytes: 256 * 1024
} as const

type LocalSet = ReturnType<typeof createLocalJWKSet>

/**
 * A JWKS cache on top of jose's createLocalJWKSet. Unlike createRemoteJWKSet it keeps the last good
 * key set when a refresh fails (cached keys keep working while the identity provider is down), and
 * it bounds every fetch, failed or not, to one per cooldown, so unknown kids cannot make us fetch
 * per request. Concurrent misses share one fetch.
 */
export function createJwksCache (options: JwksCacheOptions): JwksCache {
  const cooldownMs = options.cooldownMs ?? JWKS_DEFAULTS.cooldownMs
  // Background refreshes too stay within one fetch per cooldown.
  const refreshIntervalMs = Math.max(options.refreshIntervalMs ?? JWKS_DEFAULTS.refreshIntervalMs, cooldownMs)
  const timeoutMs = options.timeoutMs ?? JWKS_DEFAULTS.timeoutMs
  const maxBytes = options.maxBytes ?? JWKS_DEFAULTS.maxBytes
  const now = options.now ?? Date.now
  const log = options.log
  const issuer = options.issuer

  let jwksUrl = options.jwksUrl
  let keys: LocalSet | undefined
  let lastAttemptAt = -Infinity
  let lastOk = false
  let pending: Promise<void> | undefined
  let timer: NodeJS.Timeout | undefined
  let closed = false

  async function fetchJson (url: string, what: string): Promise<unknown> {
    let response: Response
    try {
      response = await fetch(url, {
        redirect: 'manual',
        signal: AbortSignal.timeout(timeoutMs),
        headers: { accept: 'application/json, application/jwk-set+json' }
      })
    } catch (error) {
      const reason = (error as Error).name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : describe(error)
      throw new Error(`${what} ${url}: ${reason}`)
    }
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => {})
      throw new Error(`${what} ${url}: HTTP ${response.status}`)
    }
    const text = await readCapped(response, maxBytes).catch((error: unknown) => {
      throw new Error(`${what} ${url}: ${describe(error)}`)
    })
    try {
      return JSON.parse(text)
    } catch {
      throw new Error(`${what} ${url}: the body is not JSON`)
    }
  }

  async function discoverJwksUrl (): Promise<string> {
    const url = `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`
    const document = await fetchJson(url, 'OpenID configuration')
    const { issuer: documentIssuer, jwks_uri: jwksUri } = (document ?? {}) as Record<string, unknown>
    // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
    if (documentIssuer !== issuer) throw new Error(`OpenID configuration ${url}: its issuer ${JSON.stringify(documentIssuer)} is not ${issuer}`)
    if (typeof jwksUri !== 'string' || !isAcceptableJwksUrl(jwksUri, issuer)) {
      throw new Error(`OpenID configuration ${url}: jwks_uri is missing or not an ${issuer.startsWith('https:') ? 'https' : 'http(s)'} URL`)
    }
    return jwksUri
  }

  async function fetchKeys (): Promise<void> {
    jwksUrl ??= await discoverJwksUrl()
    const body = await fetchJson(jwksUrl, 'JWKS')
    let next: LocalSet
    try {
      next = createLocalJWKSet(body as JSONWebKeySet)
    } catch {
      throw new Error(`JWKS ${jwksUrl}: not a JSON Web Key Set`)
    }
    // An identity provider in trouble may briefly publish no keys; that must not wipe the cached ones.
    if (!(body as JSONWebKeySet).keys.some((key) => key.use === undefined || key.use === 'sig')) {
      throw new Error(`JWKS ${jwksUrl}: no signing keys`)
    }
    keys = next
  }

  function schedule (delayMs: number): void {
    if (closed) return
    clearTimeout(timer)
    timer = setTimeout(() => { refresh().catch(() => {}) }, delayMs)
    timer.unref()
  }

  /** Fetches now, or joins the fetch in flight. Never rejects: the outcome is in lastOk. */
  function refresh (): Promise<void> {
    if (pending !== undefined) return pending
    lastAttemptAt = now()
    pending = fetchKeys().then(() => {
      if (!lastOk) log?.info({ jwksUrl }, 'fetched the identity provider\'s signing keys')
      lastOk = true
    }, (error: unknown) => {
      lastOk = false
      log?.warn({ issuer, reason: describe(error) }, 'could not fetch the identity provider\'s signing keys; keeping the cached keys')
    }).finally(() => {
      pending = undefined
      schedule(lastOk ? refreshIntervalMs : cooldownMs)
    })
    return pending
  }

  function refreshIfAllowed (): Promise<void> {
    if (pending !== undefined) return pending
    if (now() - lastAttemptAt < cooldownMs) return Promise.resolve()
    return refresh()
  }

  function unavailable (): JwksUnavailableError {
    return new JwksUnavailableError('The identity provider\'s signing keys cannot be fetched right now; try again shortly.')
  }

  async function getKey (protectedHeader: JWSHeaderParameters, token: FlattenedJWSInput): Promise<CryptoKey> {
    if (keys === undefined) {
      await refreshIfAllowed()
      if (keys === undefined) throw unavailable()
    }
    try {
      return await keys(protectedHeader, token)
    } catch (error) {
      if (!(error instanceof errors.JWKSNoMatchingKey)) throw error
    }
    await refreshIfAllowed()
    try {
      return await keys(protectedHeader, token)
    } catch (error) {
      // An unknown kid while the provider is unreachable may be a key we could not fetch yet.
      if (error instanceof errors.JWKSNoMatchingKey && !lastOk) throw unavailable()
      throw error
    }
  }

  refresh().catch(() => {})

  return {
    getKey,
    status: () => lastOk ? 'ok' : 'degraded',
    close () {
      closed = true
      clearTimeout(timer)
    }
  }
}

function isAcceptableJwksUrl (value: string, issuer: string): boolean {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    return false
  }
  return url.protocol === 'https:' || (url.protocol === 'http:' && !issuer.startsWith('https:'))
}

async function readCapped (response: Response, maxBytes: number): Promise<string> {
  const declared = Number(response.headers.get('content-length'))
  if (declared > maxBytes) {
    await response.body?.cancel().catch(() => {})
    throw new Error(`the body is larger than ${maxBytes} bytes`)
  }
  if (response.body === null) return ''
  const reader = response.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > maxBytes) {
      await reader.cancel().catch(() => {})
      throw new Error(`the body is larger than ${maxBytes} bytes`)
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}

function describe (error: unknown): string {
  if (!(error instanceof Error)) return String(error)
  const cause = (error as { cause?: { code?: unknown, message?: unknown } }).cause
  const detail = typeof cause?.code === 'string' ? cause.code : typeof cause?.message === 'string' ? cause.message : undefined
  return detail === undefined ? error.message : `${error.message} (${detail})`
}
