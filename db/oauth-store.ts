import type postgres from 'postgres'

/** A stored oidc-provider model instance (oauth/adapter.ts). */
export interface StoredPayload {
  payload: Record<string, unknown>
  consumed: boolean
}

export interface NewPayload {
  model: string
  id: string
  payload: Record<string, unknown>
  expiresAt: Date | null
  grantId: string | null
  uid: string | null
}

export type KeyUse = 'sign' | 'cookie'

export interface StoredKey {
  kid: string
  use: KeyUse
  jwk: Record<string, unknown>
  signsFrom: Date
  retireAt: Date | null
}

export interface GrantBinding {
  grantId: string
  namespace: string
  apiTokenId: string | null
  subject: string
}

export interface ClientListing {
  clientId: string
  name: string | null
  redirectUris: string[]
  createdAt: string
  grants: number
}

export interface GrantListing {
  grantId: string
  clientId: string
  clientName: string | null
  subject: string
  namespace: string | null
  scope: string
  createdAt: string
  expiresAt: string | null
}

/** The revocation-list entry that refuses every access token of a grant (auth/jwt.ts checks it beside the jti). */
export function grantRevocationId (grantId: string): string {
  return `grant:${grantId}`
}

// A client registered through /oauth/register that has no grant a day later never finished signing in.
const UNUSED_CLIENT_KEPT = '1 day'

interface PayloadRow { payload: Record<string, unknown>, consumed: boolean }
interface KeyRow { kid: string, use: KeyUse, jwk: Record<string, unknown>, signs_from: Date, retire_at: Date | null }

