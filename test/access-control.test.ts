import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { eventually } from './eventually.js'
import { build, rpc, toolErrorOf } from './helper.js'
import { startOidcProvider, type OidcProvider } from './oidc-provider.js'
import { addToken } from './tools/helpers.js'

const PUBLIC_URL = 'https://ctx.example.com'
const METADATA_URL = 'https://ctx.example.com/.well-known/oauth-protected-resource/mcp'
const ROLE_MAP = JSON.stringify({
  'hr-write': { scopes: ['context:read', 'context:write'], namespace: 'hr' },
  'eng-read': { scopes: ['context:read'], namespace: 'eng' },
  'ctx-admin': { scopes: ['context:admin'] },
  'ops-admin': { scopes: ['context:admin'], namespace: 'ops' }
})

async function oidcProvider (t: Tap): Promise<OidcProvider> {
  const provider = await startOidcProvider({ audience: `${PUBLIC_URL}/mcp` })
  t.teardown(() => provider.close())
  return provider
}

type Tap = Parameters<typeof build>[0]

function oidcEnv (provider: OidcProvider, extra: Record<string, string> = {}): Record<string, string> {
  return { PUBLIC_URL, OIDC_ISSUER: provider.issuer, JWT_ROLE_MAP: ROLE_MAP, ALLOWED_HOSTS: 'localhost', ...extra }
}

function toolNames (response: { json: () => unknown }): string[] {
  return ((response.json() as { result: { tools: Array<{ name: string }> } }).result.tools).map((tool) => tool.name)
}

async function write (app: FastifyInstance, token: string, args: Record<string, unknown>) {
  return await rpc(app, 'tools/call', { name: 'write_context', arguments: args }, { token })
}

test('protected resource metadata (RFC 9728) names the issuer, the resource and the scopes', async (t) => {
  const provider = await oidcProvider(t)
  const app = await build(t, oidcEnv(provider))
  for (const url of ['/.well-known/oauth-protected-resource', '/.well-known/oauth-protected-resource/mcp']) {
    const response = await app.inject({ method: 'GET', url })
    t.equal(response.statusCode, 200, url)
    t.strictSame(response.json(), {
      resource: `${PUBLIC_URL}/mcp`,
      authorization_servers: [provider.issuer],
      scopes_supported: ['context:read', 'context:write', 'context:delete'],
      bearer_methods_supported: ['header'],
      resource_name: 'Shared Context'
    })
    t.equal(response.headers['access-control-allow-origin'], '*', 'readable by browser-based clients')
  }
  const noAuth = await build(t, { ALLOWED_HOSTS: 'ctx.local' })
  t.equal((await noAuth.inject({ method: 'GET', url: '/.well-known/oauth-protected-resource/mcp', headers: { host: 'ctx.local:3000' } })).statusCode, 404, 'no document without an authorization server (test/auth/challenge.test.ts)')
})

test('with an authorization server every 401 carries resource_metadata; invalid and revoked tokens say invalid_token', async (t) => {
  const app = await build(t, oidcEnv(await oidcProvider(t), { AUTH_CACHE_SECONDS: '0' }))
  const missing = await rpc(app, 'tools/list', {}, { token: null })
  t.equal(missing.statusCode, 401)
  t.equal(missing.json().error.code, 'AUTH_1001')
  t.equal(missing.headers['www-authenticate'], `Bearer realm="shared-context-mcp", resource_metadata="${METADATA_URL}"`)

  const malformed = await rpc(app, 'tools/list', {}, { token: null, headers: { authorization: 'Basic abc' } })
  t.equal(malformed.json().error.code, 'AUTH_1001')
  t.match(malformed.headers['www-authenticate'], `resource_metadata="${METADATA_URL}"`)

  const wrong = await rpc(app, 'tools/list', {}, { token: 'scm_not-a-real-token-0123456789abcdef0123456789' })
  t.equal(wrong.statusCode, 401)
  t.equal(wrong.json().error.code, 'AUTH_1002')
  t.equal(wrong.headers['www-authenticate'], `Bearer realm="shared-context-mcp", resource_metadata="${METADATA_URL}", error="invalid_token"`)

  const token = await addToken(app, 'rotating', 'default', ['context:read'])
  t.equal((await rpc(app, 'tools/list', {}, { token })).statusCode, 200)
  await app.db.tokens.revokeApiToken('rotating')
  const revoked = await rpc(app, 'tools/list', {}, { token })
  t.equal(revoked.statusCode, 401)
  t.equal(revoked.json().error.code, 'AUTH_1003', 'a revoked token is told so')
  t.match(revoked.headers['www-authenticate'], 'error="invalid_token"')
})

