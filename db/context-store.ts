import type postgres from 'postgres'
import { changesSince, feedHead, type FeedOptions, type FeedPage, type FeedPosition } from './change-feed.js'

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

/**
 * The NOTIFY channel every context change is announced on, inside its own transaction (see
 * `notified`): JSON `{ namespace, key, version, action }` (ChangeNotice). live/ listens to it.
 */
export const CHANGE_CHANNEL = 'context_changes'

export interface ChangeNotice { namespace: string, key: string, version: number, action: HistoryAction }

// The hot statements as fixed text, prepared once per connection: read_context of the current
// version, and write_context without a ttl as a plain write or a compare-and-set. Each is the
// statement the fragments in createContextStore build for that case (same text, same parameters
// in the same order: bench/sql-check.ts compares the first two with the benchmark floor's copy);
// building them from fragments on every call was most of the driver's CPU on the hot path.
const READ_CURRENT_SQL = `
  select key, content, version, tags, created_at, updated_at, updated_by, client, expires_at
  from context_entries
  where namespace = $1 and key = $2 and (expires_at is null or expires_at > now())`

const OUTCOME_HISTORY_AND_NOTIFY_SQL = (first: number) => `
  outcome as (
    select c.*, c.inserted or coalesce(p.expired, false) as created
    from changed c left join previous p on true
  ), logged as (
    insert into context_history (namespace, key, version, action, content, tags, actor, client, at, txid)
    select namespace, key, version, case when created then 'create' else $${first}::text end, content, tags,
           $${first + 1}, $${first + 2}, updated_at, feed_txid
    from outcome
    returning namespace, key, version, action
  ), notified as (
    select pg_notify($${first + 3}, json_build_object('namespace', namespace, 'key', key, 'version', version, 'action', action)::text) as sent
    from logged
  )
  select o.version, o.updated_at, o.created, exists (select 1 from previous) as had_previous, (select count(*) from notified) as notified
  from (select 1) as one left join outcome o on true`

const LOCKED_PREVIOUS_SQL = `
  previous as materialized (
    select version, expires_at <= now() as expired, octet_length(content) as bytes
    from context_entries where namespace = $1 and key = $2
    for update
  )`

/** Parameters: namespace, key, namespace, key, content, namespace, key, tags, principal, client, tags, 'update', principal, client, channel. */
const WRITE_UPSERT_SQL = `
  with ${LOCKED_PREVIOUS_SQL}, changed as (
    insert into context_entries as e
      (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at, feed_txid)
    values ($3, $4, $5, coalesce(
      (select version from previous),
      (select max(h.version) from context_history h where h.namespace = $6 and h.key = $7),
      0) + 1,
      coalesce($8::text[], '{}'), now(), now(), $9, $10, null::timestamptz, pg_current_xact_id())
    on conflict (namespace, key) do update set
      content = excluded.content,
      version = e.version + 1,
      tags = coalesce($11::text[], case when e.expires_at <= now() then '{}' else e.tags end),
      created_at = case when e.expires_at <= now() then now() else e.created_at end,
      updated_at = now(), updated_by = excluded.updated_by, client = excluded.client,
      expires_at = excluded.expires_at, feed_txid = greatest(pg_current_xact_id(), e.feed_txid)
    where e.version = (select version from previous)
    returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, e.feed_txid, (e.xmax = 0) as inserted
  ), ${OUTCOME_HISTORY_AND_NOTIFY_SQL(12)}`

/** Parameters: namespace, key, content, tags, principal, client, namespace, key, expected version, 'update', principal, client, channel. */
const WRITE_COMPARE_AND_SET_SQL = `
  with ${LOCKED_PREVIOUS_SQL}, changed as (
    update context_entries e set
      content = $3, version = e.version + 1, tags = coalesce($4::text[], e.tags),
      updated_at = now(), updated_by = $5, client = $6, expires_at = null::timestamptz,
      feed_txid = greatest(pg_current_xact_id(), e.feed_txid)
    where e.namespace = $7 and e.key = $8 and e.version = $9
      and (e.expires_at is null or e.expires_at > now())
    returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, e.feed_txid, false as inserted
  ), ${OUTCOME_HISTORY_AND_NOTIFY_SQL(10)}`

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

export interface SearchOptions {
  /** Plain words; websearch syntax ("quoted phrase", or, -word) works too. */
  query: string
  prefix?: string
  tag?: string
  updatedAfter?: Date
  limit: number
  /** Where the previous page ended (from its `next`). */
  after?: SearchPosition
}

/**
 * A place in a ranked result list: the last item's score and key, and the time the first page
 * ran. Later pages leave out entries written after `asOf`, so that an entry whose new content
 * would move it across the page boundary is not shown twice.
 */
export interface SearchPosition { asOf: string, score: number, key: string }

export interface SearchItem {
  key: string
  version: number
  /** Relevance, 0 to 1, comparable within one search (see search). */
  score: number
  /** Where the query matched, the matching words between ** and **; at most SNIPPET_MAX_CHARS. */
  snippet: string
  tags: string[]
  updatedAt: string
  updatedBy: string
}

export type SearchPage =
  /**
   * partial: more than MAX_RANKED entries matched; the items are the best of the MAX_RANKED most recently written.
   * walked: those candidates came from walking the namespace newest first, not from the vector index (how, not what: the items are the same).
   */
  | { status: 'ok', items: SearchItem[], next: SearchPosition | null, partial: boolean, walked: boolean }
  /** The query holds nothing to search for: only operators, punctuation, stop words, or only excluded words. */
  | { status: 'no_words' }

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

