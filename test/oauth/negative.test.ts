import { createServer, type Server } from 'node:net'
import { decodeProtectedHeader, importJWK, SignJWT } from 'jose'
import { test } from 'tap'
import {
  authorizationUrl, authorize, callMcp, claimsOf, CLAUDE_CALLBACK, clientAuthOf, mcpAccepts, redeemCode, refresh, register,
  registered, revoke, signedInClient
} from './flow-helper.js'
import { authorizeInBrowser, browse, CookieJar, newPkce, type OAuthServer, startOAuthServer } from './oauth-helper.js'

type Tap = Parameters<typeof startOAuthServer>[0]

const CIMD_CLIENT_ID = 'https://app.example/oauth/client.json'
const CIMD_DOCUMENT = {
  client_id: CIMD_CLIENT_ID,
  client_name: 'Metadata Document App',
  redirect_uris: [CLAUDE_CALLBACK],
  token_endpoint_auth_method: 'none',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code']
}

/** Client ID Metadata Documents as the server fetches them in these tests: served from memory, every fetch recorded. */
function documentFetch (): { fetch: typeof globalThis.fetch, fetched: string[] } {
  const fetched: string[] = []
  const documents = new Map([[CIMD_CLIENT_ID, CIMD_DOCUMENT]])
  const serve: typeof globalThis.fetch = async (input) => {
    const url = input instanceof Request ? input.url : String(input)
    fetched.push(url)
    const document = documents.get(url)
    return document === undefined
      ? new Response('not found', { status: 404 })
      : new Response(JSON.stringify(document), { status: 200, headers: { 'content-type': 'application/json' } })
  }
  return { fetch: serve, fetched }
}

/** The rows oidc-provider's adapter wrote, as text. */
async function storedText (server: OAuthServer): Promise<string> {
  const rows = await server.app.db.sql`select model, id, payload::text as payload, grant_id, uid from oauth_payloads`
  return JSON.stringify(rows)
}

/** A JWT signed with the server's own key, with these claims over a valid access token's. */
async function signedByServer (server: OAuthServer, claims: Record<string, unknown>): Promise<string> {
  const [key] = await server.app.oauth?.store.listKeys('sign') ?? []
  if (key === undefined) throw new Error('no signing key')
  const now = Math.floor(Date.now() / 1000)
  return await new SignJWT({ iat: now, exp: now + 600, ...claims })
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: key.kid })
    .sign(await importJWK(key.jwk, 'ES256'))
}

/** A TCP listener that only counts who connects: the proof that the server did not reach for an address. */
async function connectionCounter (t: Tap): Promise<{ port: number, connections: () => number }> {
  let count = 0
  const listener: Server = createServer((socket) => {
    count++
    socket.destroy()
  })
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => listener.close(() => resolve())))
  const address = listener.address()
  return { port: typeof address === 'object' && address !== null ? address.port : 0, connections: () => count }
}

