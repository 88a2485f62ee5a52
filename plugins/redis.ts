import fp from 'fastify-plugin'
import { Redis } from 'ioredis'

export type RedisStatus = 'ok' | 'degraded' | 'absent'

declare module 'fastify' {
  interface FastifyInstance {
    redis: {
      /**
       * The shared client, or null without REDIS_URL. Commands fail at once while it is not
       * connected (no offline queue) and time out after COMMAND_TIMEOUT_MS, so callers must have
       * a fallback and never wait on Redis for long.
       */
      client: Redis | null
      /** ok: connected and ready; degraded: configured but not reachable now; absent: no REDIS_URL. */
      status: () => RedisStatus
    }
  }
}

const CONNECT_TIMEOUT_MS = 2000
// A request makes at most three Redis round trips one after another (the address budget, a JWT's
// revocation entry, the principal counters), so with Redis stalled it waits at most 750 ms on it.
export const COMMAND_TIMEOUT_MS = 250
export const MAX_REDIS_ROUNDS_PER_REQUEST = 3
// A socket that stops answering while commands are pending is dropped after this long, so the
// client turns to reconnecting (and callers to their fallback) instead of timing out per command.
const SOCKET_TIMEOUT_MS = 2000
const RECONNECT_MAX_DELAY_MS = 2000

/** Where Redis is, for log lines: scheme, host and port only (the URL may carry a password). */
export function describeRedisUrl (url: string): string {
  try {
    const parsed = new URL(url)
    return `${parsed.protocol}//${parsed.host}`
  } catch {
    return 'redis'
  }
}

/**
 * Optional Redis (REDIS_URL). The server starts and serves without it: when Redis is down at start
 * or goes away later, `status()` says degraded and the client keeps reconnecting in the background.
 * One warning when it goes away, one line when it is back.
 */
export default fp(async (fastify) => {
  const url = fastify.config.REDIS_URL
  if (url === undefined) {
    fastify.decorate('redis', { client: null, status: () => 'absent' as const })
    return
  }
  const where = describeRedisUrl(url)
  const client = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: CONNECT_TIMEOUT_MS,
    commandTimeout: COMMAND_TIMEOUT_MS,
    socketTimeout: SOCKET_TIMEOUT_MS,
    retryStrategy: (attempt) => Math.min(attempt * 100, RECONNECT_MAX_DELAY_MS)
  })

  let down = false
  let closing = false
  let lastError = 'connection closed'
  client.on('error', (error: Error) => { lastError = error.message })
  client.on('close', () => {
    if (down || closing) return
    down = true
    fastify.log.warn({ redis: where, reason: lastError }, 'Redis unreachable: rate limits fall back to per-instance memory until it is back')
  })
  client.on('ready', () => {
    if (down) fastify.log.info({ redis: where }, 'Redis reachable again')
    down = false
  })

  fastify.decorate('redis', {
    client,
    status: () => client.status === 'ready' ? 'ok' as const : 'degraded' as const
  })
  fastify.addHook('onClose', async () => {
    closing = true
    if (client.status === 'end') return
    // disconnect() only starts closing the socket; wait for the end (bounded) so nothing outlives close.
    const ended = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 1000)
      client.once('end', () => { clearTimeout(timer); resolve() })
    })
    client.disconnect()
    await ended
  })

  // Wait for the first connection (bounded by connectTimeout); a failure leaves it reconnecting.
  await client.connect().catch(() => {})
}, { name: 'redis', dependencies: ['config'] })
