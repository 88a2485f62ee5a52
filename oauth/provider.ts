import { randomBytes } from 'node:crypto'
import { createLocalJWKSet, jwtVerify } from 'jose'
import type { Configuration, KoaContextWithOIDC, default as ProviderClass } from 'oidc-provider'
import type { OAuthStore } from '../db/oauth-store.js'
import { createAdapterClass, sha256Hex } from './adapter.js'
import { pageHeaders, renderErrorPage } from './pages.js'
import { clientIdUrlAllowed } from './client-id-urls.js'
import { isLoopbackRedirect, redirectUriProblem } from './redirect-uris.js'
import { MAX_JWT_CLOCK_SKEW_SECONDS } from '../schema/config.js'
import { publicJwk, SIGNING_ALGORITHM, type ProviderKeys } from './keys.js'

/** Where the built-in authorization server's endpoints live (the issuer is PUBLIC_URL itself). */
export const OAUTH_ROUTES = {
  authorization: '/oauth/authorize',
  token: '/oauth/token',
  registration: '/oauth/register',
  revocation: '/oauth/revoke',
  jwks: '/oauth/jwks',
  // Off (see features below), but oidc-provider wants every route named.
  userinfo: '/oauth/userinfo',
  end_session: '/oauth/logout',
  introspection: '/oauth/introspect',
  pushed_authorization_request: '/oauth/par',
  code_verification: '/oauth/device',
  device_authorization: '/oauth/device/auth',
  backchannel_authentication: '/oauth/backchannel',
  challenge: '/oauth/challenge'
} as const

export const INTERACTION_PATH = '/oauth/interaction'

/** The longest a connection made on the consent page lasts, used or not: then the owner signs in again. */
export const GRANT_SECONDS = 365 * 86400

// The extra client metadata property whose validator applies the redirect URI policy to every client (registered or CIMD).
const REDIRECT_POLICY_PROPERTY = 'urn:shared-context-mcp:redirect-policy'

export interface ProviderSettings {
  /** PUBLIC_URL without a trailing slash: the `iss` of every token and the metadata's issuer. */
  issuer: string
  /** PUBLIC_URL/mcp: the one resource (RFC 8707) tokens are issued for, their audience. */
  resource: string
  /** The scopes a client may ask for and the consent page may grant (grantableScopes in auth/roles.ts). */
  scopes: readonly string[]
  store: OAuthStore
  keys: ProviderKeys
  accessTokenSeconds: number
  refreshTokenSeconds: number
  /** Whether X-Forwarded-Proto / -For are trusted (TRUST_PROXY is set). */
  trustProxy: boolean
  /** Ends a grant everywhere: tokens deleted, its id on the revocation list (oauth/grants.ts). */
  revokeGrant: (grantId: string) => Promise<void>
  /** Puts one access token's jti on the revocation list until it has expired (oauth/grants.ts). */
  revokeAccessToken: (jti: string, expiresAt: Date) => Promise<void>
  /** Tests only: how Client ID Metadata Documents are fetched. Unset: oidc-provider's fetch with its SSRF guard. */
  fetch?: typeof globalThis.fetch
  onServerError: (error: Error) => void
}

/**
 * The built-in authorization server: panva's oidc-provider (certified; RFC 8414 metadata, 7591
 * registration, 7636 PKCE, 7009 revocation, 8707 resource indicators, 9207 iss, refresh token
 * rotation, JWT access tokens, Client ID Metadata Documents) configured for one resource, /mcp,
 * and one person, the owner, who signs in on our consent page (oauth/interaction-routes.ts).
 * Loaded only when OAUTH_SERVER=on, so that servers without it do not pay for the import.
 */
