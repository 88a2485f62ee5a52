import { createHash } from 'node:crypto'
import type { Adapter, AdapterPayload } from 'oidc-provider'
import type { OAuthStore } from '../db/oauth-store.js'

// Stored under their own id, so that `oauth clients|grants` can list and revoke them by it.
const LISTED_MODELS = new Set(['Client', 'Grant'])

export function sha256Hex (value: string): string {
  return createHash('sha256').update(value).digest('hex')
}

/** The key a model instance is stored under: the id of clients and grants, the SHA-256 of every other id (codes, refresh tokens, sessions are bearer secrets). */
export function storedIdOf (model: string, id: string): string {
  return LISTED_MODELS.has(model) ? id : sha256Hex(id)
}

/**
 * oidc-provider's storage, in PostgreSQL (db/oauth-store.ts), so that every instance sees every
 * code, token and session. Bearer secrets are never stored as they are: ids are hashed and
 * removed from payloads, and a registered client's secret is kept as its SHA-256 (the provider
 * compares the hash of what a client presents; oauth/provider.ts).
 * `revokeGrant` ends a grant everywhere (oauth/grants.ts).
 */
export function createAdapterClass (store: OAuthStore, revokeGrant: (grantId: string) => Promise<void>): new (model: string) => Adapter {
  // oidc-provider ends a grant by calling revokeByGrantId on each model at once; one revocation covers them all.
  const revoking = new Map<string, Promise<void>>()
  function revokeOnce (grantId: string): Promise<void> {
    let pending = revoking.get(grantId)
    if (pending === undefined) {
      pending = revokeGrant(grantId).finally(() => revoking.delete(grantId))
      revoking.set(grantId, pending)
    }
    return pending
  }

  return class PostgresAdapter implements Adapter {
    constructor (readonly model: string) {}

    async upsert (id: string, payload: AdapterPayload, expiresIn: number): Promise<void> {
      const stored: Record<string, unknown> = { ...payload }
      // A session found by uid (Session.findByUid) is only read, so it needs no id in the payload either.
      if (!LISTED_MODELS.has(this.model)) delete stored.jti
      if (this.model === 'Client' && typeof stored.client_secret === 'string') stored.client_secret = sha256Hex(stored.client_secret)
      // An interaction names its sign-in session's id (the session cookie's value), which nothing reads back.
      if (this.model === 'Interaction' && typeof stored.session === 'object' && stored.session !== null) {
        const { cookie: _cookie, ...session } = stored.session as Record<string, unknown>
        stored.session = session
      }
      await store.upsertPayload({
        model: this.model,
        id: storedIdOf(this.model, id),
        payload: stored,
        expiresAt: typeof expiresIn === 'number' && expiresIn > 0 ? new Date(Date.now() + expiresIn * 1000) : null,
        grantId: typeof payload.grantId === 'string' ? payload.grantId : null,
        uid: typeof payload.uid === 'string' ? sha256Hex(payload.uid) : null
      })
    }

    async find (id: string): Promise<AdapterPayload | undefined> {
      const found = await store.findPayload(this.model, storedIdOf(this.model, id))
      if (found === null) return undefined
      return { ...found.payload, ...(LISTED_MODELS.has(this.model) ? {} : { jti: id }), ...(found.consumed ? { consumed: true } : {}) }
    }

    async findByUid (uid: string): Promise<AdapterPayload | undefined> {
      const found = await store.findPayloadByUid(this.model, sha256Hex(uid))
      if (found === null) return undefined
      return { ...found.payload, ...(found.consumed ? { consumed: true } : {}) }
    }

    async findByUserCode (): Promise<AdapterPayload | undefined> {
      return undefined // the device flow is off
    }

    async consume (id: string): Promise<void> {
      await store.consumePayload(this.model, storedIdOf(this.model, id))
    }

    async destroy (id: string): Promise<void> {
      await store.destroyPayload(this.model, storedIdOf(this.model, id))
    }

    // Called for each model when a grant ends (refresh token reuse, revocation): the grant's
    // access tokens are JWTs nothing stores, so its id goes on the revocation list too.
    async revokeByGrantId (grantId: string): Promise<void> {
      await revokeOnce(grantId)
    }
  }
}
