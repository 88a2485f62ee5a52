import { decodeJwt } from 'jose'
import { test } from 'tap'
import { eventually } from './eventually.js'
import { writeUpstreamsFile } from './gateway/gateway-helper.js'
import { startHr } from './gateway/upstreams/hr.js'
import { authorizeInBrowser, newPkce, startOAuthServer, type OAuthServer } from './oauth/oauth-helper.js'
import { callToolOverHttp } from './process-helper.js'

const REDIRECT_URI = 'http://127.0.0.1:9/callback'

async function tokenFor (server: OAuthServer, scope: string, chosen: string[], token?: string): Promise<{ status: number, body: Record<string, unknown>, page?: string }> {
  const registration = await fetch(`${server.url}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'gateway scopes test', redirect_uris: [REDIRECT_URI], token_endpoint_auth_method: 'none' })
  })
  const clientId = String(((await registration.json()) as { client_id: unknown }).client_id)
  const pkce = newPkce()
  const authorization = new URL(`${server.url}/oauth/authorize`)
  authorization.search = new URLSearchParams({
    response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, state: 's', code_challenge: pkce.challenge, code_challenge_method: 'S256', resource: server.resource, scope
  }).toString()
  const { callback } = await authorizeInBrowser(server, authorization.href, { scopes: chosen, ...(token !== undefined && { token }) })
  const code = callback.searchParams.get('code')
  if (code === null) throw new Error(`no code in the redirect: error=${callback.searchParams.get('error')}`)
  const response = await fetch(`${server.url}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: pkce.verifier, client_id: clientId, resource: server.resource }).toString()
  })
  return { status: response.status, body: await response.json() as Record<string, unknown> }
}

test('the consent page and the metadata offer the scope names of the gateway\'s upstream rules', async (t) => {
  const hr = await startHr()
  t.teardown(() => hr.close())
  const server = await startOAuthServer(t, {
    UPSTREAMS_FILE: writeUpstreamsFile(t, [{ name: 'hr', url: hr.url, allow: { 'hr:read': ['list_*'], 'hr:write': ['*'] } }]),
    RATE_LIMITS: 'off'
  })
  await eventually(() => server.app.gateway?.upstreams.every((upstream) => upstream.status === 'ok'), { what: 'hr connected' })

  const resource = await (await fetch(`${server.url}/.well-known/oauth-protected-resource`)).json() as { scopes_supported: string[] }
  t.same(resource.scopes_supported, ['context:read', 'context:write', 'context:delete', 'hr:read', 'hr:write'], 'the resource metadata names them')
  const discovery = await (await fetch(`${server.url}/.well-known/oauth-authorization-server`)).json() as { scopes_supported: string[] }
  t.ok(['hr:read', 'hr:write'].every((scope) => discovery.scopes_supported.includes(scope)), 'so does the authorization server\'s')

  const { status, body } = await tokenFor(server, 'context:read hr:read', ['context:read', 'hr:read'])
  t.equal(status, 200)
  t.equal(body.scope, 'context:read hr:read', 'granted on the consent page')
  t.equal(decodeJwt(String(body.access_token)).scope, 'context:read hr:read')
  const listed = await callToolOverHttp(`${server.url}/mcp`, String(body.access_token), 'hr__list_employees', {})
  t.equal(listed.status, 200)
  t.notOk(listed.body.result?.isError, 'and the token calls the upstream tool hr:read allows')
  t.equal((listed.body.result?.structuredContent.employees as unknown[]).length, 3)
})
