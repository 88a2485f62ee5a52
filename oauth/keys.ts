import { randomBytes } from 'node:crypto'
import { errors, exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK, type JWSHeaderParameters } from 'jose'
import type { OAuthStore, StoredKey } from '../db/oauth-store.js'
import { MAX_JWT_CLOCK_SKEW_SECONDS } from '../schema/config.js'

/** The algorithm of every access token the built-in authorization server signs. */
export const SIGNING_ALGORITHM = 'ES256' as const
/** How often each instance reads the key table (a rotated key is picked up within this). */
export const KEY_RELOAD_MS = 60_000
/** How long after `oauth rotate-key` the new key starts signing: every instance has published it by then. */
export const ROTATION_TAKEOVER_MS = 3 * KEY_RELOAD_MS
// Fixed ids for the first keys, so that instances starting at once agree on one of each.
const INITIAL_SIGNING_KID = 'sign-initial'
const INITIAL_COOKIE_KID = 'cookie-initial'
// A verifier that meets an unknown kid reads the table again, at most this often.
const UNKNOWN_KID_RELOAD_MS = 1000

async function newSigningJwk (kid: string): Promise<JWK> {
  const { privateKey } = await generateKeyPair(SIGNING_ALGORITHM, { extractable: true })
  return { ...await exportJWK(privateKey), kid, alg: SIGNING_ALGORITHM, use: 'sig' }
}

/** Creates the first signing key and cookie key unless they exist. */
export async function ensureKeys (store: OAuthStore): Promise<void> {
  if ((await store.listKeys('sign')).length === 0) {
    await store.insertKey({ kid: INITIAL_SIGNING_KID, use: 'sign', jwk: await newSigningJwk(INITIAL_SIGNING_KID) as Record<string, unknown> })
  }
  if ((await store.listKeys('cookie')).length === 0) {
    await store.insertKey({ kid: INITIAL_COOKIE_KID, use: 'cookie', jwk: { k: randomBytes(32).toString('base64url') } })
  }
}

export interface ProviderKeys {
  /** Private JWKs for oidc-provider: the one that signs now first, then those that only verify. */
  signing: JWK[]
  /** Cookie signing secrets, newest first. */
  cookies: string[]
  /** Changes whenever the set or the signer changes: the provider is rebuilt then. */
  fingerprint: string
}

function signerFirst (keys: StoredKey[], now: number): StoredKey[] {
  const active = keys.filter((key) => key.signsFrom.getTime() <= now)
  const signer = active.reduce<StoredKey | undefined>((latest, key) => latest === undefined || key.signsFrom > latest.signsFrom ? key : latest, undefined)
  return signer === undefined ? keys : [signer, ...keys.filter((key) => key !== signer)]
}

export async function loadProviderKeys (store: OAuthStore, now = Date.now()): Promise<ProviderKeys> {
  const signing = signerFirst(await store.listKeys('sign'), now)
  const cookies = await store.listKeys('cookie')
  return {
    signing: signing.map((key) => key.jwk as JWK),
    cookies: cookies.map((key) => String(key.jwk.k)),
    fingerprint: [...signing.map((key) => key.kid), '|', ...cookies.map((key) => key.kid)].join(',')
  }
}

/**
 * Adds a signing key. It is published at once (each instance reads the table every
 * KEY_RELOAD_MS) and signs from ROTATION_TAKEOVER_MS on; the keys it replaces verify until every
 * token they signed has expired. No instance ever signs with a key another cannot verify.
 */
export async function rotateSigningKey (store: OAuthStore, accessTokenSeconds: number, now = Date.now()): Promise<{ kid: string, signsFrom: Date, othersRetireAt: Date }> {
  const kid = `sign-${new Date(now).toISOString().replace(/[^0-9]/g, '').slice(0, 14)}-${randomBytes(3).toString('hex')}`
  const signsFrom = new Date(now + ROTATION_TAKEOVER_MS)
  const othersRetireAt = new Date(signsFrom.getTime() + (accessTokenSeconds + MAX_JWT_CLOCK_SKEW_SECONDS) * 1000)
  await store.rotateSigningKey({ kid, jwk: await newSigningJwk(kid) as Record<string, unknown>, signsFrom }, othersRetireAt)
  return { kid, signsFrom, othersRetireAt }
}

/** A signing key without its private part. */
export function publicJwk (jwk: Record<string, unknown>): JWK {
  const { d: _private, ...rest } = jwk
  return rest as JWK
}

/**
 * The resource server's view of the signing keys, read from the key table rather than fetched
 * over HTTP: the same interface as the JWKS cache (auth/jwks.ts) that external issuers use, so
 * that tokens of both are verified by one code path (auth/jwt.ts).
 */
export function createStoredKeySet (store: Pick<OAuthStore, 'listKeys'>) {
  let keys = new Map<string, CryptoKey>()
  let loadedAt = Number.NEGATIVE_INFINITY
  let pending: Promise<void> | undefined
  let timer: NodeJS.Timeout | undefined

  async function load (): Promise<void> {
    const stored = await store.listKeys('sign')
    const next = new Map<string, CryptoKey>()
    for (const key of stored) next.set(key.kid, await importJWK(publicJwk(key.jwk), SIGNING_ALGORITHM) as CryptoKey)
    keys = next
    loadedAt = Date.now()
  }

  function reload (): Promise<void> {
    pending ??= load().finally(() => { pending = undefined })
    return pending
  }

  function schedule (): void {
    timer = setTimeout(() => { reload().catch(() => {}).finally(schedule) }, KEY_RELOAD_MS)
    timer.unref()
  }
  schedule()

  return {
    async getKey (header: JWSHeaderParameters): Promise<CryptoKey> {
      const kid = header.kid ?? ''
      let key = keys.get(kid)
      if (key === undefined && Date.now() - loadedAt >= UNKNOWN_KID_RELOAD_MS) {
        await reload()
        key = keys.get(kid)
      }
      if (key === undefined) throw new errors.JWKSNoMatchingKey()
      return key
    },
    /** Reads the table now (after a rotation; otherwise every KEY_RELOAD_MS and on an unknown kid). */
    reload,
    status: (): 'ok' => 'ok',
    close: (): void => clearTimeout(timer)
  }
}

export type StoredKeySet = ReturnType<typeof createStoredKeySet>
