import { test } from 'tap'
import { createGatewayStore } from '../../db/gateway-store.js'
import { createApprovalStateCodec } from '../../gateway/approval-state.js'
import { CONTEXT_TOOLS_UPSTREAM, MAX_STORED_OUTCOME_BYTES, argumentsDigest, createApprovalGate, storedOutcome, type ApprovedCallRunner } from '../../gateway/approvals.js'
import type { ApprovalDecision, GatedCall, InteractionChannel } from '../../gateway/policy.js'
import { singleNamespacePrincipal, type Principal } from '../../schema/principal.js'
import type { ToolCallResult } from '../../tools/registry.js'
import { testDatabase } from '../db-helper.js'
import { toolErrorOf } from '../helper.js'

const alice = singleNamespacePrincipal('oidc:alice', 'team', ['context:read'])
const mallory = singleNamespacePrincipal('oidc:mallory', 'team', ['context:read'])

function gatedCall (principal: Principal, args: Record<string, unknown> = { id: 'e42' }, tool = 'delete_employee'): GatedCall {
  return {
    principal,
    client: 'test-client',
    upstream: 'hr',
    tool,
    federatedName: `hr__${tool}`,
    arguments: args,
    argumentsDigest: argumentsDigest(args),
    annotations: { destructiveHint: true }
  }
}

const signal = new AbortController().signal
const legacyChannel: InteractionChannel = { protocol: '2025', signal }

/** The call path after the gate, as far as the test can see it: counts runs and completes the approval like G1's runner. */
function countingRunner (gate: ReturnType<typeof createApprovalGate>): ApprovedCallRunner & { calls: GatedCall[] } {
  const calls: GatedCall[] = []
  const run = async (call: GatedCall, approvalId: string): Promise<ToolCallResult> => {
    calls.push(call)
    const result = { content: [{ type: 'text' as const, text: `deleted ${String(call.arguments.id)}` }], structuredContent: { deleted: call.arguments.id } }
    await gate.complete(approvalId, { result })
    return result
  }
  return Object.assign(run, { calls })
}

function errorOf (decision: ApprovalDecision): Record<string, unknown> | undefined {
  return decision.kind === 'answer' ? toolErrorOf(decision.result) : undefined
}

