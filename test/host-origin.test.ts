import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { test, type Test } from 'tap'
import { build, TEST_TOKEN } from './helper.js'
import { startOidcProvider } from './oidc-provider.js'

const PUBLIC_URL = 'https://ctx.example.com'
const BROWSER_APP = 'https://app.example.com'

type Tap = Test

async function server (t: Tap, env: Record<string, string> = {}): Promise<FastifyInstance> {
  const idp = await startOidcProvider({ audience: `${PUBLIC_URL}/mcp` })
  t.teardown(() => idp.close())
  return await build(t, { PUBLIC_URL, OIDC_ISSUER: idp.issuer, CORS_ORIGINS: BROWSER_APP, ...env })
}

/** Every kind of route: the MCP endpoint, the operational ones, the public documents and an unknown path. */
const ROUTES: Array<{ method: 'GET' | 'POST', url: string }> = [
  { method: 'POST', url: '/mcp' },
  { method: 'GET', url: '/metrics' },
  { method: 'GET', url: '/ready' },
  { method: 'GET', url: '/.well-known/oauth-protected-resource' },
  { method: 'GET', url: '/.well-known/oauth-protected-resource/mcp' },
  { method: 'GET', url: '/no-such-route' }
]

function send (app: FastifyInstance, route: { method: 'GET' | 'POST', url: string }, headers: Record<string, string>): Promise<LightMyRequestResponse> {
  return app.inject({
    method: route.method,
    url: route.url,
    headers: { authorization: `Bearer ${TEST_TOKEN}`, ...(route.method === 'POST' && { 'content-type': 'application/json' }), ...headers },
    ...(route.method === 'POST' && { payload: { jsonrpc: '2.0', id: 1, method: 'tools/list' } })
  })
}

function refused (t: Tap, response: LightMyRequestResponse, what: string): void {
  t.equal(response.statusCode, 403, `${what}: 403`)
  t.equal((response.json() as { error?: { code?: string } }).error?.code, 'AUTH_1005', `${what}: AUTH_1005`)
}

test('every route refuses a foreign Host with 403 AUTH_1005, and serves the allowed ones', async (t) => {
  const app = await server(t)
  for (const route of ROUTES) {
    const what = `${route.method} ${route.url}`
    refused(t, await send(app, route, { host: 'evil.example' }), `${what}, DNS rebinding (Host evil.example)`)
    refused(t, await send(app, route, { host: 'evil.example:3000' }), `${what}, Host evil.example:3000`)
    refused(t, await send(app, route, { host: 'ctx.example.com.evil.example' }), `${what}, a Host that only starts with the public name`)
    refused(t, await send(app, route, { host: '10.0.0.5.evil.example' }), `${what}, a name that starts like an address`)
    refused(t, await send(app, route, { host: '[fdaa::3].evil.example' }), `${what}, a bracketed address followed by a name`)
    // IP-address Hosts: no DNS name to rebind; Fly's health checks call a machine this way.
    for (const host of ['ctx.example.com', 'localhost:3000', '127.0.0.1:3000', '[::1]:3000', '10.0.0.5:3000', '172.19.0.5', '[fdaa:0:1::3]:3000']) {
      const response = await send(app, route, { host })
      t.not(response.statusCode, 403, `${what}, Host ${host}: served (${response.statusCode})`)
    }
  }
  const metrics = await send(app, { method: 'GET', url: '/metrics' }, { host: 'localhost:3000' })
  t.equal(metrics.statusCode, 200, 'the metrics stay readable from loopback')
  const rebound = await send(app, { method: 'GET', url: '/metrics' }, { host: 'evil.example' })
  t.notMatch(rebound.body, /scm_/, 'and are not readable through DNS rebinding')

  const health = await send(app, { method: 'GET', url: '/health' }, { host: '172.19.0.5:3000' })
  t.equal(health.statusCode, 200, '/health answers any Host (platform probes use the machine\'s address); it says only "up"')
  t.same(health.json(), { status: 'ok' })
})

test('the Origin check compares scheme, host and port exactly', async (t) => {
  const app = await server(t)
  const mcp = ROUTES[0]!
  const host = { host: 'ctx.example.com' }
  for (const origin of [BROWSER_APP, `${BROWSER_APP}:443`, PUBLIC_URL]) {
    t.equal((await send(app, mcp, { ...host, origin })).statusCode, 200, `Origin ${origin}: allowed (CORS_ORIGINS, default port, PUBLIC_URL)`)
  }
  for (const origin of ['http://app.example.com', 'https://app.example.com:8443', 'https://evil.example', 'https://app.example.com.evil.example', 'null', 'not a url']) {
    refused(t, await send(app, mcp, { ...host, origin }), `Origin ${origin}`)
  }

  const local = { host: 'localhost:3000' }
  t.equal((await send(app, mcp, { ...local, origin: 'http://localhost:3000' })).statusCode, 200, 'a page of this server itself (same origin) is allowed')
  refused(t, await send(app, mcp, { ...local, origin: 'http://localhost:9999' }), 'another port on localhost is another origin')
  refused(t, await send(app, mcp, { ...local, origin: 'https://localhost:3000' }), 'another scheme on the same host and port')
  refused(t, await send(app, mcp, { ...local, origin: 'http://127.0.0.1:3000' }), 'another loopback name')

  for (const route of ROUTES.filter((candidate) => !candidate.url.startsWith('/.well-known'))) {
    refused(t, await send(app, route, { ...host, origin: 'https://evil.example' }), `${route.method} ${route.url} with a foreign Origin`)
  }
  const metadata = await send(app, ROUTES[3]!, { ...host, origin: 'https://evil.example' })
  t.equal(metadata.statusCode, 200, 'the protected resource metadata is public: any browser origin may read it')
  t.equal(metadata.headers['access-control-allow-origin'], '*')
})

test('bound to all interfaces without PUBLIC_URL or ALLOWED_HOSTS: no Host check, and a same-origin claim counts for nothing', async (t) => {
  const app = await build(t, { HOST: '0.0.0.0' })
  const ready = await send(app, { method: 'GET', url: '/ready' }, { host: 'evil.example' })
  t.equal(ready.statusCode, 200, 'any Host is served (the server cannot know its names; it requires a token instead)')
  refused(t, await send(app, ROUTES[0]!, { host: 'evil.example', origin: 'http://evil.example' }), 'an Origin that matches an unchecked Host is still refused')
})
