import { createRequire } from 'node:module'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { ConfigError, loadConfig } from '../schema/config.js'
import { errorCatalogue } from '../schema/errors.js'
import { allTools } from '../tools/index.js'
import { build, callTool, rpc, TEST_TOKEN, toolErrorOf, type ToolResult } from './helper.js'

interface Sample {
  labels?: Record<string, string>
  value?: string
}
interface Family { name: string, help: string, type: string, metrics: Sample[] }

// CommonJS without type declarations.
const parsePrometheusText = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => Family[]

const METRICS_TOKEN = 'metrics-token-0123456789abcdef0123456789'
// Part of every key, token and tool name the tests make up, so that a leak into the output shows.
const MARKER = 'zq7f3a'

interface Scrape {
  text: string
  /** Family name → its TYPE, as the parser read it. */
  types: Map<string, string>
  /** Series name (histograms: name_bucket, name_sum, name_count) → its samples. */
  series: Map<string, Sample[]>
}

/** Parses an exposition; the parser throws on any malformed line. */
function parse (text: string): Scrape {
  const families = parsePrometheusText(text)
  // The parser folds all series of a labelled histogram into one object (it keeps one set of
  // buckets and drops the labels), so read the series themselves from a second pass in which
  // histograms are declared untyped: each of _bucket, _sum and _count is then a plain sample.
  const series = new Map<string, Sample[]>()
  for (const family of parsePrometheusText(text.replace(/^# TYPE (\S+) histogram$/gm, '# TYPE $1 untyped'))) {
    series.set(family.name, [...(series.get(family.name) ?? []), ...family.metrics])
  }
  return { text, types: new Map(families.map((family) => [family.name, family.type])), series }
}

async function scrape (t: Test, app: FastifyInstance, headers: Record<string, string> = {}): Promise<Scrape> {
  const response = await app.inject({ method: 'GET', url: '/metrics', headers })
  t.equal(response.statusCode, 200, 'GET /metrics answers')
  t.match(response.headers['content-type'], /^text\/plain; version=0\.0\.4/, 'in the Prometheus text format')
  const scraped = parse(response.body)
  const declared = response.body.split('\n').filter((line) => line.startsWith('# TYPE ')).length
  t.ok(declared > 0 && scraped.types.size === declared, 'the parser reads every metric family the output declares')
  return scraped
}

function valueOf (scraped: Scrape, name: string, labels: Record<string, string> = {}): number | undefined {
  const sample = scraped.series.get(name)?.find((candidate) =>
    Object.entries(labels).every(([label, value]) => candidate.labels?.[label] === value))
  return sample?.value === undefined ? undefined : Number(sample.value)
}

function countOf (scraped: Scrape, histogram: string, labels: Record<string, string>): number | undefined {
  return valueOf(scraped, `${histogram}_count`, labels)
}

function labelValues (scraped: Scrape, name: string, label: string): string[] {
  return [...new Set((scraped.series.get(name) ?? []).flatMap((sample) => sample.labels?.[label] ?? []))].sort()
}

function errorCodeOf (result: ToolResult): unknown {
  return toolErrorOf(result)?.code
}

test('GET /metrics after tool calls, refused tokens and a rate-limited call', async (t) => {
  const app = await build(t, { RATE_LIMITS: 'writer=5/m; ip=300/m' })

  // Five calls: the static token's tier (writer) allows five a minute.
  t.equal(errorCodeOf(await callTool(app, 'write_context', { key: 'metrics/entry', content: 'hello' })), undefined)
  t.equal(errorCodeOf(await callTool(app, 'read_context', { key: 'metrics/entry' })), undefined)
  t.equal(errorCodeOf(await callTool(app, 'read_context', { key: `metrics/${MARKER}` })), 'CTX_2001')
  t.equal(errorCodeOf(await callTool(app, 'write_context', { key: `bad key ${MARKER}`, content: 'x' })), 'REQ_1101')
  const unknownTool = await rpc(app, 'tools/call', { name: `exfiltrate_${MARKER}`, arguments: {} })
  t.equal((unknownTool.json() as { error?: { data?: { code?: string } } }).error?.data?.code, 'REQ_1101')
  t.equal((await rpc(app, 'tools/call', { name: 'list_context', arguments: {} })).statusCode, 429, 'the sixth call is rate limited')
  t.equal((await rpc(app, 'tools/list', {}, { token: null })).statusCode, 401)
  t.equal((await rpc(app, 'tools/list', {}, { token: `wrong-${MARKER}-0123456789abcdef0123456789` })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: `/nothing/${MARKER}` })).statusCode, 404)

  const scraped = await scrape(t, app)
  t.notMatch(scraped.text, MARKER, 'no key, tool name, token or path a client sent appears in the output')

  const calls = 'scm_tool_calls_total'
  t.equal(scraped.types.get(calls), 'COUNTER')
  t.equal(valueOf(scraped, calls, { tool: 'write_context', outcome: 'ok' }), 1)
  t.equal(valueOf(scraped, calls, { tool: 'read_context', outcome: 'ok' }), 1)
  t.equal(valueOf(scraped, calls, { tool: 'read_context', outcome: 'CTX_2001' }), 1)
  t.equal(valueOf(scraped, calls, { tool: 'write_context', outcome: 'REQ_1101' }), 1)
  t.equal(valueOf(scraped, calls, { tool: 'unknown', outcome: 'REQ_1101' }), 1, 'a tool the server does not offer is counted as "unknown"')
  t.equal(valueOf(scraped, calls, { tool: 'list_context', outcome: 'ok' }), 0, 'the rate-limited call never reached its tool')
  t.same(labelValues(scraped, calls, 'tool'), [...allTools.map((tool) => tool.name), 'unknown'].sort(), 'tool labels come from the fixed list')
  const outcomes = new Set(['ok', 'other', ...Object.keys(errorCatalogue)])
  t.ok(labelValues(scraped, calls, 'outcome').every((outcome) => outcomes.has(outcome)), 'outcome labels are "ok", "other" or catalogue codes')

  const duration = 'scm_tool_call_duration_seconds'
  t.equal(scraped.types.get(duration), 'HISTOGRAM')
  t.equal(countOf(scraped, duration, { tool: 'read_context' }), 2)
  t.equal(countOf(scraped, duration, { tool: 'write_context' }), 2)
  t.equal(countOf(scraped, duration, { tool: 'unknown' }), 1)
  t.equal(countOf(scraped, duration, { tool: 'delete_context' }), 0, 'every offered tool has a series from the start')
  t.ok(valueOf(scraped, `${duration}_sum`, { tool: 'read_context' })! > 0, 'durations are recorded')
  t.equal(valueOf(scraped, `${duration}_bucket`, { tool: 'read_context', le: '+Inf' }), 2)
  t.equal(valueOf(scraped, `${duration}_bucket`, { tool: 'read_context', le: '10' }), 2, 'both calls in the 10 s bucket')
  const buckets = (scraped.series.get(`${duration}_bucket`) ?? []).filter((sample) => sample.labels?.tool === 'read_context').map((sample) => Number(sample.value))
  t.ok(buckets.length > 2 && buckets.every((count, index) => index === 0 || count >= (buckets[index - 1] as number)), 'buckets are cumulative')

  const requests = 'scm_http_requests_total'
  t.equal(valueOf(scraped, requests, { route: '/mcp', status: '200' }), 5)
  t.equal(valueOf(scraped, requests, { route: '/mcp', status: '429' }), 1)
  t.equal(valueOf(scraped, requests, { route: '/mcp', status: '401' }), 2)
  t.equal(valueOf(scraped, requests, { route: 'unmatched', status: '404' }), 1, 'paths no route matched share one label')

  t.equal(valueOf(scraped, 'scm_rate_limited_total', { limiter: 'principal' }), 1)
  t.equal(valueOf(scraped, 'scm_rate_limited_total', { limiter: 'address' }), 0)
  t.equal(valueOf(scraped, 'scm_auth_failures_total', { code: 'AUTH_1001' }), 1)
  t.equal(valueOf(scraped, 'scm_auth_failures_total', { code: 'AUTH_1002' }), 1)
  t.equal(valueOf(scraped, 'scm_auth_failures_total', { code: 'AUTH_1003' }), 0)

  const operations = 'scm_db_operation_duration_seconds'
  t.equal(countOf(scraped, operations, { operation: 'write' }), 1, 'the invalid write never reached the store')
  t.equal(countOf(scraped, operations, { operation: 'read' }), 2)
  t.equal(valueOf(scraped, `${operations}_bucket`, { operation: 'read', le: '+Inf' }), 2)
  t.ok(valueOf(scraped, `${operations}_sum`, { operation: 'read' })! > 0, 'store durations are recorded')
  t.equal(countOf(scraped, operations, { operation: 'findApiTokenByHash' }), 1, 'the unknown token was looked up once')
  t.equal(valueOf(scraped, 'scm_db_pool_max'), 10)
  t.equal(valueOf(scraped, 'scm_db_operations_in_flight'), 0)
  t.equal(valueOf(scraped, 'scm_mcp_open_streams'), 0)

  t.ok(valueOf(scraped, 'process_cpu_user_seconds_total')! > 0, 'process metrics')
  t.equal(scraped.types.get('nodejs_eventloop_lag_seconds'), 'GAUGE', 'Node.js runtime metrics')
})

