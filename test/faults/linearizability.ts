// A linearizability checker for the key-value register with compare-and-set that the tools offer
// (read / write with expected_version / append / delete / restore), per key: Wing & Gong's search
// with Lowe's memoisation (a set of linearised operations plus the state reached is explored once).
// An operation whose outcome is unknown (timed out, DEP_3001, connection lost) may or may not have
// taken effect: it has no end, and it may be left out.

export type OpKind = 'read' | 'write' | 'append' | 'delete' | 'restore'

export interface OpInput {
  content?: string
  separator?: string
  expectedVersion?: number
  version?: number
}

/** What the call answered: ok with its values, a definite refusal (nothing changed), or unknown. */
export type Outcome =
  | { type: 'ok', version: number, content?: string }
  | { type: 'error', code: 'CTX_2001' | 'CTX_2002' }
  | { type: 'unknown', why: string }

export interface Op {
  id: number
  client: number
  key: string
  kind: OpKind
  input: OpInput
  invokedAt: number
  /** Infinity for an unknown outcome. */
  completedAt: number
  outcome: Outcome
  /** Which server instance answered (for reports). */
  instance?: number
}

/** One key's register. `versions` holds the content of every restorable (non-delete) version. */
interface State {
  version: number
  exists: boolean
  content: string
  versions: VersionList | null
  /** A digest of `versions`, for the memo key. */
  digest: number
}
interface VersionList { version: number, content: string, previous: VersionList | null }

const INITIAL: State = { version: 0, exists: false, content: '', versions: null, digest: 0 }

function contentOf (list: VersionList | null, version: number): string | undefined {
  for (let at = list; at !== null; at = at.previous) if (at.version === version) return at.content
  return undefined
}

function hashString (hash: number, text: string): number {
  let h = hash
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0
  return h
}

function changed (state: State, content: string): State {
  const version = state.version + 1
  return { version, exists: true, content, versions: { version, content, previous: state.versions }, digest: hashString(hashString(state.digest, String(version)), content) }
}

/** The state after `op` took effect with the effect it claimed, or null when it cannot have here. */
function effect (state: State, op: Op): State | null {
  const { input } = op
  // What the operation does if it takes effect at this point; a refusal for a failed condition.
  let next: State | 'not_found' | 'conflict'
  switch (op.kind) {
    case 'read':
      next = state.exists ? state : 'not_found'
      break
    case 'write': {
      const expected = input.expectedVersion
      if (expected === 0 && state.exists) next = 'conflict'
      else if (expected !== undefined && expected > 0 && (!state.exists || state.version !== expected)) next = 'conflict'
      else next = changed(state, input.content ?? '')
      break
    }
    case 'append':
      next = changed(state, state.exists ? `${state.content}${input.separator ?? '\n'}${input.content ?? ''}` : input.content ?? '')
      break
    case 'delete':
      if (!state.exists) next = 'not_found'
      else if (input.expectedVersion !== undefined && input.expectedVersion !== state.version) next = 'conflict'
      else next = { ...state, version: state.version + 1, exists: false, content: '', digest: hashString(state.digest, `d${state.version + 1}`) }
      break
    case 'restore': {
      const content = input.version === undefined ? undefined : contentOf(state.versions, input.version)
      next = content === undefined ? 'not_found' : changed(state, content)
      break
    }
  }
  const { outcome } = op
  if (outcome.type === 'unknown') return typeof next === 'string' ? state : next
  if (outcome.type === 'error') {
    if (outcome.code === 'CTX_2001' && next === 'not_found') return state
    if (outcome.code === 'CTX_2002' && next === 'conflict') return state
    return null
  }
  if (typeof next === 'string') return null
  if (op.kind === 'read') return state.version === outcome.version && state.content === outcome.content ? state : null
  if (op.kind === 'delete') return outcome.version === state.version ? next : null
  return next.version === outcome.version ? next : null
}

const stateKey = (state: State) => `${state.version}|${state.exists ? 1 : 0}|${state.digest}|${state.content}`

interface Entry {
  op: Op
  call: boolean
  time: number
  match: Entry | null
  prev: Entry | null
  next: Entry | null
}

export type Verdict = { linearizable: true, steps: number } | { linearizable: false, steps: number } | { linearizable: 'unknown', steps: number }

