import type { FastifyInstance } from 'fastify'
import { decodeJwt } from 'jose'
import { authorizeInBrowser, newPkce, type ConsentChoice, type OAuthServer, type Pkce } from './oauth-helper.js'

/**
 * Where the client's requests go: a listening server (global fetch), or another instance of it
 * reached through `fetch` (injectFetch), with the same issuer and resource.
 */
export type Target = OAuthServer & { fetch?: typeof globalThis.fetch }

const NULL_BODY_STATUSES = new Set([101, 204, 205, 304])

/** A fetch that hands each request to this app with inject, as if it had reached it at `host`: a second instance that does not listen. */
export function injectFetch (app: FastifyInstance, host: string): typeof globalThis.fetch {
  return async (input, init) => {
    const request = new Request(input, init)
    const url = new URL(request.url)
    const headers: Record<string, string> = { ...Object.fromEntries(request.headers), host }
    const body = request.method === 'GET' || request.method === 'HEAD' ? undefined : Buffer.from(await request.arrayBuffer())
    const answer = await app.inject({ method: request.method as 'GET', url: url.pathname + url.search, headers, ...(body !== undefined && { payload: body }) })
    const responseHeaders = new Headers()
    for (const [name, value] of Object.entries(answer.headers)) {
      for (const item of [value ?? []].flat()) responseHeaders.append(name, String(item))
    }
    return new Response(NULL_BODY_STATUSES.has(answer.statusCode) ? null : answer.rawPayload, { status: answer.statusCode, headers: responseHeaders })
  }
}

/** The callback a Claude.ai connector registers. */
export const CLAUDE_CALLBACK = 'https://claude.ai/api/mcp/auth_callback'

export interface RegisteredClient {
  client_id: string
  client_secret?: string
  redirect_uris: string[]
  token_endpoint_auth_method: string
  [field: string]: unknown
}

export interface JsonResponse<T = Record<string, unknown>> {
  status: number
  body: T
  headers: Headers
}

async function jsonOf<T> (response: Response): Promise<JsonResponse<T>> {
  const text = await response.text()
  return { status: response.status, body: (text === '' ? {} : JSON.parse(text)) as T, headers: response.headers }
}

