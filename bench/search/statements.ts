import { loadavg } from 'node:os'
import postgres from 'postgres'
import { createContextStore } from '../../db/context-store.js'
import { generateNotes } from '../../test/fixtures/notes.js'
import { NAMESPACE, searchBenchUrl } from './database.js'
import { callMaker, type Call } from './mix.js'

// The database's side of the search mix, without the server: the mix's search_context and
// list_context calls sent through the store one at a time on one connection (the server's
// connection settings: generic plans, no JIT), so each call's time is PostgreSQL's own plus a
// local round trip. Per tool and per kind of search: p50/p90/p99/max; the slowest calls; and
// EXPLAIN (ANALYZE, BUFFERS) of the statements the store sent for the slowest (the same text,
// prepared, executed with its parameters under the same plan cache mode).
// Needs the bench database (`npm run bench:search` once). Not part of `npm run bench`:
//   node --import tsx bench/search/statements.ts [calls, 2000] [explained, 3]
// or one call's arguments, explained: … statements.ts '{"query":"gin index","limit":10}' (list_context without a query)

const single = process.argv[2]?.startsWith('{') === true ? JSON.parse(process.argv[2]) as Record<string, unknown> : undefined
const calls = single !== undefined ? 1 : Number(process.argv[2] ?? 2000)
const explained = single !== undefined ? 1 : Number(process.argv[3] ?? 3)
const url = searchBenchUrl(process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test')

let sent: { text: string, params: unknown[] } | undefined
const sql = postgres(url, {
  max: 1,
  prepare: true,
  onnotice: () => {},
  connection: { jit: 'off', plan_cache_mode: 'force_generic_plan' },
  types: { int8: { to: 20, from: [20], serialize: (v: number) => String(v), parse: (v: string) => Number(v) } },
  debug: (_connection, text, params) => { sent = { text, params } }
})
const store = createContextStore(sql as unknown as postgres.Sql, { maxContentBytes: 102400 })

interface Timed { call: Call, ms: number, matches: number, statements: Array<{ text: string, params: unknown[] }> }

function describe (call: Call): string {
  return JSON.stringify(call.args)
}

async function run (call: Call): Promise<Timed> {
  const statements: Timed['statements'] = []
  const started = performance.now()
  if (call.tool === 'search_context') {
    const a = call.args as { query: string, limit: number, prefix?: string, tag?: string }
    await store.search(NAMESPACE, { query: a.query, limit: a.limit, ...(a.prefix !== undefined && { prefix: a.prefix }), ...(a.tag !== undefined && { tag: a.tag }) })
  } else {
    const a = call.args as { prefix?: string, tag?: string, limit: number }
    await store.list(NAMESPACE, { limit: a.limit, ...(a.prefix !== undefined && { prefix: a.prefix }), ...(a.tag !== undefined && { tag: a.tag }) })
  }
  const ms = performance.now() - started
  if (sent !== undefined) statements.push(sent)
  let matches = 0
  if (call.tool === 'search_context') {
    const [row] = await sql<[{ n: number }]>`
      select count(*)::int as n from context_search
      where namespace = ${NAMESPACE} and search_vector @@ websearch_to_tsquery('simple', translate(${(call.args as { query: string }).query}::text, '/', ' '))`
    matches = row?.n ?? 0
  }
  return { call, ms, matches, statements }
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
function line (label: string, values: number[]): string {
  const s = [...values].sort((a, b) => a - b)
  const mean = s.reduce((sum, v) => sum + v, 0) / Math.max(1, s.length)
  return `${label.padEnd(34)} n ${String(s.length).padStart(5)}  mean ${mean.toFixed(2).padStart(6)}  p50 ${pct(s, 0.5).toFixed(2).padStart(6)}  p90 ${pct(s, 0.9).toFixed(2).padStart(6)}  p99 ${pct(s, 0.99).toFixed(2).padStart(6)}  max ${(s.at(-1) ?? 0).toFixed(2).padStart(6)} ms`
}

function literal (value: unknown): string {
  if (value === null || value === undefined) return 'null'
  return `'${String(value).replaceAll("'", "''")}'`
}

async function explain (statement: { text: string, params: unknown[] }): Promise<string> {
  return await sql.begin(async (q) => {
    await q.unsafe(`prepare explained as ${statement.text}`)
    const args = statement.params.length === 0 ? '' : `(${statement.params.map(literal).join(', ')})`
    const rows = await q.unsafe<Array<{ 'QUERY PLAN': string }>>(`explain (analyze, buffers) execute explained${args}`)
    await q.unsafe('deallocate explained')
    return rows.map((r) => r['QUERY PLAN']).join('\n')
  })
}

const notes = single !== undefined ? [] : generateNotes(100_000)
const next = callMaker(notes.map((note) => note.key), 7)
const mix: Call[] = single !== undefined ? [{ id: 1, tool: single.query === undefined ? 'list_context' : 'search_context', args: single, body: '' }] : []
while (mix.length < calls) {
  const call = next()
  if (call.tool !== 'write_context') mix.push(call)
}
console.log(`load average ${loadavg()[0]?.toFixed(1)}; ${calls} calls, ${url.replace(/\/\/[^@]*@/, '//')}`)
for (const call of mix.slice(0, 100)) await run(call) // warm the caches and the prepared statements
const timed: Timed[] = []
for (const call of mix) timed.push(await run(call))
console.log(`load average ${loadavg()[0]?.toFixed(1)} after`)

const searches = timed.filter((t) => t.call.tool === 'search_context')
const lists = timed.filter((t) => t.call.tool === 'list_context')
console.log(line('list_context', lists.map((t) => t.ms)))
console.log(line('  prefix', lists.filter((t) => t.call.args.prefix !== undefined).map((t) => t.ms)))
console.log(line('  tag', lists.filter((t) => t.call.args.tag !== undefined).map((t) => t.ms)))
console.log(line('search_context', searches.map((t) => t.ms)))
const buckets: Array<[string, (t: Timed) => boolean]> = [
  ['  0 typed matches (fuzzy path)', (t) => t.matches === 0],
  ['  1-99', (t) => t.matches > 0 && t.matches < 100],
  ['  100-999', (t) => t.matches >= 100 && t.matches < 1000],
  ['  1000-2999', (t) => t.matches >= 1000 && t.matches < 3000],
  ['  3000+', (t) => t.matches >= 3000],
  ['  with prefix', (t) => t.call.args.prefix !== undefined],
  ['  with tag', (t) => t.call.args.tag !== undefined]
]
for (const [label, test] of buckets) console.log(line(label, searches.filter(test).map((t) => t.ms)))
const slowest = [...timed].sort((a, b) => b.ms - a.ms)
console.log('\nslowest:')
for (const t of slowest.slice(0, 15)) console.log(`  ${t.ms.toFixed(2).padStart(7)} ms ${t.call.tool} ${describe(t.call)} (${t.matches} typed matches)`)
for (const t of slowest.slice(0, explained)) {
  for (const statement of t.statements) {
    console.log(`\nEXPLAIN of ${t.call.tool} ${describe(t.call)}:\n${await explain(statement)}`)
  }
}
await sql.end({ timeout: 5 })
