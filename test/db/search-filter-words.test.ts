import postgres from 'postgres'
import { test } from 'tap'
import { createContextStore, createMaintenanceStore, filterWordsOf, type ImportedKey, type SearchOptions } from '../../db/context-store.js'
import { testDatabase } from '../db-helper.js'

// A prefix or tag filter also narrows the words the vector index is asked for (filterWordsOf):
// words every admitted entry has in its vector. Were one of them missing from an entry the filter
// admits, that entry would silently drop out of the results. So: for every cut of every key (and
// prefixes no key has) and every tag, a broad word's results under the filter are exactly the
// entries the filter admits: in the default configuration and in one that stems and drops stop
// words, for every query form (a phrase, a typo, -word, or) and page by page; and in every
// configuration the database has, and one with a thesaurus (which narrows nothing). The namespace
// has fewer entries than the search's probe reads, so the candidates always come from the
// vector index, where the narrowing is.

const NS = 'filters'

const KEYS_AND_TAGS: Array<[string, string[]]> = [
  ['fjord/decisions/database', ['ops']],
  ['fjord/decisions/database-choice.md', ['team-a:ops', 'db']],
  ['Fjord/UPPER/Case_Mixed', ['Upper-Case']],
  ['a1/b-2/c_3.d:4/e', ['v1.2', 'x_y']],
  ['2024/Q1/report.v1.2.3', ['2024']],
  ['docs/v1.2/fly.toml', ['a/b/c']],
  ['the/and/of/notes', ['the']],
  ['running/jumps/flies', ['running']],
  ['x--y__z..w::v//u', ['x--y']],
  ['123/456/7890', []],
  ['e2e/1e5/0x1F/3.14', ['1e5']],
  ['-leading/.dot/_under/:colon', ['-ops-']],
  ['deep/a/b/c/d/e/f/g/h/i/j', ['ops', 'db']],
  ['CamelCaseKey/createContextStore/db.ts', ['CamelCase']],
  ['node_modules/.cache/x', ['node_modules']]
]

function imported (key: string, tags: string[], i: number): ImportedKey {
  const at = new Date(Date.UTC(2026, 0, 1) + i * 1000).toISOString()
  const content = `common zorblat ground, entry ${i}`
  return {
    namespace: NS,
    key,
    current: { version: 1, content, tags, created_at: at, updated_at: at, updated_by: 'importer', client: null, expires_at: null },
    history: [{ version: 1, action: 'create', content, tags, actor: 'importer', client: null, at }]
  }
}

test('filter words: the pieces a prefix ends after, and every piece of a tag', async (t) => {
  t.equal(filterWordsOf('fjord/decisions/da', undefined), 'fjord decisions', 'the last piece may be cut short: left out')
  t.equal(filterWordsOf('fjord/decisions/', undefined), 'fjord decisions')
  t.equal(filterWordsOf('fjord', undefined), '', 'a prefix without a separator says nothing about words')
  t.equal(filterWordsOf(undefined, 'team-a:ops'), 'team a ops', 'a tag is whole: all its pieces')
  t.equal(filterWordsOf('ops/x', 'ops'), 'ops', 'each word once')
  t.equal(filterWordsOf('two words/x', 'a b'), '', 'a piece with other characters than letters and digits is left out')
  t.equal(filterWordsOf('x--y//z', undefined), 'x y', 'empty pieces are left out')
  t.equal(filterWordsOf(undefined, undefined), '')
})

