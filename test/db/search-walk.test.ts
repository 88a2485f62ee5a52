import type postgres from 'postgres'
import { test } from 'tap'
import { createContextStore, createMaintenanceStore, MAX_RANKED, type ImportedKey, type SearchPage, type SearchPosition } from '../../db/context-store.js'
import { testDatabase } from '../db-helper.js'

// A broad query's candidates come from walking the namespace newest first (migration 010's
// index) when the newest entries match densely enough, and from the vector index otherwise; the
// walk gives up after a bounded number of rows and the index's matches are visited after all.
// Whichever way, the result is the same: the best of the MAX_RANKED most recent matches.

const NS = 'walk'
const ENTRIES = 2000

/** Entry i, written i seconds after the start: a larger i is newer. Three in four are tagged "most". */
function entry (i: number, content: string): ImportedKey {
  const at = new Date(Date.UTC(2026, 0, 1) + i * 1000).toISOString()
  const tags = tagsOf(i)
  return {
    namespace: NS,
    key: keyOf(i),
    current: { version: 1, content, tags, created_at: at, updated_at: at, updated_by: 'importer', client: null, expires_at: null },
    history: [{ version: 1, action: 'create', content, tags, actor: 'importer', client: null, at }]
  }
}

const keyOf = (i: number): string => `walk/${String(i).padStart(4, '0')}`
const tagsOf = (i: number): string[] => i % 4 === 0 ? [] : ['most']

function content (i: number): string {
  const words = ['filler text']
  // wombat: the 700 newest, and the 5 oldest say it four times (they would rank first if ranked).
  if (i >= ENTRIES - 700) words.push('a wombat')
  if (i < 5) words.push('wombat wombat wombat wombat')
  // ocelot: the 128 newest and every 20th older one, 222 in all: dense at first, sparse after.
  if (i >= ENTRIES - 128 || i % 20 === 0) words.push('an ocelot')
  return words.join(' ')
}

/** Every page of a search: the keys found, whether it was partial, and whether its first page walked. */
async function allPages (store: ReturnType<typeof createContextStore>, query: string, filters: { prefix?: string, tag?: string, updatedAfter?: Date } = {}): Promise<{ keys: string[], partial: boolean, walked: boolean }> {
  const keys: string[] = []
  let partial = false
  let walked: boolean | undefined
  let after: SearchPosition | undefined
  for (let pages = 0; pages < 100; pages++) {
    const page: SearchPage = await store.search(NS, { query, limit: 50, ...filters, ...(after !== undefined && { after }) })
    if (page.status !== 'ok') throw new Error(`search ${query}: ${page.status}`)
    keys.push(...page.items.map((item) => item.key))
    partial ||= page.partial
    walked ??= page.walked
    if (page.next === null) break
    after = page.next
  }
  return { keys, partial, walked: walked ?? false }
}

/** The keys of the entries i satisfying `which`, newest first, at most `count` of them, sorted. */
function newestWhere (which: (i: number) => boolean, count: number, except: Set<number> = new Set()): string[] {
  const found: string[] = []
  for (let i = ENTRIES - 1; i >= 0 && found.length < count; i--) if (which(i) && !except.has(i)) found.push(keyOf(i))
  return found.sort()
}