/** POST /oauth/register (RFC 7591) with these metadata; public client with a loopback callback unless told otherwise. */
export async function register (server: Target, metadata: Record<string, unknown> = {}): Promise<JsonResponse<RegisteredClient & { error?: string, error_description?: string }>> {
  const response = await (server.fetch ?? fetch)(`${server.url}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      client_name: 'Test client',
      redirect_uris: [CLAUDE_CALLBACK],
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      ...metadata
    })
  })
  return await jsonOf(response)
}

/** Registers a client and fails the test run loudly if the server refuses. */
export async function registered (server: Target, metadata: Record<string, unknown> = {}): Promise<RegisteredClient> {
  const { status, body } = await register(server, metadata)
  if (status !== 201) throw new Error(`registration failed: HTTP ${status} ${JSON.stringify(body)}`)
  return body
}

export interface AuthorizationRequest {
  clientId: string
  redirectUri: string
  pkce?: Pkce | undefined
  /** PKCE method; 'S256' unless told. Pass null to send no code_challenge at all. */
  challengeMethod?: string | null
  resource?: string | null
  scope?: string
  state?: string
}

export function authorizationUrl (server: OAuthServer, request: AuthorizationRequest): string {
  const url = new URL('/oauth/authorize', server.url)
  url.searchParams.set('response_type', 'code')
  url.searchParams.set('client_id', request.clientId)
  url.searchParams.set('redirect_uri', request.redirectUri)
  url.searchParams.set('scope', request.scope ?? 'context:read context:write offline_access')
  url.searchParams.set('state', request.state ?? 'state-1')
  if (request.challengeMethod !== null) {
    const pkce = request.pkce ?? newPkce()
    url.searchParams.set('code_challenge', request.challengeMethod === 'plain' ? pkce.verifier : pkce.challenge)
    url.searchParams.set('code_challenge_method', request.challengeMethod ?? 'S256')
  }
  if (request.resource !== null) url.searchParams.set('resource', request.resource ?? server.resource)
  return url.href
}

export interface Authorized {
  code: string
  callback: URL
  pkce: Pkce
}

/** The owner signs in on the consent page and allows; returns the code the client receives. */
export async function authorize (server: OAuthServer, client: { client_id: string, redirect_uris: string[] }, options: Partial<AuthorizationRequest> & { choice?: ConsentChoice } = {}): Promise<Authorized> {
  const pkce = options.pkce ?? newPkce()
  const redirectUri = options.redirectUri ?? client.redirect_uris[0] as string
  const { callback } = await authorizeInBrowser(server, authorizationUrl(server, { clientId: client.client_id, redirectUri, ...options, pkce }), options.choice)
  const code = callback.searchParams.get('code')
  if (code === null) throw new Error(`no code in the callback: ${callback.href}`)
  return { code, callback, pkce }
}

export type ClientAuthentication = { method: 'none', clientId: string } | { method: 'client_secret_basic' | 'client_secret_post', clientId: string, secret: string }

export function clientAuthOf (client: RegisteredClient, secret = client.client_secret): ClientAuthentication {
  if (client.token_endpoint_auth_method === 'none' || secret === undefined) return { method: 'none', clientId: client.client_id }
  return { method: client.token_endpoint_auth_method as 'client_secret_basic' | 'client_secret_post', clientId: client.client_id, secret }
}

export interface TokenResponse {
  access_token?: string
  refresh_token?: string
  token_type?: string
  expires_in?: number
  scope?: string
  error?: string
  error_description?: string
}

/** A form POST to an endpoint of the authorization server, with the client's authentication. */
export async function postForm (server: Target, path: string, params: Record<string, string>, auth: ClientAuthentication): Promise<JsonResponse<TokenResponse>> {
  const body = new URLSearchParams(params)
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' }
  if (auth.method === 'client_secret_basic') {
    headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(auth.clientId)}:${encodeURIComponent(auth.secret)}`).toString('base64')}`
  } else {
    body.set('client_id', auth.clientId)
    if (auth.method === 'client_secret_post') body.set('client_secret', auth.secret)
  }
  return await jsonOf(await (server.fetch ?? fetch)(`${server.url}${path}`, { method: 'POST', headers, body }))
}

export async function redeemCode (server: Target, auth: ClientAuthentication, code: string, verifier: string, redirectUri: string, resource: string | null = server.resource): Promise<JsonResponse<TokenResponse>> {
  return await postForm(server, '/oauth/token', {
    grant_type: 'authorization_code',
    code,
    code_verifier: verifier,
    redirect_uri: redirectUri,
    ...(resource !== null && { resource })
  }, auth)
}

export async function refresh (server: Target, auth: ClientAuthentication, refreshToken: string, extra: Record<string, string> = {}): Promise<JsonResponse<TokenResponse>> {
  return await postForm(server, '/oauth/token', { grant_type: 'refresh_token', refresh_token: refreshToken, ...extra }, auth)
}

export async function revoke (server: Target, auth: ClientAuthentication, token: string, hint?: string): Promise<JsonResponse<TokenResponse>> {
  return await postForm(server, '/oauth/revoke', { token, ...(hint !== undefined && { token_type_hint: hint }) }, auth)
}

export interface Tokens { access_token: string, refresh_token: string }

/** Register (unless given a client), authorize, redeem: a client with working tokens. */
export async function signedInClient (server: OAuthServer, client?: RegisteredClient, choice?: ConsentChoice): Promise<{ client: RegisteredClient, tokens: Tokens }> {
  const known = client ?? await registered(server)
  const { code, pkce } = await authorize(server, known, { choice })
  const { status, body } = await redeemCode(server, clientAuthOf(known), code, pkce.verifier, known.redirect_uris[0] as string)
  if (status !== 200 || body.access_token === undefined || body.refresh_token === undefined) throw new Error(`token request failed: HTTP ${status} ${JSON.stringify(body)}`)
  return { client: known, tokens: { access_token: body.access_token, refresh_token: body.refresh_token } }
}

export interface McpAnswer {
  status: number
  /** The error code of a refused request (AUTH_1002, AUTH_1003, ...), or undefined. */
  code: string | undefined
  result: { isError?: boolean, structuredContent?: Record<string, unknown> } | undefined
  wwwAuthenticate: string | null
}

/** One 2025-era tools/call at /mcp with this bearer token. */
export async function callMcp (server: Target, accessToken: string, name: string, args: Record<string, unknown>): Promise<McpAnswer> {
  const response = await (server.fetch ?? fetch)(server.resource, {
    method: 'POST',
    headers: { authorization: `Bearer ${accessToken}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: args } })
  })
  const body = await response.json() as { result?: McpAnswer['result'], error?: { code?: string } }
  return { status: response.status, code: typeof body.error?.code === 'string' ? body.error.code : undefined, result: body.result, wwwAuthenticate: response.headers.get('www-authenticate') }
}

/** Whether /mcp serves a read with this token (a missing key is a served read too). */
export async function mcpAccepts (server: Target, accessToken: string): Promise<McpAnswer> {
  return await callMcp(server, accessToken, 'read_context', { key: 'probe/none' })
}

export function claimsOf (token: string): Record<string, unknown> {
  return decodeJwt(token)
}
