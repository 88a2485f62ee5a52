import { Client as ClientV2, StreamableHTTPClientTransport as TransportV2, UnauthorizedError as UnauthorizedErrorV2, type OAuthClientProvider as ProviderV2 } from '@modelcontextprotocol/client'
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js'
import { UnauthorizedError as UnauthorizedErrorV1, type OAuthClientProvider as ProviderV1, type OAuthDiscoveryState } from '@modelcontextprotocol/sdk/client/auth.js'
import { StreamableHTTPClientTransport as TransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import type { OAuthClientInformationMixed, OAuthTokens } from '@modelcontextprotocol/sdk/shared/auth.js'
import { importJWK, SignJWT } from 'jose'
import { test } from 'tap'
import { CLAUDE_CALLBACK, callMcp, claimsOf, mcpAccepts } from './flow-helper.js'
import { authorizeInBrowser, type OAuthServer, startOAuthServer } from './oauth-helper.js'

interface Recorded { method: string, path: string, status: number, grantType: string | undefined }

/** A fetch that records what the SDK asks of the server, for the discovery → registration → token order. */
function recordingFetch (): { fetch: typeof globalThis.fetch, requests: Recorded[] } {
  const requests: Recorded[] = []
  const recorder: typeof globalThis.fetch = async (input, init) => {
    const request = new Request(input, init)
    const body = request.method === 'POST' ? await request.clone().text() : ''
    const grantType = new URL(request.url).pathname === '/oauth/token' ? new URLSearchParams(body).get('grant_type') ?? undefined : undefined
    const response = await fetch(request)
    requests.push({ method: request.method, path: new URL(request.url).pathname, status: response.status, grantType })
    return response
  }
  return { fetch: recorder, requests }
}

/**
 * An MCP client's OAuth state, as the SDK clients expect it kept (OAuthClientProvider of v1 and
 * v2). Its "browser" is authorizeInBrowser: the owner signs in on the consent page and allows.
 */
class BrowserProvider implements ProviderV1, ProviderV2 {
  client: OAuthClientInformationMixed | undefined
  saved: OAuthTokens | undefined
  verifier = ''
  discovery: OAuthDiscoveryState | undefined
  /** Every authorization URL the SDK sent the browser to. */
  readonly authorizationUrls: URL[] = []
  /** Where the browser came back to, with code, state and iss. */
  callback: URL | undefined
  /** Off: the SDK's redirect is recorded, but nobody signs in. */
  signsIn = true

  constructor (readonly server: OAuthServer, readonly redirectUrl: string) {}

  get clientMetadata () {
    return {
      client_name: 'SDK flow test',
      redirect_uris: [this.redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none'
    }
  }

  state (): string { return 'sdk-state' }
  clientInformation () { return this.client }
  saveClientInformation (client: OAuthClientInformationMixed): void { this.client = client }
  tokens () { return this.saved }
  saveTokens (tokens: OAuthTokens): void { this.saved = tokens }
  saveCodeVerifier (verifier: string): void { this.verifier = verifier }
  codeVerifier (): string { return this.verifier }
  saveDiscoveryState (state: OAuthDiscoveryState): void { this.discovery = state }
  discoveryState () { return this.discovery }

  invalidateCredentials (scope: 'all' | 'client' | 'tokens' | 'verifier' | 'discovery'): void {
    if (scope === 'all' || scope === 'client') this.client = undefined
    if (scope === 'all' || scope === 'tokens') this.saved = undefined
    if (scope === 'all' || scope === 'discovery') this.discovery = undefined
  }

  async redirectToAuthorization (url: URL): Promise<void> {
    this.authorizationUrls.push(url)
    if (this.signsIn) this.callback = (await authorizeInBrowser(this.server, url.href)).callback
  }
}

/**
 * The access token the provider holds, as it is once its lifetime is over: the same claims,
 * signed with the server's key, but expired an hour ago. The server refuses it as expired, which
 * is what makes an SDK client refresh.
 */
async function expiredCopyOf (server: OAuthServer, accessToken: string): Promise<string> {
  const [key] = await server.app.oauth?.store.listKeys('sign') ?? []
  if (key === undefined) throw new Error('no signing key')
  const { iat: _iat, exp: _exp, ...claims } = claimsOf(accessToken)
  const now = Math.floor(Date.now() / 1000)
  return await new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: key.kid })
    .setIssuedAt(now - 4500)
    .setExpirationTime(now - 3600)
    .sign(await importJWK(key.jwk, 'ES256'))
}

