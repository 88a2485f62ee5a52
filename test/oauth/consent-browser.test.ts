// The consent page in a real browser: Debian's Chromium driven by playwright-core, JavaScript off,
// at a phone's width. The owner reads who is asking, picks scopes and a namespace, signs in, and
// is sent back to the client; a wrong password, Deny and framing by another site are covered too.
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { decodeJwt } from 'jose'
import type { BrowserContext, BrowserContextOptions, Page, Response as PageResponse } from 'playwright-core'
import { PNG } from 'pngjs'
import tap, { type Test } from 'tap'
import { hashToken } from '../../plugins/auth.js'
import { launchChromium } from '../chromium.js'
import { newPkce, OWNER_PASSWORD, startOAuthServer, type OAuthServer, type Pkce } from './oauth-helper.js'

type Tap = Test

const CLIENT_NAME = 'Pocket Notes'
const PHONE_WIDTH = 375
const PHONE: BrowserContextOptions = {
  javaScriptEnabled: false,
  viewport: { width: PHONE_WIDTH, height: 740 },
  deviceScaleFactor: 2,
  isMobile: true,
  hasTouch: true
}
const TOUCH_TARGET_PX = 44

/**
 * The client's side, on a port of its own: the loopback redirect URI (/callback), and a page of
 * another site that frames a URL it is given beside an ordinary page (/frame). The callback page
 * carries a script that would change its title: that it does not shows the browser runs none.
 */
async function startClientSite (t: Tap): Promise<string> {
  const site = createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://client.invalid')
    response.setHeader('content-type', 'text/html; charset=utf-8')
    if (url.pathname === '/callback') {
      response.end('<!doctype html><title>callback</title><script>document.title = "script ran"</script><p>Back at the client</p>')
    } else if (url.pathname === '/frame') {
      const target = (url.searchParams.get('target') ?? '').replaceAll('"', '&quot;')
      response.end(`<!doctype html><title>framing</title><iframe name="target" src="${target}"></iframe><iframe name="control" src="/plain"></iframe>`)
    } else if (url.pathname === '/favicon.ico') {
      response.statusCode = 204
      response.end()
    } else if (url.pathname === '/plain') {
      response.end('<!doctype html><title>plain</title><p>An ordinary page, framed</p>')
    } else {
      response.statusCode = 404
      response.end()
    }
  })
  await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => site.close(() => { resolve() })))
  const address = site.address()
  if (address === null || typeof address === 'string') throw new Error('the client site has no port')
  return `http://127.0.0.1:${address.port}`
}

async function registerClient (server: OAuthServer, redirectUri: string): Promise<string> {
  const response = await fetch(`${server.url}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: CLIENT_NAME, redirect_uris: [redirectUri], token_endpoint_auth_method: 'none', grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'] })
  })
  const body = await response.json() as { client_id?: string }
  if (response.status !== 201 || body.client_id === undefined) throw new Error(`registration: HTTP ${response.status}: ${JSON.stringify(body)}`)
  return body.client_id
}

interface Authorization { url: string, state: string, pkce: Pkce }

function authorization (scope: string): Authorization {
  const pkce = newPkce()
  const state = randomBytes(12).toString('base64url')
  const url = new URL(`${server.url}/oauth/authorize`)
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: redirectUri,
    scope,
    state,
    code_challenge: pkce.challenge,
    code_challenge_method: 'S256',
    resource: server.resource
  }).toString()
  return { url: url.href, state, pkce }
}

async function exchangeCode (code: string, pkce: Pkce): Promise<{ scope: unknown, claims: Record<string, unknown> }> {
  const response = await fetch(`${server.url}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: pkce.verifier, client_id: clientId, resource: server.resource }).toString()
  })
  const body = await response.json() as Record<string, unknown>
  if (response.status !== 200) throw new Error(`token: HTTP ${response.status}: ${JSON.stringify(body)}`)
  return { scope: body.scope, claims: decodeJwt(String(body.access_token)) }
}

/** A new browser profile's worth of state (cookies), closed when the test ends. */
async function newContext (t: Tap, options: BrowserContextOptions = PHONE): Promise<BrowserContext> {
  const context = await browser.newContext(options)
  t.teardown(() => context.close())
  return context
}

/** Opens the authorization URL and checks it led to the consent page. */
async function openConsentPage (t: Tap, page: Page, url: string): Promise<void> {
  const response = await page.goto(url)
  t.equal(response?.status(), 200, 'the consent page is served')
  t.match(page.url(), `${server.url}/oauth/interaction/`, 'authorize sent the browser to it')
}

