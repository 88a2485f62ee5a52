import type { OAuthStore } from '../db/oauth-store.js'
import { ConfigSchema } from '../schema/config.js'
import { createGrantRevoker, type GrantRevoker, type GrantRevokerOptions } from './grants.js'
import { hashOwnerPassword, ownerPasswordProblem } from './owner-password.js'

/**
 * The operator's side of the built-in authorization server (`node dist/cli.js oauth …`): what
 * each command does, apart from reading the terminal and printing. Works on the tables whether
 * or not this environment has OAUTH_SERVER=on: they exist in every migrated database.
 */

/**
 * How long the CLI keeps a grant's revocation: the longest access-token lifetime any server may
 * be configured with. The CLI often runs with other settings than the servers (`docker run --rm`,
 * another machine), and a revocation that ended before the grant's last token would let it back in.
 */
export const CLI_REVOCATION_SECONDS: number = ConfigSchema.properties.OAUTH_ACCESS_TOKEN_SECONDS.maximum ?? 86_400

export function cliGrantRevoker (store: OAuthStore, revokeJti: GrantRevokerOptions['revokeJti'], publish?: GrantRevokerOptions['publish']): GrantRevoker {
  return createGrantRevoker({ store, revokeJti, accessTokenSeconds: CLI_REVOCATION_SECONDS, ...(publish !== undefined && { publish }) })
}

/** A client as `oauth clients` lists it. */
export interface ClientSummary {
  clientId: string
  name: string | null
  /** Hosts of its redirect URIs; empty for a metadata-document client (its document is not stored). */
  redirectHosts: string[]
  /** When it registered; null for a metadata-document client. */
  createdAt: string | null
  grants: number
  /**
   * 'registered': through /oauth/register (stored; `revoke-client` forgets it). 'metadata-document':
   * its id is the https URL of a Client ID Metadata Document, fetched when it signs in and never
   * stored, so it is known here only by its grants.
   */
  kind: 'registered' | 'metadata-document'
}

function hostsOf (uris: string[]): string[] {
  return [...new Set(uris.map((uri) => URL.parse(uri)?.host ?? uri))]
}

/** Registered clients, then the metadata-document clients that hold grants. */
export async function listClients (store: OAuthStore): Promise<ClientSummary[]> {
  const registered = await store.listClients()
  const known = new Set(registered.map((client) => client.clientId))
  const others = new Map<string, number>()
  for (const grant of await store.listGrants()) {
    if (!known.has(grant.clientId)) others.set(grant.clientId, (others.get(grant.clientId) ?? 0) + 1)
  }
  return [
    ...registered.map((client) => ({ clientId: client.clientId, name: client.name, redirectHosts: hostsOf(client.redirectUris), createdAt: client.createdAt, grants: client.grants, kind: 'registered' as const })),
    ...[...others].map(([clientId, grants]) => ({ clientId, name: null, redirectHosts: [], createdAt: null, grants, kind: 'metadata-document' as const }))
  ]
}

/**
 * Stores a new owner password (its scrypt hash; the consent page checks it) and ends every
 * sign-in in progress. Returns why the password is refused, or undefined once it is set.
 */
export async function setOwnerPassword (store: OAuthStore, password: string): Promise<string | undefined> {
  const problem = ownerPasswordProblem(password)
  if (problem !== undefined) return problem
  await store.setOwnerPasswordHash(await hashOwnerPassword(password))
  return undefined
}

/** Ends one grant; false when there is no such grant (nothing is written then). */
export async function revokeGrant (store: OAuthStore, revoker: GrantRevoker, grantId: string): Promise<boolean> {
  if (!await store.grantExists(grantId)) return false
  await revoker.revokeGrant(grantId)
  return true
}

export interface ClientRevocation {
  /** A registered client was forgotten (it gets invalid_client and must register again). */
  forgotten: boolean
  /** Grants ended. */
  grants: number
}

/** Ends every grant of a client and forgets it if it registered; null when nothing had that id. */
export async function revokeClient (revoker: GrantRevoker, clientId: string): Promise<ClientRevocation | null> {
  const { existed, grants } = await revoker.revokeClient(clientId)
  return !existed && grants === 0 ? null : { forgotten: existed, grants }
}
