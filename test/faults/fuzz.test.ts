import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import fc from 'fast-check'
import { test } from 'tap'
import { allTools } from '../../tools/index.js'
import { errorCatalogue } from '../../schema/errors.js'
import { build, TEST_TOKEN, toolErrorOf, type ToolResult } from '../helper.js'

// Property-based fuzzing of every tool's arguments and of the raw HTTP request (body, headers,
// method). For every case: no 5xx but DEP_3001/SRV_9002, every refusal carries a catalogue code,
// a refused call leaves the database exactly as it was, an accepted one leaves it consistent.
// Seeded and bounded: the seed is printed; FUZZ_SEED=<seed> replays a run, FUZZ_RUNS sets its size.

const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
const RUNS = Number(process.env.FUZZ_RUNS ?? 1000)
const MAX_CONTENT_BYTES = 1024
const ALLOWED_5XX = new Set(['DEP_3001', 'SRV_9002'])
const READ_ONLY = new Set(allTools.filter((tool) => tool.annotations?.readOnlyHint === true).map((tool) => tool.name))

const isCatalogueCode = (code: unknown): boolean => typeof code === 'string' && code in errorCatalogue

/** Every row of both tables as text, and the history's size: a refused call must not change it. */
async function fingerprint (app: FastifyInstance): Promise<string> {
  const [row] = await app.db.sql<Array<{ entries: string | null, history: string }>>`
    select (select string_agg(to_jsonb(e)::text, ',' order by namespace, key) from context_entries e) as entries,
           (select count(*) || ':' || coalesce(max(id), 0) from context_history) as history`
  return `${row?.entries ?? ''}|${row?.history ?? ''}`
}

/** Entries whose version is not their history's last: a write that happened only half. */
async function halfWrites (app: FastifyInstance): Promise<number> {
  return (await inspect(app)).halfWrites
}

/** The fingerprint and the half-written entries, in one round trip. */
async function inspect (app: FastifyInstance): Promise<{ fingerprint: string, halfWrites: number }> {
  const [row] = await app.db.sql<Array<{ entries: string | null, history: string, half: number }>>`
    select (select string_agg(to_jsonb(e)::text, ',' order by namespace, key) from context_entries e) as entries,
           (select count(*) || ':' || coalesce(max(id), 0) from context_history) as history,
           (select count(*)::int from context_entries e
            where e.version is distinct from (select max(h.version) from context_history h where h.namespace = e.namespace and h.key = e.key)) as half`
  return { fingerprint: `${row?.entries ?? ''}|${row?.history ?? ''}`, halfWrites: row?.half ?? -1 }
}

/** What a response says: 'ok', or the refusal's code; throws on a response the rules forbid. */
function verdictOf (response: LightMyRequestResponse): string {
  const status = response.statusCode
  let body: unknown
  try {
    body = response.body === '' ? undefined : JSON.parse(response.body)
  } catch {
    throw new Error(`HTTP ${status} with a body that is not JSON: ${response.body.slice(0, 200)}`)
  }
  const httpCode = (body as { error?: { code?: unknown, data?: { code?: unknown } } } | undefined)?.error
  const code = typeof httpCode?.code === 'string' ? httpCode.code : httpCode?.data?.code
  if (status >= 500 && !(typeof code === 'string' && ALLOWED_5XX.has(code))) throw new Error(`HTTP ${status} (${String(code)}): ${response.body.slice(0, 300)}`)
  if (status >= 400 || httpCode !== undefined) {
    if (!isCatalogueCode(code)) throw new Error(`refusal without a catalogue code, HTTP ${status}: ${response.body.slice(0, 300)}`)
    return String(code)
  }
  const result = (body as { result?: ToolResult } | undefined)?.result
  if (result?.isError === true) {
    const toolCode = toolErrorOf(result)?.code
    if (!isCatalogueCode(toolCode)) throw new Error(`tool error without a catalogue code: ${response.body.slice(0, 300)}`)
    return String(toolCode)
  }
  return 'ok'
}

// No colon: "ns:key" names another namespace, which this token may not use (AUTH_1004).
const KEYS = ['a', 'b/c', 'hot.1']
const text = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.constant('x'.repeat(MAX_CONTENT_BYTES + 1)) },
  { weight: 1, arbitrary: fc.constant('\u0000') }
)
const deep = fc.integer({ min: 1, max: 3000 }).map((depth) => {
  let value: unknown = 'bottom'
  for (let i = 0; i < depth; i++) value = [value]
  return value
})
const junk = fc.oneof(fc.anything({ maxDepth: 3 }), deep, fc.constantFrom(null, true, [], {}, -1, 2 ** 63, Number.MAX_VALUE, '1', 1.5))
const keyish = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...KEYS) }, { weight: 2, arbitrary: fc.string({ maxLength: 300 }) }, { weight: 1, arbitrary: junk })
const numberish = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: -2, max: 6 }) }, { weight: 1, arbitrary: fc.integer() }, { weight: 1, arbitrary: fc.double() }, { weight: 1, arbitrary: junk })

