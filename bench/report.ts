import type { ErrorCounts, LoadResult, ToolLatency } from './load.js'
import type { ServerId } from './servers.js'

// Means over rounds, the ratios between the servers, and the verdict against the targets.

export interface ServerSummary {
  label: string
  requestsPerSecond: number
  p50Ms: number
  p99Ms: number
  errors: number
  warmupErrors: number
  rounds: LoadResult[]
}

export interface Verdict {
  ratios: { throughputAB: number, throughputAC: number, p99AB: number }
  checks: Array<{ name: string, pass: boolean }>
  pass: boolean
}

const TARGETS = { throughputAB: 0.8, throughputAC: 4, p99AB: 1.5 }

function mean (values: number[]): number {
  return values.length === 0 ? 0 : values.reduce((sum, v) => sum + v, 0) / values.length
}

export function summarise (label: string, rounds: LoadResult[], warmup: LoadResult): ServerSummary {
  return {
    label,
    requestsPerSecond: mean(rounds.map(r => r.requestsPerSecond)),
    p50Ms: mean(rounds.map(r => r.p50Ms)),
    p99Ms: mean(rounds.map(r => r.p99Ms)),
    errors: rounds.reduce((sum, r) => sum + r.totalErrors, 0),
    warmupErrors: warmup.totalErrors,
    rounds
  }
}

export function judge (s: Record<ServerId, ServerSummary>): Verdict {
  const ratios = {
    throughputAB: s.a.requestsPerSecond / s.b.requestsPerSecond,
    throughputAC: s.a.requestsPerSecond / s.c.requestsPerSecond,
    p99AB: s.a.p99Ms / s.b.p99Ms
  }
  const checks = [
    { name: `throughput a/b ${ratios.throughputAB.toFixed(2)} >= ${TARGETS.throughputAB}`, pass: ratios.throughputAB >= TARGETS.throughputAB },
    { name: `throughput a/c ${ratios.throughputAC.toFixed(2)} >= ${TARGETS.throughputAC}`, pass: ratios.throughputAC >= TARGETS.throughputAC },
    { name: `p99 a/b ${ratios.p99AB.toFixed(2)} <= ${TARGETS.p99AB}`, pass: ratios.p99AB <= TARGETS.p99AB },
    // Errors anywhere void the comparison: a peer that fails fast would flatter or spoil the ratios.
    { name: `errors a/b/c ${s.a.errors}/${s.b.errors}/${s.c.errors} = 0`, pass: s.a.errors + s.b.errors + s.c.errors === 0 }
  ]
  return { ratios, checks, pass: checks.every(c => c.pass) }
}

function describeErrors (errors: ErrorCounts): string {
  const parts = Object.entries(errors).filter(([, n]) => n > 0).map(([kind, n]) => `${kind} ${n}`)
  return parts.length === 0 ? '0' : parts.join(', ')
}

function ms (latency: ToolLatency): string {
  return `${latency.p50Ms.toFixed(1)}/${latency.p99Ms.toFixed(1)} ms`
}

export function runLine (id: ServerId, label: string, round: number, r: LoadResult): string {
  return `  round ${round} ${id} ${label.padEnd(22)} ${r.requestsPerSecond.toFixed(0).padStart(6)} req/s  ` +
    `p50 ${r.p50Ms.toFixed(1).padStart(6)} ms  p99 ${r.p99Ms.toFixed(1).padStart(6)} ms  ` +
    `${r.responses} responses, errors: ${describeErrors(r.errors)}\n` +
    `      read p50/p99 ${ms(r.byTool.read_context)}, write p50/p99 ${ms(r.byTool.write_context)}`
}

export function table (s: Partial<Record<ServerId, ServerSummary>>, verdict: Verdict | undefined): string {
  const lines = ['', 'server                     req/s   p50 ms   p99 ms   errors']
  for (const [id, summary] of Object.entries(s)) {
    if (summary === undefined) continue
    const warm = summary.warmupErrors > 0 ? ` (+${summary.warmupErrors} in warm-up)` : ''
    lines.push(`${id} ${summary.label.padEnd(22)} ${summary.requestsPerSecond.toFixed(0).padStart(6)} ` +
      `${summary.p50Ms.toFixed(1).padStart(8)} ${summary.p99Ms.toFixed(1).padStart(8)}   ${summary.errors}${warm}`)
  }
  lines.push('')
  if (verdict === undefined) return [...lines, 'No verdict: the targets compare a with b and c; run all three.', ''].join('\n')
  for (const check of verdict.checks) lines.push(`${check.pass ? 'ok  ' : 'MISS'} ${check.name}`)
  lines.push(verdict.pass ? 'PASS' : 'FAIL', '')
  return lines.join('\n')
}
