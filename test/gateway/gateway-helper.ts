import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Client as ClientV2, StreamableHTTPClientTransport as TransportV2 } from '@modelcontextprotocol/client'
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport as TransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../app.js'
import { loadConfig } from '../../schema/config.js'
import { build, TEST_TOKEN } from '../helper.js'
import { eventually } from '../eventually.js'
import { startOidcProvider, type OidcProvider } from '../oidc-provider.js'
import type { DomainServer } from './upstreams/domain-server.js'
import { startFinance } from './upstreams/finance.js'
import { startHr } from './upstreams/hr.js'

type Tap = Parameters<typeof build>[0]

/** Keycloak roles of the tests and the scopes JWT_ROLE_MAP maps them to. */
export const ROLE_MAP = {
  'hr-read': { scopes: ['hr:read'] },
  'hr-write': { scopes: ['hr:read', 'hr:write'] },
  'finance-read': { scopes: ['finance:read'] },
  'everything-user': { scopes: ['everything:use'] },
  approver: { scopes: ['approvals:decide'] },
  'context-reader': { scopes: ['context:read'] }
}

/** An UPSTREAMS_FILE in a temporary directory (removed when the test ends); returns its path. */
export function writeUpstreamsFile (t: Tap, upstreams: unknown[]): string {
  const directory = mkdtempSync(join(tmpdir(), 'scm-gateway-'))
  t.teardown(() => rmSync(directory, { recursive: true, force: true }))
  const path = join(directory, 'upstreams.json')
  writeFileSync(path, JSON.stringify({ upstreams }, null, 2))
  return path
}

export interface Gateway {
  app: FastifyInstance
  /** http://127.0.0.1:PORT */
  baseUrl: string
  idp: OidcProvider
  /** A Keycloak-shaped access token carrying these realm roles. */
  token: (roles: string[], claims?: Record<string, unknown>) => Promise<string>
  /** The environment the app was built with (its DATABASE_URL aside). */
  env: Record<string, string>
}

/** The app as a gateway in front of `upstreams`, listening on loopback, accepting JWTs of a local issuer. */
export async function startGateway (t: Tap, upstreams: unknown[], env: Record<string, string> = {}): Promise<Gateway> {
  const idp = await startOidcProvider({ audience: 'https://ctx.example.com/mcp' })
  t.teardown(() => idp.close())
  const appEnv = {
    UPSTREAMS_FILE: writeUpstreamsFile(t, upstreams),
    OIDC_ISSUER: idp.issuer,
    PUBLIC_URL: 'https://ctx.example.com',
    ALLOWED_HOSTS: '127.0.0.1',
    JWT_ROLE_MAP: JSON.stringify(ROLE_MAP),
    RATE_LIMITS: 'off',
    ...env
  }
  const app = await build(t, appEnv)
  const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    app,
    baseUrl,
    idp,
    env: appEnv,
    token: (roles, claims = {}) => idp.sign({ realm_access: { roles }, sub: `user-${roles.join('+') || 'none'}`, ...claims })
  }
}

/**
 * The hr (2025 line) and finance (2026-07-28) test upstreams, stopped when the test ends, and a
 * gateway in front of them (`upstreams` names their URLs), once every upstream is connected and
 * `ready` holds for it.
 */
export async function startDomainGateway (
  t: Tap,
  upstreams: (urls: { hr: string, finance: string }) => unknown[],
  env: Record<string, string> = {},
  ready: (upstream: NonNullable<FastifyInstance['gateway']>['upstreams'][number]) => boolean = () => true
): Promise<Gateway & { hr: DomainServer, finance: DomainServer }> {
  const hr = await startHr()
  const finance = await startFinance()
  t.teardown(() => hr.close())
  t.teardown(() => finance.close())
  const gateway = await startGateway(t, upstreams({ hr: hr.url, finance: finance.url }), env)
  await eventually(() => gateway.app.gateway?.upstreams.every((upstream) => upstream.status === 'ok' && ready(upstream)), { what: 'every upstream connected' })
  return { ...gateway, hr, finance }
}

/**
 * Another instance of the same gateway: same configuration, same database, its own port; closed
 * when the test ends. `env` adds to its configuration (a DATABASE_URL through a TCP proxy, say).
 */
export async function startAnotherInstance (t: Tap, gateway: Gateway, env: Record<string, string> = {}): Promise<Gateway> {
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, LOG_LEVEL: 'silent', ...gateway.env, DATABASE_URL: String(gateway.app.config.DATABASE_URL), ...env }))
  t.teardown(() => app.close())
  await app.ready()
  const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' })
  return { ...gateway, app, baseUrl }
}

export interface V2Options {
  negotiate?: boolean
  capabilities?: ConstructorParameters<typeof ClientV2>[1] extends infer O ? O extends { capabilities?: infer C } ? C : never : never
}

/** The SDK v2 client, on the 2025 line by default or negotiating 2026-07-28. */
export async function connectV2 (t: Tap, baseUrl: string, token: string, options: V2Options = {}): Promise<ClientV2> {
  const client = new ClientV2({ name: 'gateway-test-v2', version: '1.0.0' }, {
    ...(options.negotiate === true && { versionNegotiation: { mode: 'auto' } }),
    ...(options.capabilities !== undefined && { capabilities: options.capabilities })
  })
  const transport = new TransportV2(new URL('/mcp', baseUrl), { requestInit: { headers: { authorization: `Bearer ${token}` } } })
  await client.connect(transport)
  t.teardown(() => client.close())
  return client
}

/** The SDK v1 client (validates structuredContent against outputSchema, errors included). */
export async function connectV1 (t: Tap, baseUrl: string, token: string): Promise<ClientV1> {
  const client = new ClientV1({ name: 'gateway-test-v1', version: '1.0.0' })
  const transport = new TransportV1(new URL('/mcp', baseUrl), { requestInit: { headers: { authorization: `Bearer ${token}` } } })
  await client.connect(transport)
  t.teardown(() => client.close())
  return client
}

/** A raw 2025-era POST /mcp (what the SDK clients send, without their retries), for exact answers. */
export async function postMcp (baseUrl: string, token: string | null, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return await fetch(new URL('/mcp', baseUrl), {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      ...(token !== null && { authorization: `Bearer ${token}` }),
      ...headers
    },
    body: JSON.stringify(body)
  })
}

/** The `_meta['shared-context-mcp/error']` code of a tool error result. */
export function errorCodeOf (result: { isError?: boolean, _meta?: Record<string, unknown> }): string | undefined {
  return result.isError === true ? (result._meta?.['shared-context-mcp/error'] as { code?: string } | undefined)?.code : undefined
}