test('the authorization server refuses what it must', async (t) => {
  const documents = documentFetch()
  const server = await startOAuthServer(t, { AUTH_CACHE_SECONDS: '0' }, { oauthFetch: documents.fetch })
  const { sql } = server.app.db

  t.test('a wrong code_verifier is invalid_grant', async (t) => {
    const client = await registered(server)
    const { code } = await authorize(server, client)
    const answer = await redeemCode(server, clientAuthOf(client), code, newPkce().verifier, CLAUDE_CALLBACK)
    t.equal(answer.status, 400)
    t.equal(answer.body.error, 'invalid_grant')
    t.notOk(answer.body.access_token)
  })

  t.test('a code redeemed twice is invalid_grant, and the tokens of its first redemption are revoked', async (t) => {
    const client = await registered(server)
    const { code, pkce } = await authorize(server, client)
    const first = await redeemCode(server, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK)
    t.equal(first.status, 200)
    const accessToken = first.body.access_token as string
    t.equal((await mcpAccepts(server, accessToken)).status, 200, 'the first redemption works')

    const second = await redeemCode(server, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK)
    t.equal(second.status, 400)
    t.equal(second.body.error, 'invalid_grant')
    // RFC 6749 §4.1.2 / OAuth 2.1 §4.1.3: a code used twice revokes what was issued for it (oidc-provider ends the grant).
    t.equal((await mcpAccepts(server, accessToken)).code, 'AUTH_1003', 'the access token is refused as revoked')
    t.equal((await refresh(server, clientAuthOf(client), first.body.refresh_token as string)).body.error, 'invalid_grant', 'the refresh token is dead')
  })

  t.test('a redirect_uri not registered: an error page at authorize (never a redirect), invalid_grant at token', async (t) => {
    const client = await registered(server)
    const jar = new CookieJar()
    const page = await browse(jar, authorizationUrl(server, { clientId: client.client_id, redirectUri: 'https://attacker.example/callback' }))
    t.equal(page.status, 400)
    t.equal(page.headers.get('location'), null, 'not sent anywhere')
    t.match(page.headers.get('content-type'), /^text\/html/)
    t.match(await page.text(), /invalid_redirect_uri/)

    const { code, pkce } = await authorize(server, client)
    const answer = await redeemCode(server, clientAuthOf(client), code, pkce.verifier, 'https://claude.ai/api/mcp/other_callback')
    t.equal(answer.status, 400)
    t.equal(answer.body.error, 'invalid_grant', 'the code is bound to the redirect_uri it was issued for')
  })

  t.test('an expired code is invalid_grant', async (t) => {
    const client = await registered(server)
    const { code, pkce } = await authorize(server, client)
    // The code lives 60 s; rather than wait, its row expires now.
    const moved = await sql`update oauth_payloads set expires_at = now() - interval '1 second' where model = 'AuthorizationCode' and payload->>'clientId' = ${client.client_id} returning id`
    t.equal(moved.length, 1)
    const answer = await redeemCode(server, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK)
    t.equal(answer.status, 400)
    t.equal(answer.body.error, 'invalid_grant')
  })

  t.test('a rotated refresh token used again revokes the whole family', async (t) => {
    const { client, tokens } = await signedInClient(server)
    const auth = clientAuthOf(client)
    const rotated = await refresh(server, auth, tokens.refresh_token)
    t.equal(rotated.status, 200)
    const newest = { access_token: rotated.body.access_token as string, refresh_token: rotated.body.refresh_token as string }
    t.not(newest.refresh_token, tokens.refresh_token, 'rotated')
    t.equal((await mcpAccepts(server, newest.access_token)).status, 200)

    const reuse = await refresh(server, auth, tokens.refresh_token)
    t.equal(reuse.status, 400)
    t.equal(reuse.body.error, 'invalid_grant', 'the old refresh token is refused')
    t.equal((await refresh(server, auth, newest.refresh_token)).body.error, 'invalid_grant', 'and so is the newest one')
    t.equal((await mcpAccepts(server, newest.access_token)).code, 'AUTH_1003', 'the newest access token is refused as revoked')
    t.equal((await mcpAccepts(server, tokens.access_token)).code, 'AUTH_1003', 'and the first one')
  })

  t.test('tokens for another resource: invalid_target at authorize and at token; a JWT of ours for another audience is refused', async (t) => {
    const client = await registered(server)
    const { callback } = await authorizeInBrowser(server, authorizationUrl(server, { clientId: client.client_id, redirectUri: CLAUDE_CALLBACK, resource: 'https://other.example/mcp' }))
    t.equal(callback.searchParams.get('error'), 'invalid_target', 'authorize sends the client back with invalid_target')
    t.equal(callback.searchParams.get('code'), null)

    const { code, pkce } = await authorize(server, client)
    const answer = await redeemCode(server, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK, 'https://other.example/mcp')
    t.equal(answer.status, 400)
    t.equal(answer.body.error, 'invalid_target')

    const { tokens } = await signedInClient(server, client)
    const { iat: _iat, exp: _exp, ...claims } = claimsOf(tokens.access_token)
    const elsewhere = await signedByServer(server, { ...claims, aud: 'https://other.example/mcp' })
    const refused = await mcpAccepts(server, elsewhere)
    t.equal(refused.status, 401)
    t.equal(refused.code, 'AUTH_1002', 'signed by our key, but for another audience')
    t.equal((await mcpAccepts(server, await signedByServer(server, claims))).status, 200, 'the same claims for our audience are accepted (the forgery itself is sound)')
  })

  t.test('a Client ID Metadata Document on a private or loopback address is refused before anything is fetched', async (t) => {
    for (const clientId of ['https://127.0.0.1:1/client.json', 'https://localhost/client.json', 'https://[::1]/client.json', 'https://10.0.0.8/client.json', 'https://169.254.169.254/latest/client.json', 'https://app.localhost/client.json']) {
      const page = await browse(new CookieJar(), authorizationUrl(server, { clientId, redirectUri: CLAUDE_CALLBACK }))
      t.equal(page.status, 400, clientId)
      t.equal(page.headers.get('location'), null, `${clientId}: not redirected`)
      t.match(await page.text(), /invalid_client/, `${clientId}: invalid_client`)
    }
    t.same(documents.fetched.filter((url) => url !== CIMD_CLIENT_ID), [], 'none was fetched')
  })

  t.test('a Client ID Metadata Document: fetched, its client_name on the consent page, and the flow completes', async (t) => {
    const jar = new CookieJar()
    const pkce = newPkce()
    const first = await browse(jar, authorizationUrl(server, { clientId: CIMD_CLIENT_ID, redirectUri: CLAUDE_CALLBACK, pkce }))
    t.equal(first.status, 303)
    const consent = await browse(jar, new URL(first.headers.get('location') as string, server.url).href)
    t.equal(consent.status, 200)
    t.match(await consent.text(), /Metadata Document App/, 'the document\'s client_name is shown')
    t.ok(documents.fetched.includes(CIMD_CLIENT_ID), 'the document was fetched')

    const { callback } = await authorizeInBrowser(server, authorizationUrl(server, { clientId: CIMD_CLIENT_ID, redirectUri: CLAUDE_CALLBACK, pkce }))
    const code = callback.searchParams.get('code') as string
    const answer = await redeemCode(server, { method: 'none', clientId: CIMD_CLIENT_ID }, code, pkce.verifier, CLAUDE_CALLBACK)
    t.equal(answer.status, 200)
    t.equal(claimsOf(answer.body.access_token as string).client_id, CIMD_CLIENT_ID)
    t.equal((await mcpAccepts(server, answer.body.access_token as string)).status, 200)
  })

  t.test('registration refuses redirect URIs that are not https or loopback http, or carry a fragment', async (t) => {
    for (const uri of ['http://example.com/callback', 'https://example.com/callback#fragment', 'javascript:alert(1)', 'http://192.168.1.5/callback', 'https://user:pw@example.com/callback']) {
      const answer = await register(server, { redirect_uris: [uri] })
      t.equal(answer.status, 400, uri)
      t.equal(answer.body.error, 'invalid_redirect_uri', uri)
    }
    t.equal((await register(server, { redirect_uris: ['http://127.0.0.1:8000/cb', 'http://[::1]/cb', 'http://localhost:9/cb'] })).status, 201, 'loopback http is fine')
  })

  t.test('a client the server forgot gets invalid_client at the token endpoint, so that it registers again', async (t) => {
    const { client, tokens } = await signedInClient(server)
    const { code, pkce } = await authorize(server, client)
    const forgotten = await sql`delete from oauth_payloads where model = 'Client' and id = ${client.client_id} returning id`
    t.equal(forgotten.length, 1)
    const redeemed = await redeemCode(server, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK)
    t.equal(redeemed.status, 401)
    t.equal(redeemed.body.error, 'invalid_client')
    const refreshed = await refresh(server, clientAuthOf(client), tokens.refresh_token)
    t.equal(refreshed.status, 401)
    t.equal(refreshed.body.error, 'invalid_client')
  })

  t.test('confidential clients: client_secret_basic and client_secret_post work; a wrong secret is invalid_client', async (t) => {
    for (const method of ['client_secret_basic', 'client_secret_post'] as const) {
      const client = await registered(server, { token_endpoint_auth_method: method })
      t.equal(client.token_endpoint_auth_method, method)
      t.ok(client.client_secret, `${method}: a secret was issued`)
      const { code, pkce } = await authorize(server, client)
      const wrong = await redeemCode(server, clientAuthOf(client, `${client.client_secret as string}x`), code, pkce.verifier, CLAUDE_CALLBACK)
      t.equal(wrong.status, 401, `${method}: wrong secret`)
      t.equal(wrong.body.error, 'invalid_client')
      const noSecret = await redeemCode(server, { method: 'none', clientId: client.client_id }, code, pkce.verifier, CLAUDE_CALLBACK)
      t.equal(noSecret.body.error, 'invalid_client', `${method}: no secret`)
      const right = await redeemCode(server, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK)
      t.equal(right.status, 200, `${method}: the right secret`)
      const refreshed = await refresh(server, clientAuthOf(client), right.body.refresh_token as string)
      t.equal(refreshed.status, 200, `${method}: refresh with the secret`)
      t.equal((await refresh(server, clientAuthOf(client, 'not-the-secret'), refreshed.body.refresh_token as string)).body.error, 'invalid_client', `${method}: refresh with a wrong secret`)
    }
  })

  t.test('PKCE is required, and only S256', async (t) => {
    const client = await registered(server)
    const none = await authorizeInBrowser(server, authorizationUrl(server, { clientId: client.client_id, redirectUri: CLAUDE_CALLBACK, challengeMethod: null }))
    t.equal(none.callback.searchParams.get('error'), 'invalid_request', 'no code_challenge')
    t.match(none.callback.searchParams.get('error_description'), /PKCE/)
    t.equal(none.callback.searchParams.get('code'), null)
    const plain = await authorizeInBrowser(server, authorizationUrl(server, { clientId: client.client_id, redirectUri: CLAUDE_CALLBACK, challengeMethod: 'plain' }))
    t.equal(plain.callback.searchParams.get('error'), 'invalid_request', 'plain')
    t.match(plain.callback.searchParams.get('error_description'), /code_challenge_method/)
    t.equal(plain.callback.searchParams.get('code'), null)
  })

  t.test('codes, refresh tokens and client secrets are never stored as they are', async (t) => {
    const confidential = await registered(server, { token_endpoint_auth_method: 'client_secret_post' })
    const { code, pkce } = await authorize(server, confidential)
    const codeStored = await storedText(server)
    t.notOk(codeStored.includes(code), 'the code is not stored')
    const tokens = await redeemCode(server, clientAuthOf(confidential), code, pkce.verifier, CLAUDE_CALLBACK)
    const { refresh_token: refreshToken, access_token: accessToken } = tokens.body as { refresh_token: string, access_token: string }
    const rotated = await refresh(server, clientAuthOf(confidential), refreshToken)
    const stored = await storedText(server)
    for (const [what, secret] of [['client secret', confidential.client_secret], ['code', code], ['refresh token', refreshToken], ['rotated refresh token', rotated.body.refresh_token], ['access token', accessToken], ['access token jti', claimsOf(accessToken).jti]]) {
      t.ok(typeof secret === 'string' && secret.length > 10, `${what} is there to look for`)
      t.notOk(stored.includes(secret as string), `${what} is not stored`)
    }
    t.ok(stored.includes(confidential.client_id), 'client ids are (they are not secret)')
  })

  t.test('the sign-in session\'s id (the session cookie) is never stored as it is', async (t) => {
    const jar = new CookieJar()
    // Two clients in one browser: the second sign-in starts inside the session the first made.
    for (const client of [await registered(server), await registered(server)]) {
      const { callback } = await authorizeInBrowser(server, authorizationUrl(server, { clientId: client.client_id, redirectUri: CLAUDE_CALLBACK }), {}, jar)
      t.ok(callback.searchParams.get('code'))
    }
    const session = /(?:^|; )scm_session=([^;]+)/.exec(jar.header())?.[1]
    t.ok(session !== undefined && session.length > 10, 'the browser holds a session cookie')
    const rows = await sql<Array<{ model: string }>>`select model from oauth_payloads where model in ('Session', 'Interaction')`
    t.ok(rows.some((row) => row.model === 'Session') && rows.some((row) => row.model === 'Interaction'), 'sessions and interactions are stored')
    t.notOk((await storedText(server)).includes(session as string), 'but never the session id')
  })

  t.test('access tokens: at+jwt signed with the server key, with iss, aud, scope, namespace, client and grant', async (t) => {
    const { client, tokens } = await signedInClient(server, undefined, { scopes: ['context:read'], namespace: 'team/notes' })
    const header = decodeProtectedHeader(tokens.access_token)
    t.match(header, { alg: 'ES256', typ: 'at+jwt', kid: 'sign-initial' })
    const claims = claimsOf(tokens.access_token)
    t.match(claims, { iss: server.url, aud: server.resource, sub: 'owner', scope: 'context:read', namespace: 'team/notes', client_id: client.client_id })
    t.type(claims.gid, 'string')
    t.type(claims.jti, 'string')
    t.equal((claims.exp as number) - (claims.iat as number), 900, 'OAUTH_ACCESS_TOKEN_SECONDS')
    const write = await callMcp(server, tokens.access_token, 'write_context', { key: 'x', content: 'y' })
    t.equal(write.result?.isError, true, 'the scope granted is the scope enforced: no write with context:read')
  })

  t.test('iss is in the authorization response, Claude\'s callback is accepted', async (t) => {
    const client = await registered(server, { redirect_uris: [CLAUDE_CALLBACK] })
    const { callback } = await authorize(server, client, { state: 'claude-state' })
    t.equal(`${callback.origin}${callback.pathname}`, CLAUDE_CALLBACK)
    t.equal(callback.searchParams.get('iss'), server.url)
    t.equal(callback.searchParams.get('state'), 'claude-state')
  })

  t.test('a native client registered with a loopback redirect may come back on another port, not another path', async (t) => {
    const client = await registered(server, { redirect_uris: ['http://127.0.0.1:8123/callback'] })
    t.equal(client.application_type, 'native')
    const otherPort = 'http://127.0.0.1:53001/callback'
    const { code, pkce, callback } = await authorize(server, client, { redirectUri: otherPort })
    t.equal(`${callback.origin}${callback.pathname}`, otherPort)
    const answer = await redeemCode(server, clientAuthOf(client), code, pkce.verifier, otherPort)
    t.equal(answer.status, 200)
    const page = await browse(new CookieJar(), authorizationUrl(server, { clientId: client.client_id, redirectUri: 'http://127.0.0.1:53001/elsewhere' }))
    t.equal(page.status, 400, 'another path is refused')
    t.equal(page.headers.get('location'), null)
  })

  t.test('revoking an access token (a JWT) makes it unusable at /mcp; the grant and its refresh token live on', async (t) => {
    const { client, tokens } = await signedInClient(server)
    const auth = clientAuthOf(client)
    t.equal((await mcpAccepts(server, tokens.access_token)).status, 200)
    const revoked = await revoke(server, auth, tokens.access_token, 'access_token')
    t.equal(revoked.status, 200)
    const refused = await mcpAccepts(server, tokens.access_token)
    t.equal(refused.status, 401)
    t.equal(refused.code, 'AUTH_1003')
    const refreshed = await refresh(server, auth, tokens.refresh_token)
    t.equal(refreshed.status, 200, 'the refresh token still works')
    t.equal((await mcpAccepts(server, refreshed.body.access_token as string)).status, 200, 'and its new access token')

    // Without a hint, too.
    t.equal((await revoke(server, auth, refreshed.body.access_token as string)).status, 200)
    t.equal((await mcpAccepts(server, refreshed.body.access_token as string)).code, 'AUTH_1003')
  })

  t.test('an access token revocation that cannot be stored answers 503, never 200', async (t) => {
    const { client, tokens } = await signedInClient(server)
    const jti = String(claimsOf(tokens.access_token).jti)
    // The revocation list refuses this one jti, as a database that fails the write would.
    await sql`create function refuse_revocation() returns trigger language plpgsql as $$ begin raise exception 'refused for the test'; end $$`
    await sql.unsafe(`create trigger refuse_revocation before insert on revoked_jtis for each row when (new.jti = '${jti.replace(/'/g, "''")}') execute function refuse_revocation()`)
    const failed = await revoke(server, clientAuthOf(client), tokens.access_token)
    t.equal(failed.status, 503)
    t.equal(failed.body.error, 'server_error')
    t.equal(failed.headers.get('retry-after'), '2')
    t.equal((await mcpAccepts(server, tokens.access_token)).status, 200, 'not revoked, and the client was told so')
    await sql`drop trigger refuse_revocation on revoked_jtis`
    await sql`drop function refuse_revocation`
    t.equal((await revoke(server, clientAuthOf(client), tokens.access_token)).status, 200, 'the retry works')
    t.equal((await mcpAccepts(server, tokens.access_token)).code, 'AUTH_1003')
  })

  t.test('revoking another client\'s access token, or a JWT that is not ours, answers 200 and changes nothing', async (t) => {
    const { tokens } = await signedInClient(server)
    const other = await registered(server)
    t.equal((await revoke(server, clientAuthOf(other), tokens.access_token)).status, 200)
    t.equal((await mcpAccepts(server, tokens.access_token)).status, 200, 'the owner client\'s token still works')
    const foreign = await new SignJWT({ sub: 'x', jti: 'foreign' }).setProtectedHeader({ alg: 'HS256', typ: 'at+jwt' }).setIssuedAt().setExpirationTime('5m').sign(new TextEncoder().encode('0123456789abcdef0123456789abcdef'))
    t.equal((await revoke(server, clientAuthOf(other), foreign)).status, 200)
    const unauthenticated = await revoke(server, { method: 'client_secret_basic', clientId: other.client_id, secret: 'wrong' }, tokens.access_token)
    t.equal(unauthenticated.status, 401, 'a client that fails to authenticate revokes nothing')
    t.equal(unauthenticated.body.error, 'invalid_client')
    t.equal((await mcpAccepts(server, tokens.access_token)).status, 200)
  })
})

test('a Client ID Metadata Document on a loopback address: no connection is even attempted (the real fetch)', async (t) => {
  const server = await startOAuthServer(t)
  const counter = await connectionCounter(t)
  for (const clientId of [`https://127.0.0.1:${counter.port}/client.json`, `https://localhost:${counter.port}/client.json`]) {
    const page = await browse(new CookieJar(), authorizationUrl(server, { clientId, redirectUri: CLAUDE_CALLBACK }))
    t.equal(page.status, 400, clientId)
    t.match(await page.text(), /invalid_client/)
  }
  t.equal(counter.connections(), 0, 'nothing connected to the listener')
})
