import type { TcpProxy } from '../tcp-proxy.js'
import type { Op, OpInput, OpKind, Outcome } from './linearizability.js'

// The linearizability workload: clients running random operations on a few hot keys against
// several server instances over HTTP, while a fault injector cuts or stalls random instances'
// database connections. Every operation's invocation and completion time is recorded.

export interface Target {
  /** http://host:port of one server instance. */
  base: string
  /** The proxy between that instance and the database. */
  proxy: TcpProxy
}

export interface WorkloadOptions {
  targets: Target[]
  token: string
  clients: number
  keys: string[]
  durationMs: number
  /** Pause between faults; each fault lasts 100–faultMaxMs. 0: no faults. */
  faultEveryMs: number
  faultMaxMs?: number
  seed: number
  /** A call still unanswered after this long counts as unknown. */
  callTimeoutMs?: number
}

export interface WorkloadResult {
  history: Op[]
  faults: { cuts: number, stalls: number }
}

/** mulberry32: a small seeded generator, so that a run's choices follow from its seed. */
export function seededRandom (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export const OP_AGENT = 'lin-op-'

const TOOL: Record<OpKind, string> = { read: 'read_context', write: 'write_context', append: 'append_context', delete: 'delete_context', restore: 'restore_context' }

interface Sent { status: number, body: { result?: { isError?: boolean, structuredContent?: Record<string, unknown>, _meta?: Record<string, unknown> }, error?: { data?: { code?: string } } } }

function outcomeOf (kind: OpKind, response: Sent): Outcome {
  const result = response.body.result
  if (result === undefined) return { type: 'unknown', why: `HTTP ${response.status} ${response.body.error?.data?.code ?? ''}`.trim() }
  if (result.isError === true) {
    const code = (result._meta?.['shared-context-mcp/error'] as { code?: string } | undefined)?.code
    if (code === 'CTX_2001' || code === 'CTX_2002') return { type: 'error', code }
    return { type: 'unknown', why: `tool error ${code ?? '?'}` }
  }
  const out = result.structuredContent ?? {}
  const version = Number(kind === 'delete' ? out.deleted_version : out.version)
  return { type: 'ok', version, ...(kind === 'read' && { content: String(out.content) }) }
}

/** Runs the workload and returns its history. Calls use real HTTP, one connection pool per client. */
export async function runWorkload (options: WorkloadOptions): Promise<WorkloadResult> {
  const random = seededRandom(options.seed)
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T
  const history: Op[] = []
  const faults = { cuts: 0, stalls: 0 }
  const callTimeoutMs = options.callTimeoutMs ?? 10_000
  const deadline = performance.now() + options.durationMs
  let nextId = 0
  let rpcId = 1

  async function call (client: number, instance: number, key: string, kind: OpKind, input: OpInput): Promise<Op> {
    const args: Record<string, unknown> = { key }
    if (input.content !== undefined) args.content = input.content
    if (input.separator !== undefined) args.separator = input.separator
    if (input.expectedVersion !== undefined) args.expected_version = input.expectedVersion
    if (input.version !== undefined) args.version = input.version
    const target = options.targets[instance] as Target
    const id = nextId++
    const invokedAt = performance.now()
    let outcome: Outcome
    try {
      const response = await fetch(`${target.base}/mcp`, {
        method: 'POST',
        // The server records the first token of User-Agent as the client of each version it
        // writes: it names the operation, so that resolveUnknown can find what it did.
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${options.token}`, 'user-agent': `${OP_AGENT}${id}` },
        body: JSON.stringify({ jsonrpc: '2.0', id: rpcId++, method: 'tools/call', params: { name: TOOL[kind], arguments: args } }),
        signal: AbortSignal.timeout(callTimeoutMs)
      })
      const text = await response.text()
      let body: Sent['body'] = {}
      try { body = JSON.parse(text) as Sent['body'] } catch { body = {} }
      outcome = outcomeOf(kind, { status: response.status, body })
    } catch (error) {
      outcome = { type: 'unknown', why: (error as Error).name }
    }
    const completedAt = outcome.type === 'unknown' ? Infinity : performance.now()
    return { id, client, key, kind, input, invokedAt, completedAt, outcome, instance }
  }

  async function client (id: number): Promise<void> {
    let n = 0
    const lastSeen = new Map<string, number>()
    while (performance.now() < deadline) {
      const key = pick(options.keys)
      const instance = Math.floor(random() * options.targets.length)
      const roll = random()
      const known = lastSeen.get(key)
      const tag = `${id}.${n++}`
      let kind: OpKind
      let input: OpInput = {}
      if (roll < 0.35) kind = 'read'
      else if (roll < 0.55) {
        kind = 'write'
        const cas = random()
        input = { content: `w${tag}`, ...(cas < 0.4 && known !== undefined ? { expectedVersion: known } : cas < 0.5 ? { expectedVersion: 0 } : {}) }
      } else if (roll < 0.72) {
        kind = 'append'
        input = { content: `a${tag}`, separator: '+' }
      } else if (roll < 0.84) {
        kind = 'delete'
        input = random() < 0.5 && known !== undefined ? { expectedVersion: known } : {}
      } else {
        kind = 'restore'
        input = { version: 1 + Math.floor(random() * Math.max(1, known ?? 3)) }
      }
      const op = await call(id, instance, key, kind, input)
      history.push(op)
      if (op.outcome.type === 'ok') lastSeen.set(key, op.outcome.version + (kind === 'delete' ? 1 : 0))
      // Long appends would make every state of the search bigger: start the key afresh now and then.
      if (op.kind === 'append' && op.outcome.type === 'ok' && random() < 0.1) history.push(await call(id, instance, key, 'write', { content: `w${tag}r` }))
    }
  }

  async function injectFaults (): Promise<void> {
    if (options.faultEveryMs <= 0) return
    const maxMs = options.faultMaxMs ?? 1500
    while (performance.now() + options.faultEveryMs < deadline) {
      await sleep(options.faultEveryMs * (0.5 + random()))
      const target = pick(options.targets)
      if (random() < 0.5) {
        faults.cuts++
        await target.proxy.cut()
      } else {
        faults.stalls++
        target.proxy.stall()
      }
      await sleep(100 + random() * (maxMs - 100))
      await target.proxy.restore()
    }
  }

  await Promise.all([injectFaults(), ...Array.from({ length: options.clients }, (_, i) => client(i))])
  return { history, faults }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** A version the database's history holds: what an operation (named by its client) did. */
export interface HistoryRow { key: string, version: number, client: string | null }

/**
 * Settles unknown outcomes from the database's own history, where each version names the
 * operation that wrote it: an unknown operation with a version took effect (at some time after it
 * was invoked: it keeps its open end) and produced that version; one without did not happen and
 * is left out, as are unknown reads, which change nothing. What is left has definite outcomes,
 * which keeps the search small; the checker still decides whether the clients' observations fit.
 * Returns the settled history and how many unknown operations were found applied.
 */
export function resolveUnknown (history: readonly Op[], rows: readonly HistoryRow[]): { history: Op[], applied: number, dropped: number } {
  const byOp = new Map<number, HistoryRow>()
  for (const row of rows) {
    if (row.client?.startsWith(OP_AGENT) === true) byOp.set(Number(row.client.slice(OP_AGENT.length)), row)
  }
  let applied = 0
  let dropped = 0
  const settled: Op[] = []
  for (const op of history) {
    if (op.outcome.type !== 'unknown') {
      settled.push(op)
      continue
    }
    const row = op.kind === 'read' ? undefined : byOp.get(op.id)
    if (row === undefined) {
      dropped++
      continue
    }
    applied++
    // A delete's history row is the tombstone, one past the deleted version its answer names.
    settled.push({ ...op, outcome: { type: 'ok', version: op.kind === 'delete' ? row.version - 1 : row.version } })
  }
  return { history: settled, applied, dropped }
}