/** Clicks a submit button and waits for the page the form post leads to (after any redirects) to load; returns its status. */
async function submitWith (page: Page, button: 'Allow' | 'Deny'): Promise<number> {
  const landed = (response: PageResponse) => response.request().isNavigationRequest() && response.frame() === page.mainFrame() && (response.status() < 300 || response.status() > 399)
  const [response] = await Promise.all([page.waitForResponse(landed), page.waitForEvent('load'), page.getByRole('button', { name: button, exact: true }).click()])
  return response.status()
}

const scopeBox = (page: Page, name: string) => page.getByRole('checkbox', { name: new RegExp(`^${name}:`) })
const passwordField = (page: Page) => page.getByLabel('Owner password', { exact: true })
const namespaceField = (page: Page) => page.getByLabel('Namespace', { exact: true })
const noHorizontalScroll = async (page: Page, width: number) => await page.evaluate<number>('document.scrollingElement.scrollWidth') <= width

/** Checks that each control is visible, inside the width, and tall enough to hit with a finger. */
async function checkTouchTargets (t: Tap, page: Page, width: number): Promise<void> {
  const controls = [
    ['the password field', passwordField(page)],
    ['the namespace field', namespaceField(page)],
    ['Allow', page.getByRole('button', { name: 'Allow' })],
    ['Deny', page.getByRole('button', { name: 'Deny' })],
    ...(await page.locator('label').filter({ has: page.getByRole('checkbox') }).all()).map((label) => ['a scope\'s label (it ticks the box)', label] as const)
  ] as const
  for (const [name, control] of controls) {
    const box = await control.boundingBox()
    t.ok(await control.isVisible() && box !== null, `${name} is visible`)
    t.ok(box !== null && box.height >= TOUCH_TARGET_PX, `${name} is at least ${TOUCH_TARGET_PX} px tall (${box?.height})`)
    t.ok(box !== null && box.x >= 0 && box.x + box.width <= width, `${name} fits in ${width} px`)
  }
}

/** Shares of a PNG's pixels that are dark (text) and light (background). */
function inkAndPaper (png: PNG): { dark: number, light: number } {
  let dark = 0
  let light = 0
  for (let offset = 0; offset < png.data.length; offset += 4) {
    const luminance = 0.2126 * (png.data[offset] ?? 0) + 0.7152 * (png.data[offset + 1] ?? 0) + 0.0722 * (png.data[offset + 2] ?? 0)
    if (luminance < 80) dark++
    else if (luminance > 225) light++
  }
  const pixels = png.width * png.height
  return { dark: dark / pixels, light: light / pixels }
}

const browser = await launchChromium(tap)
const server = await startOAuthServer(tap)
const site = await startClientSite(tap)
const redirectUri = `${site}/callback`
const redirectHost = new URL(redirectUri).host
const clientId = await registerClient(server, redirectUri)
const screenshots = await mkdtemp(join(tmpdir(), 'consent-browser-'))
tap.teardown(() => rm(screenshots, { recursive: true, force: true }))

