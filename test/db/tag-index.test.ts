import { cp, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type postgres from 'postgres'
import { test, type Test } from 'tap'
import { createContextStore, createMaintenanceStore, type Actor } from '../../db/context-store.js'
import { migrate } from '../../db/migrate.js'
import { ON_PGLITE, testDatabase, testDatabaseUrlForEmptyDb } from '../db-helper.js'

// context_tags (migration 009), through which list_context finds a tag's entries: one row per tag
// of each live entry, whatever changed the entry, and filled from what the store held before.

const alice: Actor = { principal: 'user:alice', client: null }
const MIGRATIONS = fileURLToPath(new URL('../../db/migrations/', import.meta.url))
const TAG_INDEX_MIGRATION = 9

/** Tags of live entries missing from context_tags, and rows of context_tags no live entry has. */
async function tagRowProblems (sql: postgres.Sql): Promise<string[]> {
  const rows = await sql<Array<{ problem: string }>>`
    select 'missing: ' || e.namespace || '/' || e.key || ' ' || t.tag as problem
    from context_entries e cross join unnest(e.tags) as t(tag)
    where e.expires_at is distinct from '-infinity'
      and not exists (select from context_tags c where c.namespace = e.namespace and c.key = e.key and c.tag = t.tag)
    union all
    select 'no such live entry tag: ' || c.namespace || '/' || c.key || ' ' || c.tag
    from context_tags c
    where not exists (
      select from context_entries e
      where e.namespace = c.namespace and e.key = c.key and e.expires_at is distinct from '-infinity' and c.tag = any (e.tags))
    order by 1`
  return rows.map((row) => row.problem)
}

async function migrateBefore (t: Test, sql: postgres.Sql, version: number): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'scm-before-tags-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  for (const file of await readdir(MIGRATIONS)) {
    if (Number(file.split('_')[0]) < version) await cp(join(MIGRATIONS, file), join(dir, file))
  }
  await migrate(sql, { dir })
}

const keysOf = (page: { items: Array<{ key: string }> }) => page.items.map((item) => item.key)

test('the tag rows follow every way an entry changes', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: 10_000 })
  await store.write('team', 'a', 'first', { tags: ['red', 'blue'] }, alice)
  await store.write('team', 'b', 'second', { tags: ['blue'] }, alice)
  await store.write('other', 'a', 'elsewhere', { tags: ['blue'] }, alice)
  t.strictSame(await tagRowProblems(sql), [], 'writes of new keys')
  t.strictSame(keysOf(await store.list('team', { tag: 'blue', limit: 10 })), ['a', 'b'], 'only the namespace\'s own entries')

  await store.write('team', 'a', 'first, again', {}, alice)
  t.strictSame(keysOf(await store.list('team', { tag: 'red', limit: 10 })), ['a'], 'a write without tags keeps them')
  await store.write('team', 'a', 'first, retagged', { tags: ['green', 'blue'] }, alice)
  t.strictSame(keysOf(await store.list('team', { tag: 'red', limit: 10 })), [], 'a lost tag')
  t.strictSame(keysOf(await store.list('team', { tag: 'green', limit: 10 })), ['a'], 'a gained tag')
  t.strictSame(await tagRowProblems(sql), [])

  await store.append('team', 'b', ' and more', '\n', alice)
  await store.delete('team', 'b', undefined, alice)
  t.strictSame(keysOf(await store.list('team', { tag: 'blue', limit: 10 })), ['a'], 'a deleted entry leaves its tags')
  t.strictSame(await tagRowProblems(sql), [], 'an append, a delete (tombstone)')
  const restored = await store.restore('team', 'b', 1, alice)
  t.match(restored, { status: 'restored' })
  t.strictSame(keysOf(await store.list('team', { tag: 'blue', limit: 10 })), ['a', 'b'], 'a restored entry has its tags again')

  await store.write('team', 'c', 'short-lived', { tags: ['blue'], ttlSeconds: 3600 }, alice)
  await sql`update context_entries set expires_at = now() - interval '1 second' where namespace = 'team' and key = 'c'`
  t.strictSame(keysOf(await store.list('team', { tag: 'blue', limit: 10 })), ['a', 'b'], 'an expired entry is not listed before it is swept')
  await createMaintenanceStore(sql).sweepExpired(100)
  t.strictSame(await tagRowProblems(sql), [], 'the sweep')

  await sql`
    insert into context_entries (namespace, key, content, version, tags, updated_by)
    select 'bulk', 'k/' || lpad(g::text, 3, '0'), 'note ' || g, 1, array['t' || (g % 3), 'all'], 'import'
    from generate_series(1, 300) g`
  t.strictSame(await tagRowProblems(sql), [], 'a 300-row insert')
  await sql`
    update context_entries set version = version + 1,
      tags = case when (substring(key from 3))::int % 4 = 0 then array['four'] else tags end,
      expires_at = case when (substring(key from 3))::int % 10 = 1 then '-infinity'::timestamptz end
    where namespace = 'bulk'`
  t.strictSame(await tagRowProblems(sql), [], 'one update of every row: tags changed, unchanged, tombstoned')
  await sql`
    insert into context_entries (namespace, key, content, version, tags, updated_by)
    select 'bulk', 'k/' || lpad(g::text, 3, '0'), 'upserted ' || g, 1, array['upserted'], 'import' from generate_series(295, 305) g
    on conflict (namespace, key) do update set tags = excluded.tags, version = context_entries.version + 1, expires_at = null`
  await sql`delete from context_entries where namespace = 'bulk' and (substring(key from 3))::int < 100`
  t.strictSame(await tagRowProblems(sql), [], 'an upsert that inserts some rows and updates others; a delete of many')

  // Live after all that: k/100-k/294 (k/295-k/305 were upserted with other tags), less the
  // tombstones (n % 10 = 1); those with n % 4 = 0 carry only "four".
  const live = Array.from({ length: 195 }, (_, i) => 100 + i).filter((n) => n % 10 !== 1)
  const withTag = (tag: string) => live.filter((n) => n % 4 === 0 ? tag === 'four' : tag === 'all' || tag === `t${n % 3}`).map((n) => `k/${n}`)
  const page = await store.list('bulk', { tag: 't1', limit: 5 })
  t.strictSame(keysOf(page), withTag('t1').slice(0, 5), 'in key order')
  const next = await store.list('bulk', { tag: 't1', limit: 5, afterKey: page.nextAfterKey ?? '' })
  t.strictSame(keysOf(next), withTag('t1').slice(5, 10), 'the next page after the cursor')
  t.strictSame(keysOf(await store.list('bulk', { tag: 'all', prefix: 'k/29', limit: 20 })), withTag('all').filter((key) => key.startsWith('k/29')), 'with a prefix')
  t.strictSame(keysOf(await store.list('bulk', { tag: 'upserted', limit: 20 })), Array.from({ length: 11 }, (_, i) => `k/${295 + i}`), 'the upserted ones')
})

