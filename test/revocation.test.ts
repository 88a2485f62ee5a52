import { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { buildApp } from '../app.js'
import { publishRevokedJti, revokedJtiKey } from '../auth/revocation.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { eventually } from './eventually.js'
import { rpc } from './helper.js'
import { startOidcProvider, type OidcProvider } from './oidc-provider.js'
import { TcpProxy, viaProxy } from './tcp-proxy.js'

const PUBLIC_URL = 'https://ctx.example.com'
const ROLE_MAP = JSON.stringify({ writer: { scopes: ['context:read', 'context:write'] } })
const REDIS_URL = process.env.REDIS_URL
const IN_AN_HOUR = () => new Date(Date.now() + 3600_000)

type Tap = Test

interface Setup { app: FastifyInstance, provider: OidcProvider, proxy: TcpProxy, token: (jti: string) => Promise<string> }

/** An app whose database sits behind a proxy the test can cut, accepting JWTs from a test issuer. */
async function setup (t: Tap, env: Record<string, string>): Promise<Setup> {
  const provider = await startOidcProvider({ audience: `${PUBLIC_URL}/mcp` })
  t.teardown(() => provider.close())
  const { url } = await testDatabase(t)
  const target = new URL(url)
  const proxy = new TcpProxy(target.hostname, Number(target.port))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const app = await buildApp(loadConfig({
    DATABASE_URL: viaProxy(url, proxy),
    DB_CONNECT_TIMEOUT_MS: '1000',
    LOG_LEVEL: 'silent',
    PUBLIC_URL,
    OIDC_ISSUER: provider.issuer,
    JWT_ROLE_MAP: ROLE_MAP,
    AUTH_CACHE_SECONDS: '0',
    ...env
  }))
  t.teardown(() => app.close())
  await app.ready()
  return { app, provider, proxy, token: (jti) => provider.sign({ jti, realm_access: { roles: ['writer'] } }) }
}

async function listTools (app: FastifyInstance, token: string) {
  return await rpc(app, 'tools/list', {}, { token })
}

async function writeEntry (app: FastifyInstance, token: string) {
  return await rpc(app, 'tools/call', { name: 'write_context', arguments: { key: 'k', content: 'v' } }, { token })
}

/** Checks a jti once while the database answers, revokes another, and cuts the database. */
async function cutAfterOneCheck (t: Tap, { app, proxy, token }: Setup): Promise<{ fresh: string, revoked: string }> {
  t.equal((await listTools(app, await token('seen'))).statusCode, 200, 'checked while the database answers')
  await app.db.tokens.revokeJti('known-revoked', IN_AN_HOUR())
  const revoked = await token('known-revoked')
  t.equal((await listTools(app, revoked)).json().error.code, 'AUTH_1003')
  await proxy.cut()
  return { fresh: await token('fresh'), revoked }
}

test('REVOCATION_FAIL_MODE=closed: nothing passes while the revocation list cannot be read', async (t) => {
  const s = await setup(t, { REVOCATION_FAIL_MODE: 'closed' })
  const { fresh, revoked } = await cutAfterOneCheck(t, s)
  const refused = await listTools(s.app, fresh)
  t.equal(refused.statusCode, 503)
  t.equal(refused.json().error.code, 'DEP_3001')
  t.match(refused.json().error.message, 'revocation')
  t.equal((await listTools(s.app, revoked)).json().error.code, 'AUTH_1003', 'a known revocation still applies')
  await s.proxy.restore()
  await eventually(async () => (await listTools(s.app, fresh)).statusCode === 200, { what: 'the token to be accepted again once the database answers' })
  t.equal((await listTools(s.app, fresh)).statusCode, 200, 'accepted again once the database answers')
})

test('a database that hangs instead of failing: the revocation check gives up after a second and the fail mode decides', async (t) => {
  const s = await setup(t, { REVOCATION_FAIL_MODE: 'closed' })
  t.equal((await listTools(s.app, await s.token('before'))).statusCode, 200)
  s.proxy.freeze()
  const refused = await listTools(s.app, await s.token('while-hanging'))
  t.equal(refused.statusCode, 503, 'answered, not left hanging')
  t.match(refused.json().error.message, 'revocation')
})

test('REVOCATION_FAIL_MODE=open: everything passes for REVOCATION_FAIL_OPEN_SECONDS after the last answer, known revocations still refused', async (t) => {
  const s = await setup(t, { REVOCATION_FAIL_MODE: 'open', REVOCATION_FAIL_OPEN_SECONDS: '2' })
  const { fresh, revoked } = await cutAfterOneCheck(t, s)
  t.equal((await listTools(s.app, fresh)).statusCode, 200, 'let through on the last known list')
  const write = await writeEntry(s.app, fresh)
  t.equal(write.statusCode, 503, 'the write itself fails: the database is down')
  t.notMatch(write.json().error.message, 'revocation', 'but not because of the revocation check')
  t.equal((await listTools(s.app, revoked)).json().error.code, 'AUTH_1003', 'a known revocation still applies')
  await eventually(async () => (await listTools(s.app, fresh)).statusCode === 503, { what: 'the fail-open window to close' })
  const late = await listTools(s.app, fresh)
  t.equal(late.statusCode, 503, 'after the window, refused')
  t.match(late.json().error.message, 'revocation')
})

test('REVOCATION_FAIL_MODE=reads-open (default): reads pass for a while, writes are refused at once', async (t) => {
  const s = await setup(t, { REVOCATION_FAIL_OPEN_SECONDS: '2' })
  t.equal(s.app.config.REVOCATION_FAIL_MODE, 'reads-open', 'the default')
  const { fresh, revoked } = await cutAfterOneCheck(t, s)
  const tools = await listTools(s.app, fresh)
  t.equal(tools.statusCode, 200, 'reads pass on the last known list')
  t.ok((tools.json().result.tools as Array<{ name: string }>).some((tool) => tool.name === 'write_context'), 'the tool list does not change')
  const write = await writeEntry(s.app, fresh)
  t.equal(write.statusCode, 503)
  t.equal(write.json().error.data.code, 'DEP_3001')
  t.match(write.json().error.message, 'revocation', 'refused because revocation cannot be checked')
  t.equal((await listTools(s.app, revoked)).json().error.code, 'AUTH_1003')
  await eventually(async () => (await listTools(s.app, fresh)).statusCode === 503, { what: 'the fail-open window for reads to close' })
  t.equal((await listTools(s.app, fresh)).statusCode, 503, 'after the window, reads are refused too')
})

test('with Redis: a published revocation applies at once despite AUTH_CACHE_SECONDS; Redis down falls back to PostgreSQL', { skip: REDIS_URL === undefined && 'needs REDIS_URL (set in CI)' }, async (t) => {
  const redisUrl = REDIS_URL as string
  const redis = new Redis(redisUrl)
  t.teardown(() => redis.quit())
  const redisTarget = new URL(redisUrl)
  const redisProxy = new TcpProxy(redisTarget.hostname, Number(redisTarget.port || 6379))
  await redisProxy.start()
  t.teardown(() => redisProxy.stop())
  const s = await setup(t, { AUTH_CACHE_SECONDS: '300', REDIS_URL: `redis://127.0.0.1:${redisProxy.port}` })
  const { app } = s
  await eventually(() => app.redis.status() === 'ok', { what: 'the app to connect to Redis' })
  const jti = `redis-${Date.now()}`
  await redis.del(revokedJtiKey(jti))
  const token = await s.token(jti)
  t.equal((await listTools(app, token)).statusCode, 200)
  t.equal(await redis.get(revokedJtiKey(jti)), '0', 'the "not revoked" answer is shared through Redis')

  await app.db.tokens.revokeJti(jti, IN_AN_HOUR())
  await publishRevokedJti(redis, jti, IN_AN_HOUR())
  t.equal((await listTools(app, token)).json().error.code, 'AUTH_1003', 'refused at once despite AUTH_CACHE_SECONDS=300')

  const other = `redis-other-${Date.now()}`
  await app.db.tokens.revokeJti(other, IN_AN_HOUR())
  await redisProxy.cut()
  const fallback = await listTools(app, await s.token(other))
  t.equal(fallback.statusCode, 401, 'Redis down: PostgreSQL answers')
  t.equal(fallback.json().error.code, 'AUTH_1003')
  t.equal((await listTools(app, await s.token(`ok-${Date.now()}`))).statusCode, 200)
})
