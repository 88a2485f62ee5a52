import { randomBytes } from 'node:crypto'
import { decodeProtectedHeader } from 'jose'
import { test } from 'tap'
import { buildApp } from '../../app.js'
import { rotateSigningKey } from '../../oauth/keys.js'
import { authorizationUrl, authorize, callMcp, clientAuthOf, CLAUDE_CALLBACK, injectFetch, mcpAccepts, redeemCode, refresh, registered, type Target } from './flow-helper.js'
import { CookieJar, csrfOf, newPkce, OWNER_PASSWORD, startOAuthServer } from './oauth-helper.js'

type Tap = Parameters<typeof startOAuthServer>[0]

// With Redis (CI's second pass) a revocation reaches the other instance through it at once, whatever
// AUTH_CACHE_SECONDS; without, through the database, immediately only with no cache.
// With Redis, counters of this run's own (the registration limit per address lasts an hour, and
// other runs on the same Redis register from 127.0.0.1 too).
const SHARED: Record<string, string> = process.env.REDIS_URL === undefined || process.env.REDIS_URL === ''
  ? { AUTH_CACHE_SECONDS: '0' }
  : { REDIS_URL: process.env.REDIS_URL, RATE_LIMIT_KEY_PREFIX: `test-${randomBytes(6).toString('hex')}:` }

/** Two instances on one database: `a` listens, `b` is built from the same configuration and reached through inject at the same address. */
async function twoInstances (t: Tap): Promise<{ a: Target, b: Target }> {
  const a = await startOAuthServer(t, SHARED)
  const appB = await buildApp(a.app.config)
  t.teardown(() => appB.close())
  await appB.ready()
  return { a, b: { ...a, app: appB, fetch: injectFetch(appB, new URL(a.url).host) } }
}

async function kidsOf (target: Target): Promise<string[]> {
  const response = await (target.fetch ?? fetch)(`${target.url}/oauth/jwks`)
  const { keys } = await response.json() as { keys: Array<{ kid: string, d?: string }> }
  if (keys.some((key) => key.d !== undefined)) throw new Error('a private key in the JWKS')
  return keys.map((key) => key.kid).sort()
}

/** One browser request to this instance, no redirect followed (oauth-helper's browse, for either instance). */
async function browseOn (target: Target, jar: CookieJar, url: string, form?: Record<string, string | string[]>): Promise<Response> {
  const body = new URLSearchParams()
  for (const [name, value] of Object.entries(form ?? {})) for (const item of [value].flat()) body.append(name, item)
  const response = await (target.fetch ?? fetch)(url, {
    method: form === undefined ? 'GET' : 'POST',
    headers: { cookie: jar.header(), ...(form !== undefined && { 'content-type': 'application/x-www-form-urlencoded', origin: target.url }) },
    ...(form !== undefined && { body }),
    redirect: 'manual'
  })
  jar.store(response)
  return response
}

function kidOf (token: string): string | undefined {
  return decodeProtectedHeader(token).kid
}

test('two instances on one database: any step of the flow on either', async (t) => {
  const { a, b } = await twoInstances(t)

  // Registration and consent on a ...
  const client = await registered(a)
  const { code, pkce } = await authorize(a, client)

  // ... the token, the tools and the refresh on b.
  const redeemed = await redeemCode(b, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK)
  t.equal(redeemed.status, 200, 'b redeems the code a issued')
  const accessToken = redeemed.body.access_token as string
  const written = await callMcp(b, accessToken, 'write_context', { key: 'shared', content: 'from b' })
  t.notOk(written.result?.isError, 'b accepts the token')
  const readOnA = await callMcp(a, accessToken, 'read_context', { key: 'shared' })
  t.match(readOnA.result?.structuredContent, { content: 'from b', updated_by: 'oauth:owner' }, 'and so does a')

  const refreshed = await refresh(b, clientAuthOf(client), redeemed.body.refresh_token as string)
  t.equal(refreshed.status, 200, 'b refreshes')
  t.equal((await mcpAccepts(a, refreshed.body.access_token as string)).status, 200, 'a accepts the refreshed token')

  // Reuse of the rotated refresh token on the other instance still revokes the family, for both.
  const reuse = await refresh(a, clientAuthOf(client), redeemed.body.refresh_token as string)
  t.equal(reuse.body.error, 'invalid_grant', 'a sees the reuse')
  t.equal((await mcpAccepts(b, refreshed.body.access_token as string)).code, 'AUTH_1003', 'b refuses the family')
  t.equal((await mcpAccepts(a, refreshed.body.access_token as string)).code, 'AUTH_1003', 'a refuses the family')
})

