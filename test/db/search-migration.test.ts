import { cp, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type postgres from 'postgres'
import { test, type Test } from 'tap'
import { buildApp } from '../../app.js'
import { createSql } from '../../db/connect.js'
import { createContextStore, type Actor } from '../../db/context-store.js'
import { migrate } from '../../db/migrate.js'
import { loadConfig } from '../../schema/config.js'
import { ON_PGLITE, testDatabase, testDatabaseUrlForEmptyDb } from '../db-helper.js'
import { callTool, TEST_TOKEN, toolErrorOf } from '../helper.js'

const alice: Actor = { principal: 'user:alice', client: null }
const MIGRATIONS = fileURLToPath(new URL('../../db/migrations/', import.meta.url))

/**
 * The schema of the release before search: every migration before 005. Plus 006 (the change
 * feed's columns, independent of search), which this release's store writes to.
 */
async function migrateBeforeSearch (t: Test, sql: postgres.Sql): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'scm-before-search-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  for (const file of await readdir(MIGRATIONS)) {
    const version = Number(file.split('_')[0])
    if (version < 5 || version === 6) await cp(join(MIGRATIONS, file), join(dir, file))
  }
  await migrate(sql, { dir })
}

/** Live entries whose search row is missing, stale or wrong, and search rows of no live entry. */
async function searchRowProblems (sql: postgres.Sql): Promise<string[]> {
  const rows = await sql<Array<{ problem: string }>>`
    select 'missing or stale: ' || e.namespace || '/' || e.key as problem
    from context_entries e
    where e.expires_at is distinct from '-infinity' and not exists (
      select from context_search s
      where s.namespace = e.namespace and s.key = e.key and s.version = e.version and s.tags = e.tags
        and s.updated_at = e.updated_at and s.expires_at is not distinct from e.expires_at
        and s.search_vector = context_search_vector((select language from search_settings), e.key, e.tags, e.content))
    union all
    select 'no live entry: ' || s.namespace || '/' || s.key
    from context_search s
    where not exists (
      select from context_entries e
      where e.namespace = s.namespace and e.key = s.key and e.expires_at is distinct from '-infinity')
    order by 1`
  return rows.map((row) => row.problem)
}

test('the search migration indexes what the store held, and instances starting together apply it once', async (t) => {
  const { url, sql } = await testDatabaseUrlForEmptyDb(t)
  await migrateBeforeSearch(t, sql)
  const store = createContextStore(sql, { maxContentBytes: 10_000 })
  await store.write('team', 'notes/kubernetes', 'We upgrade kubernetes every quarter.', { tags: ['ops'] }, alice)
  await store.write('team', 'notes/gone', 'A kubernetes note that was deleted.', {}, alice)
  await store.delete('team', 'notes/gone', undefined, alice)
  await store.write('team', 'notes/expired', 'A kubernetes note past its time.', { ttlSeconds: 3600 }, alice)
  await sql`update context_entries set expires_at = now() - interval '1 second' where key = 'notes/expired'`
  await store.write('other', 'notes/kubernetes', 'Another team on kubernetes.', {}, alice)

  const instances = Array.from({ length: 3 }, () => createSql(url, { max: 1, connectTimeoutMs: 10_000 }))
  t.teardown(() => Promise.all(instances.map((instance) => instance.end({ timeout: 5 }))))
  const results = await Promise.all(instances.map((instance) => migrate(instance)))
  // 005 and 007, and the later migrations (009's tag index, …): each once.
  const pending = (await readdir(MIGRATIONS)).filter((file) => file.endsWith('.sql') && Number(file.split('_')[0]) >= 5 && Number(file.split('_')[0]) !== 6).sort()
  t.ok(pending.includes('005_search.sql') && pending.includes('007_search_statement_triggers.sql'))
  t.strictSame(results.flatMap((result) => result.applied).sort(), pending, 'applied by one instance only')
  t.strictSame(await searchRowProblems(sql), [], 'every live entry has its search row, the deleted one none')
  const gin = await sql<Array<{ name: string, options: string[] | null }>>`
    select relname as name, reloptions as options from pg_class where relname in ('context_search_vector_index', 'search_terms_trigrams') order by relname`
  t.strictSame(gin.map((index) => [index.name, index.options?.find((option) => option.startsWith('fastupdate='))]),
    [['context_search_vector_index', 'fastupdate=off'], ['search_terms_trigrams', 'fastupdate=on']],
    '011: no pending list in the vector index; 012: the vocabulary\'s trigram index has one again')

  const found = await store.search('team', { query: 'kubernets', limit: 10 })
  t.match(found, { status: 'ok', items: [{ key: 'notes/kubernetes', tags: ['ops'], snippet: 'We upgrade **kubernetes** every quarter.' }] }, 'an entry written before the migration is found, misspelt')
  t.equal(found.status === 'ok' && found.items.length, 1, 'not the deleted, expired or other namespace\'s entry')

  await store.write('team', 'notes/kubernetes', 'We upgrade the cluster every month now.', {}, alice)
  t.match(await store.search('team', { query: 'month', limit: 10 }), { status: 'ok', items: [{ key: 'notes/kubernetes', version: 2 }] }, 'the trigger keeps it current')
  t.match(await store.search('team', { query: 'quarter', limit: 10 }), { status: 'ok', items: [] })
  t.strictSame(await searchRowProblems(sql), [])
})