test('API token rotation: a revoked token stops working on another instance within AUTH_CACHE_SECONDS, its successor works at once', async (t) => {
  const { url } = await testDatabase(t)
  const config = loadConfig({ DATABASE_URL: url, AUTH_TOKEN: 'static-token-0123456789abcdef0123456789ab', LOG_LEVEL: 'silent', AUTH_CACHE_SECONDS: '1' })
  const [first, second] = await Promise.all([buildApp(config), buildApp(config)])
  if (first === undefined || second === undefined) throw new Error('instances missing')
  t.teardown(() => Promise.all([first.close(), second.close()]))
  const old = await addToken(first, 'laptop', 'default', ['context:read', 'context:write'])
  t.equal((await rpc(second, 'tools/list', {}, { token: old })).statusCode, 200, 'the second instance accepts it (and caches it)')

  const successor = await addToken(first, 'laptop-2', 'default', ['context:read', 'context:write'])
  t.equal((await rpc(second, 'tools/list', {}, { token: successor })).statusCode, 200, 'both tokens work during the rotation')
  t.equal((await rpc(second, 'tools/list', {}, { token: old })).statusCode, 200)
  t.ok(await first.db.tokens.revokeApiToken('laptop'))
  await eventually(async () => (await rpc(second, 'tools/list', {}, { token: old })).statusCode === 401, { what: 'the second instance\'s cached answer to run out' })
  const refused = await rpc(second, 'tools/list', {}, { token: old })
  t.equal(refused.statusCode, 401, 'refused on the other instance without a restart')
  t.equal(refused.json().error.code, 'AUTH_1003')
  t.equal((await rpc(second, 'tools/list', {}, { token: successor })).statusCode, 200, 'the new token keeps working')
})

test('OIDC: Keycloak roles become grants; tools/list and namespaces follow them', async (t) => {
  const provider = await oidcProvider(t)
  const app = await build(t, oidcEnv(provider))
  const hrWriter = await provider.sign({ sub: 'alice', realm_access: { roles: ['offline_access'] }, resource_access: { 'mcp-client': { roles: ['hr-write'] } } })
  const engReader = await provider.sign({ sub: 'bob', realm_access: { roles: ['eng-read'] } })
  const admin = await provider.sign({ sub: 'carol', realm_access: { roles: ['ctx-admin'] } })

  t.strictSame(toolNames(await rpc(app, 'tools/list', {}, { token: engReader })), ['read_context', 'list_context', 'search_context', 'context_history', 'changes_since'])
  t.strictSame(toolNames(await rpc(app, 'tools/list', {}, { token: hrWriter })), ['read_context', 'write_context', 'append_context', 'list_context', 'search_context', 'context_history', 'restore_context', 'changes_since'])
  t.equal(toolNames(await rpc(app, 'tools/list', {}, { token: admin })).length, 9)

  const written = await write(app, hrWriter, { key: 'policy/leave', content: 'twenty days' })
  t.equal(written.json().result.structuredContent.version, 1)
  const [row] = await app.db.sql<[{ namespace: string, updated_by: string }]>`select namespace, updated_by from context_entries where key = 'policy/leave'`
  t.strictSame(row, { namespace: 'hr', updated_by: 'oidc:alice' }, 'the role\'s namespace, the subject as author')

  const readerWrite = await write(app, engReader, { key: 'x', content: 'y' })
  t.equal(toolErrorOf(readerWrite.json().result)?.code, 'AUTH_1004', 'a scope the roles do not grant is refused')
  const crossNamespace = await rpc(app, 'tools/call', { name: 'read_context', arguments: { key: 'policy/leave', namespace: 'hr' } }, { token: engReader })
  t.equal(toolErrorOf(crossNamespace.json().result)?.code, 'AUTH_1004', 'no grant for hr')
  const adminRead = await rpc(app, 'tools/call', { name: 'read_context', arguments: { key: 'policy/leave', namespace: 'hr' } }, { token: admin })
  t.equal(adminRead.json().result.structuredContent.content, 'twenty days', 'context:admin reads every namespace')

  const opsAdmin = await provider.sign({ sub: 'dave', realm_access: { roles: ['ops-admin'] } })
  t.equal((await write(app, opsAdmin, { key: 'runbook', content: 'restart it' })).json().result.structuredContent.version, 1, 'admin in its own namespace')
  const escape = await rpc(app, 'tools/call', { name: 'read_context', arguments: { key: 'policy/leave', namespace: 'hr' } }, { token: opsAdmin })
  t.equal(toolErrorOf(escape.json().result)?.code, 'AUTH_1004', 'context:admin for one namespace is not admin of the others')
})

