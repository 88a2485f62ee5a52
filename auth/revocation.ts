import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import type { TokenStore } from '../db/token-store.js'
import { MAX_JWT_CLOCK_SKEW_SECONDS } from '../schema/config.js'

/** What a revocation check knows about a jti: `unknown` when neither Redis nor PostgreSQL answered. */
export type RevocationAnswer = 'revoked' | 'valid' | 'unknown'

export interface RevocationLog {
  warn: (object: Record<string, unknown>, message: string) => void
}

export interface RevocationCheckerOptions {
  store: Pick<TokenStore, 'isJtiRevoked'>
  /** The shared cache, or null without REDIS_URL; used only while it is connected. */
  redis: () => Redis | null
  /** How long a "not revoked" answer is trusted (AUTH_CACHE_SECONDS). */
  cacheSeconds: number
  log: RevocationLog
}

const LOCAL_CACHE_MAX = 50_000
// A database that holds the connection open but answers nothing must not hold the request: past
// this, the answer is `unknown` and REVOCATION_FAIL_MODE decides.
const DATABASE_ANSWER_MS = 1000
const WARN_EVERY_MS = 10_000

/** The Redis key of a jti. jti values come from tokens, so they are hashed rather than used as key text. */
export function revokedJtiKey (jti: string): string {
  return `scm:jti:${createHash('sha256').update(jti).digest('hex')}`
}

/**
 * How long a revocation must be kept: a token is accepted until its exp plus the clock skew
 * allowed (at most MAX_JWT_CLOCK_SKEW_SECONDS), so its revocation must last as long, or the
 * token would be accepted again in that window.
 */
export function revocationKeptUntil (tokenExpiresAt: Date): Date {
  return new Date(tokenExpiresAt.getTime() + MAX_JWT_CLOCK_SKEW_SECONDS * 1000)
}

/**
 * Marks a jti revoked in Redis until the token expires (revocationKeptUntil), so every instance sees it at its next
 * check instead of after its cached "not revoked" answer runs out.
 */
export async function publishRevokedJti (redis: Redis, jti: string, expiresAt: Date): Promise<void> {
  const ttl = Math.max(1000, revocationKeptUntil(expiresAt).getTime() - Date.now())
  await redis.set(revokedJtiKey(jti), '1', 'PX', ttl)
}

/**
 * Checks JWT ids against the durable revocation list (revoked_jtis in PostgreSQL), through two
 * caches: Redis when it is connected (revoked until the token expires, "not revoked" for
 * AUTH_CACHE_SECONDS, shared by all instances, and told of revocations by `node dist/cli.js token revoke-jti`),
 * and this process (revoked answers; "not revoked" only while Redis is not connected).
 * A Redis failure falls back to PostgreSQL; if that fails too the answer is `unknown`, and
 * REVOCATION_FAIL_MODE decides (plugins/auth.ts).
 */
export function createRevocationChecker (options: RevocationCheckerOptions) {
  const { store, cacheSeconds, log } = options
  const local = new Map<string, { revoked: boolean, until: number }>()
  let lastAnsweredAt = Number.NEGATIVE_INFINITY
  let lastWarnedAt = Number.NEGATIVE_INFINITY

  function warn (error: unknown, message: string): void {
    const now = Date.now()
    if (now - lastWarnedAt < WARN_EVERY_MS) return
    lastWarnedAt = now
    log.warn({ err: error }, message)
  }

  async function askDatabase (jti: string): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined
    try {
      return await Promise.race([
        store.isJtiRevoked(jti),
        new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${DATABASE_ANSWER_MS} ms`)), DATABASE_ANSWER_MS) })
      ])
    } finally {
      clearTimeout(timer)
    }
  }

  function remember (jti: string, revoked: boolean, expiresAt: Date): void {
    const until = revoked ? revocationKeptUntil(expiresAt).getTime() : Date.now() + cacheSeconds * 1000
    if (local.size >= LOCAL_CACHE_MAX) local.clear()
    local.set(jti, { revoked, until })
  }

  function redisReady (): boolean {
    return options.redis()?.status === 'ready'
  }

  async function askRedis (jti: string): Promise<boolean | undefined> {
    const redis = options.redis()
    if (redis === null || redis.status !== 'ready') return undefined
    try {
      const value = await redis.get(revokedJtiKey(jti))
      return value === null ? undefined : value === '1'
    } catch (error) {
      warn(error, 'revocation cache (Redis) failed; asking PostgreSQL')
      return undefined
    }
  }

  function tellRedis (jti: string, revoked: boolean, expiresAt: Date): void {
    const redis = options.redis()
    if (redis === null || redis.status !== 'ready') return
    const write = revoked
      ? publishRevokedJti(redis, jti, expiresAt)
      // NX: never let a "not revoked" answer overwrite a revocation published meanwhile.
      : redis.set(revokedJtiKey(jti), '0', 'PX', Math.max(1, cacheSeconds * 1000), 'NX')
    write.catch(() => {}) // a cache write that fails costs one more lookup later, nothing else
  }

  return {
    async check (jti: string, expiresAt: Date): Promise<RevocationAnswer> {
      const now = Date.now()
      const cached = local.get(jti)
      // While Redis is connected it is asked every time (one round trip), so that a revocation
      // published there reaches this instance at once; "not revoked" is then cached in Redis.
      if (cached !== undefined && cached.until > now && (cached.revoked || !redisReady())) return cached.revoked ? 'revoked' : 'valid'

      let revoked = await askRedis(jti)
      if (revoked === undefined) {
        try {
          revoked = await askDatabase(jti)
        } catch (error) {
          warn(error, 'revocation list (PostgreSQL) unavailable')
          return 'unknown'
        }
        // Only the durable list counts for the fail-open window: Redis knows just the jtis it was told of.
        lastAnsweredAt = Date.now()
        tellRedis(jti, revoked, expiresAt)
      }
      if (cacheSeconds > 0 || revoked) remember(jti, revoked, expiresAt)
      return revoked ? 'revoked' : 'valid'
    },

    /** When PostgreSQL last answered a check (for the fail-open window). */
    lastAnsweredAt: (): number => lastAnsweredAt
  }
}

export type RevocationChecker = ReturnType<typeof createRevocationChecker>