export interface ContextStoreOptions { maxContentBytes: number }

const PREVIEW_CHARS = 160
// A preview is the content's first PREVIEW_CHARS characters with its runs of whitespace made one
// space (previewOf), from at most this many leading characters, so that a 100 KiB entry is not
// read whole.
const PREVIEW_SOURCE_CHARS = 4096
// The list statement sends this many; when they collapse to PREVIEW_CHARS + 2 characters or more
// (a collapsed text has no two spaces in a row, so the preview cannot end in its trailing space)
// the preview is theirs, the same as from PREVIEW_SOURCE_CHARS, and only entries whose first
// characters are mostly whitespace are read again for more. Collapsing in the database cost a
// regex at ~27 µs an entry, 1.4 ms of a 50-entry page; here it costs about 1 µs.
const PREVIEW_HEAD_CHARS = 3 * PREVIEW_CHARS
// Search (see search()). Weights of the key (A), tags (B) and content (C), and D (unused), in
// ts_rank_cd's order {D, C, B, A}.
const SEARCH_WEIGHTS = '{0.1, 0.2, 0.4, 1.0}'
// ts_rank_cd normalization: 1 divides by 1 + log(document length), 32 maps the rank into [0, 1).
const SEARCH_NORMALIZATION = 1 | 32
/** Scores are compared as integers (score × this), so that a cursor holds them exactly. */
const SCORE_SCALE = 1e9
/** At most this many words of a query (longest first) are looked up in the vocabulary. */
const FUZZY_WORDS = 6
const VARIANTS_PER_WORD = 3
/** Variants a rewritten word can have: as typed, VARIANTS_PER_WORD longer words, VARIANTS_PER_WORD similar words. */
const VARIANT_SLOTS = 1 + 2 * VARIANTS_PER_WORD
/** pg_trgm similarity a vocabulary word needs to stand in for a query word (postgress/postgres 0.73, migraton/migrations 0.43). */
const MIN_SIMILARITY = 0.4
/**
 * A similar word may be this many characters longer or shorter than the query's word: a typo
 * drops, adds or swaps a letter or two ("changeelog" is changelog, not "change", which half the
 * entries hold).
 */
const MAX_LENGTH_DIFFERENCE = 2
/** Shorter query words get no similar words: one changed letter in three is another word. */
const MIN_FUZZY_WORD_CHARS = 4
/** A query word this long also matches the vocabulary's longer words that start with it (shortest first). */
const MIN_PREFIX_WORD_CHARS = 5
/**
 * A search ranks at most this many of its matches, the most recently written (a query matching
 * 10,000 entries would cost 20 ms of ranking alone, 1,000 cost 5.5 ms); the result says when there
 * were more. A query's words narrow it to its most recent matches: 300 keeps a broad query's ranking
 * under 2 ms with 8 callers on 2 cores.
 */
export const MAX_RANKED = 300
/**
 * A broad query's candidates come from walking the namespace's entries newest first (index
 * context_search_recent) rather than from visiting every match the vector index yields: 17,656
 * matches of 100,000 entries cost 28 ms to visit and sort, the walk to the 301st of them 4 ms.
 * Whether to walk is judged by the matches among the PROBE_ROWS newest entries, a walked row
 * costing WALK_ROW_COST visited matches (it is read and matched against the query, where the
 * index's matches are only read).
 */
const PROBE_ROWS = 128
const WALK_ROW_COST = 1.5
/** Fewer matches than this among the PROBE_ROWS newest say too little about the density to walk on. */
const MIN_PROBE_HITS = 8
/** The walk stops after this many times the rows it should need; then all the matches are visited after all. */
const WALK_SLACK = 2
/** The snippet is cut from this many characters around the first match. */
const SNIPPET_WINDOW_CHARS = 2000
const SNIPPET_LEAD_CHARS = 200
export const SNIPPET_MAX_CHARS = 300
/** Where context_search_vector splits keys and tags into words, besides spaces (its second translate). */
const KEY_WORD_SEPARATORS = /[/:_.-]/
/** A piece of a key or tag between separators that the text search parser takes as one word. */
const WHOLE_KEY_WORD = /^[A-Za-z0-9]+$/
const HEADLINE_OPTIONS = 'MaxWords=30, MinWords=12, ShortWord=2, StartSel="**", StopSel="**"'
/**
 * An entry's similarity to a rewritten query: for each rewritten word (VARIANT_SLOTS columns
 * q<n>/s<n> of the "slots" row each, best first), the similarity of the first of its variants the
 * entry contains (1 for a word it lacks altogether: an "or" branch); the least of these. Spelt out
 * over scalar columns, as a subquery or array subscripts per candidate entry cost 5-10 µs each.
 * Constant SQL text, made once.
 */
