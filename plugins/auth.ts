import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { isLoopbackHost } from '../schema/config.js'
import { AppError } from '../schema/errors.js'
import { SCOPES, singleNamespacePrincipal, type Principal, type Scope } from '../schema/principal.js'

declare module 'fastify' {
  interface FastifyInstance {
    auth: {
      /** onRequest hook for protected routes: sets request.principal or answers 401. */
      authenticate: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
      /**
       * With no token configured (loopback only), creates one and returns it — to be shown once,
       * never logged. Called after the server listens, so that a failed start loses no token.
       * Undefined when a token exists (also when another instance just created one).
       */
      createLocalTokenIfNone: () => Promise<string | undefined>
    }
  }
  interface FastifyRequest {
    principal: Principal | null
  }
}

export const DEFAULT_NAMESPACE = 'default'
const STANDARD_SCOPES: ReadonlySet<Scope> = new Set(['context:read', 'context:write', 'context:delete'])
const WWW_AUTHENTICATE = 'Bearer realm="shared-context-mcp"'
// Positive lookups of database tokens are cached briefly so the hot path does not query per request.
const TOKEN_CACHE_MS = 5000
const TOKEN_CACHE_MAX = 10000
const UNIQUE_VIOLATION = '23505'

export function hashToken (token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest()
}

export function generateToken (): string {
  return `scm_${randomBytes(32).toString('base64url')}`
}

function bearerTokenOf (header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const match = /^Bearer +([\x21-\x7e]{1,4096}) *$/i.exec(header)
  return match?.[1]
}

/**
 * Bearer-token authentication: the static AUTH_TOKEN (compared in constant time, whatever the
 * presented length, by comparing SHA-256 digests) or a token whose hash is in api_tokens.
 */
export default fp(async (fastify) => {
  const { config, db } = fastify
  const staticHash = config.AUTH_TOKEN === undefined ? undefined : hashToken(config.AUTH_TOKEN)
  const staticPrincipal = singleNamespacePrincipal('static-token', DEFAULT_NAMESPACE, STANDARD_SCOPES)
  const cache = new Map<string, { principal: Principal, until: number }>()

  if (staticHash === undefined && !isLoopbackHost(config.HOST) && await db.store.countActiveApiTokens() === 0) {
    throw new Error(`Refusing to start: HOST ${config.HOST} is reachable from other machines and no authentication is configured. Set AUTH_TOKEN (at least 32 characters) or create a token with \`cli token create\`.`)
  }

  async function createLocalTokenIfNone (): Promise<string | undefined> {
    if (staticHash !== undefined || await db.store.countActiveApiTokens() > 0) return undefined
    const token = generateToken()
    try {
      await db.store.insertApiToken({ name: 'local', hash: hashToken(token).toString('hex'), namespace: DEFAULT_NAMESPACE, scopes: [...STANDARD_SCOPES] })
    } catch (error) {
      if ((error as { code?: unknown }).code === UNIQUE_VIOLATION) return undefined // another instance created it first
      throw error
    }
    return token
  }

  async function principalForToken (token: string): Promise<Principal | null> {
    const hash = hashToken(token)
    if (staticHash !== undefined && timingSafeEqual(hash, staticHash)) return staticPrincipal
    const hexHash = hash.toString('hex')
    const now = Date.now()
    const cached = cache.get(hexHash)
    if (cached !== undefined && cached.until > now) return cached.principal
    const record = await db.store.findActiveApiTokenByHash(hexHash)
    if (record === null) {
      cache.delete(hexHash)
      return null
    }
    const principal = singleNamespacePrincipal(`token:${record.name}`, record.namespace,
      record.scopes.filter((scope): scope is Scope => (SCOPES as readonly string[]).includes(scope)))
    if (cache.size >= TOKEN_CACHE_MAX) cache.clear()
    cache.set(hexHash, { principal, until: now + TOKEN_CACHE_MS })
    db.store.touchApiToken(record.id).catch((error: unknown) => fastify.log.warn({ err: error }, 'could not record token use'))
    return principal
  }

  async function authenticate (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const header = request.headers.authorization
    const token = bearerTokenOf(header)
    if (token === undefined) {
      reply.header('www-authenticate', WWW_AUTHENTICATE)
      throw header === undefined
        ? new AppError('AUTH_1001', 'Missing bearer token: send the header "Authorization: Bearer <token>".')
        : new AppError('AUTH_1001', 'The Authorization header must be "Bearer <token>".')
    }
    const principal = await principalForToken(token)
    if (principal === null) {
      reply.header('www-authenticate', `${WWW_AUTHENTICATE}, error="invalid_token"`)
      throw new AppError('AUTH_1002', 'The bearer token is not valid. Check the token, or create a new one with `cli token create`.')
    }
    request.principal = principal
  }

  fastify.decorateRequest('principal', null)
  fastify.decorate('auth', { authenticate, createLocalTokenIfNone })
}, { name: 'auth', dependencies: ['config', 'db'] })
