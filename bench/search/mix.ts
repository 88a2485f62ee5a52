import autocannon, { type Context, type Instance, type RequestParams } from 'autocannon'
import { percentile, runPacedCalls, stopPaced } from '../paced.js'
import { generateNotes, generateQuery, seededRandom, withTypo } from '../../test/fixtures/notes.js'

// The search mix: 70% search_context (generated queries, 15% with a typo, some with a prefix or
// tag filter), 20% list_context (a project/kind prefix or a tag), 10% write_context (a new note's
// text over an existing key, so that the search index changes under the readers). Every answer is
// checked; latencies are timed by the checker, from building the request to its answer.
//
// Two ways of sending: runMix (autocannon, each connection sends its next call when the last is
// answered: the capacity) and runPaced (a fixed rate, evenly spaced, bench/paced.ts: where the
// targets are judged).

export type MixTool = 'search_context' | 'list_context' | 'write_context'
export const MIX_TOOLS: MixTool[] = ['search_context', 'list_context', 'write_context']

const SHARES: Array<[MixTool, number]> = [['search_context', 0.7], ['list_context', 0.2], ['write_context', 0.1]]
const TYPO_SHARE = 0.15
const PROJECTS = ['atlas', 'beacon', 'cobalt', 'delta', 'ember', 'fjord', 'garnet', 'harbor', 'iris', 'juniper']
const KINDS = ['decisions', 'meetings', 'debugging', 'runbooks', 'todo', 'snippets']
const TAGS = ['db', 'deploy', 'auth', 'ui', 'tests', 'product', 'security', 'ops']
const MAX_SAMPLES = 5

export const MCP_HEADERS = {
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
  'mcp-protocol-version': '2025-11-25'
}

export interface Target { url: string, headers: Record<string, string> }

export interface Call {
  id: number
  tool: MixTool
  args: Record<string, unknown>
  body: string
}

export interface ToolStats { count: number, p50Ms: number, p99Ms: number, errors: number }

export interface MixResult {
  requestsPerSecond: number
  responses: number
  byTool: Record<MixTool, ToolStats>
  /** Timeouts and connection errors autocannon saw. */
  transportErrors: number
  /**
   * runMix: autocannon's p99 over every request. runPaced: the p99 over every request of the time
   * from when it was due to be sent to its answer, so a call that waited for a free connection
   * counts its wait (no coordinated omission); its per-tool figures are timed the same way.
   */
  correctedP99Ms: number
  /** runPaced: the p99 and the longest of how long a call waited, past its due time, for a free connection. */
  sendWait?: { p99Ms: number, maxMs: number }
  samples: string[]
}

/** Each connection sends its next call as soon as the last is answered (saturation). */
export interface MixOptions { durationSeconds: number, connections: number, seed: number }
/** `rate` calls a second, evenly spaced, over at most `connections` keep-alive connections. */
export interface PacedOptions { durationSeconds: number, connections: number, seed: number, rate: number }

/** Makes the calls of one run, deterministically from `seed`; writes go to the seeded `keys`. */
export function callMaker (keys: readonly string[], seed: number): () => Call {
  const random = seededRandom(seed)
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T
  let nextId = 1
  let written = 0
  return () => {
    const roll = random()
    let tool: MixTool = 'write_context'
    let sum = 0
    for (const [name, share] of SHARES) {
      sum += share
      if (roll < sum) { tool = name; break }
    }
    let args: Record<string, unknown>
    if (tool === 'search_context') {
      const query = generateQuery(random)
      args = { query: random() < TYPO_SHARE ? withTypo(query, random) : query, limit: 10 }
      const filter = random()
      if (filter < 0.15) args.prefix = `${pick(PROJECTS)}/`
      else if (filter < 0.25) args.tag = pick(TAGS)
    } else if (tool === 'list_context') {
      args = random() < 0.7 ? { prefix: `${pick(PROJECTS)}/${pick(KINDS)}/`, limit: 20 } : { tag: pick(TAGS), limit: 20 }
    } else {
      const [note] = generateNotes(1, seed * 1_000_003 + written++)
      args = { key: pick(keys), content: note?.content ?? 'note', tags: note?.tags ?? [] }
    }
    const id = nextId++
    return { id, tool, args, body: JSON.stringify({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: tool, arguments: args } }) }
  }
}

