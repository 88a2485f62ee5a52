import { randomBytes } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { buildApp } from '../app.js'
import { hashToken } from '../plugins/auth.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { TEST_TOKEN } from './helper.js'
import { TcpProxy, viaProxy } from './tcp-proxy.js'

const REDIS_URL = process.env.REDIS_URL ?? ''
const skip = REDIS_URL === '' ? 'needs Redis: set REDIS_URL (CI sets it)' : false
const LIMITS = 'reader=100/h 3/m; ip=2/m'

/**
 * `count` app instances on one database, with a reader token whose principal is unique to this
 * run (other test files may share the Redis server), and a client address of its own.
 */
async function instances (t: Test, count: number, redisUrl: string) {
  const { url } = await testDatabase(t)
  const config = loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent', REDIS_URL: redisUrl, RATE_LIMITS: LIMITS })
  const prefix = config.RATE_LIMIT_KEY_PREFIX
  const apps: FastifyInstance[] = []
  t.teardown(() => Promise.all(apps.map((app) => app.close())))
  for (let i = 0; i < count; i++) {
    const app = await buildApp(config)
    apps.push(app)
    await app.ready()
  }
  const name = `rl-${randomBytes(6).toString('hex')}`
  const token = `scm_${name}_${randomBytes(16).toString('hex')}`
  await apps[0]!.db.tokens.insertApiToken({ name, hash: hashToken(token).toString('hex'), namespace: 'default', scopes: ['context:read'] })
  const address = `10.${randomBytes(1)[0]}.${randomBytes(1)[0]}.${randomBytes(1)[0]}`
  const keys = [`minute:token:${name}`, `hour:token:${name}`, `minute:auth-failures:${address}`].map((key) => prefix + key)
  t.teardown(async () => {
    const redis = new Redis(REDIS_URL, { lazyConnect: true })
    await redis.connect()
    await redis.del(...keys)
    redis.disconnect()
  })
  return { apps, token, address, minuteKey: keys[0]! }
}

function ping (app: FastifyInstance, token: string | null, address = '127.0.0.1'): Promise<LightMyRequestResponse> {
  return app.inject({
    method: 'POST',
    url: '/mcp',
    remoteAddress: address,
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(token !== null && { authorization: `Bearer ${token}` }) },
    payload: { jsonrpc: '2.0', id: 1, method: 'ping' }
  })
}

async function until (condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

test('two instances sharing Redis share a principal\'s counter and an address\'s failed attempts', { skip }, async (t) => {
  const { apps: [one, two], token, address, minuteKey } = await instances(t, 2, REDIS_URL)
  if (one === undefined || two === undefined) throw new Error('instances missing')
  t.equal(one.redis.status(), 'ok')
  t.equal((await ping(one, token)).statusCode, 200)
  t.equal((await ping(two, token)).statusCode, 200)
  t.equal((await ping(one, token)).statusCode, 200)
  t.equal((await ping(two, token)).statusCode, 429, 'the fourth call in the minute is refused, whichever instance counted the others')
  t.equal((await ping(one, token)).statusCode, 429)

  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  t.equal(await redis.get(minuteKey), '5', 'the counter lives in Redis, under the per-minute namespace')

  t.equal((await ping(one, 'bad-token', address)).statusCode, 401)
  t.equal((await ping(two, 'bad-token', address)).statusCode, 401)
  t.equal((await ping(one, 'bad-token', address)).statusCode, 429, 'failures on either instance count')
})

test('Redis cut mid-run: requests are still answered and still limited, in memory; counting returns to Redis when it is back', { skip }, async (t) => {
  const target = new URL(REDIS_URL)
  const proxy = new TcpProxy(target.hostname, Number(target.port || 6379))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const { apps: [app], token, address } = await instances(t, 1, viaProxy(REDIS_URL, proxy))
  if (app === undefined) throw new Error('instance missing')
  t.equal(app.redis.status(), 'ok')
  t.equal((await ping(app, token)).statusCode, 200)
  t.equal((await ping(app, token)).statusCode, 200, 'two calls counted in Redis')

  await proxy.cut()
  const statuses: number[] = []
  for (let i = 0; i < 5; i++) statuses.push((await ping(app, token)).statusCode)
  t.same(statuses, [200, 200, 200, 429, 429], 'in memory: three calls pass, then the limit holds (no 5xx, not unlimited)')
  t.equal(app.redis.status(), 'degraded')
  t.equal((await ping(app, 'bad-token', address)).statusCode, 401)
  t.equal((await ping(app, 'bad-token', address)).statusCode, 401)
  t.equal((await ping(app, 'bad-token', address)).statusCode, 429, 'failed attempts are limited in memory too')
  t.equal((await ping(app, TEST_TOKEN)).statusCode, 200, 'other callers are served')

  await proxy.restore()
  await until(() => app.redis.status() === 'ok', 'Redis is reachable again')
  t.equal((await ping(app, token)).statusCode, 200, 'Redis had counted two calls: one more passes')
  t.equal((await ping(app, token)).statusCode, 429, 'then the shared counter refuses again')
})

test('Redis down at start: the app starts, serves /mcp and limits in memory', { skip }, async (t) => {
  const target = new URL(REDIS_URL)
  const proxy = new TcpProxy(target.hostname, Number(target.port || 6379))
  await proxy.start()
  await proxy.cut()
  t.teardown(() => proxy.stop())
  const { apps: [app], token } = await instances(t, 1, viaProxy(REDIS_URL, proxy))
  if (app === undefined) throw new Error('instance missing')
  t.equal(app.redis.status(), 'degraded')
  const statuses: number[] = []
  for (let i = 0; i < 4; i++) statuses.push((await ping(app, token)).statusCode)
  t.same(statuses, [200, 200, 200, 429], 'served, and limited in memory')

  await proxy.restore()
  await until(() => app.redis.status() === 'ok', 'Redis is reachable')
  t.equal((await ping(app, token)).statusCode, 200, 'once Redis is back the counter is the (fresh) shared one')
})
