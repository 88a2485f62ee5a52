import type { ErrorCounts, LoadResult, ToolLatency } from './load.js'
import type { ServerId } from './servers.js'

// Means over rounds, the ratios between the servers, and the verdict against the targets.

/** One measured run of one server: the load's result and the server's CPU time per request. */
export interface Round extends LoadResult {
  /** The server process's utime + stime over the run, divided by the responses it gave. */
  cpuUsPerRequest: number
}

export interface ServerSummary {
  label: string
  requestsPerSecond: number
  p50Ms: number
  p99Ms: number
  cpuUsPerRequest: number
  errors: number
  warmupErrors: number
  rounds: Round[]
}

export interface Verdict {
  /** Only the ratios whose servers ran. */
  ratios: { throughputAB?: number, throughputAC?: number, p99AB?: number, p50AN?: number }
  checks: Array<{ name: string, pass: boolean }>
  pass: boolean
}

// p50AN: the budget for auth + rate limiting, a (auth on, limits on but never reached)
// against n (the same build with both off).
const TARGETS = { throughputAB: 0.8, throughputAC: 4, p99AB: 1.5, p50AN: 1.15 }

function mean (values: number[]): number {
  return values.length === 0 ? 0 : values.reduce((sum, v) => sum + v, 0) / values.length
}

export function summarise (label: string, rounds: Round[], warmup: Round): ServerSummary {
  return {
    label,
    requestsPerSecond: mean(rounds.map(r => r.requestsPerSecond)),
    p50Ms: mean(rounds.map(r => r.p50Ms)),
    p99Ms: mean(rounds.map(r => r.p99Ms)),
    cpuUsPerRequest: mean(rounds.map(r => r.cpuUsPerRequest)),
    errors: rounds.reduce((sum, r) => sum + r.totalErrors, 0),
    warmupErrors: warmup.totalErrors,
    rounds
  }
}

/** The checks whose servers ran (a and at least one other); undefined without a or without any peer. */
export function judge (s: Partial<Record<ServerId, ServerSummary>>): Verdict | undefined {
  const { a, b, c, n } = s
  if (a === undefined || (b === undefined && c === undefined && n === undefined)) return undefined
  const ratios: Verdict['ratios'] = {}
  const checks: Verdict['checks'] = []
  if (b !== undefined) {
    ratios.throughputAB = a.requestsPerSecond / b.requestsPerSecond
    ratios.p99AB = a.p99Ms / b.p99Ms
    checks.push({ name: `throughput a/b ${ratios.throughputAB.toFixed(2)} >= ${TARGETS.throughputAB}`, pass: ratios.throughputAB >= TARGETS.throughputAB })
  }
  if (c !== undefined) {
    ratios.throughputAC = a.requestsPerSecond / c.requestsPerSecond
    checks.push({ name: `throughput a/c ${ratios.throughputAC.toFixed(2)} >= ${TARGETS.throughputAC}`, pass: ratios.throughputAC >= TARGETS.throughputAC })
  }
  if (ratios.p99AB !== undefined) {
    checks.push({ name: `p99 a/b ${ratios.p99AB.toFixed(2)} <= ${TARGETS.p99AB}`, pass: ratios.p99AB <= TARGETS.p99AB })
  }
  if (n !== undefined) {
    ratios.p50AN = a.p50Ms / n.p50Ms
    checks.push({ name: `p50 a/n ${ratios.p50AN.toFixed(2)} <= ${TARGETS.p50AN}`, pass: ratios.p50AN <= TARGETS.p50AN })
  }
  // Errors anywhere void the comparison: a peer that fails fast would flatter or spoil the ratios.
  const ran = Object.entries(s).filter((entry): entry is [string, ServerSummary] => entry[1] !== undefined)
  checks.push({
    name: `errors ${ran.map(([id]) => id).join('/')} ${ran.map(([, summary]) => summary.errors).join('/')} = 0`,
    pass: ran.every(([, summary]) => summary.errors === 0)
  })
  return { ratios, checks, pass: checks.every(check => check.pass) }
}

function describeErrors (errors: ErrorCounts): string {
  const parts = Object.entries(errors).filter(([, n]) => n > 0).map(([kind, n]) => `${kind} ${n}`)
  return parts.length === 0 ? '0' : parts.join(', ')
}

function ms (latency: ToolLatency): string {
  return `${latency.p50Ms.toFixed(1)}/${latency.p99Ms.toFixed(1)} ms`
}

export function runLine (id: ServerId, label: string, round: number, r: Round): string {
  return `  round ${round} ${id} ${label.padEnd(LABEL_WIDTH)} ${r.requestsPerSecond.toFixed(0).padStart(6)} req/s  ` +
    `p50 ${r.p50Ms.toFixed(1).padStart(6)} ms  p99 ${r.p99Ms.toFixed(1).padStart(6)} ms  ` +
    `CPU ${r.cpuUsPerRequest.toFixed(0).padStart(5)} µs/req  ${r.responses} responses, errors: ${describeErrors(r.errors)}\n` +
    `      read p50/p99 ${ms(r.byTool.read_context)}, write p50/p99 ${ms(r.byTool.write_context)}`
}

const LABEL_WIDTH = 24

function row (name: string, cells: string[]): string {
  return name.padEnd(LABEL_WIDTH + 2) + cells.map(cell => cell.padStart(12)).join('')
}

/** One table: each server's means over the rounds, then each server against the floor b. */
export function table (s: Partial<Record<ServerId, ServerSummary>>, verdict: Verdict | undefined): string {
  const lines = ['', row('server', ['req/s', 'p50 ms', 'p99 ms', 'CPU µs/req', 'errors'])]
  for (const [id, summary] of Object.entries(s)) {
    if (summary === undefined) continue
    const warm = summary.warmupErrors > 0 ? ` (+${summary.warmupErrors} in warm-up)` : ''
    lines.push(row(`${id} ${summary.label}`, [summary.requestsPerSecond.toFixed(0), summary.p50Ms.toFixed(2), summary.p99Ms.toFixed(2),
      summary.cpuUsPerRequest.toFixed(0), String(summary.errors)]) + warm)
  }
  const floor = s.b
  if (floor !== undefined) {
    for (const [id, summary] of Object.entries(s)) {
      if (summary === undefined || id === 'b') continue
      lines.push(row(`${id}/b`, [summary.requestsPerSecond / floor.requestsPerSecond, summary.p50Ms / floor.p50Ms,
        summary.p99Ms / floor.p99Ms, summary.cpuUsPerRequest / floor.cpuUsPerRequest].map(ratio => ratio.toFixed(2))))
    }
  }
  lines.push('')
  if (verdict === undefined) return [...lines, 'No verdict: the targets compare a with b, c and n; run a and at least one of them.', ''].join('\n')
  for (const check of verdict.checks) lines.push(`${check.pass ? 'ok  ' : 'MISS'} ${check.name}`)
  lines.push(verdict.pass ? 'PASS' : 'FAIL', '')
  return lines.join('\n')
}
