import type postgres from 'postgres'
import { AppError } from '../schema/errors.js'
import { decodeCursor, encodeCursor } from '../schema/cursor.js'
import type { HistoryAction, HistoryItem } from './context-store.js'

// The change feed: a namespace's history rows in commit-safe order (migration 006). Rows are
// ordered by (txid, id), and a read serves only rows whose transaction id is below the xmin of its
// own snapshot: all those transactions have ended, and every transaction still to come gets a
// larger id, so nothing can later appear behind a position already handed out. Rows from before
// migration 006 (txid NULL) come first, by id. What a position means never depends on the
// instance or on a restart: it is a place in the database's own order.
//
// Reads hold no transaction open and need no transaction id; a long-running writing transaction
// anywhere on the database server holds the horizon back (its rows, and every later one, wait
// until it ends) — that is the price of never skipping a row.

/**
 * A place in the feed: everything up to and including (txid, id) has been served. txid is the
 * decimal text of an xid8; '0' stands for rows without one (written before migration 006).
 */
export interface FeedPosition { txid: string, id: number }

/** Where a reader without a cursor starts: before the oldest retained history row. */
export const FEED_START: FeedPosition = { txid: '0', id: 0 }

/** A version of an entry as the history shows it, with its key and its place in the feed. */
export interface FeedChange extends HistoryItem {
  key: string
  /** The feed's position just after this change (an SSE event id, for instance). */
  position: FeedPosition
}

export interface FeedOptions {
  namespace: string
  /** Serve changes after this position; null: from the start of the retained history. */
  after: FeedPosition | null
  /** Only keys starting with this text (literally). */
  prefix?: string
  /** Only changes of entries with this tag (a delete counts when the version it deleted had it). */
  tag?: string
  limit: number
}

export interface FeedPage {
  changes: FeedChange[]
  /** Pass as `after` for the next page. When `more` is false it is the horizon itself. */
  position: FeedPosition
  /** More changes are ready to be served right now (the page was cut at `limit`). */
  more: boolean
  /**
   * The namespace has rows the horizon still holds back (written by transactions at or above the
   * oldest one running anywhere on the database server): a later read will serve them.
   */
  heldBack: boolean
}

const CURSOR_KIND = 'changes'
const MAX_XID8 = (1n << 64n) - 1n
const POSITION_TEXT = /^(0|[1-9][0-9]{0,19})\.(0|[1-9][0-9]{0,15})$/

function isPositionText (text: string): boolean {
  const match = POSITION_TEXT.exec(text)
  return match !== null && BigInt(match[1] as string) <= MAX_XID8 && Number.isSafeInteger(Number(match[2]))
}

/** The opaque cursor a client holds for a position. */
export function encodePosition (position: FeedPosition): string {
  return encodeCursor(CURSOR_KIND, `${position.txid}.${position.id}`)
}

/** The position a cursor holds; REQ_1101 for anything encodePosition did not make. */
export function decodePosition (cursor: string): FeedPosition {
  const [txid, id] = decodeCursor(CURSOR_KIND, cursor, isPositionText).split('.') as [string, string]
  return { txid, id: Number(id) }
}

/** Orders two positions: negative when a comes first. */
export function comparePositions (a: FeedPosition, b: FeedPosition): number {
  const byTxid = BigInt(a.txid) - BigInt(b.txid)
  if (byTxid !== 0n) return byTxid < 0n ? -1 : 1
  return a.id - b.id
}

interface FeedRow {
  key: string
  version: number
  action: HistoryAction
  actor: string
  client: string | null
  at: Date
  bytes: number | null
  txid: string | null
  id: number
  horizon: string
  held_back: boolean
}

interface HorizonRow { horizon: string }

const CURSOR_FROM_ELSEWHERE = 'cursor is not a position of this database (it lies ahead of everything written here): ' +
  'it comes from another server or a restored copy. Omit it to start from the beginning, or pass from: "now".'

