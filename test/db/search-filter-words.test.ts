import type postgres from 'postgres'
import { test } from 'tap'
import { createContextStore, createMaintenanceStore, filterWordsOf, type ImportedKey } from '../../db/context-store.js'
import { testDatabase } from '../db-helper.js'

// A prefix or tag filter also narrows the words the vector index is asked for (filterWordsOf):
// words every admitted entry has in its vector. Were one of them missing from an entry the filter
// admits, that entry would silently drop out of the results. So: for every cut of every key (and
// prefixes no key has) and every tag, a broad word's results under the filter are exactly the
// entries the filter admits, in the default configuration and in one that stems and drops stop
// words.

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
  const content = `common ground, entry ${i}`
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

  async function found (filter: { prefix?: string, tag?: string }): Promise<string[]> {
    const page = await store.search(NS, { query: 'common', limit: 50, ...filter })
    if (page.status !== 'ok') throw new Error(`search: ${page.status}`)
    return page.items.map((item) => item.key).sort()
  }

  for (const language of ['simple', 'english']) {
    if (language !== 'simple') await maintenance.applySearchLanguage(language)
    const wrongPrefixes: string[] = []
    for (const prefix of prefixes) {
      const expected = KEYS_AND_TAGS.map(([key]) => key).filter((key) => key.startsWith(prefix)).sort()
      const keys = await found({ prefix })
      if (JSON.stringify(keys) !== JSON.stringify(expected)) wrongPrefixes.push(`${prefix}: ${JSON.stringify(keys)} instead of ${JSON.stringify(expected)}`)
    }
    t.strictSame(wrongPrefixes, [], `${language}: every one of ${prefixes.size} prefixes admits exactly the keys it starts`)
    const wrongTags: string[] = []
    for (const tag of tags) {
      const expected = KEYS_AND_TAGS.filter(([, entryTags]) => entryTags.includes(tag)).map(([key]) => key).sort()
      const keys = await found({ tag })
      if (JSON.stringify(keys) !== JSON.stringify(expected)) wrongTags.push(`${tag}: ${JSON.stringify(keys)} instead of ${JSON.stringify(expected)}`)
    }
    t.strictSame(wrongTags, [], `${language}: every one of ${tags.size} tags admits exactly its entries`)
    t.strictSame(await found({ prefix: 'fjord/decisions/', tag: 'db' }), ['fjord/decisions/database-choice.md'], `${language}: prefix and tag together`)
  }
})