test('the tag migration fills context_tags from what the store held', async (t) => {
  const { sql } = await testDatabaseUrlForEmptyDb(t)
  await migrateBefore(t, sql, TAG_INDEX_MIGRATION)
  const store = createContextStore(sql, { maxContentBytes: 10_000 })
  await store.write('team', 'x', 'tagged', { tags: ['ops', 'db'] }, alice)
  await store.write('team', 'gone', 'deleted', { tags: ['ops'] }, alice)
  await store.delete('team', 'gone', undefined, alice)
  await store.write('team', 'plain', 'no tags', {}, alice)
  const result = await migrate(sql)
  t.strictSame(result.applied.filter((file) => Number(file.split('_')[0]) <= TAG_INDEX_MIGRATION), ['009_tag_index.sql'], '009 and the later ones applied')
  t.strictSame(await tagRowProblems(sql), [])
  t.strictSame(keysOf(await store.list('team', { tag: 'ops', limit: 10 })), ['x'])
  await store.write('team', 'x', 'retagged', { tags: ['db'] }, alice)
  t.strictSame(keysOf(await store.list('team', { tag: 'ops', limit: 10 })), [], 'the triggers keep it current')
})

// PGlite runs one statement at a time: nothing can write alongside a migration there.
test('writes while the tag migration runs are caught up', { skip: ON_PGLITE ? 'PGlite has one backend: nothing runs alongside a migration' : false }, async (t) => {
  const { sql } = await testDatabaseUrlForEmptyDb(t)
  await migrateBefore(t, sql, TAG_INDEX_MIGRATION)
  const store = createContextStore(sql, { maxContentBytes: 10_000 })
  for (let i = 0; i < 2000; i += 100) {
    await Promise.all(Array.from({ length: 100 }, (_, j) => store.write('busy', `k/${i + j}`, `entry ${i + j}`, { tags: [`t${(i + j) % 5}`] }, alice)))
  }
  const writes = { running: true, done: 0 }
  const writer = (async () => {
    while (writes.running) {
      const n = writes.done++
      await store.write('busy', `k/${(n * 37) % 2000}`, `retagged, round ${n}`, { tags: [`r${n % 3}`, 'retagged'] }, alice)
      if (n % 7 === 0) await store.delete('busy', `k/${(n * 11) % 2000}`, undefined, alice)
      if (n % 5 === 0) await store.write('busy', `new/${n}`, `a new entry, round ${n}`, { tags: ['new'] }, alice)
    }
  })()
  try {
    while (writes.done < 5) await new Promise((resolve) => setImmediate(resolve))
    await migrate(sql)
    const doneAtEnd = writes.done
    while (writes.done < doneAtEnd + 5) await new Promise((resolve) => setImmediate(resolve))
  } finally {
    writes.running = false
    await writer
  }
  t.ok(writes.done > 10, `${writes.done} rounds of writes ran alongside`)
  t.strictSame(await tagRowProblems(sql), [], 'every live entry\'s tags, and no others')
})