export async function createProvider (settings: ProviderSettings): Promise<ProviderClass> {
  const { default: Provider, errors } = await import('oidc-provider')
  const { issuer, resource, store } = settings
  const resourceServer = {
    scope: settings.scopes.join(' '),
    audience: resource,
    accessTokenTTL: settings.accessTokenSeconds,
    accessTokenFormat: 'jwt' as const,
    jwt: { sign: { alg: SIGNING_ALGORITHM } }
  }

  const configuration: Configuration = {
    adapter: createAdapterClass(store, settings.revokeGrant),
    jwks: { keys: settings.keys.signing },
    cookies: {
      keys: settings.keys.cookies,
      names: { session: 'scm_session', interaction: 'scm_interaction', resume: 'scm_interaction_resume' },
      long: { signed: true, httpOnly: true, sameSite: 'lax' },
      short: { signed: true, httpOnly: true, sameSite: 'lax' }
    },
    routes: OAUTH_ROUTES,
    interactions: { url: (_ctx, interaction) => `${INTERACTION_PATH}/${interaction.uid}` },
    findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    claims: { openid: ['sub'] },
    scopes: ['openid', 'offline_access'],
    responseTypes: ['code'],
    clientAuthMethods: ['none', 'client_secret_basic', 'client_secret_post'],
    clientDefaults: {
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: SIGNING_ALGORITHM
    },
    enabledJWA: { idTokenSigningAlgValues: [SIGNING_ALGORITHM] },
    pkce: { required: () => true },
    // The redirect_uri is always named and always compared exactly (loopback ports aside, below).
    allowOmittingSingleRegisteredRedirectUri: false,
    // Sign-in sessions last minutes; the tokens a grant issues must not end with them.
    expiresWithSession: () => false,
    rotateRefreshToken: () => true,
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AccessToken: settings.accessTokenSeconds,
      AuthorizationCode: 60,
      // Each refresh rotates the refresh token with a fresh lifetime: a connection lasts while it is used.
      RefreshToken: settings.refreshTokenSeconds,
      // The grant is not extended by refreshes, so it is given the longest a connection may last.
      Grant: GRANT_SECONDS,
      Interaction: 600,
      Session: 600,
      IdToken: 600
    },
    conformIdTokenClaims: false,
    extraClientMetadata: {
      properties: [REDIRECT_POLICY_PROPERTY],
      // Runs for every client before oidc-provider's own checks, whatever the property's value.
      validator: (_ctx, _key, _value, metadata) => {
        const uris = Array.isArray(metadata.redirect_uris) ? metadata.redirect_uris : []
        for (const uri of uris) {
          const problem = typeof uri === 'string' ? redirectUriProblem(uri) : 'redirect_uris must be strings'
          if (problem !== undefined) throw new errors.InvalidRedirectUri(problem)
        }
        // A client whose redirect URIs are all loopback is a native app: RFC 8252 lets its port vary.
        if (uris.length > 0 && uris.every((uri) => typeof uri === 'string' && isLoopbackRedirect(uri))) metadata.application_type = 'native'
        // MCP clients register with the resource's scopes (the protected resource metadata's
        // scopes_supported); oidc-provider checks a client's scope against its OpenID scopes only
        // and would refuse the registration. The resource's scopes are granted on the consent page.
        if (typeof metadata.scope === 'string') {
          const kept = metadata.scope.split(' ').filter((scope) => scope !== '' && !settings.scopes.includes(scope))
          if (kept.length > 0) metadata.scope = kept.join(' ')
          else delete metadata.scope
        }
        delete (metadata as Record<string, unknown>)[REDIRECT_POLICY_PROPERTY]
      }
    },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true, initialAccessToken: false, issueRegistrationAccessToken: false },
      // A client revokes its own tokens only; another's are left alone with the same 200 as an unknown token.
      revocation: { enabled: true, allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId },
      userinfo: { enabled: false },
      introspection: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      // Not used by MCP clients; every endpoint left on is one more to keep right.
      pushedAuthorizationRequests: { enabled: false },
      dPoP: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => resource,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          if (indicator !== resource) throw new errors.InvalidTarget(`this server issues tokens for ${resource} only`)
          return resourceServer
        }
      },
      clientIdMetadataDocument: {
        enabled: true,
        ack: 'draft-02',
        // A client id on a private or loopback address is refused (invalid_client) before anything connects to it.
        allowFetch: async (_ctx: unknown, clientId: string) => clientIdUrlAllowed(clientId)
      } as NonNullable<Configuration['features']>['clientIdMetadataDocument']
    },
    extraTokenClaims: async (_ctx, token) => {
      if (token.kind !== 'AccessToken' || typeof token.grantId !== 'string') return undefined
      const binding = await store.findGrantBinding(token.grantId)
      // No binding, no namespace claim: the resource server refuses such a token (auth/jwt.ts).
      return binding === null ? { gid: token.grantId } : { gid: token.grantId, namespace: binding.namespace }
    },
    renderError: async (ctx: KoaContextWithOIDC, out) => {
      const nonce = randomBytes(16).toString('base64')
      ctx.set(pageHeaders(nonce, []))
      ctx.body = renderErrorPage(String(out.error), typeof out.error_description === 'string' ? out.error_description : undefined, nonce)
    },
    ...(settings.fetch !== undefined && { fetch: settings.fetch })
  }

  const provider = new Provider(issuer, configuration)
  provider.proxy = settings.trustProxy
  // Registered clients' secrets are stored as SHA-256 (oauth/adapter.ts): compare the hash of what is presented.
  const compareClientSecret = provider.Client.prototype.compareClientSecret
  provider.Client.prototype.compareClientSecret = function (this: InstanceType<typeof provider.Client>, actual: string) {
    return compareClientSecret.call(this, sha256Hex(actual))
  }
  // The metadata lists the scopes clients may ask for: ours, beside OpenID's (which oidc-provider fills in itself).
  provider.use(async (ctx, next) => {
    await next()
    if (ctx.oidc?.route === 'discovery' && typeof ctx.body === 'object' && ctx.body !== null) {
      (ctx.body as Record<string, unknown>).scopes_supported = [...settings.scopes, 'offline_access']
    }
  })
  revokeOwnAccessTokens(provider, settings, errors.UnsupportedTokenType)
  provider.on('server_error', (_ctx: unknown, error: Error) => settings.onServerError(error))
  return provider
}

