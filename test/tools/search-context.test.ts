import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { encodeCursor } from '../../schema/cursor.js'
import { MAX_QUERY_CHARS } from '../../tools/search-context.js'
import { createMaintenanceStore, MAX_RANKED, SNIPPET_MAX_CHARS } from '../../db/context-store.js'
import { searchCorpus } from '../fixtures/search-corpus.js'
import { build, callTool, rpc, toolErrorOf, type RpcOptions } from '../helper.js'
import { addToken, assume, fails, isIsoTimestamp, namesField, ok, okResult } from './helpers.js'

interface SearchItem { key: string, version: number, score: number, snippet: string, tags: string[], updated_at: string, updated_by: string }
interface SearchOutput { items: SearchItem[], next_cursor: string | null, partial: boolean }

const keysOf = (page: SearchOutput) => page.items.map((item) => item.key)

async function search (t: Test, app: FastifyInstance, args: Record<string, unknown>, options: RpcOptions = {}): Promise<SearchOutput> {
  return await ok<SearchOutput>(t, app, 'search_context', args, options)
}

/** Every page of a search, following next_cursor. */
async function walk (t: Test, app: FastifyInstance, args: Record<string, unknown>, between?: (page: SearchOutput) => Promise<void>): Promise<SearchOutput[]> {
  const pages: SearchOutput[] = []
  let cursor: string | null = null
  do {
    const page: SearchOutput = await search(t, app, { ...args, ...(cursor !== null && { cursor }) })
    pages.push(page)
    cursor = page.next_cursor
    if (cursor !== null) await between?.(page)
  } while (cursor !== null && pages.length < 100)
  return pages
}

async function writeAll (t: Test, app: FastifyInstance, notes: Array<{ key: string, content: string, tags: string[] }>, options: RpcOptions = {}): Promise<void> {
  for (let i = 0; i < notes.length; i += 16) {
    await Promise.all(notes.slice(i, i + 16).map((note) => ok(t, app, 'write_context', { ...note }, options)))
  }
}