test('broad and dense-then-sparse queries rank the most recent matches, walked or not', async (t) => {
  const { sql } = await testDatabase(t)
  const maintenance = createMaintenanceStore(sql as postgres.Sql)
  const all = Array.from({ length: ENTRIES }, (_, i) => entry(i, content(i)))
  for (let start = 0; start < all.length; start += 500) await maintenance.importBatch(all.slice(start, start + 500))
  await sql`analyze context_search` // the walk is judged against the table's row count
  const store = createContextStore(sql as postgres.Sql, { maxContentBytes: 10_000 })

  const hasWombat = (i: number): boolean => content(i).includes('wombat')
  const wombat = await allPages(store, 'wombat')
  t.equal(wombat.walked, true, 'the newest entries all match: walked')
  t.equal(wombat.partial, true, 'more than MAX_RANKED match')
  t.equal(wombat.keys.length, MAX_RANKED, 'MAX_RANKED ranked')
  const newest = all.slice(ENTRIES - MAX_RANKED).map((e) => e.key)
  t.strictSame([...wombat.keys].sort(), newest, 'exactly the most recent matches')
  t.equal(new Set(wombat.keys).size, wombat.keys.length, 'each once')

  const ocelot = await allPages(store, 'ocelot')
  const expected = all.filter((_, i) => i >= ENTRIES - 128 || i % 20 === 0).map((e) => e.key)
  t.equal(expected.length, 222)
  t.equal(ocelot.walked, false, 'dense among the newest, sparse after: the walk gave up')
  t.equal(ocelot.partial, false, 'all of them ranked')
  t.strictSame([...ocelot.keys].sort(), expected, 'the walk gave up and every match was found')

  // Filters apply on the walk as on the vector index: a tag three in four carry (walked), a
  // prefix only the 100 newest have (the walk runs out of them, the index finds them all).
  const tagged = await allPages(store, 'wombat', { tag: 'most' })
  t.equal(tagged.walked, true, 'a tag most of the newest carry: walked')
  t.strictSame([...tagged.keys].sort(), newestWhere((i) => hasWombat(i) && tagsOf(i).includes('most'), MAX_RANKED), 'the most recent tagged matches, and only tagged ones')
  const prefixed = await allPages(store, 'wombat', { prefix: 'walk/19' })
  t.equal(prefixed.walked, false, 'fewer than MAX_RANKED under the prefix: not walked to the end')
  t.equal(prefixed.partial, false)
  t.strictSame([...prefixed.keys].sort(), newestWhere((i) => i >= 1900, 100), 'every match under the prefix, none outside it')

  // updated_after on the walk: entries written after entry 1500 (their times are i seconds from the start).
  const after1500 = new Date(Date.UTC(2026, 0, 1) + 1500 * 1000)
  const recent = await allPages(store, 'wombat', { updatedAfter: after1500 })
  t.equal(recent.walked, true, 'updated_after keeps the newest: walked')
  t.strictSame([...recent.keys].sort(), newestWhere((i) => hasWombat(i) && i > 1500, MAX_RANKED), 'the most recent matches written after the time')
  const older = await allPages(store, 'ocelot', { updatedAfter: after1500 })
  t.strictSame([...older.keys].sort(), newestWhere((i) => (i >= ENTRIES - 128 || i % 20 === 0) && i > 1500, ENTRIES), 'and every one of a sparse word')

  const narrowed = await allPages(store, 'wombat ocelot')
  t.strictSame([...narrowed.keys].sort(), all.filter((_, i) => content(i).includes('wombat') && content(i).includes('ocelot')).map((e) => e.key), 'both words')

  // An expired entry is no candidate on either path: the walk skips it and takes the next.
  const expired = [ENTRIES - 1, ENTRIES - 2, ENTRIES - 50]
  await sql`update context_entries set expires_at = now() - interval '1 minute' where namespace = ${NS} and key = any(${expired.map(keyOf)})`
  const unexpired = await allPages(store, 'wombat')
  t.equal(unexpired.walked, true)
  t.strictSame([...unexpired.keys].sort(), newestWhere(hasWombat, MAX_RANKED, new Set(expired)), 'the most recent unexpired matches')
  const unexpiredTagged = await allPages(store, 'wombat', { tag: 'most' })
  t.equal(unexpiredTagged.walked, true)
  t.strictSame([...unexpiredTagged.keys].sort(), newestWhere((i) => hasWombat(i) && tagsOf(i).includes('most'), MAX_RANKED, new Set(expired)), 'with a filter too')
})