const slotNumbers = (word: number): number[] => Array.from({ length: VARIANT_SLOTS }, (_, slot) => word * VARIANT_SLOTS + slot + 1)
const FUZZY_WORD_INDEXES = Array.from({ length: FUZZY_WORDS }, (_, word) => word)
const SLOT_COLUMNS_SQL = FUZZY_WORD_INDEXES.flatMap(slotNumbers).map((n) => `a.queries[${n}] as q${n}, a.similarities[${n}] as s${n}`).join(', ')
const ENTRY_SIMILARITY_SQL = `least(${FUZZY_WORD_INDEXES.map((word) =>
  `case when g.words <= ${word} then 1 ${slotNumbers(word).map((n) => `when s.search_vector @@ g.q${n} then g.s${n}`).join(' ')} else 1 end`).join(', ')})`
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
interface ListRow { key: string, version: number, bytes: number, tags: string[], updated_at: Date, updated_by: string, head: string }
interface SearchRow { key: string, version: number, tags: string[], updated_at: Date, updated_by: string, score: number, snippet: string | null, as_of: string, partial: boolean, walked: boolean }
interface DeletedRow { deleted_version: number | null }
interface HistoryRow { version: number, action: HistoryAction, actor: string, client: string | null, at: Date, bytes: number | null }
interface RestoredRow { version: number | null, source_found: boolean, had_previous: boolean, has_history: boolean }
interface VersionRow { version: number }

export type ContextStore = ReturnType<typeof createContextStore>