test('approval gate', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createGatewayStore(sql)
  const warnings: string[] = []
  const log = { warn: (_: unknown, message: string) => { warnings.push(message) }, error: (_: unknown, message: string) => { warnings.push(message) } }
  const rules = {
    upstreams: new Map([
      ['hr', { approval: { mode: 'out-of-band' as const, tools: { 'ask_*': 'in-band' as const } } }],
      ['fin', { confirm: ['pay_*'], approval: { mode: 'in-band' as const } }]
    ]),
    defaultMode: 'out-of-band' as const,
    contextTools: new Set(['delete_context'])
  }
  const gate = createApprovalGate({ store, rules, log })

  t.test('requires: the confirm globs, else MCP\'s annotation defaults; context tools by setting', async (t) => {
    t.ok(gate.requires('hr', 'delete_employee', { destructiveHint: true }))
    t.ok(gate.requires('hr', 'update_employee', {}), 'unannotated: destructive by MCP\'s default')
    t.notOk(gate.requires('hr', 'list_employees', { readOnlyHint: true }))
    t.notOk(gate.requires('hr', 'tag_employee', { destructiveHint: false }))
    t.ok(gate.requires('fin', 'pay_invoice', { readOnlyHint: true }), 'confirm globs decide when set')
    t.notOk(gate.requires('fin', 'void_invoice', { destructiveHint: true }), 'and only they')
    t.ok(gate.requires(CONTEXT_TOOLS_UPSTREAM, 'delete_context', { destructiveHint: true }))
    t.notOk(gate.requires(CONTEXT_TOOLS_UPSTREAM, 'restore_context', { destructiveHint: true }), 'only the listed context tools')
  })

  await t.test('a large result is returned when the approved call runs, but the approval keeps only its size and digest', async (t) => {
    const decision = await gate.decide(gatedCall(alice, { id: 'big' }), legacyChannel)
    const id = decision.kind === 'answer' ? String(decision.approvalId) : ''
    t.equal((await store.decideApproval(id, 'approved', 'cli:bob')).status, 'decided')
    const big = { content: [{ type: 'text' as const, text: 'x'.repeat(MAX_STORED_OUTCOME_BYTES) }], structuredContent: { rows: 'secret payroll data' } }
    const run: ApprovedCallRunner = async (_call, approvalId) => {
      await gate.complete(approvalId, { result: big })
      return big
    }
    t.same(await gate.resume(alice, { approval_id: id }, run), big, 'the caller that ran it gets the whole result')
    const later = await gate.resume(alice, { approval_id: id }, run)
    const text = (later.content as Array<{ text: string }>)[0]?.text ?? ''
    t.match(text, /The approved call ran\. Its result \(\d+ bytes, sha256 [0-9a-f]{64}\) was returned when it ran/)
    t.notOk(JSON.stringify(later).includes('secret payroll data'), 'the result itself is not kept')
    const stored = await store.findApproval(alice.namespace, id)
    t.notOk(JSON.stringify(stored?.outcome).includes('secret payroll data'), 'nor in the database')
    t.equal(later.isError, undefined, 'a success stays a success')
    t.same(storedOutcome({ content: [{ type: 'text', text: 'small' }] }), { content: [{ type: 'text', text: 'small' }] }, 'a small result is kept as it is')
    const failed = storedOutcome({ isError: true, content: [{ type: 'text', text: 'y'.repeat(MAX_STORED_OUTCOME_BYTES) }], _meta: { 'shared-context-mcp/error': { code: 'MCP_2002', message: 'm' } } })
    t.equal(toolErrorOf(failed)?.code, 'MCP_2002', 'a large failure keeps its code')
  })

  await t.test('out-of-band approved: pending, then get_approval runs it exactly once and returns the stored outcome after', async (t) => {
    const decision = await gate.decide(gatedCall(alice), legacyChannel)
    t.equal(decision.kind, 'answer')
    if (decision.kind !== 'answer') return
    t.equal(decision.outcome, 'pending')
    const pending = errorOf(decision)
    t.equal(pending?.code, 'MCP_2003')
    t.equal(pending?.status, 'pending')
    t.match(String(pending?.message), /hr__delete_employee \{"id":"e42"\} waits for a person's approval/)
    const id = String(pending?.approval_id)
    t.equal(id, decision.approvalId)

    const run = countingRunner(gate)
    t.equal(toolErrorOf(await gate.resume(alice, { approval_id: id }, run))?.status, 'pending', 'still pending: nothing runs')
    t.equal(toolErrorOf(await gate.resume(mallory, { approval_id: id }, run))?.code, 'REQ_1101', 'another principal\'s approval is unknown to it')
    t.equal(toolErrorOf(await gate.resume(alice, { approval_id: 'nope' }, run))?.code, 'REQ_1101')

    t.equal((await store.decideApproval(id, 'approved', 'cli:bob')).status, 'decided')
    const results = await Promise.all(Array.from({ length: 6 }, () => gate.resume(alice, { approval_id: id }, run)))
    t.equal(run.calls.length, 1, 'six concurrent get_approval calls: the upstream call ran once')
    t.same(run.calls[0]?.arguments, { id: 'e42' }, 'with the approved arguments')
    t.equal(run.calls[0]?.principal, alice)
    const ran = results.filter((result) => result.isError !== true)
    t.ok(ran.length >= 1, 'the winner returns the result')
    for (const other of results.filter((result) => result.isError === true)) t.equal(toolErrorOf(other)?.status, 'running', 'the others hear it is running')
    const later = await gate.resume(alice, { approval_id: id }, run)
    t.same(later.structuredContent, { deleted: 'e42' }, 'asked later: the stored outcome')
    t.equal(run.calls.length, 1, 'never run again')
  })

  await t.test('out-of-band rejected or expired: cancelled, the runner never called', async (t) => {
    const run = countingRunner(gate)
    const rejected = await gate.decide(gatedCall(alice), legacyChannel)
    const rejectedId = String(errorOf(rejected)?.approval_id)
    await store.decideApproval(rejectedId, 'rejected', 'cli:bob')
    const answer = toolErrorOf(await gate.resume(alice, { approval_id: rejectedId }, run))
    t.equal(answer?.code, 'MCP_2004')
    t.equal(answer?.status, 'rejected')
    t.match(String(answer?.message), /rejected by cli:bob/)

    const shortGate = createApprovalGate({ store, rules: { ...rules, expiresInSeconds: 0 }, log })
    const expired = await shortGate.decide(gatedCall(alice), legacyChannel)
    const expiredAnswer = toolErrorOf(await shortGate.resume(alice, { approval_id: String(errorOf(expired)?.approval_id) }, run))
    t.equal(expiredAnswer?.code, 'MCP_2004')
    t.equal(expiredAnswer?.status, 'expired')
    t.equal(run.calls.length, 0, 'nothing ran')
  })

  await t.test('a runner that throws: the approval is settled as failed, never run again', async (t) => {
    const decision = await gate.decide(gatedCall(alice, { id: 'boom' }), legacyChannel)
    const id = String(errorOf(decision)?.approval_id)
    await store.decideApproval(id, 'approved', 'cli:bob')
    let runs = 0
    await t.rejects(gate.resume(alice, { approval_id: id }, async () => { runs++; throw new Error('connection lost') }))
    const after = await gate.resume(alice, { approval_id: id }, async () => { runs++; return { content: [] } })
    t.equal(toolErrorOf(after)?.code, 'SRV_9001')
    t.equal(runs, 1)
  })

  await t.test('2025 in-band: elicitation accept runs; decline and cancel refuse; a client without elicitation falls back to out-of-band', async (t) => {
    const asked: string[] = []
    const answering = (action: 'accept' | 'decline' | 'cancel', approve = true): InteractionChannel => ({
      protocol: '2025',
      signal,
      elicit: async (message, schema) => {
        asked.push(message)
        t.match(schema, { type: 'object', properties: { approve: { type: 'boolean' } } })
        return { action, ...(action === 'accept' && { content: { approve } }) }
      }
    })
    const accepted = await gate.decide(gatedCall(alice, { id: 'x1' }, 'ask_delete'), answering('accept'))
    t.equal(accepted.kind, 'run')
    t.match(asked[0], /Allow hr__ask_delete \{"id":"x1"\}\?/)
    if (accepted.kind === 'run') {
      const recorded = await store.findApproval('team', String(accepted.approvalId))
      t.match(recorded, { status: 'running', mode: 'elicitation', decidedBy: /test-client/ })
      await gate.complete(String(accepted.approvalId), { result: { content: [{ type: 'text', text: 'ok' }] } })
      t.equal((await store.findApproval('team', String(accepted.approvalId)))?.status, 'done')
    }
    for (const [action, approve, outcome] of [['decline', true, 'rejected'], ['cancel', true, 'cancelled'], ['accept', false, 'rejected']] as const) {
      const refused = await gate.decide(gatedCall(alice, { id: 'x2' }, 'ask_delete'), answering(action, approve))
      t.equal(refused.kind, 'answer', `${action} ${approve}: not run`)
      if (refused.kind === 'answer') {
        t.equal(refused.outcome, outcome)
        t.equal(toolErrorOf(refused.result)?.code, 'MCP_2004')
      }
    }
    const noElicitation = await gate.decide(gatedCall(alice, { id: 'x3' }, 'ask_delete'), legacyChannel)
    t.equal(noElicitation.kind === 'answer' && noElicitation.outcome, 'pending', 'no form elicitation: out-of-band')
    const outOfBandTool = await gate.decide(gatedCall(alice), answering('accept'))
    t.equal(outOfBandTool.kind === 'answer' && outOfBandTool.outcome, 'pending', 'an out-of-band tool never asks the client')
  })

  await t.test('2026-07-28 in-band: input-required with a signed state; the answer runs once; forged, tampered, replayed, expired and misbound answers refused', async (t) => {
    const modern = (extra: Partial<InteractionChannel> = {}): InteractionChannel => ({ protocol: '2026-07-28', signal, inputRequiredSupported: true, ...extra })
    const accept = { approval: { action: 'accept', content: { approve: true } } }
    const call = gatedCall(alice, { id: 'm1' }, 'ask_delete')

    const first = await gate.decide(call, modern())
    t.equal(first.kind, 'input-required')
    if (first.kind !== 'input-required') return
    t.equal(first.result.resultType, 'input_required')
    t.match(first.result.inputRequests.approval, { method: 'elicitation/create', params: { mode: 'form', message: /Allow hr__ask_delete/ } })
    const state = first.result.requestState
    // The state is readable by the client (base64url JSON, then its signature): it holds the binding
    // and the arguments' digest, never the arguments. (Matching the encoded string for "m1" failed
    // whenever the random state id or the signature happened to contain those two characters.)
    const { p: payload } = JSON.parse(Buffer.from(String(state).split('.')[0] ?? '', 'base64url').toString('utf8')) as { p: Record<string, unknown> }
    t.same(Object.keys(payload).sort(), ['d', 'ns', 'p', 'sid', 't', 'u'], 'the state holds the binding and a state id only')
    t.equal(payload.d, argumentsDigest({ id: 'm1' }), 'and the arguments as their digest, not themselves')

    const refusedFor = async (decision: Promise<ApprovalDecision>): Promise<string> => {
      const answer = await decision
      t.equal(answer.kind, 'answer')
      return answer.kind === 'answer' ? String(toolErrorOf(answer.result)?.message) : ''
    }
    t.match(await refusedFor(gate.decide(call, modern({ requestState: 'v1.forged.sig', inputResponses: accept }))), /not one this server issued|signature/, 'forged')
    const [body, mac] = state.split('.') as [string, string]
    const decoded = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as { p: { d: string } }
    decoded.p.d = argumentsDigest({ id: 'someone-else' })
    const tampered = `${Buffer.from(JSON.stringify(decoded)).toString('base64url')}.${mac}`
    t.match(await refusedFor(gate.decide(call, modern({ requestState: tampered, inputResponses: accept }))), /signature/, 'tampered payload')
    const otherKey = createApprovalStateCodec(Buffer.alloc(32, 7), 600)
    const foreign = await otherKey.mint({ principal: alice.id, namespace: 'team', upstream: 'hr', tool: 'ask_delete', argumentsDigest: call.argumentsDigest })
    t.match(await refusedFor(gate.decide(call, modern({ requestState: foreign, inputResponses: accept }))), /signature/, 'signed with another key')
    t.match(await refusedFor(gate.decide({ ...call, principal: mallory }, modern({ requestState: state, inputResponses: accept }))), /another call/, 'another principal')
    t.match(await refusedFor(gate.decide(gatedCall(alice, { id: 'm2' }, 'ask_delete'), modern({ requestState: state, inputResponses: accept }))), /another call/, 'other arguments')
    t.match(await refusedFor(gate.decide(gatedCall(alice, { id: 'm1' }, 'ask_erase'), modern({ requestState: state, inputResponses: accept }))), /another call/, 'another tool')
    t.match(await refusedFor(gate.decide(call, modern({ requestState: state }))), /no answer/, 'a state without an answer')

    const later = createApprovalGate({ store, rules, log, now: () => Date.now() + 3_600_000 })
    t.match(await refusedFor(later.decide(call, modern({ requestState: state, inputResponses: accept }))), /expired/, 'expired')

    const answered = await gate.decide(call, modern({ requestState: state, inputResponses: accept }))
    t.equal(answered.kind, 'run', 'the genuine answer runs the call')
    if (answered.kind === 'run') t.match(await store.findApproval('team', String(answered.approvalId)), { mode: 'input-required', status: 'running' })
    t.match(await refusedFor(gate.decide(call, modern({ requestState: state, inputResponses: accept }))), /answered before/, 'replayed')

    const second = await gate.decide(call, modern())
    if (second.kind !== 'input-required') return t.fail('asked again')
    const declined = await gate.decide(call, modern({ requestState: second.result.requestState, inputResponses: { approval: { action: 'decline' } } }))
    t.equal(declined.kind === 'answer' && declined.outcome, 'rejected', 'declined: not run')
    t.ok(warnings.includes('approval answer replayed'), 'a replay is logged')
  })
})
