import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { test } from 'tap'
import { buildApp } from '../../app.js'
import { loadConfig } from '../../schema/config.js'
import { testDatabase } from '../db-helper.js'
import { build, rpc, TEST_TOKEN } from '../helper.js'
import { startOidcProvider } from '../oidc-provider.js'
import { addToken } from '../tools/helpers.js'

const WRONG_TOKEN = 'scm_not-a-real-token-0123456789abcdef0123456789'
const CREATE_COMMAND = '`node dist/cli.js token create --name NAME`'
const OAUTH_PATHS = [
  ['GET', '/.well-known/oauth-protected-resource'],
  ['GET', '/.well-known/oauth-protected-resource/mcp'],
  ['GET', '/.well-known/oauth-authorization-server'],
  ['GET', '/.well-known/oauth-authorization-server/mcp'],
  ['GET', '/.well-known/openid-configuration'],
  ['POST', '/register']
] as const

test('without an authorization server: no resource_metadata, no metadata document, and 401s that say how to get a token', async (t) => {
  const app = await build(t, { AUTH_CACHE_SECONDS: '0' })

  const missing = await rpc(app, 'tools/list', {}, { token: null })
  t.equal(missing.statusCode, 401)
  t.equal(missing.headers['www-authenticate'], 'Bearer realm="shared-context-mcp"', 'a challenge without resource_metadata')
  t.equal(missing.json().error.code, 'AUTH_1001')
  t.match(missing.json().error.message, /^Missing bearer token/)
  t.ok(missing.json().error.message.includes(CREATE_COMMAND), 'names the command that makes a token')

  const wrong = await rpc(app, 'tools/list', {}, { token: WRONG_TOKEN })
  t.equal(wrong.statusCode, 401)
  t.equal(wrong.headers['www-authenticate'], 'Bearer realm="shared-context-mcp", error="invalid_token"')
  t.equal(wrong.json().error.code, 'AUTH_1002')
  t.match(wrong.json().error.message, /^The bearer token is not valid.*AUTH_TOKEN/, 'says the token is wrong, and that AUTH_TOKEN is one')
  t.ok(wrong.json().error.message.includes(CREATE_COMMAND))

  const token = await addToken(app, 'old-laptop', 'default', ['context:read'])
  await app.db.tokens.revokeApiToken('old-laptop')
  const revoked = await rpc(app, 'tools/list', {}, { token })
  t.equal(revoked.json().error.code, 'AUTH_1003')
  t.equal(revoked.headers['www-authenticate'], 'Bearer realm="shared-context-mcp", error="invalid_token"')
  t.ok(revoked.json().error.message.includes(CREATE_COMMAND))

  for (const [method, url] of OAUTH_PATHS) {
    const response = await app.inject({ method, url })
    t.equal(response.statusCode, 404, `${method} ${url}`)
    t.equal(response.json().error.code, 'REQ_1101')
    t.match(response.json().error.message, /no OAuth sign-in: it takes bearer tokens only.*missing or wrong/, 'says why OAuth fails here')
  }
})

test('without AUTH_TOKEN, a wrong token is told where the first start printed one', async (t) => {
  const app = await build(t, { AUTH_TOKEN: '' })
  t.type(await app.auth.createLocalTokenIfNone(), 'string')
  const wrong = await rpc(app, 'tools/list', {}, { token: WRONG_TOKEN })
  t.equal(wrong.statusCode, 401)
  t.match(wrong.json().error.message, 'use the token the server printed when it first started (in its output)')
  t.notMatch(wrong.json().error.message, 'AUTH_TOKEN', 'no AUTH_TOKEN to point to')
  t.match((await app.inject('/.well-known/oauth-protected-resource/mcp')).json().error.message, 'printed when it first started')
})

test('with OIDC_ISSUER: challenges carry resource_metadata and the document names the issuer', async (t) => {
  const provider = await startOidcProvider({ audience: 'https://ctx.example.com/mcp' })
  t.teardown(() => provider.close())
  const app = await build(t, { PUBLIC_URL: 'https://ctx.example.com', OIDC_ISSUER: provider.issuer, ALLOWED_HOSTS: 'localhost' })
  const metadataUrl = 'https://ctx.example.com/.well-known/oauth-protected-resource/mcp'

  const missing = await rpc(app, 'tools/list', {}, { token: null })
  t.equal(missing.headers['www-authenticate'], `Bearer realm="shared-context-mcp", resource_metadata="${metadataUrl}"`)
  const wrong = await rpc(app, 'tools/list', {}, { token: WRONG_TOKEN })
  t.equal(wrong.headers['www-authenticate'], `Bearer realm="shared-context-mcp", resource_metadata="${metadataUrl}", error="invalid_token"`)
  t.match(wrong.json().error.message, /sign in again/)

  for (const url of ['/.well-known/oauth-protected-resource', '/.well-known/oauth-protected-resource/mcp']) {
    const document = await app.inject(url)
    t.equal(document.statusCode, 200, url)
    t.strictSame(document.json().authorization_servers, [provider.issuer])
  }
  const register = await app.inject({ method: 'POST', url: '/register' })
  t.equal(register.statusCode, 404, 'registration belongs to the issuer')
  t.notMatch(register.json().error.message, 'no OAuth sign-in', 'and is not said to be missing')
})

interface Seen { method: string, url: string, status: number, challenge: string | undefined }

test('mcp-remote with a wrong token stops with a message that names the problem', async (t) => {
  const { url } = await testDatabase(t)
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  const seen: Seen[] = []
  app.addHook('onResponse', async (request, reply) => {
    const challenge = reply.getHeader('www-authenticate')
    seen.push({ method: request.method, url: request.url, status: reply.statusCode, challenge: challenge === undefined ? undefined : String(challenge) })
  })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const configDir = await mkdtemp(join(tmpdir(), 'scm-mcp-remote-'))
  t.teardown(() => rm(configDir, { recursive: true, force: true }))

  const proxy = join(dirname(createRequire(import.meta.url).resolve('mcp-remote/package.json')), 'dist', 'proxy.js')
  const child = spawn(process.execPath, [proxy, `${address}/mcp`, '--header', `Authorization: Bearer ${WRONG_TOKEN}`, '--transport', 'http-only'], {
    env: { PATH: process.env.PATH ?? '', HOME: configDir, MCP_REMOTE_CONFIG_DIR: configDir },
    stdio: ['pipe', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = once(child, 'exit')
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  child.stdin.end(`${JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'challenge-test', version: '1' } } })}\n`)
  const deadline = setTimeout(() => child.kill('SIGKILL'), 60_000)
  const [code, signal] = await exited as [number | null, NodeJS.Signals | null]
  clearTimeout(deadline)

  t.equal(signal, null, 'mcp-remote gave up by itself')
  t.not(code, 0, 'and failed')
  t.match(output, /it takes bearer tokens only.*the bearer token was missing or wrong/, 'its error names the problem')
  t.ok(output.includes(CREATE_COMMAND), 'and the command that makes a token')
  const refused = seen.filter((request) => request.status === 401)
  t.ok(refused.length > 0, 'the server refused the token')
  t.ok(refused.every((request) => request.challenge === 'Bearer realm="shared-context-mcp", error="invalid_token"'), 'no 401 advertised an authorization server')
  // The SDK inside still tries the spec's fallback (the origin as authorization server, /register)
  // after any 401; what the server controls is that nothing there pretends to exist.
  t.strictSame(seen.filter((request) => request.url !== '/mcp' && request.status !== 404), [], 'every OAuth path it tried answered 404')
})
