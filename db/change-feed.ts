import type postgres from 'postgres'
import type { HistoryAction } from './context-store.js'

// STAND-IN written by the live-notifications branch (wt-notify) against the signature the
// resources branch (wt-resources) builds; that branch's module replaces this one at merge. Here
// the order is the history id alone, which is not commit order under concurrent writers (the
// real feed orders by the writing transaction's id, migration 006).

/** A place in a namespace's change feed; opaque outside db/. */
export interface FeedPosition { id: number }

export interface FeedChange {
  key: string
  version: number
  action: HistoryAction
  actor: string
  at: string
}

export interface FeedOptions {
  namespace: string
  /** null: from the beginning of the history. */
  after: FeedPosition | null
  prefix?: string
  tag?: string
  limit: number
}

export interface FeedPage {
  changes: FeedChange[]
  /** Where this page ended: pass it back as `after` (unchanged when there was nothing new). */
  position: FeedPosition | null
}

interface FeedRow { id: number, key: string, version: number, action: HistoryAction, actor: string, at: Date }

export async function changesSince (sql: postgres.Sql, options: FeedOptions): Promise<FeedPage> {
  const { namespace, after, prefix, tag, limit } = options
  const afterFilter = after === null ? sql`` : sql`and id > ${after.id}`
  const prefixFilter = prefix === undefined || prefix === '' ? sql`` : sql`and starts_with(key, ${prefix})`
  const tagFilter = tag === undefined ? sql`` : sql`and tags @> array[${tag}::text]`
  const rows = await sql<FeedRow[]>`
    select id, key, version, action, actor, at from context_history
    where namespace = ${namespace} ${afterFilter} ${prefixFilter} ${tagFilter}
    order by id
    limit ${limit}`
  const last = rows.at(-1)
  return {
    changes: rows.map((row) => ({ key: row.key, version: row.version, action: row.action, actor: row.actor, at: row.at.toISOString() })),
    position: last === undefined ? after : { id: last.id }
  }
}

/**
 * STAND-IN, not in the resources branch's signature: the position after everything committed in
 * the namespace so far (null for an empty history), where a new live subscription starts.
 */
export async function feedHead (sql: postgres.Sql, namespace: string): Promise<FeedPosition | null> {
  const [row] = await sql<Array<{ id: number | null }>>`select max(id) as id from context_history where namespace = ${namespace}`
  return row?.id == null ? null : { id: row.id }
}