/** The paths in order, each once, keeping only those named: a subsequence check that ignores retries and extra probes. */
function orderOf (requests: Recorded[], wanted: string[]): string[] {
  const seen: string[] = []
  for (const request of requests) {
    const label = `${request.method} ${request.path}${request.grantType === undefined ? '' : ` ${request.grantType}`}`
    if (wanted.includes(label) && !seen.includes(label)) seen.push(label)
  }
  return seen
}

interface SdkUnderTest {
  name: string
  redirectUrl: string
  /** A client connected through a new transport with this provider (rejects with UnauthorizedError when it must sign in first). */
  connect: (provider: BrowserProvider, fetch: typeof globalThis.fetch) => Promise<ClientV1 | ClientV2>
  /** What the client's redirect handler does with the callback: redeem the code, on a new transport as after a real redirect. */
  finishAuth: (provider: BrowserProvider, fetch: typeof globalThis.fetch, callback: URL) => Promise<void>
  unauthorized: (error: unknown) => boolean
}

const SDKS: SdkUnderTest[] = [
  {
    name: 'v1 (@modelcontextprotocol/sdk 1.32.2)',
    redirectUrl: CLAUDE_CALLBACK,
    connect: async (provider, fetch) => {
      const client = new ClientV1({ name: 'oauth-sdk-v1', version: '1.0.0' })
      await client.connect(new TransportV1(new URL(provider.server.resource), { authProvider: provider, fetch }))
      return client
    },
    finishAuth: async (provider, fetch, callback) => {
      await new TransportV1(new URL(provider.server.resource), { authProvider: provider, fetch }).finishAuth(callback.searchParams.get('code') ?? '')
    },
    unauthorized: (error) => error instanceof UnauthorizedErrorV1
  },
  {
    name: 'v2 (@modelcontextprotocol/client 2.4.0)',
    redirectUrl: 'http://127.0.0.1:43117/oauth/callback',
    connect: async (provider, fetch) => {
      const client = new ClientV2({ name: 'oauth-sdk-v2', version: '1.0.0' })
      await client.connect(new TransportV2(new URL(provider.server.resource), { authProvider: provider, fetch }))
      return client
    },
    // v2 checks the callback's iss (RFC 9207) against the issuer it discovered before it redeems the code.
    finishAuth: async (provider, fetch, callback) => {
      await new TransportV2(new URL(provider.server.resource), { authProvider: provider, fetch }).finishAuth(callback.searchParams)
    },
    unauthorized: (error) => error instanceof UnauthorizedErrorV2
  }
]

