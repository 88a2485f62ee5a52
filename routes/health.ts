import { timingSafeEqual } from 'node:crypto'
import { Type } from '@sinclair/typebox'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { hashToken } from '../plugins/auth.js'
import { isLoopbackHost } from '../schema/config.js'

const READY_TIMEOUT_MS = 2000

const Optional = Type.Union([Type.Literal('ok'), Type.Literal('degraded'), Type.Literal('absent')])
const Ready = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('degraded'), Type.Literal('unavailable')]),
  database: Type.Union([Type.Literal('ok'), Type.Literal('failed')]),
  redis: Optional,
  identity_provider: Optional,
  authorization_server: Optional,
  /** The gateway's upstreams counted (absent when it is off), for anyone. */
  upstream_summary: Type.Optional(Type.Object({ ok: Type.Integer(), down: Type.Integer(), critical_down: Type.Integer() })),
  /**
   * The gateway's upstreams one by one, only for whoever may read /metrics (METRICS_TOKEN as a
   * bearer token, or anyone on a loopback HOST without one): their names are nobody else's business.
   * A non-critical one down changes nothing else, a critical one makes the status degraded.
   */
  upstreams: Type.Optional(Type.Array(Type.Object({
    name: Type.String(),
    status: Type.Union([Type.Literal('ok'), Type.Literal('down')]),
    breaker: Type.Union([Type.Literal('closed'), Type.Literal('open'), Type.Literal('half_open')]),
    critical: Type.Boolean()
  })))
})

/**
 * /health: the process answers. /ready: whether it can serve, dependency by dependency. Only the
 * database decides (503 when it does not answer within 2 s, or while shutting down): without Redis
 * limits and revocation fall back to this process and PostgreSQL, without the identity
 * provider cached keys keep verifying, and the built-in authorization server whose key table
 * could not be read keeps its current keys — each is reported as `degraded`. Gateway upstreams are
 * listed one by one; only a critical one that is down (or whose breaker is open) degrades the status.
 */
export default async function healthRoutes (fastify: FastifyInstance) {
  const { config } = fastify
  const metricsToken = config.METRICS_TOKEN === undefined ? undefined : hashToken(config.METRICS_TOKEN)
  /** The rule of /metrics (routes/metrics.ts), without its refusals: a request that fails it just sees less. */
  function mayReadDetails (request: FastifyRequest): boolean {
    if (metricsToken === undefined) return isLoopbackHost(config.HOST)
    const token = /^Bearer +([\x21-\x7e]{1,4096}) *$/i.exec(request.headers.authorization ?? '')?.[1]
    return token !== undefined && timingSafeEqual(hashToken(token), metricsToken)
  }

  // Any Host: platform probes (Kubernetes, load balancers) call it by the machine's address. It tells nothing but "up".
  fastify.get('/health', {
    config: { checkHost: false, checkOrigin: false },
    schema: { response: { 200: Type.Object({ status: Type.Literal('ok') }) } }
  }, async () => ({ status: 'ok' as const }))

  async function databaseAnswers (): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([
        fastify.db.store.ping(),
        new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new Error('timed out')), READY_TIMEOUT_MS) })
      ])
      return true
    } catch (error) {
      fastify.log.warn({ err: error }, 'readiness check: database unavailable')
      return false
    } finally {
      clearTimeout(timer)
    }
  }

  fastify.get('/ready', {
    schema: { response: { 200: Ready, 503: Ready } }
  }, async (request, reply) => {
    const redis = fastify.redis.status()
    const identityProvider = fastify.auth.identityProviderStatus()
    const authorizationServer = fastify.oauth?.status() ?? 'absent' as const
    const database = await databaseAnswers() ? 'ok' as const : 'failed' as const
    const upstreams = fastify.gateway?.health()
    const criticalDown = upstreams?.some((upstream) => upstream.critical && upstream.status === 'down') === true
    const status = database === 'failed' || fastify.lifecycle.closing
      ? 'unavailable' as const
      : criticalDown || [redis, identityProvider, authorizationServer].includes('degraded') ? 'degraded' as const : 'ok' as const
    const summary = upstreams === undefined
      ? undefined
      : {
          ok: upstreams.filter((upstream) => upstream.status === 'ok').length,
          down: upstreams.filter((upstream) => upstream.status === 'down').length,
          critical_down: upstreams.filter((upstream) => upstream.critical && upstream.status === 'down').length
        }
    return reply.code(status === 'unavailable' ? 503 : 200).header('cache-control', 'no-store').send({
      status,
      database,
      redis,
      identity_provider: identityProvider,
      authorization_server: authorizationServer,
      ...(summary !== undefined && { upstream_summary: summary }),
      ...(upstreams !== undefined && mayReadDetails(request) && { upstreams })
    })
  })
}
