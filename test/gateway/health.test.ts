import { spawn } from 'node:child_process'
import { connect } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { test } from 'tap'
import { buildApp } from '../../app.js'
import { loadConfig } from '../../schema/config.js'
import { testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'
import { TEST_TOKEN } from '../helper.js'
import { startOidcProvider } from '../oidc-provider.js'
import { TcpProxy, viaProxy } from '../tcp-proxy.js'
import { startFinance } from './upstreams/finance.js'
import { startHr } from './upstreams/hr.js'
import { writeUpstreamsFile } from './gateway-helper.js'
import { freePort } from '../../scripts/free-port.js'

type Tap = Parameters<typeof testDatabase>[0]
type Part = 'redis' | 'jwks' | 'hr' | 'finance' | 'database'

/**
 * The review's health matrix (shared/design.md §10), one row per case. hr is a non-critical
 * upstream, finance a critical one. "unhealthy" is /ready's `unavailable` with HTTP 503.
 */
const MATRIX: Array<{ case: string, down: Part[], status: 'ok' | 'degraded' | 'unavailable', http: number }> = [
  { case: 'all up', down: [], status: 'ok', http: 200 },
  { case: 'Redis down', down: ['redis'], status: 'degraded', http: 200 },
  { case: 'identity provider (JWKS) down', down: ['jwks'], status: 'degraded', http: 200 },
  { case: 'a non-critical upstream (hr) down', down: ['hr'], status: 'ok', http: 200 },
  { case: 'a critical upstream (finance) down', down: ['finance'], status: 'degraded', http: 200 },
  { case: 'database down', down: ['database'], status: 'unavailable', http: 503 },
  { case: 'everything down', down: ['redis', 'jwks', 'hr', 'finance', 'database'], status: 'unavailable', http: 503 }
]

/** The machine's Redis (REDIS_URL, as CI sets it), else a redis-server of this test's own. */
async function redisUrl (t: Tap): Promise<string> {
  if ((process.env.REDIS_URL ?? '') !== '') return process.env.REDIS_URL!
  const port = await freePort()
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  t.teardown(() => { child.kill() })
  const url = `redis://127.0.0.1:${port}`
  await eventually(async () => await new Promise<boolean>((resolve) => {
    const probe = connect(port, '127.0.0.1')
    probe.once('connect', () => { probe.destroy(); resolve(true) })
    probe.once('error', () => resolve(false))
  }), { what: 'redis-server to listen' })
  return url
}

test('/ready: the review\'s health matrix', async (t) => {
  const [hr, finance] = await Promise.all([startHr(), startFinance()])
  t.teardown(() => hr.close())
  t.teardown(() => finance.close())
  const idp = await startOidcProvider({ audience: 'https://ctx.example.com/mcp' })
  t.teardown(() => idp.close())
  const { url: databaseUrl } = await testDatabase(t)
  const database = new TcpProxy(new URL(databaseUrl).hostname, Number(new URL(databaseUrl).port))
  const redisTarget = new URL(await redisUrl(t))
  const redis = new TcpProxy(redisTarget.hostname, Number(redisTarget.port))
  await Promise.all([database.start(), redis.start()])
  t.teardown(() => database.stop())
  t.teardown(() => redis.stop())
  const METRICS_TOKEN = 'ready-details-metrics-token-0123456789'
  // Down here means killed (refused at once), never stalled: the ping's timeout only has to outlast
  // a busy machine (at 500 ms a loaded CI run saw a healthy upstream flap to down between two reads).
  const upstreamsFile = writeUpstreamsFile(t, [
    { name: 'hr', url: hr.url, allow: { 'hr:read': ['*'] }, critical: false, healthCheckSeconds: 1, connectTimeoutMs: 3000, breaker: { failures: 1, openMs: 500 } },
    { name: 'finance', url: finance.url, allow: { 'finance:read': ['*'] }, critical: true, healthCheckSeconds: 1, connectTimeoutMs: 3000, breaker: { failures: 1, openMs: 500 } }
  ])

  // The identity provider's state is read at start (its keys are then cached): one app per state.
  const apps = new Map<boolean, FastifyInstance>()
  async function appWith (jwksDown: boolean): Promise<FastifyInstance> {
    const existing = apps.get(jwksDown)
    if (existing !== undefined) return existing
    idp.jwksMode = jwksDown ? 'fail' : 'ok'
    const app = await buildApp(loadConfig({
      AUTH_TOKEN: TEST_TOKEN,
      DATABASE_URL: viaProxy(databaseUrl, database),
      DB_CONNECT_TIMEOUT_MS: '2000',
      REDIS_URL: viaProxy(redisTarget.toString(), redis),
      RATE_LIMIT_KEY_PREFIX: `gateway-health-${process.pid}:`,
      OIDC_ISSUER: idp.issuer,
      PUBLIC_URL: 'https://ctx.example.com',
      UPSTREAMS_FILE: upstreamsFile,
      METRICS_TOKEN,
      LOG_LEVEL: 'silent'
    }))
    t.teardown(() => app.close())
    await app.ready()
    apps.set(jwksDown, app)
    idp.jwksMode = 'ok'
    return app
  }

  const serverUp = new Map<Part, boolean>([['hr', true], ['finance', true]])
  async function setDown (down: Set<Part>): Promise<void> {
    if (down.has('redis') && redis.state === 'up') await redis.cut()
    if (!down.has('redis') && redis.state !== 'up') await redis.restore()
    if (down.has('database') && database.state === 'up') database.stall()
    if (!down.has('database') && database.state !== 'up') await database.restore()
    for (const [part, server] of [['hr', hr], ['finance', finance]] as const) {
      if (down.has(part) && serverUp.get(part) === true) {
        await server.kill()
        serverUp.set(part, false)
      }
      if (!down.has(part) && serverUp.get(part) === false) {
        await server.start()
        serverUp.set(part, true)
      }
    }
  }

  for (const row of MATRIX) {
    await t.test(row.case, async (t) => {
      const down = new Set(row.down)
      const app = await appWith(down.has('jwks'))
      await setDown(down)
      type Ready = { status: string, redis: string, identity_provider: string, database: string, upstreams: Array<{ name: string, status: string, critical: boolean }> }
      const expectedUpstreams = (ready: Ready): boolean => ready.upstreams.every((upstream) => upstream.status === (down.has(upstream.name as Part) ? 'down' : 'ok'))
      const ready = await eventually(async () => {
        const response = await app.inject({ method: 'GET', url: '/ready', headers: { authorization: `Bearer ${METRICS_TOKEN}` } })
        const body = response.json() as Ready
        const settled = response.statusCode === row.http && body.status === row.status && expectedUpstreams(body) &&
          body.redis === (down.has('redis') ? 'degraded' : 'ok') && body.identity_provider === (down.has('jwks') ? 'degraded' : 'ok')
        return settled ? body : undefined
      }, { what: `/ready to say ${row.status} (${row.http}) for "${row.case}"`, timeoutMs: 20_000 })
      t.equal(ready?.status, row.status)
      t.same(ready?.upstreams.map((upstream) => [upstream.name, upstream.status, upstream.critical]), [
        ['hr', down.has('hr') ? 'down' : 'ok', false],
        ['finance', down.has('finance') ? 'down' : 'ok', true]
      ], 'every upstream listed, down or ok, to whoever holds METRICS_TOKEN')
      const anonymous = await app.inject({ method: 'GET', url: '/ready' })
      const body = anonymous.json<Ready & { upstream_summary: unknown }>()
      t.equal(anonymous.statusCode, row.http, 'the same status code without credentials')
      t.equal(body.status, row.status)
      t.equal(body.upstreams, undefined, 'but no upstream listed')
      t.same(body.upstream_summary, { ok: 2 - ['hr', 'finance'].filter((name) => down.has(name as Part)).length, down: ['hr', 'finance'].filter((name) => down.has(name as Part)).length, critical_down: down.has('finance') ? 1 : 0 }, 'only counted')
      t.notMatch(anonymous.body, /finance|"hr"/, 'no upstream name')
      const wrong = await app.inject({ method: 'GET', url: '/ready', headers: { authorization: 'Bearer not-the-metrics-token' } })
      t.equal(wrong.json<Ready>().upstreams, undefined, 'nor with a wrong token')
    })
  }
  // Back to all up, on both apps: each recovers by itself (and closes quickly once its pool is healthy again).
  await setDown(new Set())
  for (const app of apps.values()) {
    await eventually(async () => (await app.inject({ method: 'GET', url: '/ready' })).json<{ database: string }>().database === 'ok', { what: 'the database back' })
  }
})
