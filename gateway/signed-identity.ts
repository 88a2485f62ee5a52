import { createHmac, randomUUID } from 'node:crypto'
import { SignJWT } from 'jose'
import type { Principal } from '../schema/principal.js'

export interface IdentitySigner {
  /**
   * A short-lived HS256 JWT naming the principal (sub), the client and the principal's scopes this
   * upstream's rules name, signed with this upstream's own key (identityKeyFor).
   */
  sign: (upstream: string, principal: Principal, scopes: readonly string[], client: string | null, audience: string, ttlSeconds: number) => Promise<string>
}

/**
 * The key an upstream verifies its principal JWTs with: derived from GATEWAY_IDENTITY_KEY and the
 * upstream's name (HMAC-SHA256, base64url). Each upstream holds only its own, so one upstream (or
 * whoever has taken it over) cannot sign tokens another would accept. `cli gateway identity-key`
 * prints it.
 */
export function identityKeyFor (masterKey: string, upstream: string): string {
  return createHmac('sha256', masterKey).update(`shared-context-mcp upstream identity: ${upstream}`).digest('base64url')
}

/**
 * Signs the principal JWT upstreams with an `identity` setting receive instead of the caller's
 * token (which is never forwarded). Tokens are reused while more than half their life is left, so
 * a busy principal costs one signature per half-lifetime, not one per call.
 */
export function createIdentitySigner (masterKey: string, issuer: string): IdentitySigner {
  const keys = new Map<string, Uint8Array>()
  const cache = new Map<string, { token: string, renewAt: number }>()
  const keyOf = (upstream: string): Uint8Array => {
    let key = keys.get(upstream)
    if (key === undefined) keys.set(upstream, key = new TextEncoder().encode(identityKeyFor(masterKey, upstream)))
    return key
  }
  return {
    async sign (upstream, principal, scopes, client, audience, ttlSeconds) {
      const cacheKey = `${upstream}\u0000${principal.id}\u0000${client ?? ''}\u0000${audience}\u0000${scopes.join(' ')}`
      const now = Date.now()
      const cached = cache.get(cacheKey)
      if (cached !== undefined && cached.renewAt > now) return cached.token
      const issuedAt = Math.floor(now / 1000)
      const token = await new SignJWT({ client, scope: scopes.join(' ') })
        .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
        .setIssuer(issuer)
        .setSubject(principal.id)
        .setAudience(audience)
        .setIssuedAt(issuedAt)
        .setExpirationTime(issuedAt + ttlSeconds)
        .setJti(randomUUID())
        .sign(keyOf(upstream))
      if (cache.size > 10_000) cache.clear()
      cache.set(cacheKey, { token, renewAt: now + ttlSeconds * 500 })
      return token
    }
  }
}
