import { Writable } from 'node:stream'
import postgres from 'postgres'
import { test, type Test } from 'tap'
import { BACKUP_FORMAT, createProgressBar, exportBackup, importBackup, ImportError, type ImportConflict, type ImportOptions } from '../db/backup.js'
import { createContextStore, createMaintenanceStore, type Actor } from '../db/context-store.js'
import { testDatabase } from './db-helper.js'

const BULK_KEYS = 9_990
const alice: Actor = { principal: 'user:alice', client: 'claude-code' }

/** Collects what is written into one string. */
class StringSink extends Writable {
  text = ''
  override _write (chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    this.text += chunk.toString('utf8')
    done()
  }
}

async function exportText (sql: postgres.Sql, namespace?: string, rowsPerFetch?: number): Promise<string> {
  const sink = new StringSink()
  await exportBackup(sql, sink, { serverVersion: 'test', ...(namespace !== undefined && { namespace }), ...(rowsPerFetch !== undefined && { rowsPerFetch }) })
  return sink.text
}

/**
 * What the export wrote before it read in index order (one query over both tables, sorted), as the
 * oracle for its output: every line after the header, byte for byte.
 */
async function referenceExport (sql: postgres.Sql, namespace?: string): Promise<string> {
  const iso = (column: string) => sql`case when ${sql(column)} in ('-infinity', 'infinity') then ${sql(column)}::text
    else to_char(${sql(column)} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') end`
  const inNamespace = namespace === undefined ? sql`true` : sql`namespace = ${namespace}`
  const rows = await sql`
    select 'entry' as kind, namespace, key, version, content, tags, ${iso('created_at')} as created_at, ${iso('updated_at')} as updated_at,
           updated_by, client, ${iso('expires_at')} as expires_at, null as action, null as actor, null as at, 0 as rank
    from context_entries where ${inNamespace}
    union all
    select 'version', namespace, key, version, content, tags, null, null, null, client, null, action, actor, ${iso('at')}, 1
    from context_history where ${inNamespace}
    order by namespace, key, rank, version`
  let text = ''
  let currentKey: string | undefined
  let entries = 0
  let versions = 0
  for (const row of rows) {
    const id = `${row.namespace}\u0000${row.key}`
    if (id !== currentKey) {
      currentKey = id
      entries++
      const current = row.kind !== 'entry'
        ? null
        : { version: row.version, content: row.content, tags: row.tags, created_at: row.created_at, updated_at: row.updated_at, updated_by: row.updated_by, client: row.client, expires_at: row.expires_at }
      text += `${JSON.stringify({ type: 'entry', namespace: row.namespace, key: row.key, current })}\n`
      if (row.kind === 'entry') continue
    }
    versions++
    text += `${JSON.stringify({ type: 'version', version: row.version, action: row.action, content: row.content, tags: row.tags, actor: row.actor, client: row.client, at: row.at })}\n`
  }
  return `${text}${JSON.stringify({ type: 'end', entries, versions })}\n`
}

const withoutHeader = (text: string) => text.slice(text.indexOf('\n') + 1)

/** null when equal, else the first differing line of each (a failure stays readable for megabytes of text). */
function firstDifference (actual: string, expected: string): string | null {
  if (actual === expected) return null
  const got = actual.split('\n')
  const want = expected.split('\n')
  const index = want.findIndex((line, at) => line !== got[at])
  const at = index === -1 ? want.length : index
  return `line ${at + 1}: expected ${want[at]?.slice(0, 300)} got ${got[at]?.slice(0, 300)}`
}

/** Input in small chunks, so lines straddle chunk boundaries as they do on a pipe. */
async function * chunked (text: string | Buffer, size = 64 * 1024): AsyncGenerator<Buffer> {
  const bytes = typeof text === 'string' ? Buffer.from(text, 'utf8') : text
  for (let offset = 0; offset < bytes.length; offset += size) yield bytes.subarray(offset, offset + size)
}

async function importText (sql: postgres.Sql, text: string | Buffer, options: ImportOptions = {}) {
  return await importBackup(sql, chunked(text), options)
}

/** Every row of both tables, history without its surrogate id, timestamps exact. */
async function dump (sql: postgres.Sql) {
  const entries = await sql`
    select namespace, key, content, version, tags, (created_at at time zone 'UTC')::text as created_at,
           (updated_at at time zone 'UTC')::text as updated_at, updated_by, client, (expires_at at time zone 'UTC')::text as expires_at
    from context_entries order by namespace, key`
  const history = await sql`
    select namespace, key, version, action, content, tags, actor, client, (at at time zone 'UTC')::text as at
    from context_history order by namespace, key, version`
  return { entries: [...entries], history: [...history] }
}