tap.test('at 375 px without JavaScript the owner sees who asks, picks scopes and a namespace, and allows', async (t) => {
  const page = await (await newContext(t)).newPage()
  const messages: string[] = []
  page.on('console', (message) => { messages.push(message.text() + ' @ ' + message.location().url) })
  const { url, state, pkce } = authorization('context:read context:write')
  await openConsentPage(t, page, url)

  t.match(await page.getByRole('heading', { level: 1 }).innerText(), CLIENT_NAME, 'the heading names the client')
  t.ok(await page.getByText(redirectHost, { exact: true }).isVisible(), `the host it sends the owner back to, ${redirectHost}, stands on its own`)
  t.ok(await page.getByText('an app on this computer').isVisible(), 'and is explained as a loopback address')
  t.equal(await page.getByRole('checkbox').count(), 2, 'the two scopes asked for are offered, nothing more')
  t.ok(await scopeBox(page, 'Read').isChecked(), 'Read (context:read) is ticked')
  t.ok(await scopeBox(page, 'Write').isChecked(), 'Write (context:write) is ticked')
  t.match(await page.locator('label', { has: scopeBox(page, 'Write') }).innerText(), /create entries[^]*context:write/, 'each scope says what it allows')
  t.match(await page.getByText(/namespace decides/).innerText(), /decides which entries the client sees/, 'the page says what the namespace decides')
  t.equal(await namespaceField(page).getAttribute('aria-describedby'), 'namespace-help', 'and ties that to the field')
  t.equal(await page.locator(':focus').getAttribute('id'), 'password', 'the password field has the focus')

  t.ok(await noHorizontalScroll(page, PHONE_WIDTH), `no horizontal scrolling at ${PHONE_WIDTH} px`)
  await checkTouchTargets(t, page, PHONE_WIDTH)

  const file = join(screenshots, 'consent-375.png')
  await page.screenshot({ path: file, fullPage: true })
  const png = PNG.sync.read(await readFile(file))
  t.equal(png.width, PHONE_WIDTH * 2, 'the screenshot is 375 px wide at device scale 2')
  t.ok(png.height >= 740 * 2, 'and at least a screen tall')
  const { dark, light } = inkAndPaper(png)
  t.ok(dark > 0.01, `it has dark text pixels (${(dark * 100).toFixed(1)} %)`)
  t.ok(light > 0.5, `on a light background (${(light * 100).toFixed(1)} %)`)

  for (const [value, valid] of [['phone notes', false], ['team/phone-notes.v2', true]] as const) {
    await namespaceField(page).fill(value)
    t.equal(await page.locator('#namespace:valid').count(), valid ? 1 : 0, `the browser itself finds "${value}" ${valid ? 'a valid' : 'no valid'} namespace`)
  }
  await passwordField(page).fill(OWNER_PASSWORD)
  await scopeBox(page, 'Write').uncheck()
  await namespaceField(page).fill('phone-notes')
  t.equal(await submitWith(page, 'Allow'), 200, 'Allow leads to a page')
  const callback = new URL(page.url())
  t.equal(`${callback.origin}${callback.pathname}`, redirectUri, 'the browser arrived at the callback')
  t.equal(await page.title(), 'callback', 'and ran no script there')
  t.equal(callback.searchParams.get('state'), state, 'with the state')
  t.equal(callback.searchParams.get('iss'), server.url, 'and the issuer')
  const code = callback.searchParams.get('code')
  t.ok(code !== null && code.length > 20, 'and a code')
  t.strictSame(messages, [], 'the page gave the browser nothing to complain about')

  const { scope, claims } = await exchangeCode(code ?? '', pkce)
  t.equal(scope, 'context:read', 'the code gives only the scope left ticked')
  t.equal(claims.scope, 'context:read', 'so does the access token')
  t.equal(claims.namespace, 'phone-notes', 'in the namespace typed in')
  t.equal(claims.aud, server.resource, 'for this server\'s /mcp')
})

tap.test('a wrong password is announced on the page, which keeps what was chosen and stays usable', async (t) => {
  const page = await (await newContext(t)).newPage()
  const { url, state, pkce } = authorization('context:read context:write context:delete')
  await openConsentPage(t, page, url)
  t.equal(await page.getByRole('checkbox').count(), 3, 'three scopes asked for, three offered')
  t.notOk(await page.getByRole('alert').isVisible(), 'no error before a post')
  await scopeBox(page, 'Delete').uncheck()
  await namespaceField(page).fill('work')
  await passwordField(page).fill('not the password')
  t.equal(await submitWith(page, 'Allow'), 401, 'a wrong password is refused')
  t.match(page.url(), `${server.url}/oauth/interaction/`, 'on the consent page')
  t.match(await page.getByRole('alert').innerText(), /not the owner password/, 'the error is shown as an alert')
  t.match(await page.title(), /^Error: /, 'and leads the title (read first by screen readers)')
  t.equal(await passwordField(page).getAttribute('aria-invalid'), 'true', 'the password field is marked invalid')
  t.equal(await passwordField(page).inputValue(), '', 'and is empty again')
  t.equal(await page.locator(':focus').getAttribute('id'), 'password', 'and has the focus')
  t.equal(await namespaceField(page).inputValue(), 'work', 'the namespace typed in is kept')
  t.ok(await scopeBox(page, 'Read').isChecked() && await scopeBox(page, 'Write').isChecked(), 'the ticked scopes stay ticked')
  t.notOk(await scopeBox(page, 'Delete').isChecked(), 'the unticked one stays unticked')
  t.ok(await noHorizontalScroll(page, PHONE_WIDTH), 'the error fits the width')
  await checkTouchTargets(t, page, PHONE_WIDTH)

  await passwordField(page).fill(OWNER_PASSWORD)
  await submitWith(page, 'Allow')
  const callback = new URL(page.url())
  t.equal(`${callback.origin}${callback.pathname}`, redirectUri, 'the right password then goes through')
  t.equal(callback.searchParams.get('state'), state, 'with the state')
  const { claims } = await exchangeCode(callback.searchParams.get('code') ?? '', pkce)
  t.equal(claims.scope, 'context:read context:write', 'granting the scopes left ticked')
  t.equal(claims.namespace, 'work', 'in the namespace typed in before the error')
})

