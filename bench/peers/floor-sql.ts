// The SQL text the floor (b) runs: a copy of the statements db/context-store.ts sends for
// read_context (current version) and write_context (no expected_version, tags or ttl), with
// postgres.js's $n placeholders in the order it numbers them. The floor imports nothing of the
// project, so this is a copy; bench/sql-check.ts compares it with what the store really sends
// before every run, and the run stops if they differ.

/**
 * The pool settings of db/connect.ts's createSql that change the work per query, copied: named
 * prepared statements, the session settings (JIT off, generic plans) and one query in flight per
 * connection (max_pipeline). bench/sql-check.ts compares them with createSql's before every run.
 */
export const FLOOR_POOL = {
  prepare: true,
  idle_timeout: 60,
  max_pipeline: 1,
  connection: { jit: 'off', plan_cache_mode: 'force_generic_plan' }
}

export const READ_SQL = `
  select key, content, version, tags, created_at, updated_at, updated_by, client, expires_at
  from context_entries
  where namespace = $1 and key = $2 and (expires_at is null or expires_at > now())`

export function readParams (namespace: string, key: string): Array<string | null> {
  return [namespace, key]
}

export const WRITE_SQL = `
  with
  previous as materialized (
    select version, expires_at <= now() as expired, octet_length(content) as bytes
    from context_entries where namespace = $1 and key = $2
    for update
  ), changed as (
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
  ),
  outcome as (
    select c.*, c.inserted or coalesce(p.expired, false) as created
    from changed c left join previous p on true
  ), logged as (
    insert into context_history (namespace, key, version, action, content, tags, actor, client, at, txid)
    select namespace, key, version, case when created then 'create' else $12::text end, content, tags,
           $13, $14, updated_at, feed_txid
    from outcome
    returning namespace, key, version, action
  ), notified as (
    select pg_notify($15, json_build_object('namespace', namespace, 'key', key, 'version', version, 'action', action)::text) as sent
    from logged
  )
  select o.version, o.updated_at, o.created, exists (select 1 from previous) as had_previous, (select count(*) from notified) as notified
  from (select 1) as one left join outcome o on true`

export function writeParams (namespace: string, key: string, content: string, principal: string, client: string | null): Array<string | null> {
  return [namespace, key, namespace, key, content, namespace, key, null, principal, client, null, 'update', principal, client, 'context_changes']
}

/** Whitespace-insensitive form, for comparing statement texts. */
export function normalizeSql (text: string): string {
  return text.replace(/\s+/g, ' ').replace(/\( /g, '(').replace(/ \)/g, ')').trim()
}
