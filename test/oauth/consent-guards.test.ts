// What guards the consent page, over plain HTTP: the headers that keep it out of frames and caches,
// the CSRF value and the Origin check on its form, and the failed sign-in budget per address.
import tap, { type Test } from 'tap'
import { browse, CookieJar, csrfOf, locationOf, newPkce, OWNER_PASSWORD, startOAuthServer, type OAuthServer } from './oauth-helper.js'

type Tap = Test

const REDIRECT_URI = 'https://client.example/callback'

async function registerClient (server: OAuthServer): Promise<string> {
  const response = await fetch(`${server.url}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'Guarded Client', redirect_uris: [REDIRECT_URI], token_endpoint_auth_method: 'none' })
  })
  const body = await response.json() as { client_id?: string }
  if (response.status !== 201 || body.client_id === undefined) throw new Error(`registration: HTTP ${response.status}: ${JSON.stringify(body)}`)
  return body.client_id
}

function authorizationUrl (server: OAuthServer, clientId: string): string {
  return `${server.url}/oauth/authorize?${new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: REDIRECT_URI,
    scope: 'context:read context:write',
    state: 'guarded',
    code_challenge: newPkce().challenge,
    code_challenge_method: 'S256',
    resource: server.resource
  }).toString()}`
}

interface Consent { jar: CookieJar, url: string, response: Response, html: string }

/** One browser's sign-in, up to its consent page. */
async function openConsent (server: OAuthServer, clientId: string): Promise<Consent> {
  const jar = new CookieJar()
  const url = locationOf(await browse(jar, authorizationUrl(server, clientId)), server.url)
  if (!url.startsWith(`${server.url}/oauth/interaction/`)) throw new Error(`authorize led to ${url}`)
  const response = await browse(jar, url)
  return { jar, url, response, html: await response.text() }
}

/** The form as the page posts it, from the page's own origin; `fields` change or add fields. */
async function post (server: OAuthServer, consent: Consent, fields: Record<string, string | string[]> = {}, origin = server.url): Promise<Response> {
  return await browse(consent.jar, consent.url, {
    origin,
    form: { csrf: csrfOf(consent.html), decision: 'allow', scope: ['context:read', 'context:write'], namespace: 'default', password: OWNER_PASSWORD, ...fields }
  })
}

function checkPageHeaders (t: Tap, response: Response, what: string): void {
  const csp = response.headers.get('content-security-policy') ?? ''
  t.equal(response.headers.get('x-frame-options'), 'DENY', `${what}: X-Frame-Options DENY`)
  t.match(csp, /(^|; )frame-ancestors 'none'(;|$)/, `${what}: CSP frame-ancestors 'none'`)
  t.match(csp, /(^|; )default-src 'none'(;|$)/, `${what}: CSP default-src 'none' (no script, no outside assets)`)
  t.equal(response.headers.get('cache-control'), 'no-store', `${what}: not stored`)
  t.equal(response.headers.get('x-content-type-options'), 'nosniff', `${what}: nosniff`)
  t.equal(response.headers.get('referrer-policy'), 'same-origin', `${what}: no Referer to other sites, and a real Origin on its own form posts`)
  t.match(response.headers.get('content-type'), /^text\/html; charset=utf-8/, `${what}: HTML`)
}

const server = await startOAuthServer(tap)
const clientId = await registerClient(server)
const store = server.app.oauth!.store

tap.test('every page keeps out of frames and caches and loads nothing from elsewhere', async (t) => {
  const consent = await openConsent(server, clientId)
  t.equal(consent.response.status, 200, 'the consent page')
  checkPageHeaders(t, consent.response, 'the consent page')
  const csp = consent.response.headers.get('content-security-policy') ?? ''
  t.match(csp, /(^|; )form-action 'self' https:\/\/client\.example(;|$)/, 'its form posts here, and the redirect after it goes to the client only')
  const nonce = /style-src 'nonce-([^']+)'/.exec(csp)?.[1]
  t.ok(nonce !== undefined && consent.html.includes(`<style nonce="${nonce}">`), 'its one style block carries the CSP nonce')
  t.notMatch(consent.html, /<script|<link|<img|src=|url\(/, 'it has no script and refers to no other resource')
  const again = await openConsent(server, clientId)
  t.not(/style-src 'nonce-([^']+)'/.exec(again.response.headers.get('content-security-policy') ?? '')?.[1], nonce, 'each page gets a new nonce')

  const expired = await browse(new CookieJar(), consent.url)
  t.equal(expired.status, 400, 'the page without its sign-in cookie is an error page')
  checkPageHeaders(t, expired, 'our error page')
  t.match(await expired.text(), /expired or was started in another browser/, 'saying why')

  const badRequest = await browse(new CookieJar(), `${server.url}/oauth/authorize?client_id=nobody&response_type=code&redirect_uri=${encodeURIComponent(REDIRECT_URI)}`)
  t.equal(badRequest.status, 400, 'an authorization request of an unknown client cannot go back to it')
  checkPageHeaders(t, badRequest, 'oidc-provider\'s error page')
  t.match(await badRequest.text(), /This sign-in cannot go on[^]*invalid_client/, 'which says so, with the error code')
})

tap.test('a form post without this page\'s CSRF value is refused and grants nothing', async (t) => {
  const consent = await openConsent(server, clientId)
  const forged = await post(server, consent, { csrf: 'A'.repeat(43) })
  t.equal(forged.status, 403, 'a made-up CSRF value: 403')
  checkPageHeaders(t, forged, 'the refusal page')
  t.match(await forged.text(), /did not come from this sign-in page/, 'an error page saying why')

  const other = await openConsent(server, clientId)
  const borrowed = await post(server, consent, { csrf: csrfOf(other.html) })
  t.equal(borrowed.status, 403, 'the CSRF value of another sign-in (the attacker\'s own): 403')

  const missing = await browse(consent.jar, consent.url, { origin: server.url, form: { decision: 'allow', password: OWNER_PASSWORD, scope: 'context:read' } })
  t.equal(missing.status, 400, 'no CSRF value at all: refused as a malformed form')
  t.equal((await store.counts()).grants, 0, 'none of them made a grant')

  const real = await post(server, consent)
  t.equal(real.status, 303, 'the page\'s own form still goes through afterwards')
  t.equal((await store.counts()).grants, 1, 'and makes the one grant')
})

tap.test('a form post from another origin is refused before it is read', async (t) => {
  const grants = (await store.counts()).grants
  const consent = await openConsent(server, clientId)
  for (const origin of ['https://attacker.example', `${new URL(server.url).protocol}//localhost:1`, 'null']) {
    const response = await post(server, consent, {}, origin)
    t.equal(response.status, 403, `Origin ${origin}: 403`)
    const body = await response.json() as { error?: { code?: string } }
    t.equal(body.error?.code, 'AUTH_1005', `Origin ${origin}: AUTH_1005 from the host check`)
  }
  t.equal((await store.counts()).grants, grants, 'no grant was made')
})

