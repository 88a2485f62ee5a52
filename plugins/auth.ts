import { hash, randomBytes, timingSafeEqual } from 'node:crypto'
import { getOAuthProtectedResourceMetadataUrl } from '@modelcontextprotocol/server'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { createJwtAuthenticator, jwtOptionsFromConfig, looksLikeJwt, type JwtIdentity } from '../auth/jwt.js'
import { createRevocationChecker } from '../auth/revocation.js'
import { grantRevocationId } from '../db/oauth-store.js'
import { builtInIssuerOf, isLoopbackHost, type Config } from '../schema/config.js'
import { AppError } from '../schema/errors.js'
import { isScopeName, singleNamespacePrincipal, type Principal, type Scope } from '../schema/principal.js'

declare module 'fastify' {
  interface FastifyInstance {
    auth: {
      /** onRequest hook for protected routes: sets request.principal or answers 401/403/503. */
      authenticate: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
      /**
       * authenticate as a callback-style hook, for the hot path: the static token and a cached API
       * token are settled synchronously, without a promise; everything else goes through authenticate.
       */
      authenticateHook: (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void) => void
      /** The principal a bearer token stands for now; throws an AppError (AUTH_1002/1003, DEP_3001) when it stands for none. */
      verify: (token: string) => Promise<Principal>
      /**
       * With no token configured (loopback only), creates one and returns it — to be shown once,
       * never logged. Called after the server listens, so that a failed start loses no token.
       * Undefined when a token exists (also when another instance just created one).
       */
      createLocalTokenIfNone: () => Promise<string | undefined>
      /** The MCP endpoint's URL as clients reach it: PUBLIC_URL/mcp, else built from the request. */
      resourceUrl: (request: FastifyRequest) => URL
      /** The identity provider's state for /ready: absent without OIDC_ISSUER. */
      identityProviderStatus: () => 'ok' | 'degraded' | 'absent'
      /** Where OAuth clients get tokens for /mcp (see authorizationServersOf); empty: none, bearer tokens only. */
      authorizationServers: readonly string[]
    }
  }
  interface FastifyRequest {
    principal: Principal | null
  }
}

export const DEFAULT_NAMESPACE = 'default'
const STANDARD_SCOPES: readonly Scope[] = ['context:read', 'context:write', 'context:delete']
const TOKEN_CACHE_MAX = 10000
const UNIQUE_VIOLATION = '23505'
const SAFE_HOST = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/

export function hashToken (token: string): Buffer {
  return hash('sha256', token, 'buffer')
}

export function generateToken (): string {
  return `scm_${randomBytes(32).toString('base64url')}`
}

// JWTs with many roles run to several KiB; anything longer than this is refused as invalid, unread.
const MAX_TOKEN_LENGTH = 16 * 1024

/**
 * The authorization servers that issue tokens for /mcp (RFC 9728 `authorization_servers`): this
 * server itself with OAUTH_SERVER=on, else OIDC_ISSUER, if set. When there is none the server advertises no OAuth at all (no
 * resource_metadata in challenges, no metadata document): a client told of an authorization server
 * that does not exist tries to register at /register and fails without saying why.
 */
export function authorizationServersOf (config: Pick<Config, 'OIDC_ISSUER' | 'OAUTH_SERVER' | 'PUBLIC_URL'>): string[] {
  const builtIn = builtInIssuerOf(config)
  if (builtIn !== undefined) return [builtIn]
  return config.OIDC_ISSUER === undefined ? [] : [config.OIDC_ISSUER]
}

/** How a person gets a token, for refusals and start-up errors: a command that runs as printed in the project folder. */
export const TOKEN_CREATE_HINT = '`node dist/cli.js token create --name NAME`'

/** For refusals: where this server's tokens come from, and the command that makes another. */
export function howToGetAToken (config: Pick<Config, 'OIDC_ISSUER' | 'OAUTH_SERVER' | 'PUBLIC_URL' | 'AUTH_TOKEN'>): string {
  if (authorizationServersOf(config).length > 0) return `sign in again, or create an API token with ${TOKEN_CREATE_HINT} in the server's folder`
  if (config.AUTH_TOKEN !== undefined) return `use the server's AUTH_TOKEN, or create a token with ${TOKEN_CREATE_HINT} in the server's folder`
  return `use the token the server printed when it first started (in its output), or create one with ${TOKEN_CREATE_HINT} in the server's folder`
}