tap.test('an API token signs in too, from behind a toggle that needs no script, with no more than its own rights', async (t) => {
  const apiToken = `sc_${randomBytes(24).toString('base64url')}`
  await server.app.db.tokens.insertApiToken({ name: 'phone', hash: hashToken(apiToken).toString('hex'), namespace: 'team', scopes: ['context:read'] })
  const page = await (await newContext(t)).newPage()
  const { url, pkce } = authorization('context:read context:write')
  await openConsentPage(t, page, url)
  const tokenField = page.getByLabel('API token', { exact: true })
  t.notOk(await tokenField.isVisible(), 'the token field starts folded away')
  await page.getByText('Sign in with an API token instead').click()
  t.ok(await tokenField.isVisible(), 'and unfolds on a tap, without JavaScript')
  await tokenField.fill(apiToken)
  await namespaceField(page).fill('team')
  t.equal(await submitWith(page, 'Allow'), 403, 'asking for more than the token has is refused')
  t.match(await page.getByRole('alert').innerText(), /does not have context:write; untick it/, 'saying which scope to untick')
  t.ok(await tokenField.isVisible(), 'the token field stays unfolded')
  await scopeBox(page, 'Write').uncheck()
  await tokenField.fill(apiToken)
  await submitWith(page, 'Allow')
  const callback = new URL(page.url())
  t.equal(`${callback.origin}${callback.pathname}`, redirectUri, 'with the scope unticked it goes through')
  const { claims } = await exchangeCode(callback.searchParams.get('code') ?? '', pkce)
  t.equal(claims.scope, 'context:read', 'the token\'s scope')
  t.equal(claims.namespace, 'team', 'in the token\'s namespace')
  t.equal(claims.sub, 'token:phone', 'on behalf of the token')
})

tap.test('Deny sends the browser back with access_denied and makes no grant', async (t) => {
  const store = server.app.oauth!.store
  const grantsBefore = (await store.listGrants()).length
  const page = await (await newContext(t)).newPage()
  const { url, state } = authorization('context:read')
  await openConsentPage(t, page, url)
  await namespaceField(page).fill('not valid!')
  await submitWith(page, 'Deny')
  const callback = new URL(page.url())
  t.equal(`${callback.origin}${callback.pathname}`, redirectUri, 'Deny needs no password and no valid namespace: the browser is at the callback')
  t.equal(callback.searchParams.get('error'), 'access_denied', 'with error=access_denied')
  t.equal(callback.searchParams.get('state'), state, 'and the state')
  t.equal(callback.searchParams.get('iss'), server.url, 'and the issuer')
  t.equal(callback.searchParams.get('code'), null, 'and no code')
  t.equal((await store.listGrants()).length, grantsBefore, 'no grant was made')
})

tap.test('another site cannot show the consent page in a frame', async (t) => {
  const context = await newContext(t, { javaScriptEnabled: false })
  const page = await context.newPage()
  await openConsentPage(t, page, authorization('context:read').url)
  const consentUrl = page.url()
  t.ok(await page.getByRole('button', { name: 'Allow' }).isVisible(), 'the consent page shows at the top level')

  const framing = await context.newPage()
  const consentResponses: number[] = []
  framing.on('response', (response) => { if (response.url() === consentUrl) consentResponses.push(response.status()) })
  await framing.goto(`${site}/frame?target=${encodeURIComponent(consentUrl)}`)
  t.strictSame(consentResponses, [200], 'the frame asked for the consent page and the server would have shown it')
  const control = framing.frame({ name: 'control' })
  t.match(await control?.locator('body').innerText(), 'An ordinary page, framed', 'an ordinary page does render in a frame of that site')
  const target = framing.frame({ name: 'target' })
  t.ok(target !== null, 'the consent page\'s frame exists')
  t.equal(await target?.locator('form').count(), 0, 'but shows no consent form')
  t.notMatch(await target?.content(), CLIENT_NAME, 'nor the client\'s name')
})

tap.test('the page fits from 320 to 1280 px wide', async (t) => {
  const page = await (await newContext(t, { javaScriptEnabled: false })).newPage()
  await openConsentPage(t, page, authorization('context:read context:write context:delete').url)
  for (const width of [320, 768, 1024, 1280]) {
    await page.setViewportSize({ width, height: 900 })
    t.ok(await noHorizontalScroll(page, width), `no horizontal scrolling at ${width} px`)
    const allow = await page.getByRole('button', { name: 'Allow' }).boundingBox()
    t.ok(allow !== null && allow.x + allow.width <= width && allow.height >= TOUCH_TARGET_PX, `Allow fits and is tall enough at ${width} px`)
  }
  const file = join(screenshots, 'consent-1280.png')
  await page.screenshot({ path: file, fullPage: true })
  const png = PNG.sync.read(await readFile(file))
  t.equal(png.width, 1280, 'a desktop screenshot, 1280 px wide')
  t.ok(inkAndPaper(png).dark > 0.002, 'with text on it')
})
