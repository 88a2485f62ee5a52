import { inputRequired, inputResponse } from '@modelcontextprotocol/server'
import { Type } from '@sinclair/typebox'
import { test } from 'tap'
import { createSignedStateCodec } from '../../gateway/approval-state.js'
import type { InputRequiredAnswer } from '../../gateway/policy.js'
import type { ToolCallResult } from '../../tools/registry.js'
import { eventually } from '../eventually.js'
import { toolErrorOf } from '../helper.js'
import { ROLE_MAP, connectV2, errorCodeOf, startAnotherInstance, startGateway } from './gateway-helper.js'
import { startDomainServer } from './upstreams/domain-server.js'

// A 2026-07-28 upstream answering a federated tools/call with its own input-required: the gateway
// relays it to a 2026-07-28 client under a signed state of its own, and the retry reaches the same
// upstream with the upstream's own requestState, on whichever instance it lands (nothing is held).
test('a 2026-07-28 upstream\'s input-required, relayed statelessly across two instances', async (t) => {
  let asked = 0
  const seen: Array<{ state: unknown, responses: string[] }> = []
  const upstream = await startDomainServer({
    name: 'ask',
    era: '2026-07-28',
    tools: [{
      name: 'confirm_name',
      title: 'Confirm a name',
      description: 'Asks the user for a name, then answers with it and the state it got back.',
      inputSchema: Type.Object({ greeting: Type.Optional(Type.String()) }),
      annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      handler: async (args, ctx) => {
        const mcpReq = ctx.server.mcpReq
        const answer = inputResponse(mcpReq.inputResponses, 'name')
        if (answer.kind !== 'elicit') {
          return inputRequired({
            inputRequests: { name: inputRequired.elicit({ message: `${String(args.greeting ?? 'Hello')}, your name?`, requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] } }) },
            requestState: `upstream-state-${++asked}`
          }) as never
        }
        seen.push({ state: mcpReq.requestState<unknown>() ?? null, responses: Object.keys(mcpReq.inputResponses ?? {}) })
        return { action: answer.action, name: answer.content?.name ?? null, state: mcpReq.requestState<unknown>() ?? null }
      }
    }]
  })
  t.teardown(() => upstream.close())
  const a = await startGateway(t, [{ name: 'ask', url: upstream.url, allow: { 'everything:use': ['*'], 'finance:read': ['*'] }, confirm: [] }],
    { JWT_ROLE_MAP: JSON.stringify(ROLE_MAP) })
  const b = await startAnotherInstance(t, a)
  for (const instance of [a, b]) {
    await eventually(() => instance.app.gateway?.upstreams[0]?.status === 'ok', { what: 'the 2026-07-28 upstream connected' })
    t.equal(instance.app.gateway?.upstreams[0]?.protocol, '2026-07-28')
  }
  const token = await a.token(['everything-user'])
  const capabilities = { elicitation: { form: {} } }
  const onA = await connectV2(t, a.baseUrl, token, { negotiate: true, capabilities })
  const onB = await connectV2(t, b.baseUrl, token, { negotiate: true, capabilities })
  const manual = { allowInputRequired: true }
  const call = async (client: typeof onA, extra: Record<string, unknown>, args: Record<string, unknown> = {}): Promise<ToolCallResult & Partial<InputRequiredAnswer>> =>
    await client.callTool({ name: 'ask__confirm_name', arguments: args, ...extra } as never, manual) as unknown as ToolCallResult & Partial<InputRequiredAnswer>
  const accept = { name: { action: 'accept', content: { name: 'Ada' } } }

  await t.test('asked on instance A, answered on instance B: the same upstream gets its own state back', async (t) => {
    const first = await call(onA, {})
    t.equal(first.resultType, 'input_required')
    t.same(Object.keys(first.inputRequests ?? {}), ['name'], 'the upstream\'s request keys, as they are')
    t.match(first.inputRequests?.name, { method: 'elicitation/create', params: { message: 'Hello, your name?' } })
    t.match(first.requestState, /^gwr1\./, 'our signed state, not the upstream\'s')
    t.not(first.requestState, 'upstream-state-1')
    const done = await call(onB, { inputResponses: { ...accept, extra: { action: 'accept', content: {} } }, requestState: first.requestState })
    t.notOk(done.isError, 'the retry succeeds')
    t.same(done.structuredContent, { action: 'accept', name: 'Ada', state: 'upstream-state-1' }, 'the answer and the upstream\'s own requestState reached it')
    t.same(seen.at(-1)?.responses, ['name'], 'only the answers to what the upstream asked go back to it')

    const replay = await call(onA, { inputResponses: accept, requestState: first.requestState })
    t.equal(errorCodeOf(replay), 'REQ_1101', 'a replay, on the other instance, is refused')
    t.match(toolErrorOf(replay)?.message, /answered before/)
    t.equal(upstream.runs.get('confirm_name'), 2, 'and never reached the upstream')
    const { sql } = a.app.db
    const outcomes = (await sql<Array<{ outcome: string }>>`select outcome from gateway_calls where tool = 'confirm_name' order by id`).map((row) => row.outcome)
    t.same(outcomes, ['input_required', 'ok'], 'each round is audited')
  })

  await t.test('forged, tampered, misbound states are refused; nothing reaches the upstream', async (t) => {
    const first = await call(onA, {})
    const state = String(first.requestState)
    const runs = upstream.runs.get('confirm_name')
    const refused = async (client: typeof onA, requestState: string, why: RegExp, args: Record<string, unknown> = {}): Promise<void> => {
      const answer = await call(client, { inputResponses: accept, requestState }, args)
      t.equal(errorCodeOf(answer), 'REQ_1101', `${String(why)}: REQ_1101`)
      t.match(toolErrorOf(answer)?.message, why)
    }
    const [body, mac] = state.slice('gwr1.'.length).split('.') as [string, string]
    const payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as { p: { s: string } }
    payload.p.s = 'upstream-state-forged'
    await refused(onB, `gwr1.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${mac}`, /signature/)
    await refused(onB, `gwr1.${createSignedStateCodec(Buffer.alloc(32, 7), 'gateway relayed input v1').mint(payload.p, Math.floor(Date.now() / 1000) + 60)}`, /signature/)
    await refused(onB, 'gwr1.not-a-state', /signature|not one this server issued/)
    await refused(onB, state, /another call/, { greeting: 'Hi' })
    const other = await connectV2(t, b.baseUrl, await a.token(['finance-read']), { negotiate: true, capabilities })
    await refused(other, state, /another call/)
    t.equal(upstream.runs.get('confirm_name'), runs, 'no refused retry reached the upstream')
    const done = await call(onB, { inputResponses: accept, requestState: state })
    t.same(done.structuredContent, { action: 'accept', name: 'Ada', state: 'upstream-state-2' }, 'the genuine state still works after the refusals')
  })

  await t.test('the SDK v2 client fulfils the relayed rounds itself (auto mode), on either instance', async (t) => {
    const questions: string[] = []
    onB.setRequestHandler('elicitation/create', async (request) => {
      questions.push(String(request.params.message))
      return { action: 'accept', content: { name: 'Grace' } }
    })
    const result = await onB.callTool({ name: 'ask__confirm_name', arguments: { greeting: 'Hi' } })
    t.same(questions, ['Hi, your name?'])
    t.same(result.structuredContent, { action: 'accept', name: 'Grace', state: 'upstream-state-3' })
  })

  await t.test('a client that did not declare elicitation is not passed the upstream\'s request', async (t) => {
    const bare = await connectV2(t, a.baseUrl, token, { negotiate: true })
    const answer = await call(bare, {})
    t.equal(errorCodeOf(answer), 'MCP_2002')
    t.match(toolErrorOf(answer)?.message, /did not declare/)
  })
})