export function bearerTokenOf (header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const match = /^Bearer +([\x21-\x7e]+) *$/i.exec(header)
  return match?.[1]
}

/**
 * Bearer-token authentication. A token is, in this order: the static AUTH_TOKEN (compared in
 * constant time, whatever the presented length, as SHA-256 digests); a JWT from OIDC_ISSUER
 * (verified against its JWKS, then checked against the jti revocation list); or an API token whose
 * hash is in api_tokens. Failures carry the RFC 9728 challenge that lets OAuth clients discover
 * the authorization server, when there is one (authorizationServersOf).
 */
export interface AuthPluginOptions {
  /**
   * Benchmarks only (bench/, never reachable from configuration): every request acts as the
   * static-token principal without any token, so the cost of authentication can be measured.
   */
  withoutAuthentication?: boolean
}

export default fp<AuthPluginOptions>(async (fastify, options) => {
  const { config, db } = fastify
  const staticHash = config.AUTH_TOKEN === undefined ? undefined : hashToken(config.AUTH_TOKEN)
  const staticPrincipal = singleNamespacePrincipal('static-token', DEFAULT_NAMESPACE, STANDARD_SCOPES)
  const cacheMs = config.AUTH_CACHE_SECONDS * 1000
  const tokenCache = new Map<string, { principal: Principal, until: number }>()
  const { addressBudget } = fastify.rateLimits
  const jwtOptions = jwtOptionsFromConfig(config, DEFAULT_NAMESPACE)
  // The built-in authorization server's keys are read from its table, not fetched from its own JWKS URL.
  const keySet = fastify.oauth?.keySet
  const jwt = jwtOptions === undefined ? undefined : createJwtAuthenticator({ ...jwtOptions, keySet, log: fastify.log })
  const scopeClaimHint = jwtOptions?.trustScopeClaim === false ? ' Roles map through JWT_ROLE_MAP; a JWT\'s scope claim counts only with JWT_TRUST_SCOPE_CLAIM=true.' : ''
  const revocation = createRevocationChecker({
    store: db.tokens,
    redis: () => fastify.redis.client,
    cacheSeconds: config.AUTH_CACHE_SECONDS,
    log: fastify.log
  })
  fastify.addHook('onClose', async () => jwt?.close())
  const authorizationServers = authorizationServersOf(config)
  const getToken = howToGetAToken(config)

  if (staticHash === undefined && jwt === undefined && !isLoopbackHost(config.HOST) && await db.tokens.countActiveApiTokens() === 0) {
    throw new Error(`Refusing to start: HOST ${config.HOST} is reachable from other machines and no authentication is configured. Set AUTH_TOKEN (at least 32 characters), set OIDC_ISSUER, or create a token with ${TOKEN_CREATE_HINT}.`)
  }

  async function createLocalTokenIfNone (): Promise<string | undefined> {
    if (staticHash !== undefined || jwt !== undefined || await db.tokens.countActiveApiTokens() > 0) return undefined
    const token = generateToken()
    try {
      await db.tokens.insertApiToken({ name: 'local', hash: hashToken(token).toString('hex'), namespace: DEFAULT_NAMESPACE, scopes: [...STANDARD_SCOPES] })
    } catch (error) {
      if ((error as { code?: unknown }).code === UNIQUE_VIOLATION) return undefined // another instance created it first
      throw error
    }
    return token
  }

  function resourceUrl (request: FastifyRequest): URL {
    if (config.PUBLIC_URL !== undefined) return new URL(`${config.PUBLIC_URL.replace(/\/+$/, '')}/mcp`)
    const host = SAFE_HOST.test(request.host) ? request.host : `${config.HOST}:${config.PORT}`
    return new URL(`${request.protocol === 'https' ? 'https' : 'http'}://${host}/mcp`)
  }

  function challenge (request: FastifyRequest, error?: string): string {
    const parameters = ['realm="shared-context-mcp"']
    if (authorizationServers.length > 0) parameters.push(`resource_metadata="${getOAuthProtectedResourceMetadataUrl(resourceUrl(request))}"`)
    if (error !== undefined) parameters.push(error)
    return `Bearer ${parameters.join(', ')}`
  }

  function refuse (request: FastifyRequest, reply: FastifyReply, error: AppError): AppError {
    if (error.code === 'AUTH_1001') reply.header('www-authenticate', challenge(request))
    if (error.code === 'AUTH_1002' || error.code === 'AUTH_1003') reply.header('www-authenticate', challenge(request, 'error="invalid_token"'))
    if (error.code === 'AUTH_1004') reply.header('www-authenticate', challenge(request, 'error="insufficient_scope", scope="context:read"'))
    return error
  }

  /** The principal of a cached API token's hash (hex), while its cache entry lasts. */
  function cachedApiPrincipal (hexHash: string, now: number): Principal | undefined {
    const cached = tokenCache.get(hexHash)
    return cached !== undefined && cached.until > now ? cached.principal : undefined
  }

  async function principalForApiToken (token: string, hash: Buffer, beforeCostlyWork: () => Promise<void>, fresh = false): Promise<Principal> {
    const hexHash = hash.toString('hex')
    const now = Date.now()
    const cached = fresh ? undefined : cachedApiPrincipal(hexHash, now)
    if (cached !== undefined) return cached
    await beforeCostlyWork()
    const record = await db.tokens.findApiTokenByHash(hexHash)
    if (record === null) {
      tokenCache.delete(hexHash)
      throw new AppError('AUTH_1002', looksLikeJwt(token) && jwt === undefined
        ? `The bearer token is a JWT, but this server accepts JWTs only when OIDC_ISSUER is set: ${getToken}.`
        : `The bearer token is not valid (wrong, or from another server): ${getToken}.`)
    }
    if (record.revoked) {
      tokenCache.delete(hexHash)
      throw new AppError('AUTH_1003', `This token has been revoked. Ask for a new one, or create one with ${TOKEN_CREATE_HINT} in the server's folder.`)
    }
    const principal = singleNamespacePrincipal(`token:${record.name}`, record.namespace,
      record.scopes.filter(isScopeName), record.globalAdmin)
    if (cacheMs > 0) {
      if (tokenCache.size >= TOKEN_CACHE_MAX) tokenCache.clear()
      tokenCache.set(hexHash, { principal, until: now + cacheMs })
    }
    db.tokens.touchApiToken(record.id).catch((error: unknown) => fastify.log.warn({ err: error }, 'could not record token use'))
    return principal
  }

  /** Applies the jti revocation list, and REVOCATION_FAIL_MODE when it cannot be read. */
  async function afterRevocationCheck (identity: JwtIdentity): Promise<Principal> {
    const ids = [identity.jti, identity.grantId === undefined ? undefined : grantRevocationId(identity.grantId)].filter((id) => id !== undefined)
    if (ids.length === 0) return identity.principal
    const answers = await Promise.all(ids.map((id) => revocation.check(id, identity.expiresAt)))
    const answer = answers.includes('revoked') ? 'revoked' : answers.includes('unknown') ? 'unknown' : 'valid'
    if (answer === 'valid') return identity.principal
    if (answer === 'revoked') throw new AppError('AUTH_1003', 'This token has been revoked. Sign in again to get a new one.')
    const unavailable = new AppError('DEP_3001', 'Token revocation cannot be checked right now (the database is unreachable); retry in a few seconds.')
    const recent = Date.now() - revocation.lastAnsweredAt() <= config.REVOCATION_FAIL_OPEN_SECONDS * 1000
    switch (config.REVOCATION_FAIL_MODE) {
      case 'closed':
        throw unavailable
      case 'open':
        if (recent) return identity.principal
        throw unavailable
      case 'reads-open':
        if (recent) return { ...identity.principal, writesRefused: unavailable }
        throw unavailable
    }
  }

  /**
   * The principal a token stands for. `beforeCostlyWork` (the client address's failed-authentication
   * budget) runs before a database lookup or a JWT verification, not for the static token or a
   * cached API token, which cost nothing.
   */
  async function principalFor (token: string, beforeCostlyWork: () => Promise<void>, fresh = false, hash = hashToken(token)): Promise<Principal> {
    if (staticHash !== undefined && timingSafeEqual(hash, staticHash)) return staticPrincipal
    if (jwt !== undefined && looksLikeJwt(token)) {
      await beforeCostlyWork()
      return await afterRevocationCheck(await jwt.verify(token))
    }
    return await principalForApiToken(token, hash, beforeCostlyWork, fresh)
  }

  async function authenticate (request: FastifyRequest, reply: FastifyReply, presented?: { token: string, hash: Buffer }): Promise<void> {
    if (options.withoutAuthentication === true) {
      request.principal = staticPrincipal
      return
    }
    const header = request.headers.authorization
    const token = presented?.token ?? bearerTokenOf(header)
    if (token === undefined) {
      throw refuse(request, reply, header === undefined
        ? new AppError('AUTH_1001', `Missing bearer token: send the header "Authorization: Bearer <token>"; to get a token, ${getToken}.`)
        : new AppError('AUTH_1001', `The Authorization header must be "Bearer <token>"; to get a token, ${getToken}.`))
    }
    let principal: Principal
    try {
      if (token.length > MAX_TOKEN_LENGTH) throw new AppError('AUTH_1002', `The bearer token is longer than ${MAX_TOKEN_LENGTH} characters.`)
      principal = await principalFor(token, () => addressBudget.check(request, reply), false, presented?.hash)
    } catch (error) {
      await addressBudget.countFailure(request, error)
      throw error instanceof AppError ? refuse(request, reply, error) : error
    }
    if (principal.scopes.size === 0) {
      throw refuse(request, reply, new AppError('AUTH_1004', `The token grants no access to this server: it carries none of the roles or scopes that map to context:read, context:write, context:delete or context:admin.${scopeClaimHint}`))
    }
    request.principal = principal
  }

  /**
   * The principal of a presented token known without any asynchronous work: the static token
   * (still compared as SHA-256 digests in constant time) or an API token in the cache. Undefined
   * for everything else, JWTs included (they are verified and revocation-checked every time).
   */
  function settledPrincipal (token: string, hash: Buffer): Principal | undefined {
    if (staticHash !== undefined && timingSafeEqual(hash, staticHash)) return staticPrincipal
    if (jwt !== undefined && looksLikeJwt(token)) return undefined
    const principal = cachedApiPrincipal(hash.toString('hex'), Date.now())
    return principal !== undefined && principal.scopes.size > 0 ? principal : undefined
  }

  function authenticateHook (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void {
    if (options.withoutAuthentication === true) {
      request.principal = staticPrincipal
      done()
      return
    }
    const token = bearerTokenOf(request.headers.authorization)
    if (token === undefined || token.length > MAX_TOKEN_LENGTH) {
      authenticate(request, reply).then(() => { done() }, done)
      return
    }
    const hash = hashToken(token)
    const principal = settledPrincipal(token, hash)
    if (principal === undefined) {
      authenticate(request, reply, { token, hash }).then(() => { done() }, done)
      return
    }
    request.principal = principal
    done()
  }

  fastify.decorateRequest('principal', null)
  fastify.decorate('auth', {
    authenticate,
    authenticateHook,
    // Open streams (live/) re-check their token: an API token is looked up afresh, not from the cache.
    verify: (token: string) => options.withoutAuthentication === true ? Promise.resolve(staticPrincipal) : principalFor(token, async () => {}, true),
    createLocalTokenIfNone,
    resourceUrl,
    identityProviderStatus: () => jwt === undefined ? 'absent' as const : jwt.status(),
    authorizationServers
  })
}, { name: 'auth', dependencies: ['config', 'db', 'redis', 'rate-limit', 'oauth'] })
