import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { buildApp } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { eventually } from './eventually.js'
import { build, rpc, TEST_TOKEN } from './helper.js'
import { TcpProxy, viaProxy } from './tcp-proxy.js'

const REDIS_URL = process.env.REDIS_URL ?? ''
const skip = REDIS_URL === '' ? 'needs Redis: set REDIS_URL (CI sets it)' : false

interface LogLine { level: number, msg: string, [field: string]: unknown }
const WARN = 40

/** An app whose log lines (info and up) are kept in `lines`, and a proxy in front of Redis. */
async function appWithLog (t: Test, redisUrl: (proxy: TcpProxy) => string, proxyUp: boolean) {
  const target = new URL(REDIS_URL)
  const proxy = new TcpProxy(target.hostname, Number(target.port || 6379))
  await proxy.start()
  if (!proxyUp) await proxy.cut()
  t.teardown(() => proxy.stop())
  const lines: LogLine[] = []
  const raw: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter((l) => l !== '')) {
        raw.push(line)
        lines.push(JSON.parse(line) as LogLine)
      }
      done()
    }
  })
  const { url } = await testDatabase(t)
  const app: FastifyInstance = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, REDIS_URL: redisUrl(proxy) }), { logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  await app.ready()
  return { app, proxy, lines, raw }
}

/** Counts the client's reconnect attempts from now on (ioredis emits 'reconnecting' before each). */
function reconnectAttempts (app: FastifyInstance): () => number {
  let count = 0
  app.redis.client?.on('reconnecting', () => { count++ })
  return () => count
}

const redisLines = (lines: LogLine[]) => lines.filter((line) => /Redis/.test(line.msg))

test('without REDIS_URL there is no client and the status is absent', async (t) => {
  const app = await build(t)
  t.equal(app.redis.client, null)
  t.equal(app.redis.status(), 'absent')
  t.strictSame((await app.inject('/ready')).json(), { status: 'ok', database: 'ok', redis: 'absent', identity_provider: 'absent', authorization_server: 'absent' })
})

test('Redis down at start: the app starts degraded, warns once without the password, keeps reconnecting', { skip }, async (t) => {
  const password = 'pw-that-must-not-be-logged'
  const { app, proxy, lines, raw } = await appWithLog(t, (p) => {
    const url = new URL(viaProxy(REDIS_URL, p))
    url.password = password
    return url.toString()
  }, false)
  t.equal(app.redis.status(), 'degraded')
  t.equal((await rpc(app, 'ping')).statusCode, 200, '/mcp is served')
  const ready = await app.inject('/ready')
  t.equal(ready.statusCode, 200, 'Redis alone never makes the server unready')
  t.match(ready.json(), { status: 'degraded', database: 'ok', redis: 'degraded', identity_provider: 'absent' })
  // Several reconnect attempts fail meanwhile (100 ms, 200 ms, ...).
  const attempts = reconnectAttempts(app)
  await eventually(() => attempts() >= 3, { what: 'three more reconnect attempts' })
  t.equal((await rpc(app, 'ping')).statusCode, 200)
  const warnings = redisLines(lines).filter((line) => line.level === WARN)
  t.equal(warnings.length, 1, 'one warning, not one per attempt or request')
  t.equal(warnings[0]?.redis, `redis://127.0.0.1:${proxy.port}`, 'the warning says where Redis is')
  t.match(String(warnings[0]?.reason), /ECONNREFUSED|closed/, 'and why')
  t.notOk(raw.some((line) => line.includes(password)), 'the password appears in no log line')
})

test('Redis lost and back at run time: one warning, one recovery line, status follows', { skip }, async (t) => {
  const { app, proxy, lines } = await appWithLog(t, (p) => viaProxy(REDIS_URL, p), true)
  t.equal(app.redis.status(), 'ok')
  t.equal(redisLines(lines).length, 0, 'nothing logged while Redis is fine')
  t.equal(await app.redis.client?.ping(), 'PONG')

  await proxy.cut()
  for (let i = 0; i < 5; i++) t.equal((await rpc(app, 'ping')).statusCode, 200, 'served while Redis is away')
  await eventually(() => app.redis.status() === 'degraded', { what: 'the client to notice' })
  const attempts = reconnectAttempts(app)
  await eventually(() => attempts() >= 2, { what: 'two reconnect attempts during the outage' })
  t.equal(redisLines(lines).filter((line) => line.level === WARN).length, 1, 'one warning for the outage')

  await proxy.restore()
  await eventually(() => app.redis.status() === 'ok', { what: 'Redis to be reachable again' })
  t.same(redisLines(lines).map((line) => line.msg), [
    'Redis unreachable: rate limits fall back to per-instance memory until it is back',
    'Redis reachable again'
  ])

  const client = app.redis.client
  await app.close()
  t.equal(client?.status, 'end', 'closing the app disconnects the client')
  t.equal(redisLines(lines).length, 2, 'a deliberate disconnect is not reported as an outage')
})
