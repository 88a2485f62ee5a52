import { Agent, request as httpRequest } from 'node:http'
import autocannon, { type Context, type Instance, type RequestParams } from 'autocannon'
import { generateNotes, generateQuery, seededRandom, withTypo, type Note } from '../../test/fixtures/notes.js'

// The search mix: 70% search_context (generated queries, 15% with a typo, some with a prefix or
// tag filter), 20% list_context (a project/kind prefix or a tag), 10% write_context (a new note's
// text over an existing key, so that the search index changes under the readers). Every answer is
// checked; latencies are timed by the checker, from building the request to its answer.
//
// Two ways of sending: runMix (autocannon, each connection sends its next call when the last is
// answered: the capacity) and runPaced (a fixed rate, evenly spaced: where the targets are judged).
// autocannon's own fixed rate (overallRate) is no fixed rate: each connection sends its quota for
// the second back to back, then waits for the next second, so at half the capacity every
// connection ran saturated for the first half of each second and idled for the second, and
// latencies were those of saturation.

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

function percentile (sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
}

/** Makes the calls of one run, deterministically from `seed`. */
export function callMaker (notes: Note[], seed: number): () => Call {
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
      args = { key: pick(notes).key, content: note?.content ?? 'note', tags: note?.tags ?? [] }
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
  pacedStop.requested = true
}

export async function runMix (target: Target, notes: Note[], options: MixOptions): Promise<MixResult> {
  const makeCall = callMaker(notes, options.seed)
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

const pacedStop = { requested: false }

/**
 * The mix at a fixed rate: call i is due at start + i / rate, sent then on a free connection of at
 * most `connections` (or, when all are busy, on the first to come free), and timed from when it
 * was due to its answer.
 */
export async function runPaced (target: Target, notes: Note[], options: PacedOptions): Promise<MixResult> {
  pacedStop.requested = false
  const makeCall = callMaker(notes, options.seed)
  const url = new URL(target.url)
  const agent = new Agent({ keepAlive: true, maxSockets: options.connections, maxFreeSockets: options.connections })
  const durations: Record<MixTool, number[]> = { search_context: [], list_context: [], write_context: [] }
  const errors: Record<MixTool, number> = { search_context: 0, list_context: 0, write_context: 0 }
  const all: number[] = []
  const waits: number[] = []
  const samples: string[] = []
  let transportErrors = 0
  let inFlight = 0
  const queue: Array<{ call: Call, dueAt: number }> = []
  let settle: () => void = () => {}
  const drained = new Promise<void>((resolve) => { settle = resolve })
  let scheduling = true

  const finish = (call: Call, dueAt: number, status: number, body: string): void => {
    const ms = performance.now() - dueAt
    durations[call.tool].push(ms)
    all.push(ms)
    const problem = problemOf(status, body, call)
    if (problem !== undefined) {
      errors[call.tool]++
      if (samples.length < MAX_SAMPLES) samples.push(`${call.tool}: ${problem}: ${body.slice(0, 200)}`)
    }
  }
  const send = (call: Call, dueAt: number): void => {
    inFlight++
    waits.push(performance.now() - dueAt)
    let settled = false
    const answered = (status: number, body: string): void => {
      if (settled) return
      settled = true
      finish(call, dueAt, status, body)
      done()
    }
    const failed = (): void => {
      if (settled) return
      settled = true
      transportErrors++
      done()
    }
    const req = httpRequest({
      agent,
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      method: 'POST',
      headers: { ...MCP_HEADERS, ...target.headers, 'content-length': Buffer.byteLength(call.body) },
      timeout: 10_000
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => answered(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8')))
      res.on('error', failed)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', failed)
    req.end(call.body)
  }
  const done = (): void => {
    inFlight--
    const waiting = queue.shift()
    if (waiting !== undefined) send(waiting.call, waiting.dueAt)
    else if (!scheduling && inFlight === 0) settle()
  }

  const started = performance.now()
  const total = Math.round(options.rate * options.durationSeconds)
  const interval = 1000 / options.rate
  let sent = 0
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now()
      while (sent < total && started + sent * interval <= now && !pacedStop.requested) {
        const dueAt = started + sent * interval
        const call = makeCall()
        sent++
        if (inFlight < options.connections) send(call, dueAt)
        else queue.push({ call, dueAt })
      }
      if (sent >= total || pacedStop.requested) { resolve(); return }
      setTimeout(tick, Math.max(0, started + sent * interval - performance.now()))
    }
    tick()
  })
  scheduling = false
  if (inFlight > 0 || queue.length > 0) await drained
  const elapsedSeconds = (performance.now() - started) / 1000
  agent.destroy()

  const byTool = Object.fromEntries(MIX_TOOLS.map((tool) => {
    const sorted = durations[tool].sort((a, b) => a - b)
    return [tool, { count: sorted.length, p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99), errors: errors[tool] }]
  })) as Record<MixTool, ToolStats>
  const sortedWaits = waits.sort((a, b) => a - b)
  return {
    requestsPerSecond: all.length / elapsedSeconds,
    responses: all.length,
    byTool,
    transportErrors,
    correctedP99Ms: percentile(all.sort((a, b) => a - b), 0.99),
    sendWait: { p99Ms: percentile(sortedWaits, 0.99), maxMs: sortedWaits.at(-1) ?? 0 },
    samples
  }
}