test('a prefix or tag filter admits exactly its entries, whatever the key and tag characters', async (t) => {
  const { sql } = await testDatabase(t)
  const maintenance = createMaintenanceStore(sql as postgres.Sql)
  await maintenance.importBatch(KEYS_AND_TAGS.map(([key, tags], i) => imported(key, tags, i)))
  const store = createContextStore(sql as postgres.Sql, { maxContentBytes: 10_000 })

  const prefixes = new Set<string>(['zzz/', 'fjord/decisions/database-choice.md/', 'two words/', 'fjord ', 'Fjord/upper/'])
  for (const [key] of KEYS_AND_TAGS) for (let cut = 1; cut <= key.length; cut++) prefixes.add(key.slice(0, cut))
  const tags = new Set(KEYS_AND_TAGS.flatMap(([, entryTags]) => entryTags))
  tags.add('missing-tag')

  /** Every page of a search under `filter`: the keys found, sorted. */
  async function found (filter: { prefix?: string, tag?: string }, query = 'common', limit = 50): Promise<string[]> {
    const keys: string[] = []
    let after: SearchOptions['after']
    for (let pages = 0; pages < 20; pages++) {
      const page = await store.search(NS, { query, limit, ...filter, ...(after !== undefined && { after }) })
      if (page.status !== 'ok') throw new Error(`search ${query}: ${page.status}`)
      keys.push(...page.items.map((item) => item.key))
      if (page.next === null) break
      after = page.next
    }
    return keys.sort()
  }
  const admittedBy = (filter: { prefix?: string, tag?: string }): string[] => KEYS_AND_TAGS
    .filter(([key, entryTags]) => (filter.prefix === undefined || key.startsWith(filter.prefix)) && (filter.tag === undefined || entryTags.includes(filter.tag)))
    .map(([key]) => key).sort()

  /** The filters, each with what it found when it differs from what it admits. */
  async function wrongOnes (filters: Array<{ prefix?: string, tag?: string }>, query = 'common'): Promise<string[]> {
    const wrong: string[] = []
    for (const filter of filters) {
      const keys = await found(filter, query)
      const expected = admittedBy(filter)
      if (JSON.stringify(keys) !== JSON.stringify(expected)) wrong.push(`${JSON.stringify(filter)}: ${JSON.stringify(keys)} instead of ${JSON.stringify(expected)}`)
    }
    return wrong
  }

  const prefixFilters = [...prefixes].map((prefix) => ({ prefix }))
  const tagFilters = [...tags].map((tag) => ({ tag }))
  // The cuts right after a separator (where a piece is complete) and the tags: for the other query forms and languages.
  const pieceFilters = [...prefixFilters.filter(({ prefix }) => /[/:_.-]$/.test(prefix)), ...tagFilters, { prefix: 'fjord/decisions/', tag: 'db' }]

  for (const language of ['simple', 'english']) {
    if (language !== 'simple') await maintenance.applySearchLanguage(language)
    t.strictSame(await wrongOnes(prefixFilters), [], `${language}: every one of ${prefixes.size} prefixes admits exactly the keys it starts`)
    t.strictSame(await wrongOnes(tagFilters), [], `${language}: every one of ${tags.size} tags admits exactly its entries`)
    t.strictSame(await found({ prefix: 'fjord/decisions/', tag: 'db' }), ['fjord/decisions/database-choice.md'], `${language}: prefix and tag together`)
    for (const query of ['"common zorblat"', 'comon', 'common -zebra', 'zebra or common']) {
      t.strictSame(await wrongOnes(pieceFilters, query), [], `${language}: ${query}: every filter admits exactly its entries`)
    }
  }

  // Pages of one entry: each admitted entry once, across pages.
  t.strictSame(await found({ prefix: 'fjord/' }, 'common', 1), admittedBy({ prefix: 'fjord/' }), 'page by page, each admitted entry once')

  const configurations = (await sql<Array<{ name: string }>>`select cfgname as name from pg_ts_config where pg_ts_config_is_visible(oid) order by cfgname`).map((row) => row.name)
  t.ok(configurations.length > 2, `the database has ${configurations.length} text search configurations`)
  const wrongIn: string[] = []
  for (const language of configurations) {
    await maintenance.applySearchLanguage(language)
    wrongIn.push(...(await wrongOnes(pieceFilters, 'zorblat')).map((wrong) => `${language}: ${wrong}`))
  }
  t.strictSame(wrongIn, [], 'in every configuration, every filter admits exactly its entries')

  // A thesaurus rewrites runs of words ("one two three" is *123, "one two" alone *12, "one" *1):
  // a key's or a tag's words are not its own lexemes there (the tags are read as one text, so
  // "one" and "two" are *12 too), so such a configuration narrows nothing.
  await sql.unsafe('create text search dictionary filters_thesaurus (template = thesaurus, dictfile = thesaurus_sample, dictionary = pg_catalog.simple)')
  await sql.unsafe('create text search configuration filters_thesaurus (copy = pg_catalog.simple)')
  await sql.unsafe('alter text search configuration filters_thesaurus alter mapping for asciiword with filters_thesaurus, simple')
  await maintenance.applySearchLanguage('filters_thesaurus')
  await maintenance.importBatch([imported('one/two/three', ['solo'], KEYS_AND_TAGS.length), imported('tagged/x', ['one', 'two'], KEYS_AND_TAGS.length + 1)])
  t.strictSame((await found({ prefix: 'one/two/' }, 'zorblat')), ['one/two/three'], 'a thesaurus: the prefix still admits its entry')
  t.strictSame((await found({ tag: 'one' }, 'zorblat')), ['tagged/x'], 'and a tag its entry\'s other tag runs into')
})

test('the separators filterWordsOf splits at are the ones the search vector splits keys and tags at', async (t) => {
  const { sql } = await testDatabase(t)
  const [row] = await sql<[{ definition: string }]>`select pg_get_functiondef('context_search_vector'::regproc) as definition`
  t.equal(row?.definition.match(/'\/:_\.-'/g)?.length, 2, "context_search_vector translates '/:_.-' to spaces in the key and in the tags")
  t.equal(filterWordsOf('a/b:c_d.e-f/', undefined), 'a b c d e f', 'and filterWordsOf splits at each of them')
})

test('a search with a filter asks the vector index for the filter\'s words', async (t) => {
  const { url, sql } = await testDatabase(t)
  const maintenance = createMaintenanceStore(sql as postgres.Sql)
  await maintenance.importBatch(KEYS_AND_TAGS.map(([key, tags], i) => imported(key, tags, i)))
  // The statement as sent: a guard against the narrowing being dropped while every result stays right.
  const sent: Array<{ text: string, params: unknown[] }> = []
  const watched = postgres(url, { max: 1, onnotice: () => {}, debug: (_connection, text, params) => { sent.push({ text, params }) } })
  t.teardown(() => watched.end({ timeout: 5 }))
  const store = createContextStore(watched, { maxContentBytes: 10_000 })
  const page = await store.search(NS, { query: 'common', limit: 10, prefix: 'fjord/decisions/da', tag: 'db' })
  t.equal(page.status, 'ok')
  const search = sent.find((statement) => statement.text.includes('filter_language'))
  t.match(search?.text, /plainto_tsquery\(\(select language from input\), \$\d+\)/, 'the words are parsed once, in the statement')
  t.ok(search?.params.includes('fjord decisions db'), 'the prefix\'s complete pieces and the tag\'s')
})