/** Row-by-row comparison: counts, and the first differing row if any. */
function compareRows (t: Test, name: string, actual: postgres.Row[], expected: postgres.Row[]): void {
  t.equal(actual.length, expected.length, `${name}: same number of rows`)
  let differing = 0
  let first: string | undefined
  for (let index = 0; index < expected.length; index++) {
    const want = JSON.stringify(expected[index])
    const got = JSON.stringify(actual[index])
    if (want !== got) {
      differing++
      first ??= `row ${index}: expected ${want.slice(0, 300)} got ${got.slice(0, 300)}`
    }
  }
  t.equal(differing, 0, `${name}: every row equal${first === undefined ? '' : ` (${first})`}`)
}

/**
 * 9,990 keys written in bulk (1-3 versions, tags, clients, TTLs, text that needs JSON escaping, three
 * namespaces) plus 10 keys that went through the store: deleted (a tombstone), deleted and
 * recreated, restored, appended, expired and swept (history only), expired not yet swept.
 */
async function seed (sql: postgres.Sql): Promise<void> {
  await sql`
    insert into context_history (namespace, key, version, action, content, tags, actor, client, at)
    select 'ns-' || (g % 3), 'bulk/' || lpad(g::text, 5, '0'), v,
           case when v = 1 then 'create' when v = 2 then 'update' else 'append' end,
           'entry ' || g || ' v' || v || E'\n"quoted" \\ back\tslash ünïcødé ✓ 🎉 ' || repeat('x', g % 40),
           case when g % 4 = 0 then array['tag-a', 'tag-' || (g % 7)] else '{}' end,
           'token:seed-' || (g % 5), case when g % 2 = 0 then 'claude-code' else null end,
           timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second' + v * interval '1 millisecond' + (g % 997) * interval '1 microsecond'
    from generate_series(1, ${BULK_KEYS}) g, generate_series(1, 1 + g % 3) v`
  await sql`
    insert into context_entries (namespace, key, content, version, tags, created_at, updated_at, updated_by, client, expires_at)
    select h.namespace, h.key, h.content, h.version, h.tags, f.at, h.at, h.actor, h.client,
           case when h.key like '%7' then timestamptz '2100-01-01 00:00:00.654321+00' end
    from context_history h
    join context_history f on f.namespace = h.namespace and f.key = h.key and f.version = 1
    where h.version = (select max(m.version) from context_history m where m.namespace = h.namespace and m.key = h.key)`

  const store = createContextStore(sql, { maxContentBytes: 100_000 })
  const ns = 'special ns/ü'
  await store.write(ns, 'deleted', 'soon gone', { tags: ['t'] }, alice)
  await store.write(ns, 'deleted', 'still soon gone', {}, alice)
  await store.delete(ns, 'deleted', undefined, alice)
  await store.write(ns, 'recreated', 'one', {}, alice)
  await store.delete(ns, 'recreated', undefined, alice)
  await store.write(ns, 'recreated', 'two', {}, alice)
  await store.write(ns, 'restored', 'first', {}, alice)
  await store.write(ns, 'restored', 'second', {}, alice)
  await store.restore(ns, 'restored', 1, alice)
  await store.append(ns, 'appended', 'line 1', '\n', alice)
  await store.append(ns, 'appended', 'line 2', '\n', alice)
  await store.write(ns, 'swept', 'temporary', { ttlSeconds: 60 }, alice)
  await store.write(ns, 'expired', 'temporary too', { ttlSeconds: 60 }, alice)
  await store.write(ns, 'with-ttl', 'lives on', { ttlSeconds: 3600, tags: ['ttl'] }, alice)
  await store.write(ns, 'empty', '', {}, alice)
  await store.write(ns, 'big', 'é'.repeat(40_000), {}, alice)
  await store.write('ns-0', 'special/colon:dot.dash-under_score', 'keys of every allowed character', {}, { principal: 'user:bob', client: null })
  await sql`update context_entries set expires_at = now() - interval '1 minute' where namespace = ${ns} and key in ('swept', 'expired')`
  await sql`delete from context_entries where namespace = ${ns} and key = 'swept'`
}