// PGlite runs one statement at a time and lets a transaction's connection alone through, so writes
// cannot interleave with the migration there; its socket server also mixes up the unnamed portals
// of connections whose messages interleave around a transaction's end.
test('writes while the search migration runs are caught up', { skip: ON_PGLITE ? 'PGlite has one backend: nothing runs alongside a migration' : false }, async (t) => {
  const { sql } = await testDatabaseUrlForEmptyDb(t)
  await migrateBeforeSearch(t, sql)
  const store = createContextStore(sql, { maxContentBytes: 10_000 })
  for (let i = 0; i < 2000; i += 100) {
    await Promise.all(Array.from({ length: 100 }, (_, j) => store.write('busy', `k/${i + j}`, `entry ${i + j} about ordinary things`, {}, alice)))
  }
  const writes = { running: true, done: 0 }
  const writer = (async () => {
    while (writes.running) {
      const n = writes.done++
      await store.write('busy', `k/${(n * 37) % 2000}`, `entry rewritten while migrating, round ${n}`, {}, alice)
      if (n % 7 === 0) await store.delete('busy', `k/${(n * 11) % 2000}`, undefined, alice)
      if (n % 5 === 0) await store.write('busy', `new/${n}`, `a new entry, round ${n}`, {}, alice)
    }
  })()
  try {
    // The writer goes first and keeps going, so that writes land before, during and after the migration.
    while (writes.done < 5) await new Promise((resolve) => setImmediate(resolve))
    await migrate(sql)
    const doneAtEnd = writes.done
    while (writes.done < doneAtEnd + 5) await new Promise((resolve) => setImmediate(resolve))
  } finally {
    writes.running = false
    await writer
  }
  t.ok(writes.done > 10, `${writes.done} rounds of writes ran alongside`)
  t.strictSame(await searchRowProblems(sql), [], 'every entry\'s search row matches its current version, no deleted entry has one')
  const rewritten = await store.search('busy', { query: 'rewritten migrating', limit: 50 })
  t.ok(rewritten.status === 'ok' && rewritten.items.length > 0, 'entries rewritten meanwhile are found by their new words')
})

/** Words of live entries' vectors (as the vocabulary keeps them) that the vocabulary lacks. */
async function vocabularyGaps (sql: postgres.Sql): Promise<string[]> {
  const rows = await sql<Array<{ gap: string }>>`
    select distinct s.namespace || ': ' || t.term as gap
    from context_search s cross join lateral unnest(tsvector_to_array(s.search_vector)) as t(term)
    where char_length(t.term) between 3 and 64 and t.term ~ '[[:alpha:]]'
      and not exists (select from search_terms v where v.namespace = s.namespace and v.term = t.term)
    order by 1`
  return rows.map((row) => row.gap)
}

