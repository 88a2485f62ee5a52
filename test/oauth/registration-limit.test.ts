import { test } from 'tap'
import { startOAuthServer, type OAuthServer } from './oauth-helper.js'

async function register (server: OAuthServer, index: number): Promise<Response> {
  return await fetch(`${server.url}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: `client ${index}`, redirect_uris: ['https://claude.ai/api/mcp/auth_callback'], token_endpoint_auth_method: 'none' })
  })
}

test('open registration: an address registers at most 30 clients an hour', async (t) => {
  const server = await startOAuthServer(t)
  for (let index = 1; index <= 30; index++) {
    const response = await register(server, index)
    if (response.status !== 201) t.fail(`registration ${index}: HTTP ${response.status}`)
  }
  const refused = await register(server, 31)
  t.equal(refused.status, 429)
  t.equal((await refused.json() as { error: { code: string } }).error.code, 'REQ_1103')
  t.ok(Number(refused.headers.get('retry-after')) > 0, 'says when to retry')
  t.equal((await server.app.oauth?.store.counts())?.clients, 30, 'the refused one was not stored')
})

test('RATE_LIMITS=off lifts the registration limit with the others', async (t) => {
  const server = await startOAuthServer(t, { RATE_LIMITS: 'off' })
  for (let index = 1; index <= 31; index++) {
    const response = await register(server, index)
    if (response.status !== 201) t.fail(`registration ${index}: HTTP ${response.status}`)
  }
  t.equal((await server.app.oauth?.store.counts())?.clients, 31)
})