test('export → fresh database → import restores every row exactly; a second run changes nothing', async (t) => {
  const source = await testDatabase(t)
  await seed(source.sql)
  const [{ count: keyCount }] = await source.sql<[{ count: number }]>`select count(*) as count from (select distinct namespace, key from context_history) k`
  t.equal(keyCount, 10_000, 'the source holds 10,000 keys')

  let started = performance.now()
  const text = await exportText(source.sql)
  const exportMs = performance.now() - started
  const lines = text.trimEnd().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>)
  t.match(lines[0], { type: 'header', format: BACKUP_FORMAT, format_version: 1, server_version: 'test', namespace: null }, 'first line: the header')
  t.same(lines.at(-1), { type: 'end', entries: 10_000, versions: lines.filter((line) => line.type === 'version').length }, 'last line: the end line with the counts')
  t.equal(lines.filter((line) => line.type === 'entry').length, 10_000, 'one entry line per key')
  const swept = lines.find((line) => line.type === 'entry' && line.key === 'swept')
  t.same(swept?.current, null, 'a swept key is exported with its history only')
  const deleted = lines.find((line) => line.type === 'entry' && line.key === 'deleted')
  t.match(deleted?.current, { version: 3, content: '', expires_at: '-infinity' }, 'a deleted key is exported with its tombstone')

  t.equal(firstDifference(withoutHeader(text), await referenceExport(source.sql)), null, 'every line after the header as the sorting query wrote it, byte for byte')

  const target = await testDatabase(t)
  started = performance.now()
  const summary = await importText(target.sql, text)
  const importMs = performance.now() - started
  t.match(summary, { entries: 10_000, imported: 10_000, unchanged: 0, conflicts: 0 })
  t.comment(`10,000 keys, ${Buffer.byteLength(text)} bytes: export ${Math.round(exportMs)} ms, import ${Math.round(importMs)} ms`)

  const [want, got] = await Promise.all([dump(source.sql), dump(target.sql)])
  t.equal(want.entries.length, 9_999, 'the source has 9,999 entry rows (one key was swept)')
  compareRows(t, 'context_entries', got.entries, want.entries)
  compareRows(t, 'context_history', got.history, want.history)

  const store = createContextStore(target.sql, { maxContentBytes: 100_000 })
  t.equal(await store.read('special ns/ü', 'deleted'), null, 'the deleted key stays deleted')
  t.match(await store.write('special ns/ü', 'deleted', 'back', {}, alice), { status: 'created', version: 4 }, 'recreating it continues after the tombstone')
  t.match(await store.write('special ns/ü', 'swept', 'back', {}, alice), { status: 'created', version: 2 }, 'a swept key continues from its history')
  t.equal(await store.read('special ns/ü', 'expired'), null, 'an expired entry stays invisible')

  const again = await importText(source.sql, text)
  t.match(again, { entries: 10_000, imported: 0, importedVersions: 0, unchanged: 10_000, conflicts: 0 }, 'importing into the database it came from: every key unchanged')
  compareRows(t, 'context_history after the second run', (await dump(source.sql)).history, want.history)
})

test('an interrupted import, run again, completes without duplicates', async (t) => {
  const source = await testDatabase(t)
  await seed(source.sql)
  const text = await exportText(source.sql, 'ns-1')
  const bytes = Buffer.from(text, 'utf8')
  const target = await testDatabase(t)

  // The input stops in the middle of a line, as a copy cut short or a killed pipe leaves it.
  const error = await importText(target.sql, bytes.subarray(0, Math.floor(bytes.length * 0.6)), { batchEntries: 200 }).then(() => null, (thrown: unknown) => thrown)
  t.ok(error instanceof ImportError, 'the import fails')
  const { summary } = error as ImportError
  t.match((error as Error).message, /the input ends in the middle of this line: the backup is incomplete/)
  t.ok(summary.imported > 0 && summary.imported % 200 === 0, `whole batches were stored (${summary.imported})`)
  const stored = await target.sql<[{ count: number }]>`select count(*) as count from (select distinct namespace, key from context_history) k`
  t.equal(stored[0].count, summary.imported, 'nothing of the unfinished batch was stored')
  const orphans = await target.sql`select 1 from context_entries e where not exists (select 1 from context_history h where h.namespace = e.namespace and h.key = e.key)`
  t.equal(orphans.length, 0, 'no entry without its history')

  const resumed = await importText(target.sql, text, { batchEntries: 200 })
  t.equal(resumed.unchanged, summary.imported, 'the keys of the first run are recognised as unchanged')
  t.equal(resumed.imported + resumed.unchanged, resumed.entries, 'the rest is imported')
  t.equal(resumed.conflicts, 0)
  const [want, got] = await Promise.all([dump(source.sql), dump(target.sql)])
  compareRows(t, 'context_entries', got.entries, want.entries.filter((row) => row.namespace === 'ns-1'))
  compareRows(t, 'context_history', got.history, want.history.filter((row) => row.namespace === 'ns-1'))
})