test('search_context over a fixed corpus', async (t) => {
  const app = await build(t)
  await writeAll(t, app, searchCorpus())

  t.test('named queries rank their entries in order', async (t) => {
    const cases: Array<[string, string[], string]> = [
      ['postgres', ['atlas/runbooks/postgres-failover', 'atlas/decisions/database', 'beacon/notes/long-log'], 'key (A) before content (C); PostgreSQL is another word'],
      ['zebrafish', ['rank/zebrafish', 'rank/tagged', 'rank/plain'], 'key, then tag, then content'],
      ['fly.toml', ['deploy/fly.toml', 'notes/fly-release'], 'a file name, in the key and in content'],
      ['createContextStore', ['db/store-module', 'snippets/store-usage'], 'an identifier, twice in a short entry before once in a longer one'],
      ['kubernetes', ['ops/cluster-upgrade', 'ops/cluster-costs'], 'the shorter entry first'],
      ['connection pool postgres', ['atlas/decisions/database'], 'every word must match'],
      ['"connection pool" -pgbouncer', [], 'a phrase, and a word excluded']
    ]
    for (const [query, expected, why] of cases) {
      const page = await search(t, app, { query })
      t.strictSame(keysOf(page).filter((key) => !/-\d+$/.test(key)), expected, `${query}: ${why}`)
      if (query !== '"connection pool" -pgbouncer') t.strictSame(keysOf(page).slice(0, expected.length), expected, `${query}: planted entries first`)
      const scores = page.items.map((item) => item.score)
      t.strictSame(scores, [...scores].sort((a, b) => b - a), `${query}: best first`)
      t.ok(scores.every((score) => score > 0 && score <= 1), `${query}: scores in (0, 1]`)
    }
    const phrase = await search(t, app, { query: '"connection pool"', limit: 50 })
    t.ok(phrase.items.length > 1 && keysOf(phrase).includes('atlas/decisions/database'), 'the phrase alone matches more, pgbouncer\'s entry among them')
  })

  t.test('misspelt words and parts of identifiers find their entries', async (t) => {
    const cases: Array<[string, string[]]> = [
      ['postgress', ['atlas/runbooks/postgres-failover', 'atlas/decisions/database', 'beacon/notes/managed-database', 'beacon/notes/long-log']],
      ['zebrafsh', ['rank/zebrafish', 'rank/tagged', 'rank/plain']],
      ['kubernets', ['ops/cluster-upgrade', 'ops/cluster-costs']],
      ['kuberentes upgrade', ['ops/cluster-upgrade']],
      ['createContext', ['db/store-module', 'snippets/store-usage']],
      ['createContextStor', ['db/store-module', 'snippets/store-usage']],
      ['fly.tml', ['deploy/fly.toml', 'notes/fly-release']],
      ['fyl.toml', ['deploy/fly.toml', 'notes/fly-release']]
    ]
    for (const [query, expected] of cases) {
      const page = await search(t, app, { query })
      t.strictSame(keysOf(page).slice(0, expected.length).sort(), [...expected].sort(), `${query} finds ${expected.join(', ')} first`)
    }
    t.strictSame(keysOf(await search(t, app, { query: 'postgress' })).slice(0, 4), ['atlas/runbooks/postgres-failover', 'atlas/decisions/database', 'beacon/notes/managed-database', 'beacon/notes/long-log'],
      'postgress: the key match, then by rank and similarity (PostgreSQL 0.62 of the rank, postgres 0.73)')
    const typo = await search(t, app, { query: 'postgress' })
    const correct = await search(t, app, { query: 'postgres' })
    t.ok((typo.items[0]?.score ?? 1) < (correct.items[0]?.score ?? 0), 'a match through a similar word scores less than the word as typed')
    t.match(typo.items.find((item) => item.key === 'beacon/notes/managed-database')?.snippet, /\*\*PostgreSQL\*\*/, 'the similar word is highlighted')
  })

  t.test('items carry key, version, snippet, tags, author and time', async (t) => {
    await ok(t, app, 'write_context', { key: 'rank/plain', content: 'Lab notes on zebrafish tanks and water quality, updated.', tags: ['lab'] })
    const page = await search(t, app, { query: 'zebrafish' })
    const plain = page.items.find((item) => item.key === 'rank/plain')
    t.match(plain, { key: 'rank/plain', version: 2, tags: ['lab'], updated_by: 'static-token' })
    t.ok(isIsoTimestamp(plain?.updated_at), 'updated_at is ISO 8601')
    t.match(plain?.snippet, /^Lab notes on \*\*zebrafish\*\* tanks and water quality, updated/, 'the current content, the match highlighted')
    t.strictSame(Object.keys(plain ?? {}).sort(), ['key', 'score', 'snippet', 'tags', 'updated_at', 'updated_by', 'version'])
  })

  t.test('snippets show the match, even far into a long entry, and stay short', async (t) => {
    const page = await search(t, app, { query: 'postgres primary disk' })
    const [log] = page.items
    t.equal(log?.key, 'beacon/notes/long-log')
    t.match(log?.snippet, /\*\*postgres\*\* \*\*primary\*\* ran out of \*\*disk\*\*/, 'the match 7,000 characters in')
    for (const query of ['postgres', 'rollout', 'a', 'the team']) {
      const { items } = await search(t, app, { query, limit: 50 })
      t.ok(items.every((item) => item.snippet.length <= SNIPPET_MAX_CHARS && !item.snippet.includes('\n')), `${query}: snippets of at most ${SNIPPET_MAX_CHARS} characters on one line`)
    }
    const big = `${'word '.repeat(60)}zebrafish ${'x'.repeat(5000)} and more`
    await ok(t, app, 'write_context', { key: 'snippet/huge-token', content: big })
    const huge = (await search(t, app, { query: 'zebrafish', prefix: 'snippet/huge' })).items[0]
    t.ok(huge !== undefined && huge.snippet.length <= SNIPPET_MAX_CHARS && huge.snippet.endsWith('…'), `a 5,000-character word is cut to ${SNIPPET_MAX_CHARS}, with …`)
    await ok(t, app, 'write_context', { key: 'snippet/astral', content: `zebrafish ${'😀'.repeat(400)}` })
    const astral = (await search(t, app, { query: 'zebrafish', prefix: 'snippet/astral' })).items[0]?.snippet ?? ''
    t.ok(astral.length <= SNIPPET_MAX_CHARS && astral.endsWith('…') && astral.isWellFormed(), 'emoji are cut whole, never half a surrogate pair')
  })

  t.test('filters: prefix, tag, updated_after', async (t) => {
    t.strictSame(keysOf(await search(t, app, { query: 'postgres', prefix: 'atlas/' })), ['atlas/runbooks/postgres-failover', 'atlas/decisions/database'])
    t.strictSame(keysOf(await search(t, app, { query: 'postgres', prefix: 'atlas/decisions/' })), ['atlas/decisions/database'])
    t.strictSame(keysOf(await search(t, app, { query: 'postgres', prefix: 'atlas_' })), [], 'prefix is literal')
    t.strictSame(keysOf(await search(t, app, { query: 'postgres', tag: 'decision' })), ['atlas/decisions/database'])
    t.strictSame(keysOf(await search(t, app, { query: 'postgres', tag: 'db', prefix: 'atlas/runbooks/' })), ['atlas/runbooks/postgres-failover'])
    t.strictSame(keysOf(await search(t, app, { query: 'postgres', tag: 'nope' })), [])
    const before = await search(t, app, { query: 'kubernetes' })
    const since = before.items.map((item) => item.updated_at).sort().at(-1) ?? ''
    await ok(t, app, 'write_context', { key: 'ops/cluster-costs', content: 'Our kubernetes nodes moved to reserved instances.' })
    await ok(t, app, 'write_context', { key: 'ops/cluster-new', content: 'A second kubernetes cluster for staging.' })
    const after = await search(t, app, { query: 'kubernetes', updated_after: since })
    t.strictSame(keysOf(after).sort(), ['ops/cluster-costs', 'ops/cluster-new'], 'only entries written after the time')
    t.strictSame(keysOf(await search(t, app, { query: 'kubernetes', updated_after: '2999-01-01T00:00:00Z' })), [])
  })

  t.test('paging visits every match exactly once, in rank order', async (t) => {
    const all = await search(t, app, { query: 'token', limit: 50 })
    assume(all.items.length >= 20 && all.next_cursor === null, `token matches ${all.items.length} entries, one page of 50`)
    for (const limit of [1, 7, 10]) {
      const pages = await walk(t, app, { query: 'token', limit })
      t.strictSame(pages.flatMap(keysOf), keysOf(all), `limit ${limit}: the same entries in the same order`)
      t.equal(pages.length, Math.ceil(all.items.length / limit), `limit ${limit}: no empty last page`)
      t.equal(pages.at(-1)?.next_cursor, null)
    }
  })

  t.test('paging while entries change: none twice, none written after the first page', async (t) => {
    const all = keysOf(await search(t, app, { query: 'token', limit: 50 }))
    const changed = new Set<string>()
    const shown: string[] = []
    let round = 0
    const pages = await walk(t, app, { query: 'token', limit: 5 }, async (page) => {
      shown.push(...keysOf(page))
      round++
      // An entry already shown moves to the top, one not shown yet to the bottom, and a new best match appears.
      const seen = page.items[0]?.key ?? ''
      const unseen = all.find((key) => !shown.includes(key) && !changed.has(key)) ?? ''
      await ok(t, app, 'write_context', { key: seen, content: 'token token token token' })
      await ok(t, app, 'write_context', { key: unseen, content: `${'padding words here '.repeat(200)} token` })
      await ok(t, app, 'write_context', { key: `token/new-${round}`, content: 'token token' })
      changed.add(seen).add(unseen)
    })
    assume(round >= 3, 'several pages')
    const keys = pages.flatMap(keysOf)
    t.equal(new Set(keys).size, keys.length, 'no entry twice')
    t.notOk(keys.some((key) => key.startsWith('token/new-')), 'entries created after the first page are not shown')
    t.strictSame(all.filter((key) => !changed.has(key)), keys.filter((key) => !changed.has(key)), 'every entry not changed meanwhile, in rank order')
    const fresh = keysOf(await search(t, app, { query: 'token', limit: 50 }))
    t.ok(fresh.includes('token/new-1') && fresh.length === all.length + round, 'a new search sees the changes')
  })

  t.test(`a query matching more than ${MAX_RANKED} entries ranks the ${MAX_RANKED} most recent, and says so`, async (t) => {
    const at = (i: number) => new Date(Date.UTC(2026, 0, 1) + i * 1000).toISOString()
    const keys = Array.from({ length: MAX_RANKED + 5 }, (_, i) => `many/${String(i).padStart(4, '0')}`)
    // Older entries mention the word more often, so that they would rank first if they were ranked at all.
    const notes = keys.map((key, i) => ({
      namespace: 'default',
      key,
      current: { version: 1, content: i < 5 ? 'wombat wombat wombat wombat' : 'a wombat', tags: [], created_at: at(i), updated_at: at(i), updated_by: 'importer', client: null, expires_at: null },
      history: [{ version: 1, action: 'create' as const, content: i < 5 ? 'wombat wombat wombat wombat' : 'a wombat', tags: [], actor: 'importer', client: null, at: at(i) }]
    }))
    await createMaintenanceStore(app.db.sql).importBatch(notes)
    const page = await search(t, app, { query: 'wombat', limit: 50 })
    t.equal(page.partial, true, 'partial')
    t.notOk(keysOf(page).some((key) => keys.indexOf(key) < 5), 'the five oldest are not among the ranked')
    const narrowed = await search(t, app, { query: 'wombat', prefix: 'many/000', limit: 50 })
    t.equal(narrowed.partial, false, 'a prefix narrows it')
    t.strictSame(keysOf(narrowed).slice(0, 5), keys.slice(0, 5), 'and then the best come first')
    const text = (await callTool(app, 'search_context', { query: 'wombat' })).content[0]?.text
    t.match(text, `More than ${MAX_RANKED} entries match`)
    t.equal((await search(t, app, { query: 'zebrafish' })).partial, false)
  })

  t.test('cursors belong to one search', async (t) => {
    const first = await search(t, app, { query: 'token', limit: 2 })
    const cursor = first.next_cursor ?? ''
    for (const other of [{ query: 'canary' }, { query: 'token', prefix: 'atlas/' }, { query: 'token', tag: 'deploy' }, { query: 'token', updated_after: '2000-01-01T00:00:00Z' }]) {
      const error = await fails(t, app, 'search_context', { ...other, cursor }, 'REQ_1101')
      t.match(error.message, /cursor belongs to another search/, `${JSON.stringify(other)}: says what to do`)
    }
    const second = await search(t, app, { query: 'token', limit: 2, cursor })
    t.notSame(keysOf(second), keysOf(first), 'the same search continues')
    for (const forged of ['garbage', encodeCursor('list', 'token'), encodeCursor('search', 'x'), encodeCursor('search', `${'0'.repeat(16)} 2026-01-01T00:00:00.000000Z 5 bad key`),
      encodeCursor('search', `${'0'.repeat(16)} 2026-01-01T00:00:00.000000Z 5 key\u0000`)]) {
      const error = await fails(t, app, 'search_context', { query: 'token', cursor: forged }, 'REQ_1101')
      t.match(error.message, /cursor/)
    }
  })

  t.test('expired and deleted entries never show', async (t) => {
    await writeAll(t, app, ['alive', 'expiring', 'deleted', 'expired-written'].map((name) => ({ key: `quokka/${name}`, content: `A quokka note: ${name}.`, tags: [] })))
    t.strictSame(keysOf(await search(t, app, { query: 'quokka' })).sort(), ['quokka/alive', 'quokka/deleted', 'quokka/expired-written', 'quokka/expiring'])
    await ok(t, app, 'delete_context', { key: 'quokka/deleted' })
    await ok(t, app, 'write_context', { key: 'quokka/expiring', content: 'A quokka note that lives a day.', ttl_seconds: 86400 })
    await app.db.sql`update context_entries set expires_at = now() - interval '1 second' where key in ('quokka/expiring', 'quokka/expired-written')`
    t.strictSame(keysOf(await search(t, app, { query: 'quokka' })), ['quokka/alive'], 'neither the deleted nor the expired ones')
    t.strictSame(keysOf(await search(t, app, { query: 'quokkka' })), ['quokka/alive'], 'not through a similar word either')
    await ok(t, app, 'restore_context', { key: 'quokka/deleted', version: 1 })
    await ok(t, app, 'write_context', { key: 'quokka/expired-written', content: 'A quokka note, written again.' })
    t.strictSame(keysOf(await search(t, app, { query: 'quokka' })).sort(), ['quokka/alive', 'quokka/deleted', 'quokka/expired-written'], 'restored and rewritten ones are back')
  })

  t.test('a namespace sees only its own entries, also through similar words', async (t) => {
    const otherWriter = await addToken(app, 'search-other-writer', 'other-team', ['context:read', 'context:write'])
    const otherReader = await addToken(app, 'search-other-reader', 'other-team', ['context:read'])
    await writeAll(t, app, [
      { key: 'ops/cluster-upgrade', content: 'Their kubernetes upgrade plan.', tags: [] },
      { key: 'ops/quasar', content: 'Only they write about quasars and kubernetes.', tags: [] }
    ], { token: otherWriter })
    t.strictSame(keysOf(await search(t, app, { query: 'quasars' })), [], 'default does not see other-team\'s entries')
    t.strictSame(keysOf(await search(t, app, { query: 'quasar' })), [], 'nor through its vocabulary')
    t.strictSame(keysOf(await search(t, app, { query: 'quasars' }, { token: otherReader })), ['ops/quasar'])
    const theirs = await search(t, app, { query: 'kubernetes' }, { token: otherReader })
    t.strictSame(keysOf(theirs).sort(), ['ops/cluster-upgrade', 'ops/quasar'], 'other-team sees its own kubernetes entries only')
    t.match(theirs.items.find((item) => item.key === 'ops/cluster-upgrade')?.snippet, /Their/, 'its own content under the same key')
    t.strictSame(keysOf(await search(t, app, { query: 'zebrafish' }, { token: otherReader })), [])
    const refused = await fails(t, app, 'search_context', { query: 'kubernetes', namespace: 'default' }, 'AUTH_1004', { token: otherReader })
    t.match(refused.message, /search_context needs the context:read scope in namespace "default"/)
    const admin = await addToken(app, 'search-admin', 'default', [], { globalAdmin: true })
    t.strictSame(keysOf(await search(t, app, { query: 'quasars', namespace: 'other-team' }, { token: admin })), ['ops/quasar'], 'a global admin searches another namespace by naming it')
  })

  t.test('bad input is a catalogue error, never a server error', async (t) => {
    const refusals: Array<[Record<string, unknown>, RegExp]> = [
      [{}, namesField('query')],
      [{ query: '' }, namesField('query')],
      [{ query: 'x'.repeat(MAX_QUERY_CHARS + 1) }, namesField('query')],
      [{ query: 'post\u0000gres' }, namesField('query')],
      [{ query: 'post\ud800gres' }, /query: not valid Unicode text/],
      [{ query: 'postgres', prefix: 'a\udc00' }, /prefix: not valid Unicode text/],
      [{ query: '   ' }, /nothing to search for/],
      [{ query: '"" OR -' }, /nothing to search for/],
      [{ query: '-postgres' }, /nothing to search for/],
      [{ query: '!!! ??? ...' }, /nothing to search for/],
      [{ query: '\\' }, /nothing to search for/],
      [{ query: 'postgres', limit: 0 }, namesField('limit')],
      [{ query: 'postgres', limit: 51 }, namesField('limit')],
      [{ query: 'postgres', limit: 2.5 }, namesField('limit')],
      [{ query: 'postgres', tag: 'bad tag' }, namesField('tag')],
      [{ query: 'postgres', updated_after: 'yesterday' }, namesField('updated_after')],
      [{ query: 'postgres', updated_after: '0000-01-01T00:00:00Z' }, /updated_after must be a time from the year 1 on/],
      [{ query: 'postgres', prefix: 'x'.repeat(256) }, namesField('prefix')],
      [{ query: 'postgres', unexpected: 1 }, /unexpected/],
      [{ query: 42 }, namesField('query')]
    ]
    for (const [args, message] of refusals) {
      const error = await fails(t, app, 'search_context', args, 'REQ_1101')
      t.match(error.message, message, `${JSON.stringify(args).slice(0, 60)}: ${String(error.message).slice(0, 80)}`)
      t.notMatch(error.message, /syntax|postgres\.js|SQLSTATE|tsquery|relation|column/i, 'no database text in the message')
    }
    // Text that means something to SQL, tsquery or LIKE is searched as words, or finds nothing.
    for (const query of ["'; drop table context_entries; --", 'a & b | !c', 'postgres:*', "postgres' | 'x", '%_%', '(((', '<->', 'ノート 検索', '😀 postgres', 'x'.repeat(MAX_QUERY_CHARS), 'a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p postgres', Array.from({ length: 200 }, (_, i) => `w${i}`).join(' ')]) {
      const response = await rpc(app, 'tools/call', { name: 'search_context', arguments: { query } })
      t.equal(response.statusCode, 200, `${query.slice(0, 40)}: HTTP 200`)
      const result = response.json().result
      const code = toolErrorOf(result)?.code
      t.ok(result !== undefined && (code === undefined || code === 'REQ_1101'), `${query.slice(0, 40)}: a result or REQ_1101 (${code ?? 'ok'})`)
    }
    t.ok(keysOf(await search(t, app, { query: '😀 postgres' })).includes('atlas/decisions/database'), 'an emoji does not stop the words from matching')
    t.ok((await app.db.sql`select 1 from context_entries limit 1`).length === 1, 'the table is still there')
  })

  t.test('the text block lists the results and says how to go on', async (t) => {
    const result = await callTool(app, 'search_context', { query: 'rollout', limit: 2 })
    const page = okResult<SearchOutput>(t, result)
    const text = result.content[0]?.text ?? ''
    t.match(text, page.items[0]?.key ?? 'no key')
    t.match(text, page.next_cursor ?? 'no cursor')
    const none = await callTool(app, 'search_context', { query: 'nonexistentword' })
    t.match(none.content[0]?.text, /No entries match/)
  })
})