/** All SQL of the built-in authorization server: oidc-provider's models, keys, grant bindings, the owner's password. */
export function createOAuthStore (sql: postgres.Sql) {
  async function upsertPayload (record: NewPayload): Promise<void> {
    await sql`
      insert into oauth_payloads (model, id, payload, grant_id, uid, expires_at)
      values (${record.model}, ${record.id}, ${sql.json(record.payload as postgres.JSONValue)}, ${record.grantId}, ${record.uid}, ${record.expiresAt})
      on conflict (model, id) do update set payload = excluded.payload, grant_id = excluded.grant_id,
        uid = excluded.uid, expires_at = excluded.expires_at`
  }

  async function findPayload (model: string, id: string): Promise<StoredPayload | null> {
    const rows = await sql<PayloadRow[]>`
      select payload, consumed_at is not null as consumed from oauth_payloads
      where model = ${model} and id = ${id} and (expires_at is null or expires_at > now())`
    return rows[0] ?? null
  }

  async function findPayloadByUid (model: string, uid: string): Promise<(StoredPayload & { id: string }) | null> {
    const rows = await sql<Array<PayloadRow & { id: string }>>`
      select id, payload, consumed_at is not null as consumed from oauth_payloads
      where model = ${model} and uid = ${uid} and (expires_at is null or expires_at > now())`
    return rows[0] ?? null
  }

  async function consumePayload (model: string, id: string): Promise<void> {
    await sql`update oauth_payloads set consumed_at = now() where model = ${model} and id = ${id} and consumed_at is null`
  }

  async function destroyPayload (model: string, id: string): Promise<void> {
    await sql`delete from oauth_payloads where model = ${model} and id = ${id}`
  }

  /**
   * Ends a grant: its tokens, codes and binding are deleted, and its id goes on the revocation
   * list until `refuseTokensUntil` (when the last access token it issued has expired), in one
   * statement (atomic without an explicit transaction, which would stall the embedded database's
   * other connections; see db/embedded.ts). True if the grant existed.
   */
  async function revokeGrant (grantId: string, refuseTokensUntil: Date): Promise<boolean> {
    const rows = await sql<Array<{ existed: boolean }>>`
      with deleted as (
        delete from oauth_payloads where grant_id = ${grantId} or (model = 'Grant' and id = ${grantId}) returning model
      ), unbound as (
        delete from oauth_grant_bindings where grant_id = ${grantId}
      ), listed as (
        insert into revoked_jtis (jti, expires_at) values (${grantRevocationId(grantId)}, ${refuseTokensUntil})
        on conflict (jti) do update set expires_at = greatest(revoked_jtis.expires_at, excluded.expires_at)
      )
      select exists (select 1 from deleted where model = 'Grant') as existed`
    return rows[0]?.existed === true
  }

  async function grantExists (grantId: string): Promise<boolean> {
    const rows = await sql`select 1 from oauth_payloads where model = 'Grant' and id = ${grantId}`
    return rows.length > 0
  }

  async function grantIdsOfClient (clientId: string): Promise<string[]> {
    const rows = await sql<Array<{ id: string }>>`select id from oauth_payloads where model = 'Grant' and payload->>'clientId' = ${clientId}`
    return rows.map((row) => row.id)
  }

  async function grantIdsOfApiToken (apiTokenId: string): Promise<string[]> {
    const rows = await sql<Array<{ grant_id: string }>>`select grant_id from oauth_grant_bindings where api_token_id = ${apiTokenId}`
    return rows.map((row) => row.grant_id)
  }

  /** Forgets a registered client; a client that then asks for a token gets invalid_client and registers again. */
  async function deleteClient (clientId: string): Promise<boolean> {
    const rows = await sql`delete from oauth_payloads where model = 'Client' and id = ${clientId} returning id`
    return rows.length > 0
  }

  /** Deletes what has expired, clients that never got a grant, and retired keys; returns how many rows went. */
  async function purgeExpired (): Promise<number> {
    const expired = await sql`delete from oauth_payloads where expires_at <= now() returning model`
    const unused = await sql`
      delete from oauth_payloads client where client.model = 'Client' and client.created_at < now() - ${UNUSED_CLIENT_KEPT}::interval
        and not exists (select 1 from oauth_payloads grant_row where grant_row.model = 'Grant' and grant_row.payload->>'clientId' = client.id)
      returning id`
    const keys = await sql`delete from oauth_keys where retire_at <= now() returning kid`
    const bindings = await sql`
      delete from oauth_grant_bindings binding where binding.created_at < now() - interval '1 hour'
        and not exists (select 1 from oauth_payloads grant_row where grant_row.model = 'Grant' and grant_row.id = binding.grant_id)
      returning grant_id`
    return expired.length + unused.length + keys.length + bindings.length
  }

  async function listKeys (use: KeyUse): Promise<StoredKey[]> {
    const rows = await sql<KeyRow[]>`
      select kid, use, jwk, signs_from, retire_at from oauth_keys
      where use = ${use} and (retire_at is null or retire_at > now()) order by signs_from desc, kid`
    return rows.map((row) => ({ kid: row.kid, use: row.use, jwk: row.jwk, signsFrom: row.signs_from, retireAt: row.retire_at }))
  }

  /** Inserts a key unless one with its kid exists (instances starting at once create the first keys under fixed kids). */
  async function insertKey (key: { kid: string, use: KeyUse, jwk: Record<string, unknown>, signsFrom?: Date }): Promise<void> {
    await sql`
      insert into oauth_keys (kid, use, jwk, signs_from)
      values (${key.kid}, ${key.use}, ${sql.json(key.jwk as postgres.JSONValue)}, ${key.signsFrom ?? sql`now()`})
      on conflict (kid) do nothing`
  }

  /**
   * Adds a signing key that takes over at `signsFrom` and retires the others at `retireOthersAt`
   * (by then every token they signed has expired), in one statement.
   */
  async function rotateSigningKey (key: { kid: string, jwk: Record<string, unknown>, signsFrom: Date }, retireOthersAt: Date): Promise<void> {
    await sql`
      with retired as (
        update oauth_keys set retire_at = ${retireOthersAt} where use = 'sign' and (retire_at is null or retire_at > ${retireOthersAt})
      )
      insert into oauth_keys (kid, use, jwk, signs_from) values (${key.kid}, 'sign', ${sql.json(key.jwk as postgres.JSONValue)}, ${key.signsFrom})`
  }

  async function insertGrantBinding (binding: GrantBinding): Promise<void> {
    await sql`
      insert into oauth_grant_bindings (grant_id, namespace, api_token_id, subject)
      values (${binding.grantId}, ${binding.namespace}, ${binding.apiTokenId}, ${binding.subject})
      on conflict (grant_id) do update set namespace = excluded.namespace, api_token_id = excluded.api_token_id, subject = excluded.subject`
  }

  async function findGrantBinding (grantId: string): Promise<GrantBinding | null> {
    const rows = await sql<Array<{ grant_id: string, namespace: string, api_token_id: string | null, subject: string }>>`
      select grant_id, namespace, api_token_id, subject from oauth_grant_bindings where grant_id = ${grantId}`
    const row = rows[0]
    return row === undefined ? null : { grantId: row.grant_id, namespace: row.namespace, apiTokenId: row.api_token_id, subject: row.subject }
  }

  async function ownerPasswordHash (): Promise<string | null> {
    const rows = await sql<Array<{ password_hash: string }>>`select password_hash from oauth_owner`
    return rows[0]?.password_hash ?? null
  }

  /** Sets the owner's password and ends every sign-in session made with the old one. */
  async function setOwnerPasswordHash (passwordHash: string): Promise<void> {
    await sql`
      with ended as (
        delete from oauth_payloads where model in ('Session', 'Interaction')
      )
      insert into oauth_owner (singleton, password_hash) values (true, ${passwordHash})
      on conflict (singleton) do update set password_hash = excluded.password_hash, updated_at = now()`
  }

  async function listClients (): Promise<ClientListing[]> {
    const rows = await sql<Array<{ id: string, payload: Record<string, unknown>, created_at: Date, grants: number }>>`
      select client.id, client.payload, client.created_at,
        (select count(*)::int from oauth_payloads grant_row where grant_row.model = 'Grant' and grant_row.payload->>'clientId' = client.id) as grants
      from oauth_payloads client where client.model = 'Client' order by client.created_at`
    return rows.map((row) => ({
      clientId: row.id,
      name: typeof row.payload.client_name === 'string' ? row.payload.client_name : null,
      redirectUris: Array.isArray(row.payload.redirect_uris) ? row.payload.redirect_uris.filter((uri): uri is string => typeof uri === 'string') : [],
      createdAt: row.created_at.toISOString(),
      grants: row.grants
    }))
  }

  async function listGrants (): Promise<GrantListing[]> {
    const rows = await sql<Array<{ id: string, payload: Record<string, unknown>, created_at: Date, expires_at: Date | null, client_name: string | null, namespace: string | null }>>`
      select grant_row.id, grant_row.payload, grant_row.created_at, grant_row.expires_at,
        client.payload->>'client_name' as client_name, binding.namespace
      from oauth_payloads grant_row
      left join oauth_payloads client on client.model = 'Client' and client.id = grant_row.payload->>'clientId'
      left join oauth_grant_bindings binding on binding.grant_id = grant_row.id
      where grant_row.model = 'Grant' and (grant_row.expires_at is null or grant_row.expires_at > now())
      order by grant_row.created_at`
    return rows.map((row) => {
      const resources = (row.payload.resources ?? {}) as Record<string, unknown>
      const scope = Object.values(resources).filter((value): value is string => typeof value === 'string').join(' ')
      return {
        grantId: row.id,
        clientId: String(row.payload.clientId),
        clientName: row.client_name,
        subject: String(row.payload.accountId),
        namespace: row.namespace,
        scope,
        createdAt: row.created_at.toISOString(),
        expiresAt: row.expires_at?.toISOString() ?? null
      }
    })
  }

  async function counts (): Promise<{ clients: number, grants: number }> {
    const rows = await sql<Array<{ clients: number, grants: number }>>`
      select count(*) filter (where model = 'Client')::int as clients,
        count(*) filter (where model = 'Grant' and (expires_at is null or expires_at > now()))::int as grants
      from oauth_payloads where model in ('Client', 'Grant')`
    return rows[0] ?? { clients: 0, grants: 0 }
  }

  return {
    upsertPayload,
    findPayload,
    findPayloadByUid,
    consumePayload,
    destroyPayload,
    revokeGrant,
    grantExists,
    grantIdsOfClient,
    grantIdsOfApiToken,
    deleteClient,
    purgeExpired,
    listKeys,
    insertKey,
    rotateSigningKey,
    insertGrantBinding,
    findGrantBinding,
    ownerPasswordHash,
    setOwnerPasswordHash,
    listClients,
    listGrants,
    counts
  }
}

export type OAuthStore = ReturnType<typeof createOAuthStore>