test('malformed input: the error names the line, and nothing of its batch is stored', async (t) => {
  const source = await testDatabase(t)
  const store = createContextStore(source.sql, { maxContentBytes: 100_000 })
  for (let index = 0; index < 30; index++) await store.write('m', `k/${String(index).padStart(2, '0')}`, `value ${index}`, { tags: ['x'] }, alice)
  await store.write('m', 'k/00', 'second version', {}, alice)
  await store.delete('m', 'k/01', undefined, alice)
  const lines = (await exportText(source.sql)).trimEnd().split('\n')
  const target = await testDatabase(t)
  const keysIn = async () => (await target.sql<[{ count: number }]>`select count(*) as count from context_entries`)[0].count
  const lineOf = (key: string, type = 'entry') => lines.findIndex((line) => line.includes(`"type":"${type}"`) && (type !== 'entry' || line.includes(`"key":"${key}"`))) + 1

  // Batches of 10 keys: the bad line sits in the third batch (keys 20-29).
  const badLine = lineOf('k/24') + 1 // the version line of k/24
  const broken = lines.map((line, index) => index + 1 === badLine ? line.replace('"version":1', '"version":"one"') : line)
  const error = await importText(target.sql, broken.join('\n') + '\n', { batchEntries: 10 }).then(() => null, (thrown: unknown) => thrown)
  t.ok(error instanceof ImportError)
  t.match((error as Error).message, new RegExp(`^line ${badLine}: /version: `), 'the message names the line and the field')
  t.match((error as Error).message, new RegExp(`Nothing from lines ${lineOf('k/20')}–${badLine} was stored`), 'and says which lines were not stored')
  t.equal(await keysIn(), 20, 'the first two batches are stored, nothing of the third')
  t.same(await target.sql`select key from context_entries where key >= 'k/20'`, [], 'not even the keys before the bad line in its batch')

  const fixed = await importText(target.sql, lines.join('\n') + '\n', { batchEntries: 10 })
  t.match(fixed, { imported: 10, unchanged: 20, conflicts: 0 }, 'the corrected file completes the import')
  t.equal(await keysIn(), 30)

  // Each case is checked against a fresh namespace of the file, so nothing may be stored at all.
  const header = lines[0] as string
  const entryA = '{"type":"entry","namespace":"bad","key":"a","current":{"version":1,"content":"x","tags":[],"created_at":"2025-01-01T00:00:00.000000Z","updated_at":"2025-01-01T00:00:00.000000Z","updated_by":"u","client":null,"expires_at":null}}'
  const versionA = '{"type":"version","version":1,"action":"create","content":"x","tags":[],"actor":"u","client":null,"at":"2025-01-01T00:00:00.000000Z"}'
  const end = (entries: number, versions: number) => `{"type":"end","entries":${entries},"versions":${versions}}`
  const cases: Array<[string, Array<string | Buffer>, RegExp]> = [
    ['empty input', [], /^line 1: the input is empty/],
    ['no header', [versionA], /^line 1: expected the header line/],
    ['a newer format', [header.replace('"format_version":1', '"format_version":3'), end(0, 0)], /^line 1: format_version 3 was written by a newer server/],
    ['not JSON', [header, entryA, '{"type":"version",', end(1, 1)], /^line 3: not valid JSON/],
    ['an empty line', [header, entryA, '', versionA, end(1, 1)], /^line 3: the line is empty/],
    ['an unknown type', [header, '{"type":"comment"}', end(0, 0)], /^line 2: "type" must be/],
    ['a key with a space', [header, entryA.replace('"key":"a"', '"key":"a b"'), versionA, end(1, 1)], /^line 2: \/key: /],
    ['an unknown field', [header, entryA, versionA.replace('"actor"', '"extra":1,"actor"'), end(1, 1)], /^line 3: /],
    ['a day that does not exist', [header, entryA, versionA.replace('2025-01-01', '2025-02-30'), end(1, 1)], /^line 3: \/at: /],
    ['a NUL character', [header, entryA, versionA.replace('"content":"x"', '"content":"x\\u0000"'), end(1, 1)], /^line 3: \/content: /],
    ['a lone surrogate', [header, entryA, versionA.replace('"content":"x"', '"content":"x\\ud800"'), end(1, 1)], /^line 3: \/content: not valid Unicode/],
    ['bytes that are not UTF-8', [header, entryA, Buffer.from([0x7b, 0xff, 0x7d]), end(1, 1)], /^line 3: not valid UTF-8/],
    ['a version line without its entry', [header, versionA, end(0, 1)], /^line 2: a version line must follow its entry line/],
    ['an entry without versions', [header, entryA, end(1, 0)], /^line 2: the entry on line 2 \("a"\) has no version lines/],
    ['a version repeated', [header, entryA, versionA, versionA, end(1, 2)], /^line 4: version 1 follows version 1 of "a" \(entry on line 2\): a key's versions must be 1, 2, 3, … with none missing or repeated/],
    ['a version missing', [header, entryA.replace('"version":1', '"version":3'), versionA, versionA.replace('"version":1', '"version":3'), end(1, 2)], /^line 4: version 3 follows version 1 of "a"/],
    ['versions going back', [header, entryA, versionA, versionA.replace('"version":1', '"version":2'), versionA, end(1, 3)], /^line 5: version 1 follows version 2 of "a"/],
    ['versions not starting at 1', [header, entryA.replace('"version":1', '"version":2'), versionA.replace('"version":1', '"version":2'), end(1, 1)], /^line 3: the first version of "a" is 2 \(entry on line 2\)/],
    ['current version ahead of history', [header, entryA.replace('"version":1', '"version":2'), versionA, end(1, 1)], /^line 2: .* is at version 2, but its last version line is 1/],
    ['content on a delete', [header, entryA, versionA.replace('"action":"create"', '"action":"delete"'), end(1, 1)], /^line 3: a delete version has content null/],
    ['a tombstone without a delete', [header, entryA.replace('"expires_at":null', '"expires_at":"-infinity"'), versionA, end(1, 1)], /^line 2: .* is a delete tombstone/],
    ['a key twice in a batch', [header, entryA, versionA, entryA, versionA, end(2, 2)], /^line 4: key "a" in namespace "bad" appears again \(first on line 2\)/],
    ['counts that do not match', [header, entryA, versionA, end(2, 1)], /^line 4: the end line counts 2 entries/],
    ['more after the end', [header, entryA, versionA, end(1, 1), entryA], /^line 5: there is more after the end line/],
    ['no end line', [header, entryA, versionA], /^line 3: the input ends without the end line/]
  ]
  for (const [name, caseLines, message] of cases) {
    const input = Buffer.concat(caseLines.map((line) => Buffer.concat([typeof line === 'string' ? Buffer.from(line) : line, Buffer.from('\n')])))
    const caseError = await importText(target.sql, input).then(() => null, (thrown: unknown) => thrown)
    t.ok(caseError instanceof ImportError, `${name}: refused`)
    t.match((caseError as Error | null)?.message, message, `${name}: ${(caseError as Error | null)?.message.slice(0, 120)}`)
  }
  t.same(await target.sql`select key from context_entries where namespace = 'bad'`, [], 'none of them stored anything')
})

test('conflicts: a key the database has is never changed; the same state counts as unchanged, another is reported', async (t) => {
  const source = await testDatabase(t)
  const sourceStore = createContextStore(source.sql, { maxContentBytes: 100_000 })
  for (const key of ['same', 'differs', 'behind', 'deleted-here', 'new']) {
    await sourceStore.write('c', key, `${key} v1`, { tags: ['a'] }, alice)
    await sourceStore.write('c', key, `${key} v2`, {}, alice)
  }
  const text = await exportText(source.sql)

  const target = await testDatabase(t)
  const store = createContextStore(target.sql, { maxContentBytes: 100_000 })
  const bob: Actor = { principal: 'user:bob', client: null }
  await store.write('c', 'same', 'other v1', { tags: ['a'] }, bob)
  await store.write('c', 'same', 'same v2', {}, bob) // same version, content and tags: the same state
  await store.write('c', 'differs', 'mine v1', { tags: ['a'] }, bob)
  await store.write('c', 'differs', 'mine v2', {}, bob)
  for (const content of ['v1', 'v2', 'v3']) await store.write('c', 'behind', content, {}, bob)
  await store.write('c', 'deleted-here', 'deleted-here v1', { tags: ['a'] }, bob)
  await store.delete('c', 'deleted-here', undefined, bob)
  const before = await dump(target.sql)

  const conflicts: ImportConflict[] = []
  const summary = await importText(target.sql, text, { onConflict: (conflict) => conflicts.push(conflict) })
  t.match(summary, { entries: 5, imported: 1, unchanged: 1, conflicts: 3 })
  const lineOf = (key: string) => text.split('\n').findIndex((line) => line.includes('"type":"entry"') && line.includes(`"key":"${key}"`)) + 1
  t.same(conflicts.sort((a, b) => a.line - b.line), [
    { line: lineOf('behind'), namespace: 'c', key: 'behind', databaseVersion: 3, databasePresent: true, backupVersion: 2, backupPresent: true },
    { line: lineOf('deleted-here'), namespace: 'c', key: 'deleted-here', databaseVersion: 2, databasePresent: false, backupVersion: 2, backupPresent: true },
    { line: lineOf('differs'), namespace: 'c', key: 'differs', databaseVersion: 2, databasePresent: true, backupVersion: 2, backupPresent: true }
  ], 'each conflict names the line, the key and both states')

  const after = await dump(target.sql)
  compareRows(t, 'existing entries', after.entries.filter((row) => row.key !== 'new'), before.entries)
  compareRows(t, 'existing history', after.history.filter((row) => row.key !== 'new'), before.history)
  t.equal((await store.read('c', 'new'))?.content, 'new v2', 'the key the database did not have is imported')
})

test('a backup missing a version is refused at that line, nothing of its batch stored; the complete file then imports fully', async (t) => {
  const source = await testDatabase(t)
  const store = createContextStore(source.sql, { maxContentBytes: 100_000 })
  for (let index = 0; index < 30; index++) await store.write('g', `k/${String(index).padStart(2, '0')}`, `value ${index}`, {}, alice)
  await store.write('g', 'k/15', 'second', {}, alice)
  await store.write('g', 'k/15', 'third', {}, alice)
  const lines = (await exportText(source.sql)).trimEnd().split('\n')
  const entryIndex = lines.findIndex((line) => line.includes('"type":"entry"') && line.includes('"key":"k/15"'))
  t.match(JSON.parse(lines[entryIndex + 2] as string), { type: 'version', version: 2 }, 'the second version line of k/15')
  // Without version 2, and with the end line counting what is left: only the gap is wrong.
  const holed = lines.filter((_, index) => index !== entryIndex + 2)
  holed[holed.length - 1] = JSON.stringify({ type: 'end', entries: 30, versions: 31 })
  const target = await testDatabase(t)

  const error = await importText(target.sql, holed.join('\n') + '\n', { batchEntries: 10 }).then(() => null, (thrown: unknown) => thrown)
  t.ok(error instanceof ImportError, 'refused')
  const versionThreeLine = entryIndex + 3 // 1-based: now right after version 1
  const batchStart = lines.findIndex((line) => line.includes('"key":"k/10"')) + 1
  t.match((error as Error).message, new RegExp(`^line ${versionThreeLine}: version 3 follows version 1 of "k/15" \\(entry on line ${entryIndex + 1}\\)`), 'the message names the line')
  t.match((error as Error).message, new RegExp(`Nothing from lines ${batchStart}–${versionThreeLine} was stored`))
  t.same((await target.sql`select distinct key from context_history order by key`).map((row) => row.key),
    Array.from({ length: 10 }, (_, index) => `k/0${index}`), 'only the first batch is stored: nothing of k/10-k/19, nothing of k/15')

  const complete = await importText(target.sql, lines.join('\n') + '\n', { batchEntries: 10 })
  t.match(complete, { imported: 20, unchanged: 10, conflicts: 0 }, 'the complete file imports the rest')
  const [want, got] = await Promise.all([dump(source.sql), dump(target.sql)])
  compareRows(t, 'context_entries', got.entries, want.entries)
  compareRows(t, 'context_history', got.history, want.history)
  t.same((await target.sql`select version from context_history where key = 'k/15' order by version`).map((row) => row.version), [1, 2, 3], 'k/15 with all three versions')
})

test('a key with another history or another expiry is a conflict, not unchanged', async (t) => {
  const source = await testDatabase(t)
  const store = createContextStore(source.sql, { maxContentBytes: 100_000 })
  for (const content of ['one', 'two', 'three']) await store.write('h', 'holed', content, { tags: ['t'] }, alice)
  await store.write('h', 'ttl', 'lives an hour', { ttlSeconds: 3600 }, alice)
  await store.write('h', 'plain', 'as it was', {}, alice)
  const text = await exportText(source.sql)
  const target = await testDatabase(t)
  t.match(await importText(target.sql, text), { imported: 3 })

  // What an import without the numbering check could leave: versions 1 and 3, the entry at 3.
  await target.sql`delete from context_history where key = 'holed' and version = 2`
  await target.sql`update context_entries set expires_at = expires_at + interval '1 hour' where key = 'ttl'`
  const conflicts: ImportConflict[] = []
  const again = await importText(target.sql, text, { onConflict: (conflict) => conflicts.push(conflict) })
  t.match(again, { entries: 3, imported: 0, unchanged: 1, conflicts: 2 }, 'only the untouched key is unchanged')
  t.same(conflicts.map(({ key, databaseVersion, backupVersion }) => ({ key, databaseVersion, backupVersion })).sort((a, b) => a.key.localeCompare(b.key)), [
    { key: 'holed', databaseVersion: 3, backupVersion: 3 },
    { key: 'ttl', databaseVersion: 1, backupVersion: 1 }
  ], 'same latest version, content and tags, yet a conflict: two versions instead of three, another expires_at')
  t.same((await target.sql`select version from context_history where key = 'holed' order by version`).map((row) => row.version), [1, 3], 'and left as it is')
})

test('entry rows without history (never written by the server, possible by hand) are exported in their place, byte for byte as the sorting query did', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: 100_000 })
  for (const namespace of ['b', 'd']) {
    for (let index = 0; index < 12; index++) {
      const key = `k/${String(index).padStart(2, '0')}`
      await store.write(namespace, key, `${namespace} ${key}`, { tags: index % 3 === 0 ? ['x'] : [] }, alice)
      if (index % 4 === 1) await store.write(namespace, key, 'again', {}, alice)
      if (index === 5) await store.delete(namespace, key, undefined, alice)
    }
  }
  await store.write('d', 'swept', 'gone', { ttlSeconds: 60 }, alice)
  await sql`delete from context_entries where namespace = 'd' and key = 'swept'`
  const orphans: Array<[string, string]> = [
    ['a', 'first'], ['b', 'a'], ['b', 'k/03x'], ['b', 'k/03y'], ['b', 'k/11x'], ['b', 'z'], ['c', 'between'], ['d', 'k/00a'], ['d', 'zz'], ['e', 'last']
  ]
  for (const [namespace, key] of orphans) {
    await sql`
      insert into context_entries (namespace, key, content, version, tags, updated_by, client, expires_at)
      values (${namespace}, ${key}, ${`orphan ${key}`}, 3, '{o}', 'user:dba', null, ${key === 'z' ? '-infinity' : null}::text::timestamptz)`
  }
  const [{ count: keys }] = await sql<[{ count: number }]>`
    select count(*) as count from (select namespace, key from context_entries union select namespace, key from context_history) k`

  const whole = await exportText(sql)
  t.equal(whole.split('\n').filter((line) => line.includes('"type":"entry"')).length, keys, `one entry line for each of the ${keys} keys`)
  for (const key of ['first', 'k/03x', 'between', 'k/00a', 'last']) t.ok(whole.includes(`"key":"${key}","current":{"version":3,"content":"orphan ${key}"`), `${key} exported`)
  for (const rowsPerFetch of [1, 2, 3, 5, 200]) {
    for (const namespace of [undefined, 'b', 'c', 'none']) {
      t.equal(firstDifference(withoutHeader(await exportText(sql, namespace, rowsPerFetch)), await referenceExport(sql, namespace)), null,
        `${rowsPerFetch} rows per fetch, ${namespace === undefined ? 'every namespace' : `namespace ${namespace}`}`)
    }
  }
})