test('a sign-in whose requests land on alternate instances (a proxy in front of several)', async (t) => {
  const { a, b } = await twoInstances(t)
  const client = await registered(b)
  const pkce = newPkce()
  const jar = new CookieJar()
  const started = await browseOn(a, jar, authorizationUrl(a, { clientId: client.client_id, redirectUri: CLAUDE_CALLBACK, pkce }))
  t.equal(started.status, 303, 'a starts the sign-in')
  const interaction = new URL(started.headers.get('location') as string, a.url).href
  const page = await browseOn(b, jar, interaction)
  t.equal(page.status, 200, 'b shows the consent page of the sign-in a started')
  const posted = await browseOn(a, jar, interaction, { csrf: csrfOf(await page.text()), decision: 'allow', scope: ['context:read'], namespace: 'default', password: OWNER_PASSWORD, token: '' })
  t.equal(posted.status, 303, 'a takes the form b served (shared cookie and form keys)')
  let location = new URL(posted.headers.get('location') as string, a.url).href
  for (const target of [b, a, b, a]) {
    if (!location.startsWith(a.url)) break
    location = new URL((await browseOn(target, jar, location)).headers.get('location') as string, a.url).href
  }
  const callback = new URL(location)
  t.equal(`${callback.origin}${callback.pathname}`, CLAUDE_CALLBACK, 'the browser is back at the client')
  const code = callback.searchParams.get('code') as string
  const redeemed = await redeemCode(a, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK)
  t.equal(redeemed.status, 200)
  t.equal((await mcpAccepts(b, redeemed.body.access_token as string)).status, 200)
})

test('key rotation without downtime: published at once, signs after the takeover, old tokens keep working', async (t) => {
  const { a, b } = await twoInstances(t)
  const store = a.app.oauth?.store
  if (store === undefined) throw new Error('no authorization server')
  const client = await registered(a)
  const { code, pkce } = await authorize(a, client)
  const before = await redeemCode(b, clientAuthOf(client), code, pkce.verifier, CLAUDE_CALLBACK)
  const oldToken = before.body.access_token as string
  t.equal(kidOf(oldToken), 'sign-initial')
  t.same(await kidsOf(a), ['sign-initial'])

  const rotation = await rotateSigningKey(store, a.app.config.OAUTH_ACCESS_TOKEN_SECONDS)
  await a.app.oauth?.reloadKeys()
  await b.app.oauth?.reloadKeys()
  t.same(await kidsOf(a), [rotation.kid, 'sign-initial'].sort(), 'a publishes the new key before it signs')
  t.same(await kidsOf(b), [rotation.kid, 'sign-initial'].sort(), 'and so does b')

  // Before the takeover the old key still signs, on both; everything issued so far is accepted by both.
  const duringA = await refresh(a, clientAuthOf(client), before.body.refresh_token as string)
  t.equal(kidOf(duringA.body.access_token as string), 'sign-initial', 'the old key signs until the takeover')
  for (const [name, target] of [['a', a], ['b', b]] as const) {
    t.equal((await mcpAccepts(target, oldToken)).status, 200, `${name} accepts the token signed before the rotation`)
    t.equal((await mcpAccepts(target, duringA.body.access_token as string)).status, 200, `${name} accepts the token signed during it`)
  }

  // The takeover time comes (moved into the past rather than waited for), and each instance reads the table.
  // (The initial key, made moments ago, must then be the older: on a quick machine it was made
  // less than a second before.)
  await a.app.db.sql`update oauth_keys set signs_from = now() - interval '1 hour' where kid = 'sign-initial'`
  await a.app.db.sql`update oauth_keys set signs_from = now() - interval '1 second' where kid = ${rotation.kid}`
  await a.app.oauth?.reloadKeys()
  await b.app.oauth?.reloadKeys()

  const afterB = await refresh(b, clientAuthOf(client), duringA.body.refresh_token as string)
  t.equal(afterB.status, 200)
  t.equal(kidOf(afterB.body.access_token as string), rotation.kid, 'b signs with the new key')
  const afterA = await refresh(a, clientAuthOf(client), afterB.body.refresh_token as string)
  t.equal(kidOf(afterA.body.access_token as string), rotation.kid, 'a signs with the new key')
  for (const [name, target] of [['a', a], ['b', b]] as const) {
    t.equal((await mcpAccepts(target, afterB.body.access_token as string)).status, 200, `${name} accepts b's token with the new kid`)
    t.equal((await mcpAccepts(target, afterA.body.access_token as string)).status, 200, `${name} accepts a's token with the new kid`)
    t.equal((await mcpAccepts(target, oldToken)).status, 200, `${name} still accepts the token signed before the rotation`)
  }

  // The old key retires once every token it signed has expired: until then it is kept, then purged.
  const [kept] = await a.app.db.sql<Array<{ retire_at: Date }>>`select retire_at from oauth_keys where kid = 'sign-initial'`
  t.equal(kept?.retire_at.getTime(), rotation.othersRetireAt.getTime(), 'the old key retires after the longest-lived token it signed')
  t.ok((kept?.retire_at.getTime() ?? 0) >= rotation.signsFrom.getTime() + a.app.config.OAUTH_ACCESS_TOKEN_SECONDS * 1000)
})
