import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import type { CliResult } from '../process-helper.js'
import { authorizeInBrowser, newPkce, type ConsentChoice, type OAuthServer } from './oauth-helper.js'

// Registration, sign-in and token calls as an MCP client makes them, for the operator tests (CLI, /ready, metrics).

export const CLAUDE_CALLBACK = 'https://claude.ai/api/mcp/auth_callback'

export interface TokenResponse {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
  scope: string
}

/** POST /oauth/register (RFC 7591) as Claude.ai does: a public client with its callback. */
export async function registerClient (server: OAuthServer, metadata: Record<string, unknown> = {}): Promise<Response> {
  return await fetch(`${server.url}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      client_name: 'Claude',
      redirect_uris: [CLAUDE_CALLBACK],
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      ...metadata
    })
  })
}

export async function tokenRequest (server: OAuthServer, form: Record<string, string>): Promise<Response> {
  return await fetch(`${server.url}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ resource: server.resource, ...form }).toString()
  })
}

async function json<T> (response: Response, what: string): Promise<T> {
  const body = await response.text()
  if (!response.ok) throw new Error(`${what}: HTTP ${response.status}: ${body}`)
  return JSON.parse(body) as T
}

/** The owner's consent for a registered client, through the browser: the callback URL it lands on. */
export async function authorize (server: OAuthServer, clientId: string, choice: ConsentChoice = {}): Promise<{ callback: URL, verifier: string }> {
  const pkce = newPkce()
  const url = new URL(`${server.url}/oauth/authorize`)
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: CLAUDE_CALLBACK,
    code_challenge: pkce.challenge,
    code_challenge_method: 'S256',
    scope: 'context:read context:write offline_access',
    resource: server.resource,
    state: 'state-1'
  }).toString()
  const { callback } = await authorizeInBrowser(server, url.href, choice)
  return { callback, verifier: pkce.verifier }
}

export interface Connection {
  clientId: string
  tokens: TokenResponse
  /** The code the tokens were issued for (spent). */
  code: string
  verifier: string
}

/** Registration, consent and the code exchanged: a client connected as Claude.ai connects. */
export async function connect (server: OAuthServer, choice: ConsentChoice = {}, metadata: Record<string, unknown> = {}): Promise<Connection> {
  const { client_id: clientId } = await json<{ client_id: string }>(await registerClient(server, metadata), 'registration')
  const { callback, verifier } = await authorize(server, clientId, choice)
  const code = callback.searchParams.get('code')
  if (code === null) throw new Error(`no code in ${callback.href}`)
  const tokens = await json<TokenResponse>(await tokenRequest(server, { grant_type: 'authorization_code', code, redirect_uri: CLAUDE_CALLBACK, code_verifier: verifier, client_id: clientId }), 'code exchange')
  return { clientId, tokens, code, verifier }
}

export async function refresh (server: OAuthServer, clientId: string, refreshToken: string): Promise<Response> {
  return await tokenRequest(server, { grant_type: 'refresh_token', refresh_token: refreshToken, client_id: clientId })
}

/** The grant id an access token carries (its `gid` claim). */
export function grantIdOf (accessToken: string): string {
  const [, payload] = accessToken.split('.')
  return (JSON.parse(Buffer.from(payload ?? '', 'base64url').toString('utf8')) as { gid: string }).gid
}

/** tools/call over HTTP with an access token: the status, and the result or error. */
export async function callWith (server: OAuthServer, accessToken: string, name = 'list_context', args: Record<string, unknown> = {}): Promise<{ status: number, body: Record<string, unknown> }> {
  const response = await fetch(server.resource, {
    method: 'POST',
    headers: { authorization: `Bearer ${accessToken}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: args } })
  })
  return { status: response.status, body: await response.json() as Record<string, unknown> }
}

/** A Client ID Metadata Document client: its id is the URL of its document, served by `fetch` below instead of the network. */
export const DOCUMENT_CLIENT_ID = 'https://client.example/oauth/metadata.json'

/** What the server fetches for DOCUMENT_CLIENT_ID (BuildOptions.oauthFetch); any other URL is not found. */
export const documentFetch: typeof globalThis.fetch = async (input) => {
  const url = input instanceof Request ? input.url : String(input)
  if (url !== DOCUMENT_CLIENT_ID) return new Response('not found', { status: 404 })
  return Response.json({
    client_id: DOCUMENT_CLIENT_ID,
    client_name: 'Document client',
    redirect_uris: [CLAUDE_CALLBACK],
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code']
  })
}

/** Consent and code exchange for a client that does not register (a metadata-document client). */
export async function connectUnregistered (server: OAuthServer, clientId: string, choice: ConsentChoice = {}): Promise<Connection> {
  const { callback, verifier } = await authorize(server, clientId, choice)
  const code = callback.searchParams.get('code')
  if (code === null) throw new Error(`no code in ${callback.href}`)
  const tokens = await json<TokenResponse>(await tokenRequest(server, { grant_type: 'authorization_code', code, redirect_uri: CLAUDE_CALLBACK, code_verifier: verifier, client_id: clientId }), 'code exchange')
  return { clientId, tokens, code, verifier }
}

const root = fileURLToPath(new URL('../..', import.meta.url))

/** Runs cli.ts with `input` as its stdin (a pipe, not a terminal). */
export async function runCliWithInput (env: Record<string, string>, input: string, ...args: string[]): Promise<CliResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'cli.ts', ...args], { cwd: root, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  child.stdin.end(input)
  const [code] = await once(child, 'exit') as [number | null]
  return { code: code ?? -1, stdout, stderr }
}