test('OIDC: refusals at the HTTP level', async (t) => {
  const provider = await oidcProvider(t)
  const app = await build(t, oidcEnv(provider))

  const noRoles = await rpc(app, 'tools/list', {}, { token: await provider.sign({ realm_access: { roles: ['offline_access'] } }) })
  t.equal(noRoles.statusCode, 403)
  t.equal(noRoles.json().error.code, 'AUTH_1004')
  t.equal(noRoles.headers['www-authenticate'], `Bearer realm="shared-context-mcp", resource_metadata="${METADATA_URL}", error="insufficient_scope", scope="context:read"`)

  const otherAudience = await rpc(app, 'tools/list', {}, { token: await provider.sign({ aud: 'https://other.example.com/mcp', realm_access: { roles: ['ctx-admin'] } }) })
  t.equal(otherAudience.statusCode, 401, 'a token for another resource is refused (no passthrough)')
  t.equal(otherAudience.json().error.code, 'AUTH_1002')
  t.match(otherAudience.headers['www-authenticate'], 'error="invalid_token"')

  const expired = await rpc(app, 'tools/list', {}, { token: await provider.sign({ exp: Math.floor(Date.now() / 1000) - 3600, realm_access: { roles: ['ctx-admin'] } }) })
  t.equal(expired.json().error.code, 'AUTH_1002')
  t.match(expired.json().error.message, 'expired')

  const down = await build(t, oidcEnv(provider))
  provider.jwksMode = 'fail'
  const idpDown = await rpc(down, 'tools/list', {}, { token: await provider.sign({ realm_access: { roles: ['ctx-admin'] } }, { kid: await provider.addKey() }) })
  t.equal(idpDown.statusCode, 503, 'a key that cannot be fetched is a dependency failure')
  t.equal(idpDown.json().error.code, 'DEP_3002')
  t.ok(Number(idpDown.headers['retry-after']) > 0)
  const ready = await down.inject('/ready')
  t.equal(ready.statusCode, 200, 'the identity provider alone never makes the server unready')
  t.equal(ready.json().identity_provider, 'degraded')
  t.equal(ready.json().status, 'degraded')
})