interface PlanNode { 'Node Type': string, 'Relation Name'?: string, 'Index Name'?: string, Plans?: PlanNode[] }

function planNodes (node: PlanNode): PlanNode[] {
  return [node, ...(node.Plans ?? []).flatMap(planNodes)]
}

test('the export reads in index order: no statement it runs has a Sort in its plan', async (t) => {
  const { sql, url } = await testDatabase(t)
  await sql`
    insert into context_history (namespace, key, version, action, content, tags, actor, client)
    select 'ns-' || (g % 3), 'k/' || lpad(g::text, 5, '0'), v, case when v = 1 then 'create' else 'update' end, 'v' || v, '{}', 'user:seed', null
    from generate_series(1, 3000) g, generate_series(1, 1 + g % 3) v`
  await sql`
    insert into context_entries (namespace, key, content, version, updated_by)
    select namespace, key, 'v' || max(version), max(version), 'user:seed' from context_history where key not like '%7' group by namespace, key`
  await sql`insert into context_entries (namespace, key, content, version, updated_by) values ('ns-1', 'k/01000x', 'no history', 1, 'user:dba')`

  // The statements exactly as the export sends them, parameters included.
  const statements: Array<{ query: string, parameters: unknown[] }> = []
  const spy = postgres(url, { max: 1, onnotice: () => {}, debug: (_connection, query, parameters) => { statements.push({ query, parameters }) } })
  t.teardown(() => spy.end({ timeout: 5 }))
  await exportBackup(spy, new StringSink(), { serverVersion: 'test' })
  await exportBackup(spy, new StringSink(), { serverVersion: 'test', namespace: 'ns-1' })
  const settings = statements.find((statement) => statement.query.includes('set_config'))
  const reads = statements.filter((statement) => statement.query.includes('context_history'))
  if (settings === undefined) throw new Error('the export changed no setting')
  t.ok(reads.length >= 2 * (6000 / 200), `${reads.length} statements read the tables`)

  let sorts = 0
  let first: string | undefined
  const pages = new Set<string>()
  for (const { query, parameters } of reads) {
    const plan = await sql.begin(async (tx) => {
      await tx.unsafe(settings.query, settings.parameters as never[])
      const [row] = await tx.unsafe(`explain (format json) ${query}`, parameters as never[])
      return (row?.['QUERY PLAN'] as Array<{ Plan: PlanNode }>)[0]?.Plan as PlanNode
    })
    const nodes = planNodes(plan)
    const sorting = nodes.filter((node) => node['Node Type'].includes('Sort'))
    if (sorting.length > 0) {
      sorts++
      first ??= `${sorting.map((node) => node['Node Type']).join(', ')} in ${query.slice(0, 200)}`
    }
    const historyScan = nodes.find((node) => node['Relation Name'] === 'context_history' && node['Node Type'] === 'Index Scan')
    if (query.includes('cross join lateral') && historyScan?.['Index Name'] === 'context_history_key_version') pages.add(query)
  }
  t.equal(sorts, 0, `no Sort node in any plan${first === undefined ? '' : ` (${first})`}`)
  t.equal(pages.size, 4, 'every form of the history page (first or later page, one namespace or all) walks context_history_key_version')
})

