import { Type } from '@sinclair/typebox'
import type { FastifyInstance, HTTPMethods } from 'fastify'
import { howToGetAToken } from '../plugins/auth.js'
import { AppError } from '../schema/errors.js'
import { grantableScopes } from '../auth/roles.js'

const ProtectedResourceMetadata = Type.Object({
  resource: Type.String(),
  authorization_servers: Type.Array(Type.String()),
  scopes_supported: Type.Array(Type.String()),
  bearer_methods_supported: Type.Array(Type.String()),
  resource_name: Type.String()
})

/**
 * Where OAuth clients look when the server has no authorization server: the metadata documents,
 * and the endpoints the MCP SDK clients fall back to (the 2025-03-26 spec's defaults, with the
 * server's origin as authorization server), which they try after any 401, advertised or not.
 */
const OAUTH_PATHS: ReadonlyArray<[HTTPMethods, string]> = [
  ['GET', '/.well-known/oauth-protected-resource'],
  ['GET', '/.well-known/oauth-protected-resource/*'],
  ['GET', '/.well-known/oauth-authorization-server'],
  ['GET', '/.well-known/oauth-authorization-server/*'],
  ['GET', '/.well-known/openid-configuration'],
  ['GET', '/.well-known/openid-configuration/*'],
  ['GET', '/mcp/.well-known/openid-configuration'],
  ['POST', '/register'],
  ['GET', '/authorize'],
  ['POST', '/token']
]

/**
 * OAuth 2.0 Protected Resource Metadata (RFC 9728): how an OAuth client such as Claude.ai finds
 * the authorization server for /mcp. Served at the root well-known path and at the path-suffixed
 * one (`/.well-known/oauth-protected-resource/mcp`) that MCP clients derive from the endpoint URL
 * and that every 401 names in `resource_metadata`. Public, and readable from any browser origin.
 * With no authorization server there is no document (a document listing none still sends OAuth
 * clients to register at an authorization server that does not exist): every OAuth path answers
 * 404 with a message saying so, which is what such a client shows when it gives up.
 */
export default async function wellKnownRoutes (fastify: FastifyInstance) {
  const { config, auth } = fastify
  const { authorizationServers } = auth

  if (authorizationServers.length === 0) {
    const message = 'This server has no OAuth sign-in: it takes bearer tokens only (header "Authorization: Bearer <token>"), ' +
      `so an OAuth client cannot discover, register or sign in here. A 401 from /mcp means the bearer token was missing or wrong: ${howToGetAToken(config)}.`
    for (const [method, url] of OAUTH_PATHS) {
      fastify.route({ method, url, handler: async () => { throw new AppError('REQ_1101', message, undefined, 404) } })
    }
    return
  }

  const scopesSupported = grantableScopes(config)
  for (const url of ['/.well-known/oauth-protected-resource', '/.well-known/oauth-protected-resource/mcp']) {
    fastify.get(url, { config: { checkOrigin: false }, schema: { response: { 200: ProtectedResourceMetadata } } }, async (request, reply) => {
      // Without PUBLIC_URL the resource comes from this request's Host: not for shared caches.
      reply.header('access-control-allow-origin', '*').header('cache-control', config.PUBLIC_URL === undefined ? 'no-store' : 'public, max-age=300')
      return {
        resource: auth.resourceUrl(request).href,
        authorization_servers: [...authorizationServers],
        // context:admin is granted by roles only (never from a requested OAuth scope), so clients should not ask for it.
        scopes_supported: scopesSupported,
        bearer_methods_supported: ['header'],
        resource_name: 'Shared Context'
      }
    })
  }
}