function fieldArbitrary (name: string): fc.Arbitrary<unknown> {
  if (name === 'key' || name === 'prefix' || name === 'tag') return keyish
  if (name === 'tags') return fc.oneof(fc.array(keyish, { maxLength: 5 }), junk)
  if (/version|limit|seconds/.test(name)) return numberish
  if (name === 'cursor') return fc.oneof(fc.string({ maxLength: 60 }), fc.base64String({ maxLength: 80 }), junk)
  return fc.oneof({ weight: 4, arbitrary: text }, { weight: 1, arbitrary: junk })
}

function plausibleValue (name: string): fc.Arbitrary<unknown> {
  if (name === 'key') return fc.constantFrom(...KEYS)
  if (name === 'prefix') return fc.constantFrom('', 'b/', 'hot')
  if (name === 'tag') return fc.constantFrom('t1', 't2')
  if (name === 'tags') return fc.array(fc.constantFrom('t1', 't2'), { maxLength: 2 })
  if (/version/.test(name)) return fc.integer({ min: 0, max: 4 })
  if (name === 'limit') return fc.integer({ min: 1, max: 100 })
  if (/seconds/.test(name)) return fc.integer({ min: 1, max: 3600 })
  if (name === 'cursor') return fieldArbitrary(name)
  if (name === 'namespace') return fc.constant('default')
  if (name === 'updated_after') return fc.date({ min: new Date('2000-01-01'), max: new Date('2100-01-01'), noInvalidDate: true }).map((date) => date.toISOString())
  return fc.string({ minLength: 1, maxLength: 20 }).filter((value) => !value.includes('\u0000'))
}

/** Arguments for a tool: its own fields (each present or not, valid or not), sometimes an extra one, sometimes not an object. */
function argumentsFor (tool: (typeof allTools)[number]): fc.Arbitrary<unknown> {
  const fields = Object.keys((tool.inputSchema as { properties?: Record<string, unknown> }).properties ?? {})
  const record = fc.record(Object.fromEntries(fields.map((name) => [name, fieldArbitrary(name)])), { requiredKeys: [] })
  // Mostly well-formed values, so that calls get past validation and reach the database too.
  const plausible = fc.record(Object.fromEntries(fields.map((name) => [name, plausibleValue(name)])), { requiredKeys: fields.filter((name) => ['key', 'content', 'version', 'query'].includes(name)) })
  return fc.oneof(
    { weight: 5, arbitrary: plausible },
    { weight: 4, arbitrary: record },
    { weight: 1, arbitrary: fc.tuple(record, fc.string({ minLength: 1, maxLength: 10 }), junk).map(([args, name, value]) => ({ ...args, [name]: value })) },
    { weight: 1, arbitrary: junk }
  )
}

const toolCase = fc.oneof(...allTools.map((tool) => fc.record({ name: fc.constant(tool.name), arguments: argumentsFor(tool) })))