/**
 * One page of a namespace's changes after `after`, oldest first. Exactly once: following the
 * returned positions serves every history row once, whatever runs concurrently, on any instance.
 */
export async function changesSince (sql: postgres.Sql, options: FeedOptions): Promise<FeedPage> {
  const { namespace, limit } = options
  const after = options.after ?? FEED_START
  // Rows without a txid are served while the position is still among them (txid '0').
  const inOldRows = after.txid === '0'
  const prefixFilter = options.prefix === undefined || options.prefix === '' ? sql`` : sql`and starts_with(h.key, ${options.prefix})`
  const tagFilter = options.tag === undefined
    ? sql``
    : sql`and (h.tags @> array[${options.tag}::text] or (h.action = 'delete' and exists (
        select from context_history d
        where d.namespace = h.namespace and d.key = h.key and d.version = h.version - 1 and d.tags @> array[${options.tag}::text])))`
  const rows = await sql<FeedRow[]>`
    with horizon as materialized (
      select pg_snapshot_xmin(pg_current_snapshot()) as xmin
    ), old_rows as (
      select h.key, h.version, h.action, h.actor, h.client, h.at, octet_length(h.content) as bytes, h.txid, h.id
      from context_history h
      where ${inOldRows} and h.namespace = ${namespace} and h.txid is null and h.id > ${after.id}::bigint
        ${prefixFilter} ${tagFilter}
      order by h.txid, h.id -- all NULL: by id, but spelt as the index's order so that no sort is needed
      limit ${limit + 1}
    ), new_rows as (
      select h.key, h.version, h.action, h.actor, h.client, h.at, octet_length(h.content) as bytes, h.txid, h.id
      from context_history h, horizon
      where h.namespace = ${namespace} and h.txid < horizon.xmin
        and (h.txid, h.id) > (${after.txid}::xid8, ${after.id}::bigint)
        ${prefixFilter} ${tagFilter}
      order by h.txid, h.id
      limit ${limit + 1}
    ), page as (
      select * from old_rows
      union all
      select * from new_rows
    )
    select p.key, p.version, p.action, p.actor, p.client, p.at, p.bytes, p.txid::text as txid, p.id, horizon.xmin::text as horizon,
           exists (select from context_history b where b.namespace = ${namespace} and b.txid >= horizon.xmin) as held_back
    from horizon left join page p on true
    order by p.txid nulls first, p.id
    limit ${limit + 1}`
  const horizon = rows[0]?.horizon
  if (horizon === undefined) throw new Error('the change feed read returned no row')
  const heldBack = rows[0]?.held_back === true
  if (BigInt(after.txid) > BigInt(horizon)) throw new AppError('REQ_1101', CURSOR_FROM_ELSEWHERE)
  const found = rows.filter((row) => row.key !== null)
  const changes = found.slice(0, limit).map((row): FeedChange => ({
    key: row.key,
    version: row.version,
    action: row.action,
    actor: row.actor,
    client: row.client,
    at: row.at.toISOString(),
    bytes: row.bytes,
    position: { txid: row.txid ?? '0', id: row.id }
  }))
  const more = found.length > limit
  const last = changes.at(-1)
  if (more && last !== undefined) return { changes, position: last.position, more, heldBack }
  // Everything below the horizon that matches was served: the next read can start there.
  const horizonPosition: FeedPosition = { txid: horizon, id: 0 }
  return { changes, position: comparePositions(horizonPosition, after) > 0 ? horizonPosition : after, more, heldBack }
}

/** The position of "now": a reader starting here gets only changes that commit from now on. */
export async function feedHead (sql: postgres.Sql): Promise<FeedPosition> {
  const [row] = await sql<HorizonRow[]>`select pg_snapshot_xmin(pg_current_snapshot())::text as horizon`
  if (row === undefined) throw new Error('the horizon query returned no row')
  return { txid: row.horizon, id: 0 }
}
