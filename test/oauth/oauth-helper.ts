import { createHash, randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { buildApp, type BuildOptions } from '../../app.js'
import { hashOwnerPassword } from '../../oauth/owner-password.js'
import { loadConfig } from '../../schema/config.js'
import { testDatabase } from '../db-helper.js'
import { freePort } from '../../scripts/free-port.js'

type Tap = Parameters<typeof testDatabase>[0]

export const OWNER_PASSWORD = 'correct horse battery staple'

export interface OAuthServer {
  app: FastifyInstance
  /** http://127.0.0.1:PORT — PUBLIC_URL and the issuer. */
  url: string
  /** url + /mcp — the resource. */
  resource: string
}

/**
 * A listening server that is its own authorization server (OAUTH_SERVER=on, PUBLIC_URL its own
 * address), on this test file's database, with the owner password set. Closed when the test ends.
 */
export async function startOAuthServer (t: Tap, env: Record<string, string> = {}, options: BuildOptions = {}): Promise<OAuthServer> {
  const { url: databaseUrl } = await testDatabase(t)
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const config = loadConfig({ DATABASE_URL: databaseUrl, LOG_LEVEL: 'silent', OAUTH_SERVER: 'on', PUBLIC_URL: url, PORT: String(port), ...env })
  const app = await buildApp(config, options)
  t.teardown(() => app.close())
  await app.listen({ port, host: '127.0.0.1' })
  await app.oauth?.store.setOwnerPasswordHash(await hashOwnerPassword(OWNER_PASSWORD))
  return { app, url, resource: `${url}/mcp` }
}

/** A cookie jar for one browser: what Set-Cookie said, sent back on every later request. */
export class CookieJar {
  readonly #cookies = new Map<string, string>()

  store (response: Response): void {
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';')
      const separator = pair?.indexOf('=') ?? -1
      if (pair === undefined || separator < 0) continue
      const name = pair.slice(0, separator).trim()
      const value = pair.slice(separator + 1).trim()
      if (/expires=Thu, 01 Jan 1970/i.test(line) || value === '') this.#cookies.delete(name)
      else this.#cookies.set(name, value)
    }
  }

  header (): string {
    return [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ')
  }
}

export interface Pkce { verifier: string, challenge: string }

export function newPkce (): Pkce {
  const verifier = randomBytes(32).toString('base64url')
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') }
}

/** One GET or POST by the browser, no redirect followed. */
export async function browse (jar: CookieJar, url: string, init: { method?: string, form?: Record<string, string | string[]>, origin?: string } = {}): Promise<Response> {
  const headers: Record<string, string> = { cookie: jar.header() }
  let body: string | undefined
  if (init.form !== undefined) {
    const params = new URLSearchParams()
    for (const [name, value] of Object.entries(init.form)) for (const item of [value].flat()) params.append(name, item)
    body = params.toString()
    headers['content-type'] = 'application/x-www-form-urlencoded'
  }
  if (init.origin !== undefined) headers.origin = init.origin
  const response = await fetch(url, { method: init.method ?? (body === undefined ? 'GET' : 'POST'), headers, body, redirect: 'manual' })
  jar.store(response)
  return response
}

export function locationOf (response: Response, base: string): string {
  const location = response.headers.get('location')
  if (location === null) throw new Error(`expected a redirect, got HTTP ${response.status}`)
  return new URL(location, base).href
}

/** The consent form's hidden CSRF value from the page's HTML. */
export function csrfOf (html: string): string {
  const match = /name="csrf" value="([^"]+)"/.exec(html)
  if (match?.[1] === undefined) throw new Error('no csrf field on the page')
  return match[1]
}

export interface ConsentChoice {
  decision?: 'allow' | 'deny'
  password?: string
  token?: string
  scopes?: string[]
  namespace?: string
}

export interface AuthorizationOutcome {
  /** Where the browser was finally sent: the client's redirect URI with code (or error), state and iss. */
  callback: URL
}

/**
 * Drives a browser through /oauth/authorize → the consent page → the form post → the redirect
 * back to the client, as a person would, and returns the final redirect. A new browser unless
 * `jar` is given (then its sign-in session carries over).
 */
export async function authorizeInBrowser (server: OAuthServer, authorizationUrl: string, choice: ConsentChoice = {}, jar = new CookieJar()): Promise<AuthorizationOutcome> {
  let response = await browse(jar, authorizationUrl)
  let url = locationOf(response, server.url)
  if (!url.startsWith(`${server.url}/oauth/interaction/`)) return { callback: new URL(url) }
  response = await browse(jar, url)
  const html = await response.text()
  if (response.status !== 200) throw new Error(`consent page: HTTP ${response.status}: ${html}`)
  response = await browse(jar, url, {
    origin: server.url,
    form: {
      csrf: csrfOf(html),
      decision: choice.decision ?? 'allow',
      scope: choice.scopes ?? ['context:read', 'context:write'],
      namespace: choice.namespace ?? 'default',
      password: choice.password ?? (choice.token === undefined ? OWNER_PASSWORD : ''),
      token: choice.token ?? ''
    }
  })
  if (response.status !== 303) throw new Error(`consent post: HTTP ${response.status}: ${await response.text()}`)
  url = locationOf(response, server.url)
  while (url.startsWith(server.url)) {
    response = await browse(jar, url)
    url = locationOf(response, server.url)
  }
  return { callback: new URL(url) }
}
