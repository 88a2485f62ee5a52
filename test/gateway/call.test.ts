import { test } from 'tap'
import { createCallPath, type DownstreamChannel } from '../../gateway/call.js'
import type { FederatedTool } from '../../gateway/federation.js'
import type { ApprovalGate, CallRecord } from '../../gateway/policy.js'
import { CircuitBreaker, ConcurrencyLimit } from '../../gateway/resilience.js'
import type { Principal } from '../../schema/principal.js'
import { toolErrorOf } from '../helper.js'
import { errorCodeOf } from './gateway-helper.js'

// The call path on its own, around a stand-in upstream that counts what reaches it.
const principal = { id: 'user-1', namespace: 'team', scopes: new Set(['everything:use']) } as unknown as Principal

function harness (options: { sign?: () => Promise<string>, breakerOpen?: boolean } = {}) {
  const reached: string[] = []
  const breaker = new CircuitBreaker({ failures: 1, openMs: 60_000 })
  if (options.breakerOpen === true) {
    breaker.allow()
    breaker.failed()
  }
  const upstream = {
    name: 'up',
    config: { url: 'http://127.0.0.1:1/mcp', timeoutMs: 1000, callsPerMinute: 60, allow: { 'everything:use': ['*'] }, retry: { attempts: 0, baseDelayMs: 1, maxDelayMs: 1 }, identity: { header: 'X-Gateway-Principal', ttlSeconds: 60 } },
    breaker,
    limit: new ConcurrencyLimit(1),
    callTool: async (name: string) => {
      reached.push(name)
      return { content: [{ type: 'text', text: 'done' }] }
    },
    markUp: () => {},
    markDown: () => {}
  }
  const tool = { federatedName: 'up__act', upstream, tool: 'act', annotations: { destructiveHint: true }, allowing: new Set(['everything:use']), safeToRepeat: false, listed: {} } as unknown as FederatedTool
  const audited: CallRecord[] = []
  const tracked: Array<Promise<unknown>> = []
  const approvals = { released: [] as string[], completed: [] as string[] }
  const gate: ApprovalGate = {
    requires: () => true,
    decide: async () => ({ kind: 'run', approvalId: 'approval-1' }),
    complete: async (approvalId) => { approvals.completed.push(approvalId) },
    release: async (approvalId) => { approvals.released.push(approvalId); return true }
  }
  const warnings: string[] = []
  const callFederated = createCallPath({
    gate,
    audit: { record: async (call) => { audited.push(call) } },
    metrics: { call: () => {}, retry: () => {} },
    signer: { sign: options.sign ?? (async () => 'signed.jwt.token') },
    countAttempt: () => true,
    track: (work) => { tracked.push(work) },
    log: { warn: (_data, message) => { warnings.push(message) } }
  })
  return { callFederated, tool, reached, audited, tracked, approvals, warnings, breaker }
}

function channel (extra: Partial<DownstreamChannel> = {}): DownstreamChannel {
  return { protocol: '2026-07-28', signal: new AbortController().signal, ...extra }
}

test('a signed identity that cannot be made: nothing reaches the upstream, attempts 0, the approval and the relayed state are released', async (t) => {
  const { callFederated, tool, reached, audited, approvals, warnings, breaker } = harness({ sign: async () => { throw new Error('no identity key') } })
  let releasedState = 0
  const answer = await callFederated(tool, {}, principal, 'test-client', channel({ releaseState: async () => { releasedState++ } }))
  t.equal(errorCodeOf(answer as never), 'MCP_2002')
  t.match(toolErrorOf(answer as never), { attempts: 0 })
  t.same(reached, [], 'the upstream was not called')
  t.equal(releasedState, 1, 'the relayed state is released')
  t.same(approvals, { released: ['approval-1'], completed: [] }, 'the approval is released, not used up')
  t.match(audited, [{ outcome: 'upstream_error', attempts: 0, approvalId: 'approval-1' }])
  t.match(warnings, [/before reaching the upstream/])
  t.equal(breaker.state, 'closed', 'no failure of the upstream')
})

test('a stalled state release does not hold the refusal back; it is tracked for shutdown', async (t) => {
  const { callFederated, tool, reached, tracked } = harness({ breakerOpen: true })
  let started = 0
  const stalled = new Promise<void>(() => {})
  const answer = await callFederated(tool, {}, principal, null, channel({ releaseState: async () => { started++; await stalled } }))
  t.match(toolErrorOf(answer as never), { reason: 'breaker_open', attempts: 0 }, 'the refusal comes back while the release has not finished')
  t.equal(started, 1, 'the release was started')
  t.same(reached, [])
  t.equal(tracked.length, 2, 'the release and the audit write are tracked')
})
