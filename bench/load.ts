import autocannon, { type Context, type Instance, type RequestParams } from 'autocannon'
import { checkAnswer, makeCall, type Call, type ToolName, type Verdict } from './calls.js'

export interface Target {
  url: string
  /** Extra headers, e.g. Authorization. */
  headers: Record<string, string>
}

export interface LoadOptions {
  durationSeconds: number
  connections: number
  keys: number
  writeRatio: number
}

export interface ErrorCounts {
  non2xx: number
  badBody: number
  toolError: number
  timeouts: number
  connectionErrors: number
  /** Responses autocannon saw but the validator did not (should always be 0). */
  unchecked: number
}

export interface ToolLatency {
  count: number
  p50Ms: number
  p99Ms: number
}

export interface LoadResult {
  requestsPerSecond: number
  /** Over all calls, measured by the validator (autocannon's own percentiles are whole milliseconds). */
  p50Ms: number
  p99Ms: number
  /** autocannon's percentiles, for comparison. */
  autocannonP50Ms: number
  autocannonP99Ms: number
  responses: number
  errors: ErrorCounts
  totalErrors: number
  /** Latency by tool, measured by the validator (from building the request to its answer). */
  byTool: Record<ToolName, ToolLatency>
  /** The first few problems, verbatim. */
  samples: string[]
}

export const MCP_HEADERS = {
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
  'mcp-protocol-version': '2025-11-25'
}

const MAX_SAMPLES = 5

function percentile (sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
}

function latencyOf (durations: number[]): ToolLatency {
  const sorted = durations.sort((x, y) => x - y)
  return { count: sorted.length, p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99) }
}

let current: Instance | undefined

/** Stops a run in progress (Ctrl-C). */
export function stopLoad (): void {
  current?.stop()
}

export async function runLoad (target: Target, options: LoadOptions): Promise<LoadResult> {
  const counts: Record<Verdict, number> = { ok: 0, non2xx: 0, 'bad-body': 0, 'tool-error': 0 }
  const samples: string[] = []
  const durations: Record<ToolName, number[]> = { read_context: [], write_context: [] }

  // One request per connection at a time (no pipelining), so the context autocannon keeps per
  // connection holds the call whose answer arrives next.
  const setupRequest = (request: RequestParams, context: Context): RequestParams => {
    const call = makeCall(options.keys, options.writeRatio)
    context.call = call
    context.sentAt = performance.now()
    return { ...request, body: call.body }
  }
  const onResponse = (status: number, body: string, context: Context, headers: Record<string, string | string[]>): void => {
    const call = context.call as Call
    durations[call.tool].push(performance.now() - (context.sentAt as number))
    const contentType = headers['content-type'] ?? headers['Content-Type'] ?? ''
    const check = checkAnswer(status, body, String(contentType).toLowerCase(), call)
    counts[check.verdict]++
    if (check.detail !== undefined && samples.length < MAX_SAMPLES) samples.push(`${call.tool} ${call.key}: ${check.detail}`)
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

  const seen = result['1xx'] + result['2xx'] + result['3xx'] + result['4xx'] + result['5xx']
  const checked = counts.ok + counts.non2xx + counts['bad-body'] + counts['tool-error']
  const errors: ErrorCounts = {
    non2xx: counts.non2xx,
    badBody: counts['bad-body'],
    toolError: counts['tool-error'],
    timeouts: result.timeouts,
    connectionErrors: result.errors - result.timeouts,
    unchecked: Math.max(0, seen - checked)
  }
  const all = latencyOf([...durations.read_context, ...durations.write_context])
  return {
    requestsPerSecond: result.requests.average,
    p50Ms: all.p50Ms,
    p99Ms: all.p99Ms,
    autocannonP50Ms: result.latency.p50,
    autocannonP99Ms: result.latency.p99,
    responses: seen,
    errors,
    totalErrors: Object.values(errors).reduce((sum, n) => sum + n, 0),
    byTool: { read_context: latencyOf(durations.read_context), write_context: latencyOf(durations.write_context) },
    samples
  }
}