/** Whether one key's operations are linearizable (steps bounded by `maxSteps`; beyond it, unknown). */
export function checkKey (ops: readonly Op[], maxSteps = 5_000_000): Verdict {
  const events: Entry[] = []
  ops.forEach((op) => {
    const call: Entry = { op, call: true, time: op.invokedAt, match: null, prev: null, next: null }
    const ret: Entry = { op, call: false, time: op.completedAt, match: null, prev: null, next: null }
    call.match = ret
    events.push(call, ret)
  })
  // By time; at a tie a call comes first (it makes the two overlap: the permissive reading).
  events.sort((a, b) => a.time - b.time || (a.call === b.call ? 0 : a.call ? -1 : 1))
  const head: Entry = { op: ops[0] as Op, call: false, time: -Infinity, match: null, prev: null, next: null }
  let last = head
  for (const event of events) {
    last.next = event
    event.prev = last
    last = event
  }
  const index = new Map(ops.map((op, i) => [op, i]))
  const lift = (entry: Entry) => {
    entry.prev!.next = entry.next
    if (entry.next !== null) entry.next.prev = entry.prev
    const match = entry.match!
    match.prev!.next = match.next
    if (match.next !== null) match.next.prev = match.prev
  }
  const unlift = (entry: Entry) => {
    const match = entry.match!
    match.prev!.next = match
    if (match.next !== null) match.next.prev = match
    entry.prev!.next = entry
    if (entry.next !== null) entry.next.prev = entry
  }

  const seen = new Set<string>()
  const stack: Array<{ entry: Entry, state: State }> = []
  let linearized = 0n
  let state = INITIAL
  let entry = head.next
  let steps = 0
  while (entry !== null) {
    if (++steps > maxSteps) return { linearizable: 'unknown', steps }
    if (entry.call) {
      const next = effect(state, entry.op)
      if (next !== null) {
        const bit = 1n << BigInt(index.get(entry.op)!)
        const key = `${(linearized | bit).toString(36)}#${stateKey(next)}`
        if (!seen.has(key)) {
          seen.add(key)
          stack.push({ entry, state })
          state = next
          linearized |= bit
          lift(entry)
          entry = head.next
          continue
        }
      }
      entry = entry.next
    } else {
      // Only operations without an end are left: each may not have happened.
      if (entry.time === Infinity) return { linearizable: true, steps }
      const top = stack.pop()
      if (top === undefined) return { linearizable: false, steps }
      state = top.state
      linearized &= ~(1n << BigInt(index.get(top.entry.op)!))
      unlift(top.entry)
      entry = top.entry.next
    }
  }
  return { linearizable: true, steps }
}

/**
 * Weakens a failing history while it stays non-linearizable, by steps that can only make it
 * easier to linearise (reads and refusals dropped, successes made unknown), so what is left is
 * still a witness of the anomaly: a small one. Unknown operations are kept: leaving one out would
 * claim it did not happen, which the history never said.
 */
export function minimalFailing (ops: readonly Op[], budget = 400): Op[] {
  let current = [...ops]
  let checks = 0
  for (let i = current.length - 1; i >= 0 && checks < budget; i--) {
    const op = current[i] as Op
    let candidate: Op[] | undefined
    if (op.kind === 'read' || op.outcome.type === 'error') candidate = current.filter((_, j) => j !== i)
    else if (op.outcome.type === 'ok') candidate = current.map((other, j) => j === i ? { ...other, completedAt: Infinity, outcome: { type: 'unknown' as const, why: 'weakened' } } : other)
    if (candidate === undefined) continue
    checks++
    if (checkKey(candidate, 200_000).linearizable === false) current = candidate
  }
  return current
}

export interface Report {
  keys: number
  operations: number
  unknown: number
  anomalies: Array<{ key: string, minimal: Op[] }>
  inconclusive: string[]
}

/** Checks a whole history per key. */
export function checkHistory (ops: readonly Op[]): Report {
  const byKey = new Map<string, Op[]>()
  for (const op of ops) {
    const list = byKey.get(op.key) ?? []
    list.push(op)
    byKey.set(op.key, list)
  }
  const report: Report = { keys: byKey.size, operations: ops.length, unknown: ops.filter((op) => op.outcome.type === 'unknown').length, anomalies: [], inconclusive: [] }
  for (const [key, list] of byKey) {
    const verdict = checkKey(list)
    if (verdict.linearizable === false) report.anomalies.push({ key, minimal: minimalFailing(list) })
    else if (verdict.linearizable === 'unknown') report.inconclusive.push(key)
  }
  return report
}

/** One line per operation, for a report. */
export function describeOps (ops: readonly Op[]): string {
  const t0 = Math.min(...ops.map((op) => op.invokedAt))
  return ops.map((op) => {
    const end = op.completedAt === Infinity ? '∞' : (op.completedAt - t0).toFixed(1)
    const outcome = op.outcome.type === 'ok' ? `ok v${op.outcome.version}${op.outcome.content === undefined ? '' : ` ${JSON.stringify(op.outcome.content.slice(-40))}`}` : op.outcome.type === 'error' ? op.outcome.code : `unknown (${op.outcome.why})`
    return `  [${(op.invokedAt - t0).toFixed(1)}, ${end}] client ${op.client}${op.instance === undefined ? '' : ` @${op.instance}`} ${op.kind} ${JSON.stringify(op.input)} → ${outcome}`
  }).join('\n')
}
