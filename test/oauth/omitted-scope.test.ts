import { decodeJwt } from 'jose'
import t from 'tap'
import { authorizeInBrowser, newPkce, startOAuthServer, type OAuthServer } from './oauth-helper.js'

const REDIRECT_URI = 'http://127.0.0.1:9/callback'

async function registerPublicClient (server: OAuthServer): Promise<string> {
  const response = await fetch(`${server.url}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'omitted scope test', redirect_uris: [REDIRECT_URI], token_endpoint_auth_method: 'none' })
  })
  if (response.status !== 201) throw new Error(`registration: HTTP ${response.status}: ${await response.text()}`)
  return String(((await response.json()) as { client_id: unknown }).client_id)
}

/** authorize (with `scope` only when given) → consent with `chosen` → token; returns the token response. */
async function tokenFor (server: OAuthServer, scope: string | undefined, chosen: string[]): Promise<{ status: number, body: Record<string, unknown> }> {
  const clientId = await registerPublicClient(server)
  const pkce = newPkce()
  const authorization = new URL(`${server.url}/oauth/authorize`)
  authorization.search = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: REDIRECT_URI,
    state: 'state-1',
    code_challenge: pkce.challenge,
    code_challenge_method: 'S256',
    resource: server.resource,
    ...(scope !== undefined && { scope })
  }).toString()
  const { callback } = await authorizeInBrowser(server, authorization.href, { scopes: chosen })
  const code = callback.searchParams.get('code')
  if (code === null) throw new Error(`no code in the redirect: error=${callback.searchParams.get('error')}`)
  const response = await fetch(`${server.url}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: pkce.verifier, client_id: clientId, resource: server.resource }).toString()
  })
  return { status: response.status, body: await response.json() as Record<string, unknown> }
}

t.test('a client that names no scope gets what the owner ticked on the consent page', async (t) => {
  const server = await startOAuthServer(t)
  const { status, body } = await tokenFor(server, undefined, ['context:read'])
  t.equal(status, 200)
  t.equal(body.scope, 'context:read', 'the owner\'s choice, not every scope')
  const claims = decodeJwt(String(body.access_token))
  t.equal(claims.scope, 'context:read')
  t.equal(claims.aud, server.resource)
})

t.test('a client that names scopes gets no more than it named, whatever the owner ticked', async (t) => {
  const server = await startOAuthServer(t)
  const { status, body } = await tokenFor(server, 'context:read', ['context:read', 'context:write'])
  t.equal(status, 200)
  t.equal(body.scope, 'context:read')
  t.equal(decodeJwt(String(body.access_token)).scope, 'context:read')
})
