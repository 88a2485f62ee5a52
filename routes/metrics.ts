import { timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { hashToken } from '../plugins/auth.js'
import { isLoopbackHost } from '../schema/config.js'
import { AppError } from '../schema/errors.js'

const BEARER = /^Bearer +([\x21-\x7e]{1,4096}) *$/i
const CHALLENGE = 'Bearer realm="shared-context-mcp metrics"'

/**
 * GET /metrics in the Prometheus text format. With METRICS_TOKEN set it requires
 * `Authorization: Bearer <METRICS_TOKEN>`, compared in constant time as SHA-256 digests; failures
 * count against the client address's failed-authentication budget like those on /mcp.
 * Without METRICS_TOKEN it is open on a loopback HOST only (it shows counts and timings, never keys,
 * content or tokens, but usage patterns are nobody else's business); bound to any other address it
 * answers 403 until METRICS_TOKEN is set.
 */
export default async function metricsRoutes (fastify: FastifyInstance) {
  const { config, metrics } = fastify
  const expected = config.METRICS_TOKEN === undefined ? undefined : hashToken(config.METRICS_TOKEN)

  if (expected === undefined && !isLoopbackHost(config.HOST)) {
    fastify.addHook('onRequest', async () => {
      throw new AppError('AUTH_1005', `/metrics is not served to other machines without METRICS_TOKEN (HOST is ${config.HOST}); set METRICS_TOKEN and scrape with it as a bearer token.`)
    })
  }

  if (expected !== undefined) {
    fastify.addHook('onRequest', fastify.rateLimits.guardAuthentication(async (request: FastifyRequest, reply: FastifyReply) => {
      const header = request.headers.authorization
      const token = header === undefined ? undefined : BEARER.exec(header)?.[1]
      if (token === undefined) {
        reply.header('www-authenticate', CHALLENGE)
        throw new AppError('AUTH_1001', 'Missing bearer token: /metrics requires "Authorization: Bearer <METRICS_TOKEN>".')
      }
      if (!timingSafeEqual(hashToken(token), expected)) {
        reply.header('www-authenticate', `${CHALLENGE}, error="invalid_token"`)
        throw new AppError('AUTH_1002', 'The bearer token is not METRICS_TOKEN.')
      }
    }))
  }

  fastify.get('/metrics', async (_request, reply) => {
    const body = await metrics.registry.metrics()
    return reply.header('content-type', metrics.registry.contentType).header('cache-control', 'no-store').send(body)
  })
}
