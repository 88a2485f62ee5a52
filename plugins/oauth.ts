import type { IncomingMessage, ServerResponse } from 'node:http'
import fp from 'fastify-plugin'
import type { default as ProviderClass } from 'oidc-provider'
import { publishRevokedJti } from '../auth/revocation.js'
import { grantableScopes } from '../auth/roles.js'
import { createOAuthStore, type OAuthStore } from '../db/oauth-store.js'
import { createGrantRevoker, type GrantRevoker } from '../oauth/grants.js'
import { createStoredKeySet, ensureKeys, KEY_RELOAD_MS, loadProviderKeys, type ProviderKeys, type StoredKeySet } from '../oauth/keys.js'
import { createProvider } from '../oauth/provider.js'
import { countProviderEvents } from '../oauth/provider-events.js'
import { builtInIssuerOf } from '../schema/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The built-in authorization server; null unless OAUTH_SERVER=on. */
    oauth: {
      issuer: string
      /** PUBLIC_URL/mcp: the resource its tokens are for. */
      resource: string
      /** The current provider: rebuilt when the signing keys change (oauth/keys.ts). */
      provider: () => ProviderClass
      /** Hands a request to the current provider (routes/oauth.ts). */
      handle: (request: IncomingMessage, response: ServerResponse) => Promise<void>
      store: OAuthStore
      /** The public signing keys, for the resource server that verifies this server's tokens (plugins/auth.ts). */
      keySet: StoredKeySet
      revoker: GrantRevoker
      /** A secret every instance shares, for the consent form's CSRF token. */
      formSecret: () => string
      /** Reads the key table now: the provider is rebuilt if the keys changed, the verifying key set reloaded (tests; otherwise every KEY_RELOAD_MS). */
      reloadKeys: () => Promise<void>
      /** For /ready: 'ok' when the key table was read at the last attempt. */
      status: () => 'ok' | 'degraded'
    } | null
  }
}

export interface OAuthPluginOptions {
  /** Tests only: how Client ID Metadata Documents are fetched (never settable from the environment). */
  fetch?: typeof globalThis.fetch
}

/**
 * The built-in OAuth 2.1 authorization server's state (OAUTH_SERVER=on): its store, keys and the
 * oidc-provider instance. Every instance reads the same tables, so any of them serves any step of
 * a sign-in. Routes are in routes/oauth.ts; the resource server that accepts its tokens is
 * plugins/auth.ts.
 */
export default fp<OAuthPluginOptions>(async (fastify, options) => {
  const { config, db } = fastify
  const builtInIssuer = builtInIssuerOf(config)
  if (builtInIssuer === undefined) {
    fastify.decorate('oauth', null)
    return
  }
  const issuer: string = builtInIssuer
  const store = createOAuthStore(db.sql)
  const revoker = createGrantRevoker({
    store,
    accessTokenSeconds: config.OAUTH_ACCESS_TOKEN_SECONDS,
    revokeJti: db.tokens.revokeJti,
    publish: async (id, until) => {
      const redis = fastify.redis.client
      if (redis !== null && redis.status === 'ready') await publishRevokedJti(redis, id, until)
    }
  })
  const resource = `${issuer}/mcp`

  async function build (keys: ProviderKeys): Promise<ProviderClass> {
    const built = await createProvider({
      issuer,
      resource,
      scopes: grantableScopes(config),
      store,
      keys,
      accessTokenSeconds: config.OAUTH_ACCESS_TOKEN_SECONDS,
      refreshTokenSeconds: config.OAUTH_REFRESH_TOKEN_DAYS * 86400,
      trustProxy: config.TRUST_PROXY !== 'false',
      revokeGrant: async (grantId) => { await revoker.revokeGrant(grantId) },
      revokeAccessToken: revoker.revokeAccessToken,
      ...(options.fetch !== undefined && { fetch: options.fetch }),
      onServerError: (error) => fastify.log.error({ err: error }, 'authorization server error')
    })
    countProviderEvents(built, fastify.metrics.oauth)
    return built
  }

  fastify.metrics.oauth.countWith(store.counts)
  await ensureKeys(store)
  const keySet = createStoredKeySet(store)
  let keys = await loadProviderKeys(store)
  let provider = await build(keys)
  let handler = provider.callback()
  let lastReadOk = true

  async function reloadKeys (): Promise<void> {
    let next: ProviderKeys
    try {
      await keySet.reload()
      next = await loadProviderKeys(store)
      lastReadOk = true
    } catch (error) {
      lastReadOk = false
      fastify.log.warn({ err: error }, 'could not read the authorization server keys; keeping the current ones')
      return
    }
    if (next.fingerprint === keys.fingerprint) return
    provider = await build(next)
    handler = provider.callback()
    keys = next
    fastify.log.info({ signingKey: next.signing[0]?.kid }, 'authorization server keys changed')
  }

  const timers = [setInterval(() => { reloadKeys().catch(() => {}) }, KEY_RELOAD_MS)]
  if (config.EXPIRY_SWEEP_SECONDS > 0) {
    // Expired codes, tokens, sessions and keys, and clients that registered but never got a grant.
    timers.push(setInterval(() => {
      store.purgeExpired().catch((error: unknown) => fastify.log.warn({ err: error }, 'could not purge expired authorization server records'))
    }, config.EXPIRY_SWEEP_SECONDS * 1000))
  }
  for (const timer of timers) timer.unref()
  fastify.addHook('onClose', async () => {
    for (const timer of timers) clearInterval(timer)
    keySet.close()
  })

  fastify.decorate('oauth', {
    issuer,
    resource,
    provider: () => provider,
    handle: async (request, response) => { await handler(request, response) },
    store,
    keySet,
    revoker,
    formSecret: () => keys.cookies[0] as string,
    reloadKeys,
    status: () => lastReadOk ? 'ok' as const : 'degraded' as const
  })
}, { name: 'oauth', dependencies: ['config', 'db', 'redis', 'metrics'] })