tap.test('wrong passwords spend the address\'s budget; then even the right one waits', async (t) => {
  const limited = await startOAuthServer(t, { RATE_LIMITS: 'ip=3/m' })
  const limitedClient = await registerClient(limited)
  const consent = await openConsent(limited, limitedClient)
  for (let attempt = 1; attempt <= 3; attempt++) {
    const response = await post(limited, consent, { password: `wrong ${attempt}` })
    t.equal(response.status, 401, `wrong password ${attempt} of 3: 401`)
    t.match(await response.text(), /role="alert">That is not the owner password/, 'announced on the page')
  }
  const refused = await post(limited, consent, { password: 'wrong 4' })
  t.equal(refused.status, 429, 'the fourth within the minute: 429')
  const retryAfter = Number(refused.headers.get('retry-after'))
  t.ok(retryAfter >= 1 && retryAfter <= 60, `with Retry-After (${retryAfter} s)`)
  const html = await refused.text()
  t.match(html, /role="alert">Too many wrong sign-ins from this address\. Wait \d+ s, then try again\./, 'the page says to wait, and how long')
  t.match(html, /name="password"/, 'and still offers the form')

  const right = await post(limited, consent, { password: OWNER_PASSWORD })
  t.equal(right.status, 429, 'the right password is refused too until the window passes')
  const elsewhere = await post(limited, await openConsent(limited, limitedClient), { password: OWNER_PASSWORD })
  t.equal(elsewhere.status, 429, 'in a new sign-in from the same address as well')
  t.equal((await limited.app.oauth!.store.counts()).grants, 0, 'no grant was made')

  const deny = await post(limited, consent, { decision: 'deny', password: '' })
  t.equal(deny.status, 303, 'Deny needs no sign-in, so it still works')
  t.match(locationOf(deny, limited.url), limited.url, 'and goes on to the client through authorize')
})
