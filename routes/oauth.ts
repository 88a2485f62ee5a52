import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { grantableScopes } from '../auth/roles.js'
import { interactionRoutes } from '../oauth/interaction-routes.js'
import { hashToken } from '../plugins/auth.js'

// Paths oidc-provider answers itself (its routes are in oauth/provider.ts OAUTH_ROUTES).
const PROVIDER_PATHS = ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration', '/oauth/*']
// Per client address (RATE_LIMITS=off turns them off with the rest).
const ENDPOINT_LIMIT = { max: 300, timeWindow: 60_000 }
const REGISTRATION_LIMIT = { max: 30, timeWindow: 3_600_000 }

/**
 * The built-in authorization server's HTTP surface (OAUTH_SERVER=on): metadata, registration,
 * authorize, token, revocation and JWKS handed to oidc-provider as they arrive (it reads the body
 * itself), and the consent page. OAuth clients call the token and registration endpoints from
 * other origins (browser-based clients), so those skip the Origin check; oidc-provider answers
 * CORS for them. The consent page keeps it: only this server's own pages post to it.
 */
export default async function oauthRoutes (fastify: FastifyInstance): Promise<void> {
  const { oauth, db } = fastify
  if (oauth === null) return

  await fastify.register(async (forwarded) => {
    // Leave the body unread: oidc-provider parses it (with its own size limit).
    forwarded.removeAllContentTypeParsers()
    forwarded.addContentTypeParser('*', (_request, _payload, done) => { done(null) })
    const forward = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
      reply.hijack()
      await oauth.handle(request.raw, reply.raw)
    }
    const limited = fastify.rateLimits.limits !== 'off'
    for (const url of PROVIDER_PATHS) {
      forwarded.route({ method: ['GET', 'POST', 'OPTIONS'], url, config: { checkOrigin: false, ...(limited && { rateLimit: ENDPOINT_LIMIT }) }, handler: forward })
    }
    // Registration is open to anyone, so each address may register only a few clients (unused ones are purged after a day).
    forwarded.route({ method: 'POST', url: '/oauth/register', config: { checkOrigin: false, ...(limited && { rateLimit: REGISTRATION_LIMIT }) }, handler: forward })
  })

  await fastify.register(interactionRoutes, {
    provider: oauth.provider,
    store: oauth.store,
    resource: oauth.resource,
    grantableScopes: grantableScopes(fastify.config),
    formSecret: oauth.formSecret,
    metrics: fastify.metrics.oauth,
    findApiToken: async (token) => {
      const record = await db.tokens.findApiTokenByHash(hashToken(token).toString('hex'))
      return record === null || record.revoked ? null : record
    }
  })
}