test('a revoked jti is refused, also on another instance sharing the database', async (t) => {
  const provider = await oidcProvider(t)
  const { url } = await testDatabase(t)
  const config = loadConfig({ DATABASE_URL: url, LOG_LEVEL: 'silent', AUTH_CACHE_SECONDS: '1', ...oidcEnv(provider) })
  const [first, second] = await Promise.all([buildApp(config), buildApp(config)])
  if (first === undefined || second === undefined) throw new Error('instances missing')
  t.teardown(() => Promise.all([first.close(), second.close()]))
  const token = await provider.sign({ jti: 'session-42', realm_access: { roles: ['ctx-admin'] } })
  const other = await provider.sign({ jti: 'session-43', realm_access: { roles: ['ctx-admin'] } })
  t.equal((await rpc(first, 'tools/list', {}, { token })).statusCode, 200)
  t.equal((await rpc(second, 'tools/list', {}, { token })).statusCode, 200)

  await first.db.tokens.revokeJti('session-42', new Date(Date.now() + 3600_000))
  await eventually(async () => (await rpc(second, 'tools/list', {}, { token })).statusCode === 401, { what: 'the second instance\'s cached answer to run out' })
  for (const app of [first, second]) {
    const refused = await rpc(app, 'tools/list', {}, { token })
    t.equal(refused.statusCode, 401)
    t.equal(refused.json().error.code, 'AUTH_1003')
    t.equal((await rpc(app, 'tools/list', {}, { token: other })).statusCode, 200, 'another jti of the same user still works')
  }
})

test('CORS: allowed origins get the headers on every /mcp answer — refusals and SDK-written 2026-07-28 answers too', async (t) => {
  const origin = 'https://app.example.com'
  const app = await build(t, { CORS_ORIGINS: origin, PUBLIC_URL })
  const headers = { origin, host: 'ctx.example.com' }

  const refused = await rpc(app, 'tools/list', {}, { token: null, headers })
  t.equal(refused.statusCode, 401)
  t.equal(refused.headers['access-control-allow-origin'], origin, 'on a 401')
  t.match(String(refused.headers['access-control-expose-headers']), /WWW-Authenticate/i, 'the challenge is readable by the page')

  const modern = await rpc(app, 'tools/list', {
    _meta: { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientInfo': { name: 'web', version: '1' }, 'io.modelcontextprotocol/clientCapabilities': {} }
  }, { headers: { ...headers, 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/list' } })
  t.equal(modern.statusCode, 200, 'served by the SDK handler')
  t.ok(Array.isArray(modern.json().result.tools))
  t.equal(modern.headers['access-control-allow-origin'], origin, 'on an answer the SDK wrote itself')

  const foreign = await rpc(app, 'tools/list', {}, { headers: { ...headers, origin: 'https://evil.example.net' } })
  t.equal(foreign.statusCode, 403)
  t.equal(foreign.json().error.code, 'AUTH_1005')
  t.equal(foreign.headers['access-control-allow-origin'], undefined, 'no CORS headers for a foreign origin')
})

test('TRUST_PROXY as a hop count: the client address is the one the trusted proxies saw, whatever the client prepends', async (t) => {
  const app = await build(t, { TRUST_PROXY: '2', RATE_LIMITS: 'ip=2/m' })
  const from = (forwardedFor: string) => ({ token: 'scm_wrong-token-0123456789abcdef0123456789', headers: { 'x-forwarded-for': forwardedFor } })
  const appAddress = '10.0.0.1' // Fly's proxy appends the app's own address last
  t.equal((await rpc(app, 'tools/list', {}, from(`203.0.113.7, ${appAddress}`))).statusCode, 401)
  t.equal((await rpc(app, 'tools/list', {}, from(`198.51.100.1, 203.0.113.7, ${appAddress}`))).statusCode, 401, 'a spoofed first entry counts for the real address')
  const limited = await rpc(app, 'tools/list', {}, from(`203.0.113.7, ${appAddress}`))
  t.equal(limited.statusCode, 429, 'the real address spent its failed-authentication budget')
  t.equal(limited.json().error.code, 'REQ_1103')
  t.equal((await rpc(app, 'tools/list', {}, from(`203.0.113.8, ${appAddress}`))).statusCode, 401, 'another client is not affected')
})