test('open streams and store operations in flight while a call waits on the database', async (t) => {
  const app = await build(t)
  await callTool(app, 'write_context', { key: 'metrics/locked', content: 'first' })

  let release = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  let lockTaken = () => {}
  const locked = new Promise<void>((resolve) => { lockTaken = resolve })
  const transaction = app.db.sql.begin(async (sql) => {
    await sql`select version from context_entries where namespace = 'default' and key = 'metrics/locked' for update`
    lockTaken()
    await held
  })
  await locked
  const pending = callTool(app, 'write_context', { key: 'metrics/locked', content: 'second' })

  let during: Scrape | undefined
  for (let attempt = 0; attempt < 1000 && during === undefined; attempt++) {
    const scraped = await scrape(t, app)
    if (valueOf(scraped, 'scm_db_operations_in_flight') === 1) during = scraped
    else await sleep(20)
  }
  t.ok(during !== undefined, 'the blocked write shows as a store operation in flight')
  t.equal(during === undefined ? undefined : valueOf(during, 'scm_mcp_open_streams'), 1, 'and as one open /mcp exchange')

  release()
  await transaction
  t.equal(errorCodeOf(await pending), undefined, 'the write completes once the lock is gone')
  const after = await scrape(t, app)
  t.equal(valueOf(after, 'scm_db_operations_in_flight'), 0)
  t.equal(valueOf(after, 'scm_mcp_open_streams'), 0)
  t.equal(countOf(after, 'scm_db_operation_duration_seconds', { operation: 'write' }), 2)
})

