import type postgres from 'postgres'

// All data SQL of the application. Each change and its history row are written by ONE statement
// (data-modifying CTEs): one round trip, implicitly one transaction, never one without the other.
//
// A row whose expires_at has passed counts as absent everywhere. A delete does not remove the row:
// it leaves a tombstone (content '', expires_at = '-infinity') that carries the version of the
// delete. Not now(): that is the deleting transaction's start time, which a concurrent transaction
// that started earlier would still see as the future.
// So every change of a key, recreation included, is serialised on that one row and numbered
// e.version + 1: versions never repeat or go backwards, and concurrent recreate/delete cannot race
// for the same number. Only a key without any row starts from its history (or at 1).

export interface Actor { principal: string, client: string | null }

export interface Entry {
  key: string
  content: string
  version: number
  tags: string[]
  createdAt: string
  updatedAt: string
  updatedBy: string
  client: string | null
  expiresAt: string | null
}

export interface WriteOptions {
  /** Compare-and-set: write only if the current version is this one; 0 means "only if absent". */
  expectedVersion?: number
  /** Undefined keeps the current tags (none for a new key); [] clears them. */
  tags?: string[]
  /** Undefined clears any expiry. */
  ttlSeconds?: number
}

export type WriteResult =
  | { status: 'created' | 'updated', version: number, updatedAt: string }
  | { status: 'conflict', currentVersion: number | null } // null: key does not exist

export type AppendResult =
  | { status: 'created' | 'appended', version: number, bytes: number }
  | { status: 'too_large', bytes: number } // the resulting size that would exceed maxContentBytes

export interface ListOptions { prefix?: string, tag?: string, limit: number, afterKey?: string }

export interface ListItem {
  key: string
  version: number
  bytes: number
  tags: string[]
  updatedAt: string
  updatedBy: string
  /** First 160 characters, whitespace runs collapsed to one space. */
  preview: string
}

export interface ListPage { items: ListItem[], nextAfterKey: string | null }

export type DeleteResult =
  | { status: 'deleted', deletedVersion: number }
  | { status: 'not_found' }
  | { status: 'conflict', currentVersion: number }

export type HistoryAction = 'create' | 'update' | 'append' | 'delete' | 'restore'

export interface HistoryItem {
  version: number
  action: HistoryAction
  actor: string
  client: string | null
  at: string
  bytes: number | null
}

export interface HistoryPage { items: HistoryItem[], nextBeforeVersion: number | null } // newest first

export interface HistoryOptions { limit: number, beforeVersion?: number }

export type RestoreResult =
  | { status: 'restored', version: number, restoredFrom: number }
  | { status: 'not_found' }
  | { status: 'version_not_found' }

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

export interface ContextStoreOptions { maxContentBytes: number }

const PREVIEW_CHARS = 160
// Whitespace is collapsed only in this many leading characters, so a preview of a 100 KiB entry
// does not run a regex over all of it.
const PREVIEW_SOURCE_CHARS = 4096
// Only tokens unused for this long get last_used_at written, so authentication stays a read.
const TOKEN_TOUCH_INTERVAL = '1 minute'
// Should entry rows ever be purged, two writers recreating that key could both pick
// max(version)+1 from history; the loser hits the unique (namespace, key, version) and runs again.
const HISTORY_VERSION_CONSTRAINT = 'context_history_key_version'
const MAX_ATTEMPTS = 5
/** A statement found the key created under its feet, changed nothing, and must run again. */
const RACED = Symbol('raced')

interface EntryRow {
  key: string
  content: string
  version: number
  tags: string[]
  created_at: Date
  updated_at: Date
  updated_by: string
  client: string | null
  expires_at: Date | null
}

interface WrittenRow { version: number | null, updated_at: Date | null, created: boolean | null, had_previous: boolean }
interface AppendedRow {
  version: number | null
  created: boolean | null
  bytes: number | null
  previous_bytes: number | null
  previous_expired: boolean | null
  had_previous: boolean
}
interface ListRow { key: string, version: number, bytes: number, tags: string[], updated_at: Date, updated_by: string, preview: string }
interface DeletedRow { deleted_version: number | null }
interface HistoryRow { version: number, action: HistoryAction, actor: string, client: string | null, at: Date, bytes: number | null }
interface RestoredRow { version: number | null, source_found: boolean, had_previous: boolean, has_history: boolean }
interface VersionRow { version: number }
interface TokenRow { id: string, name: string, namespace: string, scopes: string[], global_admin: boolean }
interface TokenListingRow extends TokenRow { created_at: Date, last_used_at: Date | null, revoked_at: Date | null }

export type ContextStore = ReturnType<typeof createContextStore>