/**
 * RFC 7009 for access tokens. oidc-provider refuses to revoke a JWT (unsupported_token_type): it
 * stores none, so it has nothing to delete. Ours are checked against the revocation list
 * (auth/jwt.ts), so once oidc-provider has authenticated the client, an access token this server
 * signed for that client goes on the list by its jti and the answer is 200, as for any other
 * revocation. A JWT that is not ours or not the client's is left alone, with the same 200 (RFC
 * 7009 §2.2: an invalid token is no error).
 */
function revokeOwnAccessTokens (provider: ProviderClass, settings: ProviderSettings, UnsupportedTokenType: new (...args: never[]) => Error): void {
  const keys = createLocalJWKSet({ keys: settings.keys.signing.map((jwk) => publicJwk(jwk as Record<string, unknown>)) })
  const refusedAsJwt = new WeakSet<object>()
  provider.on('revocation.error', (ctx, error) => {
    if (error instanceof UnsupportedTokenType) refusedAsJwt.add(ctx)
  })
  provider.use(async (ctx, next) => {
    await next()
    const client = ctx.oidc?.client
    if (!refusedAsJwt.has(ctx) || client === undefined) return
    const payload = await jwtVerify(String(ctx.oidc.params?.token), keys, {
      issuer: settings.issuer,
      typ: 'at+jwt',
      algorithms: [SIGNING_ALGORITHM],
      // The resource server accepts a token until exp plus its clock skew: so long it must stay revocable.
      clockTolerance: MAX_JWT_CLOCK_SKEW_SECONDS
    }).then(({ payload }) => payload, () => undefined) // not signed by this server, or expired beyond use: nothing to revoke
    if (payload !== undefined && payload.client_id === client.clientId && typeof payload.jti === 'string' && typeof payload.exp === 'number') {
      try {
        await settings.revokeAccessToken(payload.jti, new Date(payload.exp * 1000))
      } catch (error) {
        // Never a 200 for a revocation that did not happen: the client must try again (RFC 7009 §2.2.1).
        settings.onServerError(error as Error)
        ctx.status = 503
        ctx.set('retry-after', '2')
        ctx.body = { error: 'server_error', error_description: 'The token could not be revoked right now; try again.' }
        return
      }
    }
    ctx.status = 200
    ctx.body = ''
  })
}
