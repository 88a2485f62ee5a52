import { Type } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'

const READY_TIMEOUT_MS = 2000

const Ready = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('unavailable')]),
  database: Type.Union([Type.Literal('ok'), Type.Literal('failed')])
})

/** /health: the process answers. /ready: it can serve (the database answers within 2 s). */
export default async function healthRoutes (fastify: FastifyInstance) {
  fastify.get('/health', {
    schema: { response: { 200: Type.Object({ status: Type.Literal('ok') }) } }
  }, async () => ({ status: 'ok' as const }))

  fastify.get('/ready', {
    schema: { response: { 200: Ready, 503: Ready } }
  }, async (request, reply) => {
    if (fastify.lifecycle.closing) return reply.code(503).send({ status: 'unavailable' as const, database: 'ok' as const })
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([
        fastify.db.store.ping(),
        new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new Error('timed out')), READY_TIMEOUT_MS) })
      ])
      return { status: 'ok' as const, database: 'ok' as const }
    } catch (error) {
      request.log.warn({ err: error }, 'readiness check: database unavailable')
      return reply.code(503).send({ status: 'unavailable' as const, database: 'failed' as const })
    } finally {
      clearTimeout(timer)
    }
  })
}
