import cors from '@fastify/cors'
import fp from 'fastify-plugin'
import { splitList } from '../schema/config.js'

/**
 * CORS for browser-based MCP clients: only the origins in CORS_ORIGINS get CORS headers
 * (none by default). Preflight allows the headers Streamable HTTP uses.
 */
export default fp(async (fastify) => {
  const origins = splitList(fastify.config.CORS_ORIGINS)
  if (origins.length === 0) return // no browser origins allowed: no CORS headers, and no hook on every request
  await fastify.register(cors, {
    origin: origins,
    methods: ['GET', 'POST', 'DELETE', 'OPTIONS'],
    allowedHeaders: ['Authorization', 'Content-Type', 'Accept', 'Mcp-Protocol-Version', 'Mcp-Session-Id', 'Mcp-Method', 'Mcp-Name', 'Last-Event-ID'],
    exposedHeaders: ['WWW-Authenticate', 'Mcp-Session-Id', 'Retry-After', 'RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset'],
    maxAge: 600
  })
}, { name: 'cors', dependencies: ['config'] })