test('METRICS_TOKEN protects /metrics', async (t) => {
  const app = await build(t, { METRICS_TOKEN })

  const missing = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(missing.statusCode, 401)
  t.equal(missing.json().error.code, 'AUTH_1001')
  t.match(missing.headers['www-authenticate'], /^Bearer /)
  for (const token of [`${METRICS_TOKEN.slice(0, -1)}x`, TEST_TOKEN]) {
    const wrong = await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${token}` } })
    t.equal(wrong.statusCode, 401, 'another token is refused, the MCP token too')
    t.equal(wrong.json().error.code, 'AUTH_1002')
  }

  const scraped = await scrape(t, app, { authorization: `Bearer ${METRICS_TOKEN}` })
  t.equal(valueOf(scraped, 'scm_auth_failures_total', { code: 'AUTH_1001' }), 1)
  t.equal(valueOf(scraped, 'scm_auth_failures_total', { code: 'AUTH_1002' }), 2)
  t.equal(valueOf(scraped, 'scm_http_requests_total', { route: '/metrics', status: '401' }), 3)
})

test('METRICS_TOKEN must be at least 32 characters and is never echoed', async (t) => {
  const secret = `short-${MARKER}`
  const error = t.throws(() => loadConfig({ METRICS_TOKEN: secret })) as unknown
  t.ok(error instanceof ConfigError)
  const problems = (error as ConfigError).problems
  t.ok(problems.some((problem) => problem.startsWith('METRICS_TOKEN')), 'the problem names the variable')
  t.notMatch(problems.join('\n'), MARKER, 'the value is not shown')
  t.equal(loadConfig({ METRICS_TOKEN }).METRICS_TOKEN, METRICS_TOKEN)
})

test('each app counts on its own registry', async (t) => {
  const [first, second] = await Promise.all([build(t), build(t, { CORS_ORIGINS: 'https://app.example' })])
  await callTool(first, 'write_context', { key: 'metrics/one', content: 'x' })
  const preflight = await second.inject({
    method: 'OPTIONS',
    url: '/mcp',
    headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' }
  })
  t.equal(preflight.statusCode, 204)

  const firstScrape = await scrape(t, first)
  const secondScrape = await scrape(t, second)
  t.equal(valueOf(firstScrape, 'scm_tool_calls_total', { tool: 'write_context', outcome: 'ok' }), 1)
  t.equal(valueOf(secondScrape, 'scm_tool_calls_total', { tool: 'write_context', outcome: 'ok' }), 0)
  t.equal(valueOf(secondScrape, 'scm_http_requests_total', { route: '*', status: '204' }), 1, 'CORS preflights are counted under their route pattern')
  t.equal(valueOf(firstScrape, 'scm_http_requests_total', { route: '*', status: '204' }), undefined)
})

test('bound to a non-loopback host without METRICS_TOKEN, /metrics is refused rather than public', async (t) => {
  const app = await build(t, { HOST: '0.0.0.0' })
  const response = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(response.statusCode, 403)
  t.equal(response.json().error.code, 'AUTH_1005')
  t.match(response.json().error.message, 'METRICS_TOKEN')
  const withToken = await build(t, { HOST: '0.0.0.0', METRICS_TOKEN: 'metrics-token-0123456789abcdef0123456789' })
  t.equal((await withToken.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer metrics-token-0123456789abcdef0123456789' } })).statusCode, 200)
})