const HEADERS_BASE = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${TEST_TOKEN}` }

test(`fuzzing (seed ${SEED}, FUZZ_SEED=${SEED} replays it)`, async (t) => {
  const app = await build(t, { MAX_CONTENT_BYTES: String(MAX_CONTENT_BYTES), RATE_LIMITS: 'off' })
  t.comment(`fast-check seed ${SEED}, ${RUNS} runs per property`)
  const seen = new Map<string, number>()
  const tally = (verdict: string) => seen.set(verdict, (seen.get(verdict) ?? 0) + 1)

  await t.test('every tool\'s arguments', async (t) => {
    let id = 1
    // Only this loop touches the database, so the state after one case is the state before the next.
    let before = (await inspect(app)).fingerprint
    await fc.assert(fc.asyncProperty(toolCase, async (call) => {
      const response = await app.inject({ method: 'POST', url: '/mcp', headers: HEADERS_BASE, payload: JSON.stringify({ jsonrpc: '2.0', id: id++, method: 'tools/call', params: call }) })
      const verdict = verdictOf(response)
      tally(`${call.name} ${verdict}`)
      const after = await inspect(app)
      const unchanged = after.fingerprint === before
      before = after.fingerprint
      if (verdict !== 'ok' || READ_ONLY.has(call.name)) {
        if (!unchanged) throw new Error(`${verdict === 'ok' ? 'a read-only call' : `a refusal (${verdict})`} changed the database`)
      } else if (after.halfWrites !== 0) {
        throw new Error('an accepted call left an entry out of step with its history')
      }
    }), { seed: SEED, numRuns: RUNS })
    const accepted = [...seen].filter(([verdict]) => verdict.endsWith(' ok')).reduce((sum, [, n]) => sum + n, 0)
    t.ok(accepted > 0 && accepted < RUNS, `accepted and refused calls both generated (${accepted} accepted of ${RUNS})`)
  })

  await t.test('the raw HTTP request: body, headers, method', async (t) => {
    const bytes = fc.uint8Array({ maxLength: 200 }).map((array) => Buffer.from(array))
    const json = fc.jsonValue({ maxDepth: 4 }).map((value) => JSON.stringify(value))
    const envelope = fc.record({
      jsonrpc: fc.oneof(fc.constant('2.0'), junk),
      id: fc.oneof(fc.integer(), fc.string({ maxLength: 10 }), junk),
      method: fc.oneof(fc.constantFrom('tools/call', 'tools/list', 'ping', 'initialize', 'resources/list', 'notifications/initialized'), fc.string({ maxLength: 20 })),
      params: fc.oneof(toolCase, junk)
    }, { requiredKeys: [] }).map((value) => JSON.stringify(value))
    const nested = fc.integer({ min: 1, max: 100_000 }).map((depth) => '['.repeat(depth) + ']'.repeat(depth))
    const oversized = fc.constant(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'write_context', arguments: { key: 'a', content: 'x'.repeat(MAX_CONTENT_BYTES * 6 + 70 * 1024) } } }))
    const body = fc.oneof(
      { weight: 3, arbitrary: envelope },
      { weight: 2, arbitrary: json },
      { weight: 2, arbitrary: bytes },
      { weight: 1, arbitrary: nested },
      { weight: 1, arbitrary: fc.constant('') },
      { weight: 1, arbitrary: oversized }
    )
    const headerValue = fc.string({ maxLength: 40 }).filter((value) => /^[\x20-\x7e]*$/.test(value))
    const headers = fc.record({
      'content-type': fc.oneof({ weight: 6, arbitrary: fc.constant('application/json') }, fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x'), headerValue),
      accept: fc.oneof({ weight: 4, arbitrary: fc.constant('application/json, text/event-stream') }, fc.constantFrom('application/json, text/event-stream', 'application/json', 'text/event-stream', '*/*'), headerValue),
      authorization: fc.oneof({ weight: 4, arbitrary: fc.constant(`Bearer ${TEST_TOKEN}`) }, { weight: 1, arbitrary: headerValue }, { weight: 1, arbitrary: headerValue.map((value) => `Bearer ${value}`) }),
      'mcp-protocol-version': fc.oneof(fc.constantFrom('2025-06-18', '2025-11-25', '2026-07-28', '2024-11-05'), headerValue),
      'mcp-session-id': headerValue,
      'x-forwarded-for': headerValue,
      origin: fc.oneof({ weight: 6, arbitrary: fc.constant('http://localhost') }, fc.constantFrom('https://evil.example', 'null'), headerValue),
      extra: fc.tuple(fc.stringMatching(/^[a-z][a-z-]{0,15}$/), headerValue)
    }, { requiredKeys: [] })
    const method = fc.oneof({ weight: 8, arbitrary: fc.constant('POST' as const) }, { weight: 1, arbitrary: fc.constantFrom('GET' as const, 'DELETE' as const, 'PUT' as const, 'PATCH' as const, 'OPTIONS' as const) })

    // Requests refused before they reach a tool are checked together (the database before and
    // after the run, with no accepted call between); those that reach the MCP layer one by one.
    let reachedTools = 0
    const start = await fingerprint(app)
    await fc.assert(fc.asyncProperty(method, body, headers, async (verb, payload, given) => {
      const { extra, ...named } = given
      const all: Record<string, string> = { ...HEADERS_BASE, ...named }
      if (extra !== undefined && !(extra[0] in all)) all[extra[0]] = extra[1]
      const before = reachedTools === 0 ? start : await fingerprint(app)
      const response = await app.inject({ method: verb, url: '/mcp', headers: all, ...(verb !== 'GET' && verb !== 'OPTIONS' && { payload }) })
      const verdict = verdictOf(response)
      tally(`http ${response.statusCode} ${verdict}`)
      if (response.statusCode !== 200 && response.statusCode !== 202) return
      reachedTools++
      if (verdict !== 'ok' && await fingerprint(app) !== before) throw new Error(`a refusal (${verdict}) changed the database`)
      if (await halfWrites(app) !== 0) throw new Error('an entry is out of step with its history')
    }), { seed: SEED, numRuns: RUNS })
    if (reachedTools === 0) t.equal(await fingerprint(app), start, 'the refused requests changed nothing')
    else t.equal(await halfWrites(app), 0, 'no entry out of step with its history')
    t.pass(`${RUNS} raw requests`)
  })

  t.comment([...seen].sort().map(([verdict, n]) => `${verdict}: ${n}`).join('; '))
})