export function createContextStore (sql: postgres.Sql, options: ContextStoreOptions) {
  const { maxContentBytes } = options
  const notExpired = sql`(expires_at is null or expires_at > now())`

  /**
   * CTE "notified", after a CTE "logged" that RETURNs the history row's namespace, key, version
   * and action: a NOTIFY on CHANGE_CHANNEL for it, sent by PostgreSQL when (and only if) the
   * statement's transaction commits. The payload never carries content: namespace and key are at
   * most 255 characters each, far below NOTIFY's 8000-byte limit. A SELECT CTE runs only when the
   * statement reads it, so every statement selects notifiedCount.
   */
  const notified = sql`notified as (
    select pg_notify(${CHANGE_CHANNEL}, json_build_object('namespace', namespace, 'key', key, 'version', version, 'action', action)::text) as sent
    from logged
  )`
  const notifiedCount = sql`(select count(*) from notified) as notified`

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
   * The change feed's position of a change to an existing row (db/change-feed.ts, migration 006):
   * this transaction's id, or the row's previous one if that is larger. A transaction that took its
   * id before an earlier writer of the key committed then still sorts after that writer, so each
   * key's versions reach the feed in order; and the value stays at least the writer's own id, which
   * is what the feed's horizon needs.
   */
  const nextFeedTxid = sql`greatest(pg_current_xact_id(), e.feed_txid)`

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
        insert into context_history (namespace, key, version, action, content, tags, actor, client, at, txid)
        select namespace, key, version, case when created then 'create' else ${action}::text end, content, tags,
               ${actor.principal}, ${actor.client}, updated_at, feed_txid
        from outcome
        returning namespace, key, version, action
      ), ${notified}`
  }

  async function currentVersion (namespace: string, key: string): Promise<number | null> {
    const rows = await sql<VersionRow[]>`
      select version from context_entries where namespace = ${namespace} and key = ${key} and ${notExpired}`
    return rows[0]?.version ?? null
  }

  async function read (namespace: string, key: string, version?: number): Promise<Entry | null> {
    const rows = version === undefined
      ? await sql.unsafe<EntryRow[]>(READ_CURRENT_SQL, [namespace, key], { prepare: true })
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
    // Without a ttl, a plain write and a compare-and-set go out as fixed text (WRITE_UPSERT_SQL,
    // WRITE_COMPARE_AND_SET_SQL); the fragments below build the other shapes.
    const hotShape = writeOptions.ttlSeconds !== undefined || expectedVersion === 0
      ? undefined
      : expectedVersion === undefined ? WRITE_UPSERT_SQL : WRITE_COMPARE_AND_SET_SQL
    const change = () => expectedVersion !== undefined && expectedVersion > 0
      ? sql`
          update context_entries e set
            content = ${content}, version = e.version + 1, tags = coalesce(${tags}::text[], e.tags),
            updated_at = now(), updated_by = ${actor.principal}, client = ${actor.client}, expires_at = ${expiresAt},
            feed_txid = ${nextFeedTxid}
          where e.namespace = ${namespace} and e.key = ${key} and e.version = ${expectedVersion}
            and (e.expires_at is null or e.expires_at > now())
          returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, e.feed_txid, false as inserted`
      : sql`
          insert into context_entries as e
            (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at, feed_txid)
          values (${namespace}, ${key}, ${content}, ${firstVersion(namespace, key)},
                  coalesce(${tags}::text[], '{}'), now(), now(), ${actor.principal}, ${actor.client}, ${expiresAt}, pg_current_xact_id())
          on conflict (namespace, key) do update set
            content = excluded.content,
            version = e.version + 1,
            tags = coalesce(${tags}::text[], case when e.expires_at <= now() then '{}' else e.tags end),
            created_at = case when e.expires_at <= now() then now() else e.created_at end,
            updated_at = now(), updated_by = excluded.updated_by, client = excluded.client,
            expires_at = excluded.expires_at, feed_txid = ${nextFeedTxid}
          where ${onlyThePreviousRow} ${expectedVersion === 0 ? sql`and e.expires_at <= now()` : sql``}
          returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, e.feed_txid, (e.xmax = 0) as inserted`

    return await settle(async () => {
      const [row] = hotShape === undefined
        ? await sql<WrittenRow[]>`
          with ${lockedPrevious(namespace, key)}, changed as (
            ${change()}
          ), ${outcomeAndHistory('update', actor)}
          select o.version, o.updated_at, o.created, exists (select 1 from previous) as had_previous, ${notifiedCount}
          from (select 1) as one left join outcome o on true`
        : await sql.unsafe<WrittenRow[]>(hotShape, hotShape === WRITE_UPSERT_SQL
          ? [namespace, key, namespace, key, content, namespace, key, tags, actor.principal, actor.client, tags, 'update', actor.principal, actor.client, CHANGE_CHANNEL]
          : [namespace, key, content, tags, actor.principal, actor.client, namespace, key, expectedVersion!, 'update', actor.principal, actor.client, CHANGE_CHANNEL],
        { prepare: true })
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
            (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at, feed_txid)
          select ${namespace}, ${key}, ${content}, ${firstVersion(namespace, key)},
                 '{}', now(), now(), ${actor.principal}, ${actor.client}, null, pg_current_xact_id()
          where ${contentBytes}::int <= ${maxContentBytes}::int
          on conflict (namespace, key) do update set
            content = case when e.expires_at <= now() then excluded.content else e.content || ${separator}::text || excluded.content end,
            version = e.version + 1,
            tags = case when e.expires_at <= now() then '{}' else e.tags end,
            created_at = case when e.expires_at <= now() then now() else e.created_at end,
            updated_at = now(), updated_by = excluded.updated_by, client = excluded.client,
            expires_at = case when e.expires_at <= now() then null else e.expires_at end,
            feed_txid = ${nextFeedTxid}
          where ${onlyThePreviousRow} and (e.expires_at <= now()
             or octet_length(e.content) + ${separatorBytes}::int + ${contentBytes}::int <= ${maxContentBytes}::int)
          returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, e.feed_txid, (e.xmax = 0) as inserted
        ), ${outcomeAndHistory('append', actor)}
        select o.version, o.created, octet_length(o.content) as bytes,
               p.bytes as previous_bytes, p.expired as previous_expired, p.version is not null as had_previous, ${notifiedCount}
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
    // A tag's entries come from context_tags (migration 009), in key order; without a tag the
    // primary key walks the namespace (or the prefix's range) itself.
    const keyOf = tag === undefined ? sql`e.key` : sql`t.key`
    // The range lets the primary key serve the prefix even with a generic plan: valid key
    // characters all sort below U+007F under the "C" collation. LIKE keeps the match exact.
    const prefixFilter = prefix === undefined || prefix === ''
      ? sql``
      : sql`and ${keyOf} >= ${prefix} and ${keyOf} < ${prefix + '\u007f'} and ${keyOf} like ${escapeLike(prefix) + '%'}`
    const afterFilter = afterKey === undefined ? sql`` : sql`and ${keyOf} > ${afterKey}`
    const source = tag === undefined
      ? sql`context_entries e where e.namespace = ${namespace}`
      : sql`context_tags t join context_entries e on e.namespace = t.namespace and e.key = t.key where t.namespace = ${namespace} and t.tag = ${tag}`
    const rows = await sql<ListRow[]>`
      select e.key, e.version, octet_length(e.content) as bytes, e.tags, e.updated_at, e.updated_by, left(e.content, ${PREVIEW_HEAD_CHARS}) as head
      from ${source} and (e.expires_at is null or e.expires_at > now()) ${prefixFilter} ${afterFilter}
      order by ${keyOf}
      limit ${limit + 1}`
    const page = rows.slice(0, limit)
    const previews = page.map((row) => previewOfHead(row.head))
    const short = page.filter((_, i) => previews[i] === undefined)
    if (short.length > 0) {
      // From the history, which keeps every version: the listed version's text even if the entry
      // was written or deleted since the statement above.
      const sources = await sql<Array<{ key: string, source: string | null }>>`
        select h.key, left(h.content, ${PREVIEW_SOURCE_CHARS}) as source
        from unnest(${short.map((row) => row.key)}::text[], ${short.map((row) => row.version)}::int8[]) as v(key, version)
        join context_history h on h.namespace = ${namespace} and h.key = v.key and h.version = v.version`
      const sourceOf = new Map(sources.map((row) => [row.key, row.source]))
      page.forEach((row, i) => { previews[i] ??= previewOf(sourceOf.get(row.key) ?? row.head) })
    }
    const items = page.map((row, i) => ({
      key: row.key,
      version: row.version,
      bytes: row.bytes,
      tags: row.tags,
      updatedAt: row.updated_at.toISOString(),
      updatedBy: row.updated_by,
      preview: previews[i] ?? ''
    }))
    const last = items.at(-1)
    return { items, nextAfterKey: rows.length > limit && last !== undefined ? last.key : null }
  }

  /**
   * One page of a ranked search. How an entry's score is made (README "Search"):
   *
   * 1. The query goes through websearch_to_tsquery (words are ANDed; "a phrase", or, -word work).
   * 2. A word of 4-64 characters that no entry of the namespace contains (a typo, or part of an
   *    identifier, most likely; at most FUZZY_WORDS such words, longest first) also matches
   *    - up to VARIANTS_PER_WORD words of the namespace's vocabulary (search_terms) that start with
   *      it, shortest first, if it has MIN_PREFIX_WORD_CHARS or more ("createContext" finds
   *      "createContextStore");
   *    - up to VARIANTS_PER_WORD vocabulary words whose pg_trgm similarity to it is at least
   *      MIN_SIMILARITY and whose length is within MAX_LENGTH_DIFFERENCE of its, most similar
   *      first ("postgress" finds "postgres", 0.73).
   *    ts_rewrite puts "word or its variants" in the word's place, keeping the query's structure.
   *    A word some entry contains matches as typed only ("postgres" does not find "PostgreSQL").
   * 3. score = ts_rank_cd of that query (weights: key 1.0, tags 0.4, content 0.2; normalised by
   *    1 + log(length) and into [0, 1)) × the entry's similarity: for each rewritten word, the
   *    pg_trgm similarity of the best of its variants the entry contains (1 for the word as
   *    typed), the least of these; 1 when no word was rewritten.
   *
   * Ties go by key. Expired and deleted entries never match (deleted ones have no search row).
   */
  async function search (namespace: string, options: SearchOptions): Promise<SearchPage> {
    const { limit, after } = options
    const prefixFilter = options.prefix === undefined || options.prefix === '' ? sql`` : sql`and starts_with(s.key, ${options.prefix})`
    const tagFilter = options.tag === undefined ? sql`` : sql`and s.tags @> array[${options.tag}::text]`
    // Times leave the store with milliseconds (toISOString): an updated_at passed back excludes its own entry.
    const updatedFilter = options.updatedAfter === undefined ? sql`` : sql`and date_trunc('milliseconds', s.updated_at) > ${options.updatedAfter}`
    const asOfFilter = after === undefined ? sql`` : sql`and s.updated_at <= ${after.asOf}::timestamptz`
    // What an entry must be, besides matching, wherever the candidates come from (probe, walk, vector index).
    const entryFilters = sql`and (s.expires_at is null or s.expires_at > now()) ${prefixFilter} ${tagFilter} ${updatedFilter} ${asOfFilter}`
    // What the vector index is asked (see filterWordsOf), made once in the fuzzy CTE: in a join
    // condition it was parsed again for every row a recheck (a phrase) or a scan read.
    const filterWords = filterWordsOf(options.prefix, options.tag)
    const indexQuery = filterWords === ''
      ? sql`query`
      : sql`case when (select narrows from filter_language) then query && plainto_tsquery((select language from input), ${filterWords}) else query end`
    const pageFilter = after === undefined ? sql`` : sql`where score < ${after.score} or (score = ${after.score} and key > ${after.key})`
    const rows = await sql<SearchRow[]>`
      with recursive input as materialized (
        select language, translate(${options.query}::text, '/', ' ') as text from search_settings
      ), exact as materialized (
        select language, websearch_to_tsquery(language, text) as query, text from input
      ), words as materialized (
        select distinct w.word, (array_to_tsvector(array[w.word])::text)::tsquery as single
        from exact x cross join lateral unnest(tsvector_to_array(to_tsvector(x.language, x.text))) as w(word)
        where x.query @> (array_to_tsvector(array[w.word])::text)::tsquery
      ), unknown as materialized (
        select word from words
        where char_length(word) between ${MIN_FUZZY_WORD_CHARS} and 64 and word ~ '[[:alpha:]]'
          and not exists (select from search_terms t where t.namespace = ${namespace} and t.term = words.word)
        order by char_length(word) desc, word
        limit ${FUZZY_WORDS}
      ), variants as materialized (
        select distinct on (word, term) word, term, single, similarity
        from (
          select word, word as term, single, 1::float8 as similarity from words
          union all
          select w.word, v.term, (array_to_tsvector(array[v.term])::text)::tsquery, similarity(v.term, w.word)::float8
          from unknown w
          cross join lateral (
            select t.term from search_terms t
            where t.namespace = ${namespace} and t.term > w.word and t.term < w.word || chr(1114111) and starts_with(t.term, w.word)
            group by t.term
            order by char_length(t.term), t.term
            limit ${VARIANTS_PER_WORD}
          ) v
          where char_length(w.word) >= ${MIN_PREFIX_WORD_CHARS}
          union all
          select w.word, v.term, (array_to_tsvector(array[v.term])::text)::tsquery, v.similarity
          from unknown w
          cross join lateral (
            select t.term, similarity(t.term, w.word)::float8 as similarity
            from search_terms t
            where t.namespace = ${namespace} and t.term % w.word
              and abs(char_length(t.term) - char_length(w.word)) <= ${MAX_LENGTH_DIFFERENCE}
            group by t.term
            having similarity(t.term, w.word) >= ${MIN_SIMILARITY}
            order by 2 desc, t.term
            limit ${VARIANTS_PER_WORD}
          ) v
        ) found
        order by word, term, similarity desc
      ), rewrites as materialized (
        select row_number() over (order by word) as step, word,
               min(single::text) filter (where similarity = 1)::tsquery as target,
               string_agg(single::text, ' | ' order by similarity desc, single::text)::tsquery as substitute
        from variants
        group by word
        having count(*) > 1
      ), fold (step, query) as (
        select 0::bigint, query from exact where numnode(query) > 0 and querytree(query) <> 'T'
        union all
        select f.step + 1, ts_rewrite(f.query, r.target, r.substitute) from fold f join rewrites r on r.step = f.step + 1
      ), filter_language as materialized (
        -- Whether a word of a key or tag is its own lexemes wherever it stands: with the default
        -- parser and no thesaurus dictionary (which rewrites runs of words), it is.
        select p.prsname = 'default' and p.prsnamespace = 'pg_catalog'::regnamespace
               and not exists (
                 select from pg_ts_config_map m
                 join pg_ts_dict d on d.oid = m.mapdict
                 join pg_ts_template t on t.oid = d.dicttemplate
                 where m.mapcfg = c.oid and t.tmplname = 'thesaurus') as narrows
        from input x
        join pg_ts_config c on c.oid = x.language
        join pg_ts_parser p on p.oid = c.cfgparser
      ), fuzzy as materialized (
        select query, step > 0 as rewritten, ${indexQuery} as index_query from fold order by step desc limit 1
      ), slots as materialized (
        -- The variants of each rewritten word in VARIANT_SLOTS columns, best first (see ENTRY_SIMILARITY_SQL).
        select (select count(*) from rewrites) as words, ${sql.unsafe(SLOT_COLUMNS_SQL)}
        from (
          select array_agg(v.single order by r.step, slot.n) as queries, array_agg(v.similarity order by r.step, slot.n) as similarities
          from rewrites r
          cross join generate_series(1, ${VARIANT_SLOTS}) as slot(n)
          left join lateral (
            select single, similarity from variants where variants.word = r.word
            order by similarity desc, single::text offset slot.n - 1 limit 1
          ) v on true
        ) a
      ), probe as materialized (
        -- How many of the namespace's PROBE_ROWS most recently written entries match: the density
        -- of the matches in the order the candidates are wanted in (see walked).
        select count(*) as probed, count(*) filter (where s.search_vector @@ f.query ${entryFilters}) as hits
        from fuzzy f
        cross join lateral (
          select s.search_vector, s.key, s.tags, s.updated_at, s.expires_at from context_search s
          where s.namespace = ${namespace}
          order by s.updated_at desc, s.key
          limit ${PROBE_ROWS}
        ) s
      ), route as materialized (
        -- Walk the entries newest first when that reads fewer rows than the index's matches: about
        -- (MAX_RANKED + 1) / density rows, each costing WALK_ROW_COST matches, against density × the
        -- table's rows (the vector index's matches are of every namespace). A probe with fewer
        -- than MIN_PROBE_HITS matches says too little to walk on; the walk stops after WALK_SLACK
        -- times the rows the density needs.
        -- (A namespace whose probe saw fewer than PROBE_ROWS entries was read whole: nothing to walk.)
        select case when h.hits >= ${MIN_PROBE_HITS} and c.reltuples > 0 and h.probed >= ${PROBE_ROWS}
                     and ${WALK_ROW_COST}::float8 * ${MAX_RANKED + 1}::int * h.probed / h.hits < h.hits / h.probed * c.reltuples
                    then ceil(${WALK_SLACK}::float8 * ${MAX_RANKED + 1}::int * h.probed / h.hits)::bigint else 0 end as walk_rows
        from (select probed::float8 as probed, hits::float8 as hits from probe) h
        cross join (select reltuples::float8 as reltuples from pg_class where oid = 'context_search'::regclass) c
      ), walked as materialized (
        -- A broad query's MAX_RANKED + 1 most recent matches, from the entries newest first (the
        -- recency index of migration 010): complete when it found that many; else candidates asks
        -- the vector index for all matches.
        select s.row_id, s.updated_at, s.key
        from fuzzy f
        cross join lateral (
          select s.ctid as row_id, s.search_vector, s.key, s.tags, s.updated_at, s.expires_at from context_search s
          where s.namespace = ${namespace}
          order by s.updated_at desc, s.key
          limit (select walk_rows from route)
        ) s
        where s.search_vector @@ f.query ${entryFilters}
        -- No ORDER BY needed: the lateral subquery does not depend on f (one row), so the rows come
        -- in its order, newest first, and the first MAX_RANKED + 1 matches are the most recent ones.
        limit ${MAX_RANKED + 1}
      ), candidates as materialized (
        -- At most MAX_RANKED + 1 matches, the most recently written (the extra one says there were
        -- more), as narrow rows: sorting them with their vectors cost 8 µs a match.
        select row_id, updated_at, key from walked where (select count(*) from walked) > ${MAX_RANKED}
        union all
        (select s.ctid as row_id, s.updated_at, s.key
         from fuzzy f
         join context_search s on s.namespace = ${namespace} and s.search_vector @@ f.index_query
         where (select count(*) from walked) <= ${MAX_RANKED} ${entryFilters}
         -- "+ interval '0'": sorted, never walked through the recency index (a generic plan that
         -- expects a small namespace would walk all of a large one's entries for a rare word).
         order by s.updated_at + interval '0' desc, s.key
         limit ${MAX_RANKED + 1})
      ), matches as (
        select s.key, s.version, s.tags, s.updated_at,
               floor(ts_rank_cd(${SEARCH_WEIGHTS}::float4[], s.search_vector, f.query, ${SEARCH_NORMALIZATION})::float8
                     * case when f.rewritten then ${sql.unsafe(ENTRY_SIMILARITY_SQL)} else 1 end * ${SCORE_SCALE})::bigint as score
        from (select row_id from candidates order by updated_at desc, key limit ${MAX_RANKED}) c
        join context_search s on s.ctid = c.row_id
        cross join fuzzy f
        cross join slots g
      ), page as (
        select * from matches ${pageFilter}
        order by score desc, key
        limit ${limit + 1}
      ), numbered as (
        select *, row_number() over (order by score desc, key) as n from page
      )
      -- Snippets only for the page's rows (the extra one only says whether there is a next page).
      -- Whitespace is collapsed in the headline rather than in the window it is cut from: the same
      -- text (ts_headline keeps every whitespace run as one token), and the regex over 2,000
      -- characters cost as much as the headline itself.
      select p.key, p.version, p.tags, p.updated_at, e.updated_by, p.score,
             to_char(now() at time zone 'UTC', ${ISO_UTC}) as as_of,
             (select count(*) from candidates) > ${MAX_RANKED} as partial,
             (select count(*) from walked) > ${MAX_RANKED} as walked,
             case when p.n <= ${limit} then regexp_replace(ts_headline(x.language, substr(e.content, greatest(1, coalesce((
               select min(nullif(strpos(l.lowered, v.term), 0)) from variants v
             ), 1) - ${SNIPPET_LEAD_CHARS}), ${SNIPPET_WINDOW_CHARS}), f.query, ${HEADLINE_OPTIONS}), '[[:space:]]+', ' ', 'g') end as snippet
      from numbered p
      join context_entries e on e.namespace = ${namespace} and e.key = p.key
      cross join lateral (select lower(left(e.content, 100000)) as lowered) l
      cross join exact x
      cross join fuzzy f
      order by p.score desc, p.key`
    if (rows.length === 0 && await hasNoWords(options.query)) return { status: 'no_words' }
    const items = rows.slice(0, limit).map((row) => ({
      key: row.key,
      version: row.version,
      score: Math.round(row.score / SCORE_SCALE * 1e4) / 1e4,
      snippet: boundSnippet(row.snippet ?? ''),
      tags: row.tags,
      updatedAt: row.updated_at.toISOString(),
      updatedBy: row.updated_by
    }))
    const last = rows[limit - 1]
    const next = rows.length > limit && last !== undefined ? { asOf: after?.asOf ?? last.as_of, score: last.score, key: last.key } : null
    return { status: 'ok', items, next, partial: rows[0]?.partial ?? false, walked: rows[0]?.walked ?? false }
  }

  /** Whether a query holds nothing to search for (only operators, punctuation or stop words, or only excluded words). */
  async function hasNoWords (query: string): Promise<boolean> {
    const [row] = await sql<[{ empty: boolean }]>`
      select numnode(q) = 0 or querytree(q) = 'T' as empty
      from (select websearch_to_tsquery(language, translate(${query}::text, '/', ' ')) as q from search_settings) x`
    return row?.empty ?? true
  }

  async function deleteEntry (namespace: string, key: string, expectedVersion: number | undefined, actor: Actor): Promise<DeleteResult> {
    const versionFilter = expectedVersion === undefined ? sql`` : sql`and version = ${expectedVersion}`
    const rows = await settle(() => sql<DeletedRow[]>`
      with deleted as (
        update context_entries set
          content = '', version = version + 1, tags = '{}', expires_at = '-infinity',
          updated_at = now(), updated_by = ${actor.principal}, client = ${actor.client},
          feed_txid = greatest(pg_current_xact_id(), feed_txid)
        where namespace = ${namespace} and key = ${key} and ${notExpired} ${versionFilter}
        returning namespace, key, version, updated_at, feed_txid
      ), logged as (
        insert into context_history (namespace, key, version, action, content, tags, actor, client, at, txid)
        select namespace, key, version, 'delete', null, '{}', ${actor.principal}, ${actor.client}, updated_at, feed_txid
        from deleted
        returning namespace, key, version, action
      ), ${notified}
      select version - 1 as deleted_version, ${notifiedCount} from deleted`)
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
            (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at, feed_txid)
          select ${namespace}, ${key}, s.content, ${firstVersion(namespace, key)},
                 s.tags, now(), now(), ${actor.principal}, ${actor.client}, null, pg_current_xact_id()
          from source s
          on conflict (namespace, key) do update set
            content = excluded.content,
            version = e.version + 1,
            tags = excluded.tags,
            created_at = case when e.expires_at <= now() then now() else e.created_at end,
            updated_at = now(), updated_by = excluded.updated_by, client = excluded.client,
            expires_at = null, feed_txid = ${nextFeedTxid}
          where ${onlyThePreviousRow}
          returning e.namespace, e.key, e.content, e.version, e.tags, e.updated_at, e.feed_txid
        ), logged as (
          insert into context_history (namespace, key, version, action, content, tags, actor, client, at, txid)
          select namespace, key, version, 'restore', content, tags, ${actor.principal}, ${actor.client}, updated_at, feed_txid
          from changed
          returning namespace, key, version, action
        ), ${notified}
        select (select version from changed) as version, ${notifiedCount},
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

  return {
    read,
    write,
    /** The change feed (db/change-feed.ts). */
    changesSince: (feedOptions: FeedOptions): Promise<FeedPage> => changesSince(sql, feedOptions),
    feedHead: (): Promise<FeedPosition> => feedHead(sql),
    append,
    list,
    search,
    delete: deleteEntry,
    history,
    restore,
    ping
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

/**
 * A snippet of at most SNIPPET_MAX_CHARS UTF-16 code units (so at most that many characters
 * however they are counted), cut between code points, with … where it was cut.
 */
function boundSnippet (snippet: string): string {
  if (snippet.length <= SNIPPET_MAX_CHARS) return snippet
  let cut = ''
  for (const codePoint of snippet) {
    if (cut.length + codePoint.length > SNIPPET_MAX_CHARS - 1) break
    cut += codePoint
  }
  return `${cut}…`
}

/**
 * Words that every entry a prefix or tag filter admits has in its search vector: the key and the
 * tags go into it also split at / : _ . - (context_search_vector, migration 005), so each whole
 * alphanumeric piece of the prefix (the pieces the prefix ends after; its last may be cut short)
 * and of the tag is a word of those entries, under a configuration with the default parser and no
 * thesaurus (the filter_language CTE of search). ANDed into the query the vector index is asked,
 * they let the index intersect its lists instead of the heap filtering every match of a broad
 * word: "index" under prefix "delta/" read 6,947 rows (5,483 pages) to keep 573, now 574 (532).
 * Space-separated, for plainto_tsquery; '' when there are none.
 */
export function filterWordsOf (prefix: string | undefined, tag: string | undefined): string {
  const prefixPieces = prefix === undefined ? [] : prefix.split(KEY_WORD_SEPARATORS).slice(0, -1)
  const tagPieces = tag === undefined ? [] : tag.split(KEY_WORD_SEPARATORS)
  return [...new Set([...prefixPieces, ...tagPieces].filter((piece) => WHOLE_KEY_WORD.test(piece)))].join(' ')
}

/**
 * The preview from an entry's first PREVIEW_HEAD_CHARS characters when they are enough: they
 * collapse to more than a preview, or they are the whole content (fewer than PREVIEW_HEAD_CHARS
 * came). Else undefined.
 */
export function previewOfHead (head: string): string | undefined {
  const collapsed = head.replace(/\s+/g, ' ').trimStart()
  // A code point is one or two UTF-16 code units: the lengths decide most cases without counting.
  const enough = collapsed.length >= 2 * (PREVIEW_CHARS + 2) || (collapsed.length >= PREVIEW_CHARS + 2 && [...collapsed].length >= PREVIEW_CHARS + 2)
  const whole = head.length < PREVIEW_HEAD_CHARS || [...head].length < PREVIEW_HEAD_CHARS
  return enough || whole ? firstCharacters(collapsed.trimEnd()) : undefined
}

/** A list item's preview: `source`'s runs of whitespace made one space, trimmed, its first PREVIEW_CHARS characters (code points). */
export function previewOf (source: string): string {
  return firstCharacters(source.replace(/\s+/g, ' ').trim())
}

/** The first PREVIEW_CHARS code points of `text`. */
function firstCharacters (text: string): string {
  if (text.length <= PREVIEW_CHARS) return text
  let preview = ''
  let characters = 0
  for (const codePoint of text) {
    if (characters++ === PREVIEW_CHARS) break
    preview += codePoint
  }
  return preview
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

/** SEARCH_LANGUAGE names no text search configuration of the database. */
export class SearchLanguageError extends Error {
  override readonly name = 'SearchLanguageError'
}

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

  /**
   * Makes `language` (SEARCH_LANGUAGE) the text search configuration of every search vector and
   * query; null if it already was. A change re-indexes every entry and rebuilds the vocabulary
   * in one transaction: writes of entries wait until it commits, reads and searches (in the
   * previous language until then) do not. Instances starting at once: the first changes it, the
   * others then find it changed.
   */
  async function applySearchLanguage (language: string): Promise<{ previous: string, entries: number } | null> {
    const configurations = await sql<Array<{ name: string }>>`
      select cfgname as name from pg_ts_config where pg_ts_config_is_visible(oid) order by cfgname`
    if (!configurations.some((configuration) => configuration.name === language)) {
      throw new SearchLanguageError(`SEARCH_LANGUAGE "${language}" is not a text search configuration of this database; it has ${configurations.map((c) => c.name).join(', ')}.`)
    }
    return await sql.begin(async (tx) => {
      const q = tx as unknown as postgres.Sql
      const [current] = await q<[{ language: string }]>`select language::text as language from search_settings for update`
      if (current === undefined) throw new Error('search_settings has no row: migration 005 did not run')
      if (current.language === language) return null
      await q`lock table context_entries in share mode`
      await q`update search_settings set language = ${language}::regconfig`
      const [{ entries }] = await q<[{ entries: number }]>`
        with changed as (
          update context_search s set search_vector = context_search_vector(${language}::regconfig, e.key, e.tags, e.content)
          from context_entries e
          where e.namespace = s.namespace and e.key = s.key
          returning 1
        )
        select count(*) as entries from changed`
      await q`delete from search_terms`
      await q`
        insert into search_terms (namespace, term)
        select distinct s.namespace, t.term from context_search s cross join lateral search_terms_of(s.search_vector) as t(term)`
      return { previous: current.language, entries }
    })
  }

  /** ANALYZE of the tables an import fills, so that its next statements are planned for what they hold. */
  async function refreshStatistics (): Promise<void> {
    await sql`analyze context_entries, context_history`
  }

  return { sweepExpired, sweepExpiredBatch, exportRows, importBatch, refreshStatistics, applySearchLanguage }
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
