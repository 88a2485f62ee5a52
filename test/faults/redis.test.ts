import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { Redis } from 'ioredis'
import { test } from 'tap'
import { buildApp } from '../../app.js'
import { COMMAND_TIMEOUT_MS, MAX_REDIS_ROUNDS_PER_REQUEST } from '../../plugins/redis.js'
import { loadConfig } from '../../schema/config.js'
import { testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'
import { rpc, TEST_TOKEN } from '../helper.js'
import { startOidcProvider } from '../oidc-provider.js'
import { TcpProxy, viaProxy } from '../tcp-proxy.js'

// Redis that hangs (accepts, never answers), beyond test/rate-limit-redis.test.ts (Redis cut):
// requests are answered and limited in memory while it hangs, and none waits on it for more than
// 1 s. That bound is pinned without a clock: every Redis command a request issues is recorded, the
// round trips it waited on one after another are counted, and each round trip is bounded by
// ioredis's commandTimeout, so rounds × commandTimeout is the most any request can wait on Redis.

const REDIS_URL = process.env.REDIS_URL ?? ''
const skip = REDIS_URL === '' ? 'needs Redis: set REDIS_URL (CI sets it)' : false
const PUBLIC_URL = 'https://ctx.example.com'
const PER_MINUTE = 4

/** Counts, per request, the Redis round trips it waited on one after another. */
function roundCounter (client: Redis) {
  let pending = 0
  let rounds = 0
  let commands = 0
  const send = client.sendCommand.bind(client)
  client.sendCommand = ((command: Parameters<Redis['sendCommand']>[0], stream?: Parameters<Redis['sendCommand']>[1]) => {
    commands++
    if (pending === 0) rounds++
    pending++
    const result = send(command, stream) as Promise<unknown>
    const settled = () => { pending-- }
    result.then(settled, settled)
    return result
  }) as Redis['sendCommand']
  return {
    /** Runs one request alone and returns what it cost in Redis round trips. */
    async measure<T> (run: () => Promise<T>): Promise<{ value: T, rounds: number, commands: number }> {
      await eventually(() => pending === 0, { what: 'earlier Redis commands to settle' })
      rounds = 0
      commands = 0
      const value = await run()
      return { value, rounds, commands }
    }
  }
}

test('Redis stalled: requests are answered and still limited, in memory; none waits on Redis for more than 1 s', { skip }, async (t) => {
  const provider = await startOidcProvider({ audience: `${PUBLIC_URL}/mcp` })
  t.teardown(() => provider.close())
  const redisTarget = new URL(REDIS_URL)
  const proxy = new TcpProxy(redisTarget.hostname, Number(redisTarget.port || 6379))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const { url } = await testDatabase(t)
  const app: FastifyInstance = await buildApp(loadConfig({
    AUTH_TOKEN: TEST_TOKEN,
    DATABASE_URL: url,
    LOG_LEVEL: 'silent',
    PUBLIC_URL,
    ALLOWED_HOSTS: 'localhost',
    OIDC_ISSUER: provider.issuer,
    JWT_ROLE_MAP: JSON.stringify({ writer: { scopes: ['context:read', 'context:write'] } }),
    REDIS_URL: viaProxy(REDIS_URL, proxy),
    // Principals unique to this run: other files may share the Redis server.
    RATE_LIMITS: `admin=1000/h 1000/m; writer=1000/h ${PER_MINUTE}/m; default=100/h 100/m; ip=1000/m`
  }))
  t.teardown(() => app.close())
  await app.ready()
  const client = app.redis.client
  if (client === null) throw new Error('no Redis client')
  t.equal(app.redis.status(), 'ok', 'connected through the proxy')
  t.equal(client.options.commandTimeout, COMMAND_TIMEOUT_MS, 'commands time out')
  const counter = roundCounter(client)
  const jwt = await provider.sign({ sub: `redis-stall-${randomBytes(4).toString('hex')}`, realm_access: { roles: ['writer'] } })
  const ping = (token: string) => rpc(app, 'ping', {}, { token })

  const before = await counter.measure(() => ping(jwt))
  t.equal(before.value.statusCode, 200)
  t.ok(before.commands > 0, `a JWT request uses Redis while it answers (${before.commands} commands in ${before.rounds} rounds)`)

  proxy.stall()
  const cases: Array<[string, () => Promise<{ statusCode: number }>, number]> = [
    ['a JWT request', () => ping(jwt), 200],
    ['a static-token request', () => ping(TEST_TOKEN), 200],
    ['a wrong token', () => ping('wrong-token-0123456789abcdef0123456789abcdef'), 401]
  ]
  let worst = 0
  for (const [what, run, status] of cases) {
    const { value, rounds } = await counter.measure(run)
    t.equal(value.statusCode, status, `${what} is answered while Redis is stalled`)
    t.ok(rounds <= MAX_REDIS_ROUNDS_PER_REQUEST, `${what} waited on at most ${MAX_REDIS_ROUNDS_PER_REQUEST} Redis round trips (${rounds})`)
    worst = Math.max(worst, rounds)
  }
  t.ok(MAX_REDIS_ROUNDS_PER_REQUEST * COMMAND_TIMEOUT_MS <= 1000, `the bound: ${worst} rounds seen, at most ${MAX_REDIS_ROUNDS_PER_REQUEST} × ${COMMAND_TIMEOUT_MS} ms`)
  t.equal(proxy.state, 'stalled', 'all while Redis was still stalled')

  // The per-minute limit still holds, counted in memory once the client has given the socket up.
  await eventually(() => app.redis.status() === 'degraded', { what: 'the client to give up the stalled socket' })
  const ready = await app.inject('/ready')
  t.equal(ready.statusCode, 200, '/ready is not 503 for Redis alone')
  t.equal(ready.json().redis, 'degraded')
  const statuses: number[] = []
  for (let i = 0; i <= PER_MINUTE; i++) statuses.push((await ping(jwt)).statusCode)
  t.ok(statuses.includes(429), `limited in memory: ${statuses.join(', ')}`)
  const refused = await ping(jwt)
  t.equal(refused.json().error?.code ?? refused.json().error?.data?.code, 'REQ_1103', 'with the catalogue code')

  await proxy.restore()
  await eventually(() => app.redis.status() === 'ok', { what: 'Redis to be used again' })
  t.equal((await app.inject('/ready')).json().redis, 'ok', 'recovered without a restart')
})