test('progress bar: only on a terminal, and only for large or unsized input', async (t) => {
  const terminal = Object.assign(new StringSink(), { isTTY: true })
  t.equal(createProgressBar(new StringSink(), 50 * 1024 * 1024), null, 'not on a pipe or file')
  t.equal(createProgressBar(terminal, 1000), null, 'not for a small file')
  const bar = createProgressBar(terminal, 10 * 1024 * 1024)
  bar?.update({ bytes: 5 * 1024 * 1024, lines: 10, entries: 4 })
  t.ok(terminal.text.includes(`\r\x1b[K[${'#'.repeat(15)}${'-'.repeat(15)}] 50% 4 entries, 5.0 MiB`), 'a bar with the percentage')
  bar?.clear()
  t.ok(terminal.text.endsWith('\r\x1b[K'), 'cleared before other output')
  const counter = createProgressBar(Object.assign(new StringSink(), { isTTY: true }), undefined)
  t.ok(counter, 'a pipe of unknown size gets a counter')
})

test('sweeping before an export: history-only keys round-trip and keep their numbering', async (t) => {
  const source = await testDatabase(t)
  const store = createContextStore(source.sql, { maxContentBytes: 100_000 })
  await store.write('s', 'k', 'one', { ttlSeconds: 60 }, alice)
  await store.write('s', 'k', 'two', { ttlSeconds: 60 }, alice)
  await source.sql`update context_entries set expires_at = now() - interval '1 second' where key = 'k'`
  t.equal(await createMaintenanceStore(source.sql).sweepExpired(100), 1)
  const target = await testDatabase(t)
  t.match(await importText(target.sql, await exportText(source.sql)), { imported: 1 })
  t.match(await createContextStore(target.sql, { maxContentBytes: 100_000 }).write('s', 'k', 'three', {}, alice), { status: 'created', version: 3 })
})
