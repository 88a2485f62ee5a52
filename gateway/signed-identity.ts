import { randomUUID } from 'node:crypto'
import { SignJWT } from 'jose'
import type { Principal } from '../schema/principal.js'

export interface IdentitySigner {
  /** A short-lived HS256 JWT naming the principal (sub) and the client, for the upstream's own audit. */
  sign: (principal: Principal, client: string | null, audience: string, ttlSeconds: number) => Promise<string>
}

/**
 * Signs the principal JWT upstreams with an `identity` setting receive instead of the caller's
 * token (which is never forwarded). Tokens are reused while more than half their life is left, so
 * a busy principal costs one signature per half-lifetime, not one per call.
 */
export function createIdentitySigner (key: string, issuer: string): IdentitySigner {
  const secret = new TextEncoder().encode(key)
  const cache = new Map<string, { token: string, renewAt: number }>()
  return {
    async sign (principal, client, audience, ttlSeconds) {
      const cacheKey = `${principal.id}\u0000${client ?? ''}\u0000${audience}`
      const now = Date.now()
      const cached = cache.get(cacheKey)
      if (cached !== undefined && cached.renewAt > now) return cached.token
      const issuedAt = Math.floor(now / 1000)
      const token = await new SignJWT({ client, scope: [...principal.scopes].join(' ') })
        .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
        .setIssuer(issuer)
        .setSubject(principal.id)
        .setAudience(audience)
        .setIssuedAt(issuedAt)
        .setExpirationTime(issuedAt + ttlSeconds)
        .setJti(randomUUID())
        .sign(secret)
      if (cache.size > 10_000) cache.clear()
      cache.set(cacheKey, { token, renewAt: now + ttlSeconds * 500 })
      return token
    }
  }
}