for (const sdk of SDKS) {
  test(`the SDK client ${sdk.name}: discovery, registration, consent, token, tools, refresh, revocation`, async (t) => {
    const server = await startOAuthServer(t, { AUTH_CACHE_SECONDS: '0' })
    const provider = new BrowserProvider(server, sdk.redirectUrl)
    const { fetch, requests } = recordingFetch()

    // 1. Discovery and registration: the 401 names the resource metadata, which names this server as the authorization server.
    const firstAttempt = await sdk.connect(provider, fetch).then(async (client) => { await client.close() }, (error: unknown) => error)
    t.ok(sdk.unauthorized(firstAttempt), 'connecting without a token ends in UnauthorizedError once the browser was sent to sign in')
    t.same(orderOf(requests, [
      'POST /mcp',
      'GET /.well-known/oauth-protected-resource/mcp',
      'GET /.well-known/oauth-authorization-server',
      'POST /oauth/register'
    ]), ['POST /mcp', 'GET /.well-known/oauth-protected-resource/mcp', 'GET /.well-known/oauth-authorization-server', 'POST /oauth/register'],
    'POST /mcp (401) → protected resource metadata → authorization server metadata → dynamic registration')
    t.equal(requests.find((request) => request.path === '/mcp')?.status, 401)
    t.equal(requests.find((request) => request.path === '/oauth/register')?.status, 201)
    t.equal(provider.client?.client_id !== undefined, true, 'the client registered')

    // 2. Authorization: the SDK asked for our resource with PKCE S256; the consent page was posted; the code came back with iss.
    t.equal(provider.authorizationUrls.length, 1)
    const authorizationUrl = provider.authorizationUrls[0] as URL
    t.equal(authorizationUrl.origin + authorizationUrl.pathname, `${server.url}/oauth/authorize`)
    t.equal(authorizationUrl.searchParams.get('resource'), server.resource, 'the resource indicator is the MCP endpoint')
    t.equal(authorizationUrl.searchParams.get('code_challenge_method'), 'S256')
    t.match(authorizationUrl.searchParams.get('scope'), /^context:read context:write context:delete( offline_access)?$/, 'the scopes of the protected resource metadata (v2 adds offline_access)')
    const callback = provider.callback as URL
    t.equal(callback.origin + callback.pathname, new URL(sdk.redirectUrl).origin + new URL(sdk.redirectUrl).pathname)
    t.equal(callback.searchParams.get('iss'), server.url, 'iss in the authorization response (RFC 9207)')
    t.equal(callback.searchParams.get('state'), 'sdk-state')
    t.ok(callback.searchParams.get('code'))

    // 3. Token: finishAuth redeems the code (on a fresh transport, as the SDK examples do after the redirect).
    await sdk.finishAuth(provider, fetch, callback)
    t.match(requests.at(-1), { method: 'POST', path: '/oauth/token', status: 200, grantType: 'authorization_code' })
    const firstTokens = provider.saved as OAuthTokens
    t.ok(firstTokens.access_token)
    t.ok(firstTokens.refresh_token, 'a refresh token was issued')
    // The owner ticked read and write only (authorizeInBrowser's default); the unticked context:delete is refused, not asked again.
    t.match(claimsOf(firstTokens.access_token), { iss: server.url, aud: server.resource, sub: 'owner', namespace: 'default', scope: 'context:read context:write' })

    // 4. Tools: the write is recorded as the owner who signed in.
    const client = await sdk.connect(provider, fetch)
    t.teardown(() => client.close())
    const written = await client.callTool({ name: 'write_context', arguments: { key: 'oauth/flow', content: `written by ${sdk.name}` } })
    t.notOk(written.isError, 'write_context with the OAuth access token')
    const read = await client.callTool({ name: 'read_context', arguments: { key: 'oauth/flow' } })
    t.match(read.structuredContent, { content: `written by ${sdk.name}`, updated_by: 'oauth:owner' }, 'the audit author is oauth:owner')
    const history = await client.callTool({ name: 'context_history', arguments: { key: 'oauth/flow' } })
    t.match((history.structuredContent as { versions: unknown[] }).versions, [{ actor: 'oauth:owner', action: 'create' }])

    // 5. Refresh: the held access token has expired; /mcp answers 401 invalid_token and the SDK refreshes on its own, then retries.
    provider.saved = { ...firstTokens, access_token: await expiredCopyOf(server, firstTokens.access_token) }
    t.equal((await mcpAccepts(server, provider.saved.access_token)).code, 'AUTH_1002', 'the expired token is refused')
    const before = requests.length
    const afterRefresh = await client.callTool({ name: 'read_context', arguments: { key: 'oauth/flow' } })
    t.match(afterRefresh.structuredContent, { updated_by: 'oauth:owner' }, 'the call succeeded after the refresh')
    t.same(requests.slice(before).filter((request) => request.path === '/oauth/token').map((request) => [request.grantType, request.status]), [['refresh_token', 200]],
      'the SDK used the refresh grant once')
    const refreshed = provider.saved
    t.not(refreshed.access_token, firstTokens.access_token)
    t.not(refreshed.refresh_token, firstTokens.refresh_token, 'the refresh token rotated')
    t.equal(claimsOf(refreshed.access_token).gid, claimsOf(firstTokens.access_token).gid, 'same grant')
    t.equal(provider.authorizationUrls.length, 1, 'no second sign-in')

    // 6. Revocation (RFC 7009), as the client's "disconnect" sends it: the refresh token ends the grant, its access token stops working.
    const revoked = await fetch(`${server.url}/oauth/revoke`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: refreshed.refresh_token as string, token_type_hint: 'refresh_token', client_id: provider.client?.client_id as string })
    })
    t.equal(revoked.status, 200)
    const refused = await callMcp(server, refreshed.access_token, 'read_context', { key: 'oauth/flow' })
    t.equal(refused.status, 401)
    t.equal(refused.code, 'AUTH_1003', 'the access token of the revoked grant is refused as revoked')
    t.match(refused.wwwAuthenticate, /error="invalid_token"/)

    // The SDK sees the refusal, cannot refresh (invalid_grant) and asks for a new sign-in rather than carrying on.
    provider.signsIn = false
    const failed = await client.callTool({ name: 'read_context', arguments: { key: 'oauth/flow' } }).then(() => undefined, (error: unknown) => error)
    t.ok(sdk.unauthorized(failed), 'the call ends in UnauthorizedError')
    t.equal(provider.authorizationUrls.length, 2, 'the SDK sent the browser to sign in again')
    t.match(requests.filter((request) => request.path === '/oauth/token').at(-1), { grantType: 'refresh_token', status: 400 }, 'after its refresh was refused')
  })
}

