import { grantRevocationId, type OAuthStore } from '../db/oauth-store.js'
import { revocationKeptUntil } from '../auth/revocation.js'

export interface GrantRevokerOptions {
  store: OAuthStore
  accessTokenSeconds: number
  /** Writes a jti to the durable revocation list (db/token-store.ts revokeJti). */
  revokeJti: (jti: string, until: Date) => Promise<void>
  /** Tells the other instances at once (Redis), when there is a shared cache; they learn it within AUTH_CACHE_SECONDS otherwise. */
  publish?: (revocationId: string, until: Date) => Promise<void>
}

/**
 * Ending grants. A grant's access tokens are JWTs that nothing stores, so ending it deletes its
 * refresh tokens and codes and puts `grant:<id>` on the revocation list, which the resource server
 * checks beside each token's jti (auth/jwt.ts), until the last access token it issued has expired.
 */
export function createGrantRevoker (options: GrantRevokerOptions) {
  const { store, accessTokenSeconds } = options

  async function revokeGrant (grantId: string): Promise<boolean> {
    // Any access token of the grant was issued before now, so it has expired by now + its lifetime.
    const until = revocationKeptUntil(new Date(Date.now() + accessTokenSeconds * 1000))
    const existed = await store.revokeGrant(grantId, until)
    await options.publish?.(grantRevocationId(grantId), until).catch(() => {}) // the durable list still has it
    return existed
  }

  /** Every grant of the client ends and the client is forgotten: it must register again (invalid_client until then). */
  async function revokeClient (clientId: string): Promise<{ existed: boolean, grants: number }> {
    const grants = await store.grantIdsOfClient(clientId)
    for (const grantId of grants) await revokeGrant(grantId)
    return { existed: await store.deleteClient(clientId), grants: grants.length }
  }

  /** The grants the owner made by signing in with this API token; called when the token is revoked. */
  async function revokeGrantsOfApiToken (apiTokenId: string): Promise<number> {
    const grants = await store.grantIdsOfApiToken(apiTokenId)
    for (const grantId of grants) await revokeGrant(grantId)
    return grants.length
  }

  /** One access token (RFC 7009 revocation of a JWT): its jti is refused until the token has expired. */
  async function revokeAccessToken (jti: string, expiresAt: Date): Promise<void> {
    const until = revocationKeptUntil(expiresAt)
    await options.revokeJti(jti, until)
    await options.publish?.(jti, until).catch(() => {})
  }

  return { revokeGrant, revokeClient, revokeGrantsOfApiToken, revokeAccessToken }
}

export type GrantRevoker = ReturnType<typeof createGrantRevoker>