export function createContextStore (sql: postgres.Sql, options: ContextStoreOptions) {
  const { maxContentBytes } = options
  const notExpired = sql`(expires_at is null or expires_at > now())`

  /**
   * CTE "previous": the key's current row, locked, as committed right now (not as of the
   * statement's snapshot). It tells whether a change takes over an absent (expired or deleted) key,
   * which RETURNING cannot show. Use firstVersion() in the INSERT so it runs before the insert.
   */
  function lockedPrevious (namespace: string, key: string): postgres.PendingQuery<postgres.Row[]> {
    return sql`
      previous as materialized (
        select version, expires_at <= now() as expired, octet_length(content) as bytes
        from context_entries where namespace = ${namespace} and key = ${key}
        for update
      )`
  }

  /**
   * DO UPDATE condition: change only the row "previous" locked. If there was none, the key was
   * created after this statement's snapshot; the statement then changes nothing and runs again
   * (settle), so that it knows what it took over.
   */
  const onlyThePreviousRow = sql`e.version = (select version from previous)`

  /**
   * Version for the INSERT branch of an upsert (used only when the key has no row). Referencing
   * "previous" here makes it run before the insert.
   */
  function firstVersion (namespace: string, key: string): postgres.PendingQuery<postgres.Row[]> {
    return sql`coalesce(
      (select version from previous),
      (select max(h.version) from context_history h where h.namespace = ${namespace} and h.key = ${key}),
      0) + 1`
  }

  /**
   * CTEs "outcome" (the changed row, and whether it took over an absent key) and "logged" (its
   * history row, in the same statement), after a CTE "changed" that RETURNs the row and `inserted`.
   */
  function outcomeAndHistory (action: 'update' | 'append', actor: Actor): postgres.PendingQuery<postgres.Row[]> {
    return sql`
      outcome as (
        select c.*, c.inserted or coalesce(p.expired, false) as created
        from changed c left join previous p on true
      ), logged as (
        insert into context_history (namespace, key, version, action, content, tags, actor, client, at)
        select namespace, key, version, case when created then 'create' else ${action}::text end, content, tags,
               ${actor.principal}, ${actor.client}, updated_at
        from outcome
      )`
  }

  async function currentVersion (namespace: string, key: string): Promise<number | null> {
    const rows = await sql<VersionRow[]>`
      select version from context_entries where namespace = ${namespace} and key = ${key} and ${notExpired}`
    return rows[0]?.version ?? null
  }

  async function read (namespace: string, key: string, version?: number): Promise<Entry | null> {
    const rows = version === undefined
      ? await sql<EntryRow[]>`
          select key, content, version, tags, created_at, updated_at, updated_by, client, expires_at
          from context_entries
          where namespace = ${namespace} and key = ${key} and ${notExpired}`
      : await sql<EntryRow[]>`
          select h.key, h.content, h.version, h.tags, h.at as updated_at, h.actor as updated_by, h.client,
                 null::timestamptz as expires_at,
                 coalesce((
                   select c.at from context_history c
                   where c.namespace = h.namespace and c.key = h.key and c.version <= h.version
                     and (c.action = 'create' or (c.action = 'restore' and exists (
                       select 1 from context_history d
                       where d.namespace = c.namespace and d.key = c.key and d.version = c.version - 1 and d.action = 'delete')))
                   order by c.version desc limit 1
                 ), h.at) as created_at
          from context_history h
          where h.namespace = ${namespace} and h.key = ${key} and h.version = ${version} and h.action <> 'delete'`
    const row = rows[0]
    return row === undefined ? null : toEntry(row)
  }

  async function write (namespace: string, key: string, content: string, writeOptions: WriteOptions, actor: Actor): Promise<WriteResult> {
    const { expectedVersion } = writeOptions
    const tags = writeOptions.tags ?? null
    const expiresAt = writeOptions.ttlSeconds === undefined
      ? sql`null::timestamptz`
      : sql`now() + make_interval(secs => ${writeOptions.ttlSeconds})`

    // Three shapes: a compare-and-set on an existing version is a plain UPDATE (it must never
    // insert); otherwise an upsert, which for "create only" (expected 0) may only take over an
    // absent (expired or deleted) row.
    const change = expectedVersion !== undefined && expectedVersion > 0
      ? sql`
          update context_entries e set
            content = ${content}, version = e.version + 1, tags = coalesce(${tags}::text[], e.tags),
            updated_at = now(), updated_by = ${actor.principal}, client = ${actor.client}, expires_at = ${expiresAt}
          where e.namespace = ${namespace} and e.key = ${key} and e.version = ${expectedVersion}
            and (e.expires_at is null or e.expires_at > now())
          returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, false as inserted`
      : sql`
          insert into context_entries as e
            (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at)
          values (${namespace}, ${key}, ${content}, ${firstVersion(namespace, key)},
                  coalesce(${tags}::text[], '{}'), now(), now(), ${actor.principal}, ${actor.client}, ${expiresAt})
          on conflict (namespace, key) do update set
            content = excluded.content,
            version = e.version + 1,
            tags = coalesce(${tags}::text[], case when e.expires_at <= now() then '{}' else e.tags end),
            created_at = case when e.expires_at <= now() then now() else e.created_at end,
            updated_at = now(), updated_by = excluded.updated_by, client = excluded.client,
            expires_at = excluded.expires_at
          where ${onlyThePreviousRow} ${expectedVersion === 0 ? sql`and e.expires_at <= now()` : sql``}
          returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, (e.xmax = 0) as inserted`

    return await settle(async () => {
      const [row] = await sql<WrittenRow[]>`
        with ${lockedPrevious(namespace, key)}, changed as (
          ${change}
        ), ${outcomeAndHistory('update', actor)}
        select o.version, o.updated_at, o.created, exists (select 1 from previous) as had_previous
        from (select 1) as one left join outcome o on true`
      if (row?.version != null && row.updated_at !== null) {
        return { status: row.created === true ? 'created' : 'updated', version: row.version, updatedAt: row.updated_at.toISOString() }
      }
      if (row?.had_previous === false && !(expectedVersion !== undefined && expectedVersion > 0)) return RACED
      return { status: 'conflict', currentVersion: await currentVersion(namespace, key) }
    })
  }

  async function append (namespace: string, key: string, content: string, separator: string, actor: Actor): Promise<AppendResult> {
    const contentBytes = Buffer.byteLength(content, 'utf8')
    const separatorBytes = Buffer.byteLength(separator, 'utf8')
    return await settle(async () => {
      const [row] = await sql<AppendedRow[]>`
        with ${lockedPrevious(namespace, key)}, changed as (
          insert into context_entries as e
            (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at)
          select ${namespace}, ${key}, ${content}, ${firstVersion(namespace, key)},
                 '{}', now(), now(), ${actor.principal}, ${actor.client}, null
          where ${contentBytes}::int <= ${maxContentBytes}::int
          on conflict (namespace, key) do update set
            content = case when e.expires_at <= now() then excluded.content else e.content || ${separator}::text || excluded.content end,
            version = e.version + 1,
            tags = case when e.expires_at <= now() then '{}' else e.tags end,
            created_at = case when e.expires_at <= now() then now() else e.created_at end,
            updated_at = now(), updated_by = excluded.updated_by, client = excluded.client,
            expires_at = case when e.expires_at <= now() then null else e.expires_at end
          where ${onlyThePreviousRow} and (e.expires_at <= now()
             or octet_length(e.content) + ${separatorBytes}::int + ${contentBytes}::int <= ${maxContentBytes}::int)
          returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, (e.xmax = 0) as inserted
        ), ${outcomeAndHistory('append', actor)}
        select o.version, o.created, octet_length(o.content) as bytes,
               p.bytes as previous_bytes, p.expired as previous_expired, p.version is not null as had_previous
        from (select 1) as one
        left join outcome o on true
        left join previous p on true`

      if (row?.version != null) {
        return { status: row.created === true ? 'created' : 'appended', version: row.version, bytes: row.bytes ?? contentBytes }
      }
      const fitsAlone = contentBytes <= maxContentBytes
      if (row?.had_previous === false && fitsAlone) return RACED
      const existingBytes = row?.previous_bytes != null && row.previous_expired !== true ? row.previous_bytes : null
      return { status: 'too_large', bytes: existingBytes === null ? contentBytes : existingBytes + separatorBytes + contentBytes }
    })
  }

  async function list (namespace: string, listOptions: ListOptions): Promise<ListPage> {
    const { prefix, tag, limit, afterKey } = listOptions
    // The range lets the primary key serve the prefix even with a generic plan: valid key
    // characters all sort below U+007F under the "C" collation. LIKE keeps the match exact.
    const prefixFilter = prefix === undefined || prefix === ''
      ? sql``
      : sql`and key >= ${prefix} and key < ${prefix + '\u007f'} and key like ${escapeLike(prefix) + '%'}`
    const tagFilter = tag === undefined ? sql`` : sql`and tags @> array[${tag}::text]`
    const afterFilter = afterKey === undefined ? sql`` : sql`and key > ${afterKey}`
    const rows = await sql<ListRow[]>`
      select key, version, octet_length(content) as bytes, tags, updated_at, updated_by,
             left(btrim(regexp_replace(left(content, ${PREVIEW_SOURCE_CHARS}), '[[:space:]]+', ' ', 'g')), ${PREVIEW_CHARS}) as preview
      from context_entries
      where namespace = ${namespace} and ${notExpired} ${prefixFilter} ${tagFilter} ${afterFilter}
      order by key
      limit ${limit + 1}`
    const items = rows.slice(0, limit).map(row => ({
      key: row.key,
      version: row.version,
      bytes: row.bytes,
      tags: row.tags,
      updatedAt: row.updated_at.toISOString(),
      updatedBy: row.updated_by,
      preview: row.preview
    }))
    const last = items.at(-1)
    return { items, nextAfterKey: rows.length > limit && last !== undefined ? last.key : null }
  }

  async function deleteEntry (namespace: string, key: string, expectedVersion: number | undefined, actor: Actor): Promise<DeleteResult> {
    const versionFilter = expectedVersion === undefined ? sql`` : sql`and version = ${expectedVersion}`
    const rows = await settle(() => sql<DeletedRow[]>`
      with deleted as (
        update context_entries set
          content = '', version = version + 1, tags = '{}', expires_at = '-infinity',
          updated_at = now(), updated_by = ${actor.principal}, client = ${actor.client}
        where namespace = ${namespace} and key = ${key} and ${notExpired} ${versionFilter}
        returning namespace, key, version, updated_at
      ), logged as (
        insert into context_history (namespace, key, version, action, content, tags, actor, client, at)
        select namespace, key, version, 'delete', null, '{}', ${actor.principal}, ${actor.client}, updated_at
        from deleted
      )
      select version - 1 as deleted_version from deleted`)
    const deletedVersion = rows[0]?.deleted_version
    if (deletedVersion != null) return { status: 'deleted', deletedVersion }
    if (expectedVersion === undefined) return { status: 'not_found' }
    const current = await currentVersion(namespace, key)
    return current === null ? { status: 'not_found' } : { status: 'conflict', currentVersion: current }
  }

  async function history (namespace: string, key: string, historyOptions: HistoryOptions): Promise<HistoryPage> {
    const { limit, beforeVersion } = historyOptions
    const beforeFilter = beforeVersion === undefined ? sql`` : sql`and version < ${beforeVersion}`
    const rows = await sql<HistoryRow[]>`
      select version, action, actor, client, at, octet_length(content) as bytes
      from context_history
      where namespace = ${namespace} and key = ${key} ${beforeFilter}
      order by version desc
      limit ${limit + 1}`
    const items = rows.slice(0, limit).map(row => ({
      version: row.version,
      action: row.action,
      actor: row.actor,
      client: row.client,
      at: row.at.toISOString(),
      bytes: row.bytes
    }))
    const last = items.at(-1)
    return { items, nextBeforeVersion: rows.length > limit && last !== undefined ? last.version : null }
  }

  async function restore (namespace: string, key: string, version: number, actor: Actor): Promise<RestoreResult> {
    return await settle(async () => {
      const [row] = await sql<RestoredRow[]>`
        with ${lockedPrevious(namespace, key)}, source as (
          select content, tags from context_history
          where namespace = ${namespace} and key = ${key} and version = ${version} and action <> 'delete'
        ), changed as (
          insert into context_entries as e
            (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at)
          select ${namespace}, ${key}, s.content, ${firstVersion(namespace, key)},
                 s.tags, now(), now(), ${actor.principal}, ${actor.client}, null
          from source s
          on conflict (namespace, key) do update set
            content = excluded.content,
            version = e.version + 1,
            tags = excluded.tags,
            created_at = case when e.expires_at <= now() then now() else e.created_at end,
            updated_at = now(), updated_by = excluded.updated_by, client = excluded.client,
            expires_at = null
          where ${onlyThePreviousRow}
          returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at
        ), logged as (
          insert into context_history (namespace, key, version, action, content, tags, actor, client, at)
          select namespace, key, version, 'restore', content, tags, ${actor.principal}, ${actor.client}, updated_at
          from changed
        )
        select (select version from changed) as version,
               exists (select 1 from source) as source_found,
               exists (select 1 from previous) as had_previous,
               exists (select 1 from context_history where namespace = ${namespace} and key = ${key}) as has_history`
      if (row?.version != null) return { status: 'restored', version: row.version, restoredFrom: version }
      if (row?.source_found === true) {
        if (row.had_previous) throw new Error('restore changed no row although the key and version exist')
        return RACED
      }
      return row?.has_history === true ? { status: 'version_not_found' } : { status: 'not_found' }
    })
  }

  async function ping (): Promise<void> {
    await sql`select 1`
  }

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
    read,
    write,
    append,
    list,
    delete: deleteEntry,
    history,
    restore,
    ping,
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

function toEntry (row: EntryRow): Entry {
  return {
    key: row.key,
    content: row.content,
    version: row.version,
    tags: row.tags,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
    updatedBy: row.updated_by,
    client: row.client,
    expiresAt: row.expires_at?.toISOString() ?? null
  }
}

function toTokenRecord (row: TokenRow): ApiTokenRecord {
  return { id: row.id, name: row.name, namespace: row.namespace, scopes: row.scopes, globalAdmin: row.global_admin }
}

function firstRow<T> (rows: readonly T[]): T {
  const row = rows[0]
  if (row === undefined) throw new Error('expected the statement to return a row')
  return row
}

/** LIKE pattern that matches `text` literally. */
export function escapeLike (text: string): string {
  return text.replace(/[\\%_]/g, match => `\\${match}`)
}

/** Runs a statement again while it reports RACED or collides on a history version. */
async function settle<T> (attempt: () => Promise<T | typeof RACED>): Promise<T> {
  for (let attemptNumber = 1; ; attemptNumber++) {
    const last = attemptNumber >= MAX_ATTEMPTS
    try {
      const outcome = await attempt()
      if (outcome !== RACED) return outcome
      if (last) throw new Error(`the key kept being created concurrently; gave up after ${MAX_ATTEMPTS} attempts`)
    } catch (error) {
      if (last || !isHistoryVersionCollision(error)) throw error
    }
  }
}

function isHistoryVersionCollision (error: unknown): boolean {
  const { code, constraint_name: constraint } = error as { code?: unknown, constraint_name?: unknown }
  return code === '23505' && constraint === HISTORY_VERSION_CONSTRAINT
}

// ---------------------------------------------------------------------------------------------
// Maintenance: the expiry sweep (plugins/expiry.ts) and export / import (db/backup.ts, cli.ts).
// ---------------------------------------------------------------------------------------------

/** Timestamps leave the database as ISO 8601 text in UTC with all six fractional digits, so a backup restores them exactly. */
const ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'

/** A key's entry row as exported. */
export interface ExportCurrent {
  version: number
  content: string
  tags: string[]
  created_at: string
  updated_at: string
  updated_by: string
  client: string | null
  /** '-infinity' marks a delete tombstone. */
  expires_at: string | null
}

/** One history row as exported. */
export interface ExportVersion {
  version: number
  action: HistoryAction
  content: string | null
  tags: string[]
  actor: string
  client: string | null
  at: string
}

/**
 * One row of the export stream, in (namespace, key, version) order. A key's first row has `first`
 * set and carries its entry row (`current`, null when the key has history only); every row but
 * one of an entry row without any history (see exportRows) carries a version.
 */
export interface ExportRow {
  namespace: string
  key: string
  first: boolean
  current: ExportCurrent | null
  version: ExportVersion | null
}

/** An imported entry row has the exported shape. */
export type ImportedCurrent = ExportCurrent

/** A key to import: its entry row (null: the key has history only, e.g. it expired and was swept) and its versions. */
export interface ImportedKey {
  namespace: string
  key: string
  current: ImportedCurrent | null
  history: ExportVersion[]
}

/** A key of the batch that the database had already (entry row or history). */
export interface ExistingKey {
  namespace: string
  key: string
  /** Its latest version in the database: the entry row's, or the highest in history. */
  version: number
  /** Whether it is readable now (not deleted, expired or swept). */
  present: boolean
  /**
   * The same state as the imported key: the same latest version and number of versions in history,
   * the same presence, the same expires_at when both have an entry row, and when present the same
   * content and tags.
   */
  same: boolean
}

export interface ImportBatchResult { insertedKeys: number, insertedVersions: number, existing: ExistingKey[] }

interface ImportBatchRow { inserted_keys: number, inserted_versions: number, existing: ExistingKey[] | null }

export type MaintenanceStore = ReturnType<typeof createMaintenanceStore>

export interface SweepOptions {
  /** At most this many statements; default: until a batch comes back short. */
  maxBatches?: number
  /** Asked before every batch: true stops the sweep (e.g. the app is closing); the rest waits for the next sweep. */
  shouldStop?: () => boolean
}

/** A history row of the export with, on a key's first version, its entry row (columns null when the key has none). */
interface ExportPageRow extends ExportVersion {
  namespace: string
  key: string
  first: boolean
  current_version: number | null
  current_content: string | null
  current_tags: string[] | null
  created_at: string | null
  updated_at: string | null
  updated_by: string | null
  current_client: string | null
  expires_at: string | null
}

/** An entry row without any history, and the first key after it that has history (null: none in the export). */
interface OrphanRow extends ExportCurrent {
  namespace: string
  key: string
  next_namespace: string | null
  next_key: string | null
}

interface KeyPosition { namespace: string, key: string }

export function createMaintenanceStore (sql: postgres.Sql) {
  function isoText (q: postgres.Sql, column: postgres.PendingQuery<postgres.Row[]>): postgres.PendingQuery<postgres.Row[]> {
    // to_char gives NULL for ±infinity; tombstones carry '-infinity'.
    return q`case when ${column} in ('-infinity', 'infinity') then ${column}::text else to_char(${column} at time zone 'UTC', ${ISO_UTC}) end`
  }

  /**
   * Removes up to `batchSize` entries whose TTL has passed, as one short statement; their history
   * stays, so a later write continues the version numbering from it (see firstVersion). Delete
   * tombstones (expires_at '-infinity') are kept: they carry the deleted key's version. Rows that
   * a writer holds locked are skipped, so instances sweeping at once never wait on each other or
   * on a write taking over an expired key; the next sweep gets them.
   */
  async function sweepExpiredBatch (batchSize: number): Promise<number> {
    const [row] = await sql<[{ count: number }]>`
      with doomed as (
        select namespace, key from context_entries
        where expires_at > '-infinity' and expires_at <= now()
        limit ${batchSize}
        for update skip locked
      ), swept as (
        delete from context_entries e using doomed d
        where e.namespace = d.namespace and e.key = d.key and e.expires_at > '-infinity' and e.expires_at <= now()
        returning 1
      )
      select count(*) as count from swept`
    return row?.count ?? 0
  }

  /**
   * Sweeps in batches until a batch comes back short, `maxBatches` statements have run, or
   * `shouldStop` says so (checked before each batch); returns how many entries were removed.
   */
  async function sweepExpired (batchSize: number, options: SweepOptions = {}): Promise<number> {
    const maxBatches = options.maxBatches ?? Number.POSITIVE_INFINITY
    let total = 0
    for (let batches = 0; batches < maxBatches && options.shouldStop?.() !== true; batches++) {
      const removed = await sweepExpiredBatch(batchSize)
      total += removed
      if (removed < batchSize) break
    }
    return total
  }

  /**
   * One page of the export: history rows after `after` in (namespace, key, version) order, read
   * through the unique index context_history_key_version (a range scan that stops after `limit`
   * rows: no sort, whatever the size of the store). A key's first version also carries its entry
   * row, looked up by primary key.
   */
  function exportPage (q: postgres.Sql, namespace: string | undefined, after: ExportPageRow | undefined, limit: number) {
    return q<ExportPageRow[]>`
      select h.namespace, h.key, f.first, h.version, h.action, h.content, h.tags, h.actor, h.client,
             ${isoText(q, q`h.at`)} as at,
             e.current_version, e.current_content, e.current_tags, e.created_at, e.updated_at, e.updated_by,
             e.current_client, e.expires_at
      from context_history h
      cross join lateral (
        select not exists (
          select from context_history p where p.namespace = h.namespace and p.key = h.key and p.version < h.version
        ) as first
        offset 0 -- evaluated once per row, not again inside the join below
      ) f
      left join lateral (
        select x.version as current_version, x.content as current_content, x.tags as current_tags,
               ${isoText(q, q`x.created_at`)} as created_at, ${isoText(q, q`x.updated_at`)} as updated_at,
               x.updated_by, x.client as current_client, ${isoText(q, q`x.expires_at`)} as expires_at
        from context_entries x
        where f.first and x.namespace = h.namespace and x.key = h.key
        offset 0
      ) e on true
      where ${namespace === undefined ? q`true` : q`h.namespace = ${namespace}`}
        and ${after === undefined ? q`true` : q`(h.namespace, h.key, h.version) > (${after.namespace}, ${after.key}, ${after.version})`}
      order by h.namespace, h.key, h.version
      limit ${limit}`
  }

  /**
   * Keys of context_entries strictly between `after` and `before`. A btree scan stops at a row
   * comparison's bound only where its first column decides, so a bound within a namespace is
   * spelled out on key; otherwise the namespace bounds keep the scan to the namespaces in range.
   */
  function keyRange (q: postgres.Sql, after: KeyPosition | undefined, before: KeyPosition | undefined): postgres.PendingQuery<postgres.Row[]> {
    if (after !== undefined && before !== undefined && after.namespace === before.namespace) {
      return q`x.namespace = ${after.namespace} and x.key > ${after.key} and x.key < ${before.key}`
    }
    const lower = after === undefined ? q`true` : q`(x.namespace, x.key) > (${after.namespace}, ${after.key}) and x.namespace >= ${after.namespace}`
    const upper = before === undefined ? q`true` : q`(x.namespace, x.key) < (${before.namespace}, ${before.key}) and x.namespace <= ${before.namespace}`
    return q`${lower} and ${upper}`
  }

  /**
   * Entry rows without any history strictly between two keys (either end open), with the first
   * key after each that has history, so they can be put in their place among the history rows.
   * The application never writes one (every change writes its history row in the same statement,
   * and nothing deletes history), but a database edited by hand may hold some, and an export must
   * not lose them. Each candidate costs one index probe into context_history. They are read a
   * page's key range at a time (after the last page: all that remain), so it is only a store that
   * lost much of its history by hand that makes one read large.
   */
  function orphanEntries (q: postgres.Sql, namespace: string | undefined, after: KeyPosition | undefined, before: KeyPosition | undefined) {
    const inNamespace = (alias: string) => namespace === undefined ? q`true` : q`${q(alias)}.namespace = ${namespace}`
    return q<OrphanRow[]>`
      select x.namespace, x.key, x.version, x.content, x.tags,
             ${isoText(q, q`x.created_at`)} as created_at, ${isoText(q, q`x.updated_at`)} as updated_at,
             x.updated_by, x.client, ${isoText(q, q`x.expires_at`)} as expires_at,
             n.namespace as next_namespace, n.key as next_key
      from context_entries x
      left join lateral (
        select h.namespace, h.key from context_history h
        where ${inNamespace('h')} and (h.namespace, h.key) > (x.namespace, x.key)
        order by h.namespace, h.key, h.version
        limit 1
      ) n on true
      where ${inNamespace('x')} and ${keyRange(q, after, before)}
        and (select true from context_history h where h.namespace = x.namespace and h.key = x.key limit 1) is null
      order by x.namespace, x.key`
  }

  /**
   * Streams every key with its history (see ExportRow) in pages of `rowsPerFetch` history rows
   * (plus any entry rows without history among them), one call of `onRows` each; the next page is
   * read only once it has resolved. One read-only REPEATABLE READ transaction, so one consistent
   * snapshot across all pages. On the embedded database an open transaction holds the socket
   * server: other connections, a running server's requests too, wait until the export ends.
   */
  async function exportRows (namespace: string | undefined, rowsPerFetch: number, onRows: (rows: ExportRow[]) => Promise<void>): Promise<void> {
    await sql.begin('isolation level repeatable read read only', async (tx) => {
      const q = tx as unknown as postgres.Sql
      // Each page must follow the indexes whatever the statistics say (stale after a large import
      // until autovacuum runs, never gathered on the embedded database): with sorts off the planner
      // sorts only where nothing else gives the order. Custom plans see the page bounds' values.
      await q`
        select set_config('enable_sort', 'off', true), set_config('enable_incremental_sort', 'off', true),
               set_config('plan_cache_mode', 'force_custom_plan', true)`
      // Usually there is none (see orphanEntries): one pass over the entry rows saves a query per page.
      const [{ any: anyOrphan }] = await q<[{ any: boolean }]>`
        select exists (
          select from context_entries x
          where ${namespace === undefined ? q`true` : q`x.namespace = ${namespace}`}
            and not exists (select from context_history h where h.namespace = x.namespace and h.key = x.key)
        ) as any`
      let after: ExportPageRow | undefined
      for (;;) {
        const page = await exportPage(q, namespace, after, rowsPerFetch)
        const last = page.at(-1)
        const full = last !== undefined && page.length === rowsPerFetch
        const out: ExportRow[] = []
        let index = 0
        /** Moves the page's rows up to `next`'s first version (all of them for null) to the output. */
        const takeUntil = (next: KeyPosition | null): void => {
          for (; index < page.length; index++) {
            const row = page[index] as ExportPageRow
            if (next !== null && row.first && row.namespace === next.namespace && row.key === next.key) return
            out.push(exportRowOf(row))
          }
          if (next !== null) throw new Error(`export: ${next.namespace}/${next.key} is not among the rows of this page`)
        }
        // On a full page, entry rows without history lie before its last key; after the last page, anywhere after it.
        const before = full ? { namespace: last.namespace, key: last.key } : undefined
        for (const orphan of anyOrphan ? await orphanEntries(q, namespace, after, before) : []) {
          takeUntil(orphan.next_namespace === null || orphan.next_key === null ? null : { namespace: orphan.next_namespace, key: orphan.next_key })
          const { namespace: orphanNamespace, key, next_namespace: _namespace, next_key: _key, ...current } = orphan
          out.push({ namespace: orphanNamespace, key, first: true, current, version: null })
        }
        takeUntil(null)
        if (out.length > 0) await onRows(out)
        if (!full) return
        after = last
      }
    })
  }

  /**
   * Imports a batch of keys as ONE statement (so one transaction): keys the database has no trace
   * of (no entry row, no history) get their entry row and every version; keys it has are left
   * untouched and returned with a comparison of their current state (see ExistingKey.same). A key
   * created concurrently makes the statement fail on a unique constraint (nothing of the batch
   * stored); run it again.
   */
  async function importBatch (keys: ImportedKey[]): Promise<ImportBatchResult> {
    const entries = keys.map(({ namespace, key, current, history }) => ({
      namespace, key, has_current: current !== null, last_version: history.at(-1)?.version ?? null, versions: history.length, ...current
    }))
    const versions = keys.flatMap(({ namespace, key, history }) => history.map((version) => ({ namespace, key, ...version })))
    const [row] = await sql<[ImportBatchRow]>`
      with file_entries as materialized (
        select * from json_to_recordset(${JSON.stringify(entries)}::text::json) as f(
          namespace text, key text, has_current boolean, last_version bigint, versions bigint, version bigint, content text, tags text[],
          created_at timestamptz, updated_at timestamptz, updated_by text, client text, expires_at timestamptz)
      ), file_versions as materialized (
        select * from json_to_recordset(${JSON.stringify(versions)}::text::json) as v(
          namespace text, key text, version bigint, action text, content text, tags text[], actor text, client text, at timestamptz)
      ), existing as materialized (
        select f.namespace, f.key, f.has_current, f.last_version, f.versions, f.content, f.tags, f.expires_at,
               e.key is not null as has_entry, e.version as entry_version, e.content as entry_content, e.tags as entry_tags,
               e.expires_at as entry_expires_at, s.history_version, s.history_count
        from file_entries f
        left join context_entries e on e.namespace = f.namespace and e.key = f.key
        cross join lateral (
          select max(h.version) as history_version, count(*) as history_count
          from context_history h where h.namespace = f.namespace and h.key = f.key
        ) s
        where e.key is not null or s.history_count > 0
      ), compared as (
        select namespace, key, coalesce(entry_version, history_version) as version,
               (entry_version is not null and (entry_expires_at is null or entry_expires_at > now())) as present,
               (has_current and (expires_at is null or expires_at > now())) as file_present,
               last_version, versions, history_count, has_entry, has_current, expires_at, entry_expires_at,
               content, tags, entry_content, entry_tags
        from existing
      ), inserted_entries as (
        insert into context_entries (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at)
        select f.namespace, f.key, f.content, f.version, f.tags, f.created_at, f.updated_at, f.updated_by, f.client, f.expires_at
        from file_entries f
        where f.has_current and not exists (select 1 from existing x where x.namespace = f.namespace and x.key = f.key)
        returning 1
      ), inserted_versions as (
        insert into context_history (namespace, key, version, action, content, tags, actor, client, at)
        select v.namespace, v.key, v.version, v.action, v.content, v.tags, v.actor, v.client, v.at
        from file_versions v
        where not exists (select 1 from existing x where x.namespace = v.namespace and x.key = v.key)
        order by v.at, v.namespace, v.key, v.version
        returning 1
      )
      select
        (select count(*) from file_entries) - (select count(*) from existing) as inserted_keys,
        (select count(*) from inserted_versions) as inserted_versions,
        (select json_agg(json_build_object(
           'namespace', namespace, 'key', key, 'version', version, 'present', present,
           'same', coalesce(version = last_version and history_count = versions and present = file_present
                   and (not (has_entry and has_current) or entry_expires_at is not distinct from expires_at)
                   and (not present or (content = entry_content and tags = entry_tags)), false)))
         from compared) as existing`
    if (row === undefined) throw new Error('expected the import statement to return a row')
    return { insertedKeys: row.inserted_keys, insertedVersions: row.inserted_versions, existing: row.existing ?? [] }
  }

  return { sweepExpired, sweepExpiredBatch, exportRows, importBatch }
}

function exportRowOf (row: ExportPageRow): ExportRow {
  const version: ExportVersion = {
    version: row.version, action: row.action, content: row.content, tags: row.tags, actor: row.actor, client: row.client, at: row.at
  }
  const current: ExportCurrent | null = row.current_version === null
    ? null
    : {
        version: row.current_version,
        content: row.current_content as string,
        tags: row.current_tags as string[],
        created_at: row.created_at as string,
        updated_at: row.updated_at as string,
        updated_by: row.updated_by as string,
        client: row.current_client,
        expires_at: row.expires_at
      }
  return { namespace: row.namespace, key: row.key, first: row.first, current, version }
}