for (const sdk of SDKS) {
  test(`the SDK client ${sdk.name} registers again when the server forgot it (invalid_client)`, async (t) => {
    const server = await startOAuthServer(t)
    const provider = new BrowserProvider(server, sdk.redirectUrl)
    const { fetch, requests } = recordingFetch()
    await sdk.connect(provider, fetch).catch(() => {})
    await sdk.finishAuth(provider, fetch, provider.callback as URL)
    const client = await sdk.connect(provider, fetch)
    t.teardown(() => client.close())
    t.notOk((await client.callTool({ name: 'write_context', arguments: { key: 'before', content: 'x' } })).isError)
    const forgotten = provider.client?.client_id as string

    // The owner removed the client (`oauth revoke-client`, or it was never used again and purged), and its access token ran out.
    t.equal(await server.app.oauth?.revoker.revokeClient(forgotten).then((result) => result.existed), true)
    provider.saved = { ...provider.saved as OAuthTokens, access_token: await expiredCopyOf(server, (provider.saved as OAuthTokens).access_token) }
    const failed = await client.callTool({ name: 'read_context', arguments: { key: 'before' } }).then(() => undefined, (error: unknown) => error)
    t.ok(sdk.unauthorized(failed), 'the call needs a new sign-in')
    t.match(requests.filter((request) => request.path === '/oauth/token').at(-1), { grantType: 'refresh_token', status: 401 }, 'the refresh was refused (invalid_client)')
    t.equal(requests.filter((request) => request.path === '/oauth/register' && request.status === 201).length, 2, 'the SDK registered again')
    t.not(provider.client?.client_id, forgotten, 'as a new client')
    t.equal(provider.authorizationUrls.length, 2)
    t.equal(provider.authorizationUrls[1]?.searchParams.get('client_id'), provider.client?.client_id)

    await sdk.finishAuth(provider, fetch, provider.callback as URL)
    const again = await sdk.connect(provider, fetch)
    t.teardown(() => again.close())
    t.match((await again.callTool({ name: 'read_context', arguments: { key: 'before' } })).structuredContent, { content: 'x', updated_by: 'oauth:owner' }, 'working again after the new sign-in')
  })
}
