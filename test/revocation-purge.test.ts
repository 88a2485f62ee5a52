import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { test } from 'tap'
import { buildApp, loggerOptions } from '../app.js'
import { revocationKeptUntil } from '../auth/revocation.js'
import configPlugin from '../plugins/config.js'
import dbPlugin from '../plugins/db.js'
import expiryPlugin from '../plugins/expiry.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { eventually } from './eventually.js'
import { rpc } from './helper.js'
import { startOidcProvider } from './oidc-provider.js'

/** Log lines of an app; `next(message)` resolves with the first line from now on whose msg is `message`, or rejects after `timeoutMs`. */
function logWatcher (): { stream: Writable, lines: Array<Record<string, unknown>>, next: (message: string, timeoutMs?: number) => Promise<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const waiting = new Set<{ message: string, resolve: (line: Record<string, unknown>) => void }>()
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const text of chunk.toString('utf8').split('\n').filter((part) => part !== '')) {
        const line = JSON.parse(text) as Record<string, unknown>
        lines.push(line)
        for (const waiter of waiting) {
          if (line.msg === waiter.message) {
            waiting.delete(waiter)
            waiter.resolve(line)
          }
        }
      }
      done()
    }
  })
  const next = (message: string, timeoutMs = 20_000) => new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${message}" log line within ${timeoutMs} ms`)), timeoutMs)
    waiting.add({ message, resolve: (line) => { clearTimeout(timer); resolve(line) } })
  })
  return { stream, lines, next }
}

test('the expiry sweep purges revoked_jtis rows whose token has expired, on its schedule, and keeps live ones', async (t) => {
  const { url, sql } = await testDatabase(t)
  await sql`insert into revoked_jtis (jti, expires_at) values
    ('expired-1', now() - interval '1 second'), ('expired-2', now() - interval '1 day'), ('live', now() + interval '1 hour')`

  const log = logWatcher()
  const app = Fastify({ logger: { ...loggerOptions('debug', false), stream: log.stream } })
  await app.register(configPlugin, { config: loadConfig({ DATABASE_URL: url, EXPIRY_SWEEP_SECONDS: '1', DB_POOL_MAX: '2' }) })
  await app.register(dbPlugin)
  await app.register(expiryPlugin)
  t.teardown(() => app.close())
  const firstSweep = log.next('expiry sweep finished')
  await app.ready()
  const remaining = async () => (await sql<Array<{ jti: string }>>`select jti from revoked_jtis order by jti`).map((row) => row.jti)

  await firstSweep
  t.same(await remaining(), ['live'], 'after a sweep only the revocation of a token that is still valid is left')
  t.match(log.lines.find((line) => line.msg === 'expiry sweep purged the revocations of expired JWTs'), { purged: 2 }, 'the sweep logs how many it purged')

  // A revocation that expires later is purged by a later sweep, without a restart.
  await sql`update revoked_jtis set expires_at = now() - interval '1 second' where jti = 'live'`
  await log.next('expiry sweep finished')
  t.same(await remaining(), [], 'the next sweep purges it')
  t.same(log.lines.filter((line) => (line.level as number) >= 40), [], 'no warning or error')
})

test('a revoked JWT stays refused while its exp plus the clock skew has not passed, across purging sweeps', async (t) => {
  const idp = await startOidcProvider({ audience: 'https://ctx.example.com/mcp' })
  t.teardown(() => idp.close())
  const { url } = await testDatabase(t)
  const app = await buildApp(loadConfig({
    DATABASE_URL: url,
    LOG_LEVEL: 'silent',
    PUBLIC_URL: 'https://ctx.example.com',
    ALLOWED_HOSTS: 'localhost',
    OIDC_ISSUER: idp.issuer,
    JWT_ROLE_MAP: JSON.stringify({ reader: { scopes: ['context:read'] } }),
    JWT_CLOCK_SKEW_SECONDS: '120',
    AUTH_CACHE_SECONDS: '0',
    EXPIRY_SWEEP_SECONDS: '1'
  }))
  t.teardown(() => app.close())
  await app.ready()

  // Expired 10 s ago: still accepted, because the clock skew allowed is 120 s.
  const exp = Math.floor(Date.now() / 1000) - 10
  const jti = 'revoked-in-skew'
  const token = await idp.sign({ exp, jti, realm_access: { roles: ['reader'] } })
  t.equal((await rpc(app, 'tools/list', {}, { token })).statusCode, 200, 'inside the skew window the token is accepted')

  // What `node dist/cli.js token revoke-jti --jti … --expires-at <exp>` stores.
  await app.db.tokens.revokeJti(jti, revocationKeptUntil(new Date(exp * 1000)))
  const sweeps = app.expiry.completedSweeps()
  await eventually(() => app.expiry.completedSweeps() >= sweeps + 2, { what: 'two sweeps after the revocation' })
  const refused = await rpc(app, 'tools/list', {}, { token })
  t.equal(refused.statusCode, 401)
  t.equal((refused.json() as { error: { code: string } }).error.code, 'AUTH_1003', 'still revoked: the sweeps did not purge it and the lookup still finds it')
})