/** What is wrong with an answer, if anything. */
function problemOf (status: number, body: string, call: Call): string | undefined {
  if (status !== 200) return `HTTP ${status}`
  let message: { id?: unknown, result?: { isError?: boolean, structuredContent?: Record<string, unknown> } }
  try {
    message = JSON.parse(body) as typeof message
  } catch {
    return 'not JSON'
  }
  if (message.id !== call.id) return 'wrong id'
  const result = message.result
  if (result === undefined) return 'no result'
  if (result.isError === true) return 'tool error'
  const output = result.structuredContent
  if (call.tool === 'write_context') return typeof output?.version === 'number' ? undefined : 'write without version'
  return Array.isArray(output?.items) ? undefined : `${call.tool} without items`
}

let current: Instance | undefined

export function stopMix (): void {
  current?.stop()
  stopPaced()
}

export async function runMix (target: Target, keys: readonly string[], options: MixOptions): Promise<MixResult> {
  const makeCall = callMaker(keys, options.seed)
  const durations: Record<MixTool, number[]> = { search_context: [], list_context: [], write_context: [] }
  const errors: Record<MixTool, number> = { search_context: 0, list_context: 0, write_context: 0 }
  const samples: string[] = []
  // One request per connection at a time, so a connection's context holds the call answered next.
  const setupRequest = (request: RequestParams, context: Context): RequestParams => {
    const call = makeCall()
    context.call = call
    context.sentAt = performance.now()
    return { ...request, body: call.body }
  }
  const onResponse = (status: number, body: string, context: Context): void => {
    const call = context.call as Call
    durations[call.tool].push(performance.now() - (context.sentAt as number))
    const problem = problemOf(status, body, call)
    if (problem === undefined) return
    errors[call.tool]++
    if (samples.length < MAX_SAMPLES) samples.push(`${call.tool}: ${problem}: ${body.slice(0, 200)}`)
  }
  current = autocannon({
    url: target.url,
    connections: options.connections,
    duration: options.durationSeconds,
    timeout: 10,
    method: 'POST',
    headers: { ...MCP_HEADERS, ...target.headers },
    requests: [{ method: 'POST', setupRequest, onResponse }]
  })
  const result = await current
  current = undefined
  const byTool = Object.fromEntries(MIX_TOOLS.map((tool) => {
    const sorted = durations[tool].sort((a, b) => a - b)
    return [tool, { count: sorted.length, p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99), errors: errors[tool] }]
  })) as Record<MixTool, ToolStats>
  return {
    requestsPerSecond: result.requests.average,
    responses: MIX_TOOLS.reduce((sum, tool) => sum + byTool[tool].count, 0),
    byTool,
    transportErrors: result.errors,
    correctedP99Ms: result.latency.p99,
    samples
  }
}

/** The mix at a fixed rate (bench/paced.ts): each call timed from when it was due to its answer. */
export async function runPaced (target: Target, keys: readonly string[], options: PacedOptions): Promise<MixResult> {
  const makeCall = callMaker(keys, options.seed)
  // Only each call's tool is kept past its answer: a round's calls and their bodies, kept, were
  // the bench process's own garbage to scan.
  const tools: MixTool[] = []
  const durations: Record<MixTool, number[]> = { search_context: [], list_context: [], write_context: [] }
  const errors: Record<MixTool, number> = { search_context: 0, list_context: 0, write_context: 0 }
  const result = await runPacedCalls({
    url: target.url,
    headers: { ...MCP_HEADERS, ...target.headers },
    rate: options.rate,
    durationSeconds: options.durationSeconds,
    connections: options.connections,
    next: (index) => {
      const call = makeCall()
      tools[index] = call.tool
      return {
        body: call.body,
        check: (status, body) => {
          const problem = problemOf(status, body, call)
          return problem === undefined ? undefined : `${call.tool}: ${problem}`
        }
      }
    },
    onAnswer: (index, ms, problem) => {
      const tool = tools[index] as MixTool
      durations[tool].push(ms)
      if (problem !== undefined) errors[tool]++
    }
  })
  const byTool = Object.fromEntries(MIX_TOOLS.map((tool) => {
    const sorted = durations[tool].sort((a, b) => a - b)
    return [tool, { count: sorted.length, p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99), errors: errors[tool] }]
  })) as Record<MixTool, ToolStats>
  return {
    requestsPerSecond: result.requestsPerSecond,
    responses: result.latenciesMs.length,
    byTool,
    transportErrors: result.transportErrors,
    correctedP99Ms: percentile(result.latenciesMs, 0.99),
    sendWait: { p99Ms: percentile(result.sendWaitsMs, 0.99), maxMs: result.sendWaitsMs.at(-1) ?? 0 },
    samples: result.samples
  }
}
