import type postgres from 'postgres'
import { firstRow } from './rows.js'

// The SQL of API tokens (only their hashes are stored) and of the durable list of revoked JWT ids.

export interface ApiTokenRecord {
  id: string
  name: string
  namespace: string
  scopes: string[]
  /** context:admin in every namespace; otherwise context:admin among `scopes` applies in `namespace` only. */
  globalAdmin: boolean
}

export interface ApiTokenListing extends ApiTokenRecord {
  createdAt: string
  lastUsedAt: string | null
  revokedAt: string | null
}

export interface NewApiToken { name: string, hash: string, namespace: string, scopes: string[], globalAdmin?: boolean }

// Only tokens unused for this long get last_used_at written, so authentication stays a read.
const TOKEN_TOUCH_INTERVAL = '1 minute'

interface TokenRow { id: string, name: string, namespace: string, scopes: string[], global_admin: boolean }
interface TokenListingRow extends TokenRow { created_at: Date, last_used_at: Date | null, revoked_at: Date | null }

export type TokenStore = ReturnType<typeof createTokenStore>

export function createTokenStore (sql: postgres.Sql) {
  async function insertApiToken (token: NewApiToken): Promise<ApiTokenRecord> {
    const rows = await sql<TokenRow[]>`
      insert into api_tokens (name, hash, namespace, scopes, global_admin)
      values (${token.name}, ${token.hash}, ${token.namespace}, ${token.scopes}::text[], ${token.globalAdmin ?? false})
      returning id, name, namespace, scopes, global_admin`
    return toTokenRecord(firstRow(rows))
  }

  /** The token with this hash, revoked or not (a revoked one is refused with its own code). */
  async function findApiTokenByHash (hash: string): Promise<(ApiTokenRecord & { revoked: boolean }) | null> {
    const rows = await sql<Array<TokenRow & { revoked: boolean }>>`
      select id, name, namespace, scopes, global_admin, revoked_at is not null as revoked from api_tokens where hash = ${hash}`
    const row = rows[0]
    return row === undefined ? null : { ...toTokenRecord(row), revoked: row.revoked }
  }

  async function countActiveApiTokens (): Promise<number> {
    const rows = await sql<[{ count: number }]>`select count(*) as count from api_tokens where revoked_at is null`
    return firstRow(rows).count
  }

  async function touchApiToken (id: string): Promise<void> {
    await sql`
      update api_tokens set last_used_at = now()
      where id = ${id} and (last_used_at is null or last_used_at < now() - ${TOKEN_TOUCH_INTERVAL}::interval)`
  }

  async function listApiTokens (): Promise<ApiTokenListing[]> {
    const rows = await sql<TokenListingRow[]>`
      select id, name, namespace, scopes, global_admin, created_at, last_used_at, revoked_at from api_tokens order by name`
    return rows.map(row => ({
      ...toTokenRecord(row),
      createdAt: row.created_at.toISOString(),
      lastUsedAt: row.last_used_at?.toISOString() ?? null,
      revokedAt: row.revoked_at?.toISOString() ?? null
    }))
  }

  /** The id of the active token with that name, revoked now; null if there was none (the OAuth grants made with it end by this id). */
  async function revokeApiToken (name: string): Promise<string | null> {
    const rows = await sql<Array<{ id: string }>>`update api_tokens set revoked_at = now() where name = ${name} and revoked_at is null returning id`
    return rows[0]?.id ?? null
  }

  async function revokeJti (jti: string, expiresAt: Date): Promise<void> {
    await sql`
      insert into revoked_jtis (jti, expires_at) values (${jti}, ${expiresAt})
      on conflict (jti) do update set expires_at = greatest(revoked_jtis.expires_at, excluded.expires_at)`
  }

  async function isJtiRevoked (jti: string): Promise<boolean> {
    const rows = await sql`select 1 from revoked_jtis where jti = ${jti} and expires_at > now()`
    return rows.length > 0
  }

  /** Drops revocations of tokens that have expired anyway; returns how many. */
  async function purgeExpiredJtis (): Promise<number> {
    const rows = await sql`delete from revoked_jtis where expires_at <= now() returning jti`
    return rows.length
  }

  return {
    insertApiToken,
    findApiTokenByHash,
    countActiveApiTokens,
    touchApiToken,
    listApiTokens,
    revokeApiToken,
    revokeJti,
    isJtiRevoked,
    purgeExpiredJtis
  }
}

function toTokenRecord (row: TokenRow): ApiTokenRecord {
  return { id: row.id, name: row.name, namespace: row.namespace, scopes: row.scopes, globalAdmin: row.global_admin }
}