test('search rows and the vocabulary follow statements that change many entries at once', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: 10_000 })
  await sql`
    insert into context_entries (namespace, key, content, version, tags, updated_by)
    select 'bulk-' || (g % 2), 'k/' || g, 'imported note ' || g || ' about word' || g, 1, array['t' || (g % 3)], 'import'
    from generate_series(1, 300) g`
  t.strictSame(await searchRowProblems(sql), [], 'a 300-row insert: every entry indexed')
  t.strictSame(await vocabularyGaps(sql), [], 'and every word in the vocabulary')
  t.match(await store.search('bulk-1', { query: 'word17', limit: 5 }), { status: 'ok', items: [{ key: 'k/17' }] })

  await sql`
    update context_entries set version = version + 1, updated_at = now(),
      content = case when (substring(key from 3))::int % 4 = 0 then 'rewritten as zebra' || key else content end,
      expires_at = case when (substring(key from 3))::int % 10 = 1 then '-infinity'::timestamptz end`
  t.strictSame(await searchRowProblems(sql), [], 'one update of every row: content changed, unchanged, tombstoned')
  t.strictSame(await vocabularyGaps(sql), [])
  t.match(await store.search('bulk-0', { query: 'zebrak/8', limit: 5 }), { status: 'ok', items: [{ key: 'k/8', version: 2 }] }, 'a rewritten entry is found by its new words')
  t.match(await store.search('bulk-0', { query: 'word8', limit: 5 }), { status: 'ok', items: [] }, 'and no longer by its old ones')
  t.match(await store.search('bulk-1', { query: 'word11', limit: 5 }), { status: 'ok', items: [] }, 'a tombstone leaves the search')
  t.match(await store.search('bulk-1', { query: 'word13', limit: 5 }), { status: 'ok', items: [{ key: 'k/13', version: 2 }] }, 'an entry whose text stayed is found at its new version')

  await sql`
    insert into context_entries (namespace, key, content, version, tags, updated_by)
    select 'bulk-1', 'k/' || g, 'upserted giraffe ' || g, 1, '{}', 'import' from generate_series(295, 305) g
    on conflict (namespace, key) do update set content = excluded.content, version = context_entries.version + 1, expires_at = null`
  await sql`delete from context_entries where namespace = 'bulk-0' and (substring(key from 3))::int < 100`
  t.strictSame(await searchRowProblems(sql), [], 'an upsert that inserts some rows and updates others; a delete of many')
  t.strictSame(await vocabularyGaps(sql), [])
  const giraffes = await store.search('bulk-1', { query: 'giraffe', limit: 50 })
  t.equal(giraffes.status === 'ok' && giraffes.items.length, 11, 'every upserted entry is found: the odd keys updated, the even ones new in that namespace')
  t.match(await store.search('bulk-0', { query: 'word50', limit: 5 }), { status: 'ok', items: [] }, 'deleted rows are gone from the search')
})

test('SEARCH_LANGUAGE: a change re-indexes at the next start; an unknown one stops it', async (t) => {
  const { url } = await testDatabaseUrlForEmptyDb(t)
  const start = async (language?: string) => {
    const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent', ...(language !== undefined && { SEARCH_LANGUAGE: language }) }))
    await app.ready()
    return app
  }
  const keys = async (app: Awaited<ReturnType<typeof start>>, query: string) => {
    const result = await callTool(app, 'search_context', { query })
    return toolErrorOf(result)?.code ?? (result.structuredContent.items as Array<{ key: string }>).map((item) => item.key)
  }

  const simple = await start()
  await callTool(simple, 'write_context', { key: 'notes/runners', content: 'The runners were running the migrations.' })
  t.strictSame(await keys(simple, 'run'), [], 'simple: words as written')
  t.strictSame(await keys(simple, 'the'), ['notes/runners'], 'simple: no stop words')
  await simple.close()

  const english = await start('english')
  t.strictSame(await keys(english, 'run'), ['notes/runners'], 'english: "run" finds "running", an entry written before the change')
  t.strictSame(await keys(english, 'migration'), ['notes/runners'])
  t.equal(await keys(english, 'the'), 'REQ_1101', 'english: a stop word alone is nothing to search for')
  await callTool(english, 'write_context', { key: 'notes/jumping', content: 'Jumping jacks.' })
  t.strictSame(await keys(english, 'jumped'), ['notes/jumping'], 'a new entry is indexed in the new language')
  t.strictSame(await keys(english, 'jummping'), ['notes/jumping'], 'the vocabulary is the new language\'s')
  await english.close()

  const again = await start('simple')
  t.strictSame(await keys(again, 'run'), [], 'back to simple')
  t.strictSame(await keys(again, 'jumping'), ['notes/jumping'])
  await again.close()

  const error = await start('klingon').then(() => null, (err: unknown) => err)
  t.match(error, { name: 'SearchLanguageError', message: /SEARCH_LANGUAGE "klingon" is not a text search configuration of this database; it has .*english.*simple/ })
  t.throws(() => loadConfig({ SEARCH_LANGUAGE: 'English; drop' }), { name: 'ConfigError', message: /SEARCH_LANGUAGE/ })
})
