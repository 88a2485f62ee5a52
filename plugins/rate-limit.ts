import rateLimit from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import { AppError } from '../schema/errors.js'

/**
 * Registers @fastify/rate-limit (per instance, in memory) without a global limit; routes opt in
 * with `config: { rateLimit }` (routes/mcp.ts keys it by principal, after authentication).
 */
export default fp(async (fastify) => {
  await fastify.register(rateLimit, {
    global: false,
    errorResponseBuilder: (_request, context) => new AppError('REQ_1103', `Rate limit of ${context.max} requests per minute reached; retry in ${Math.ceil(context.ttl / 1000)} s.`)
  })
}, { name: 'rate-limit' })
