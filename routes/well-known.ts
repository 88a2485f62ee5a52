import { Type } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'
import { SCOPES } from '../schema/principal.js'

const ProtectedResourceMetadata = Type.Object({
  resource: Type.String(),
  authorization_servers: Type.Array(Type.String()),
  scopes_supported: Type.Array(Type.String()),
  bearer_methods_supported: Type.Array(Type.String()),
  resource_name: Type.String()
})

/**
 * OAuth 2.0 Protected Resource Metadata (RFC 9728): how an OAuth client such as Claude.ai finds
 * the authorization server for /mcp. Served at the root well-known path and at the path-suffixed
 * one (`/.well-known/oauth-protected-resource/mcp`) that MCP clients derive from the endpoint URL
 * and that every 401 names in `resource_metadata`. Public, and readable from any browser origin.
 */
export default async function wellKnownRoutes (fastify: FastifyInstance) {
  const { config, auth } = fastify
  const authorizationServers = config.OIDC_ISSUER === undefined ? [] : [config.OIDC_ISSUER]

  for (const url of ['/.well-known/oauth-protected-resource', '/.well-known/oauth-protected-resource/mcp']) {
    fastify.get(url, { config: { checkOrigin: false }, schema: { response: { 200: ProtectedResourceMetadata } } }, async (request, reply) => {
      // Without PUBLIC_URL the resource comes from this request's Host: not for shared caches.
      reply.header('access-control-allow-origin', '*').header('cache-control', config.PUBLIC_URL === undefined ? 'no-store' : 'public, max-age=300')
      return {
        resource: auth.resourceUrl(request).href,
        authorization_servers: authorizationServers,
        // context:admin is granted by roles only (never from a requested OAuth scope), so clients should not ask for it.
        scopes_supported: SCOPES.filter((scope) => scope !== 'context:admin'),
        bearer_methods_supported: ['header'],
        resource_name: 'Shared Context'
      }
    })
  }
}
