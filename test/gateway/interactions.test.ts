import { randomBytes } from 'node:crypto'
import { inputRequired } from '@modelcontextprotocol/server'
import { test } from 'tap'
import type { DownstreamChannel } from '../../gateway/call.js'
import { createInteractions, type Interactions } from '../../gateway/interactions.js'
import type { InputRequiredAnswer } from '../../gateway/policy.js'
import type { Principal } from '../../schema/principal.js'
import type { ToolCallResult } from '../../tools/registry.js'
import { eventually } from '../eventually.js'
import { connectV2, errorCodeOf, startGateway } from './gateway-helper.js'
import { askNameTool } from './upstreams/ask-name.js'
import { startDomainServer } from './upstreams/domain-server.js'
import { startEverything } from './upstreams/everything.js'

// The held-call machinery without an upstream: `work` stands for the federated call and asks through its channel.
const key = randomBytes(32)
const principal = { id: 'user-1', namespace: 'team', scopes: new Set(['everything:use']) } as unknown as Principal
const binding = { principal, tool: 'up__ask', argumentsDigest: 'd'.repeat(64) }
const quiet = { warn: () => {} }

function channel (extra: Partial<DownstreamChannel> = {}): DownstreamChannel {
  return { protocol: '2026-07-28', signal: new AbortController().signal, elicitationSupported: true, samplingSupported: true, ...extra }
}

/** Work that asks the client one elicitation, then answers with what it got; `seen` records its signal. */
function askingWork (seen: { signal?: AbortSignal }) {
  return async (held: DownstreamChannel): Promise<ToolCallResult> => {
    seen.signal = held.signal
    const answer = await held.request?.('elicitation/create', { mode: 'form', message: 'Name?', requestedSchema: { type: 'object', properties: {} } })
    return { content: [{ type: 'text', text: `got ${JSON.stringify(answer)}` }] }
  }
}

/** Used states in memory (the plugin keeps them in the database). */
function usedStates (): (namespace: string, stateId: string) => Promise<boolean> {
  const used = new Set<string>()
  return async (namespace, stateId) => {
    const id = `${namespace}\u0000${stateId}`
    if (used.has(id)) return false
    used.add(id)
    return true
  }
}

function interactions (extra: Partial<Parameters<typeof createInteractions>[0]> = {}): Interactions {
  return createInteractions({ stateKey: async () => key, useState: usedStates(), releaseState: async () => {}, log: quiet, ...extra })
}

test('an answer that reaches another instance is MCP_2005, and nothing is delivered', async (t) => {
  const a = interactions({ instanceId: 'a' })
  const b = interactions({ instanceId: 'b' })
  const first = await a.start(binding, channel(), askingWork({})) as InputRequiredAnswer
  t.equal(first.resultType, 'input_required')
  const [requestKey] = Object.keys(first.inputRequests)
  const inputResponses = { [requestKey as string]: { action: 'accept', content: { name: 'x' } } }
  const elsewhere = await b.resume(binding, channel({ requestState: first.requestState, inputResponses }))
  t.equal(errorCodeOf(elsewhere as ToolCallResult), 'MCP_2005')
  t.match(JSON.stringify(elsewhere), /another instance/)
  t.equal(a.size, 1, 'the held call still waits on its own instance')
  const done = await a.resume(binding, channel({ requestState: first.requestState, inputResponses })) as ToolCallResult
  t.match(JSON.stringify(done.content), /got .*accept/, 'its own instance delivers the answer')
  t.equal(a.size, 0)
})

test('a held call nobody answers is cancelled after holdMs, and its state is refused after', async (t) => {
  const held = interactions({ holdMs: 50 })
  const seen: { signal?: AbortSignal } = {}
  const first = await held.start(binding, channel(), askingWork(seen)) as InputRequiredAnswer
  t.equal(first.resultType, 'input_required')
  t.equal(seen.signal?.aborted, false)
  await eventually(() => seen.signal?.aborted === true, { what: 'the held upstream call cancelled' })
  t.equal(held.size, 0)
  const late = await held.resume(binding, channel({ requestState: first.requestState, inputResponses: {} }))
  t.ok(['MCP_2005', 'REQ_1101'].includes(String(errorCodeOf(late as ToolCallResult))), 'a late answer is refused (gone, or its state expired)')
})

test('a state answered once is refused while its call goes on; unanswered requests are asked again', async (t) => {
  const held = interactions()
  const work = async (ch: DownstreamChannel): Promise<ToolCallResult> => {
    const one = await ch.request?.('elicitation/create', { mode: 'form', message: 'one', requestedSchema: { type: 'object', properties: {} } })
    const two = await ch.request?.('sampling/createMessage', { messages: [], maxTokens: 1 })
    return { content: [{ type: 'text', text: `${JSON.stringify(one)} ${JSON.stringify(two)}` }] }
  }
  const first = await held.start(binding, channel(), work) as InputRequiredAnswer
  const [oneKey] = Object.keys(first.inputRequests)
  const again = await held.resume(binding, channel({ requestState: first.requestState, inputResponses: {} })) as InputRequiredAnswer
  t.equal(again.resultType, 'input_required', 'no answer: asked again')
  t.same(Object.keys(again.inputRequests), [oneKey])
  t.equal(errorCodeOf(await held.resume(binding, channel({ requestState: first.requestState, inputResponses: {} })) as ToolCallResult), 'REQ_1101', 'the first round cannot be answered twice')
  const second = await held.resume(binding, channel({ requestState: again.requestState, inputResponses: { [oneKey as string]: { action: 'decline' } } })) as InputRequiredAnswer
  t.equal(second.resultType, 'input_required', 'the next question of the upstream')
  const [twoKey] = Object.keys(second.inputRequests)
  t.equal(second.inputRequests[twoKey as string]?.method, 'sampling/createMessage')
  const done = await held.resume(binding, channel({ requestState: second.requestState, inputResponses: { [twoKey as string]: { role: 'assistant', model: 'm', content: { type: 'text', text: 'hi' } } } })) as ToolCallResult
  t.match(JSON.stringify(done.content), /decline.*hi/)
  t.equal(held.size, 0)
})

test('what the client did not declare, or too many held calls, is refused to the upstream; the call still answers', async (t) => {
  const held = interactions({ maxPerPrincipal: 1 })
  const refused = async (ch: DownstreamChannel): Promise<ToolCallResult> => {
    try {
      await ch.request?.('sampling/createMessage', { messages: [], maxTokens: 1 })
      return { content: [{ type: 'text', text: 'asked' }] }
    } catch (error) {
      return { content: [{ type: 'text', text: `refused: ${(error as Error).message}` }] }
    }
  }
  const noSampling = await held.start(binding, channel({ samplingSupported: false }), refused) as ToolCallResult
  t.match(JSON.stringify(noSampling.content), /refused: .*did not declare/)
  const first = await held.start(binding, channel(), askingWork({})) as InputRequiredAnswer
  t.equal(first.resultType, 'input_required')
  const second = await held.start(binding, channel(), refused) as ToolCallResult
  t.match(JSON.stringify(second.content), /refused: too many/)
  held.close()
  t.equal(held.size, 0, 'close cancels the calls held between rounds')
})

// A 2026-07-28 upstream that answers input-required: the gateway relays it to its 2026-07-28 client
// (gateway/interactions.ts, relay; test/gateway/relayed-input.test.ts), whose SDK answers it, and the answer goes up.
test('a 2026-07-28 upstream asking a 2026-07-28 client, through the gateway', async (t) => {
  const upstream = await startDomainServer({
    name: 'ask',
    era: '2026-07-28',
    tools: [askNameTool({ result: ({ action, name }) => ({ action, name }) })]
  })
  t.teardown(() => upstream.close())
  const gateway = await startGateway(t, [{ name: 'ask', url: upstream.url, allow: { 'everything:use': ['*'] }, confirm: [] }])
  await eventually(() => gateway.app.gateway?.upstreams[0]?.status === 'ok', { what: 'the 2026-07-28 upstream connected' })
  t.equal(gateway.app.gateway?.upstreams[0]?.protocol, '2026-07-28')
  const client = await connectV2(t, gateway.baseUrl, await gateway.token(['everything-user']), { negotiate: true, capabilities: { elicitation: { form: {} } } })
  const asked: string[] = []
  client.setRequestHandler('elicitation/create', async (request) => {
    asked.push(String(request.params.message))
    return { action: 'accept', content: { name: 'Ada' } }
  })
  const result = await client.callTool({ name: 'ask__confirm_name', arguments: {} })
  t.same(asked, ['Your name?'], "the upstream's question reached the client")
  t.same(result.structuredContent, { action: 'accept', name: 'Ada' }, 'and its answer reached the upstream')
  t.equal(upstream.runs.get('confirm_name'), 2, 'the upstream ran its two rounds')
})

test('a held upstream call the 2026-07-28 client never answers is cancelled after GATEWAY_INPUT_WAIT_SECONDS', async (t) => {
  const everything = await startEverything()
  t.teardown(() => everything.close())
  const gateway = await startGateway(t, [{ name: 'everything', url: everything.url, allow: { 'everything:use': ['*'] }, confirm: [] }], { GATEWAY_INPUT_WAIT_SECONDS: '1' })
  await eventually(() => gateway.app.gateway?.upstreams[0]?.status === 'ok', { what: 'server-everything connected' })
  const client = await connectV2(t, gateway.baseUrl, await gateway.token(['everything-user']), { negotiate: true, capabilities: { elicitation: { form: {} } } })
  const first = await client.callTool({ name: 'everything__trigger-elicitation-request', arguments: {} }, { allowInputRequired: true }) as unknown as InputRequiredAnswer
  t.equal(first.resultType, 'input_required', "the upstream's question came back as input-required")
  const { sql } = gateway.app.db
  const outcomes = async (): Promise<string[]> => (await sql<Array<{ outcome: string }>>`select outcome from gateway_calls where tool = 'trigger-elicitation-request'`).map((row) => row.outcome)
  t.same(await outcomes(), [], 'while held, the call has not ended')
  await eventually(async () => (await outcomes()).includes('cancelled'), { what: 'the held call cancelled and audited' })
  const late = await client.callTool({ name: 'everything__trigger-elicitation-request', arguments: {}, inputResponses: {}, requestState: first.requestState } as never, { allowInputRequired: true }) as unknown as ToolCallResult
  t.ok(['MCP_2005', 'REQ_1101'].includes(String(errorCodeOf(late))), 'a late answer is refused')
})

test('a relayed state is refused once expired, on any instance; only the asked keys go back to the upstream', async (t) => {
  const relayBinding = { ...binding, upstream: 'up' }
  const asking = async (): Promise<InputRequiredAnswer> => inputRequired({ inputRequests: { name: inputRequired.elicit({ message: 'Name?', requestedSchema: { type: 'object', properties: {} } }) }, requestState: 'theirs' }) as InputRequiredAnswer
  const first = await interactions({ instanceId: 'a' }).relay(relayBinding, channel(), asking) as InputRequiredAnswer
  t.match(first.requestState, /^gwr1\./)
  const inputs: unknown[] = []
  const answering = async (input: unknown): Promise<ToolCallResult> => {
    inputs.push(input)
    return { content: [{ type: 'text', text: 'done' }] }
  }
  const later = interactions({ instanceId: 'b', now: () => Date.now() + 3_600_000 })
  const expired = await later.relay(relayBinding, channel({ requestState: first.requestState, inputResponses: { name: { action: 'decline' } } }), answering) as ToolCallResult
  t.equal(errorCodeOf(expired), 'REQ_1101')
  t.match(JSON.stringify(expired), /expired/)
  t.same(inputs, [], 'the upstream was not called')
  const other = interactions({ instanceId: 'b' })
  const done = await other.relay(relayBinding, channel({ requestState: first.requestState, inputResponses: { name: { action: 'decline' }, smuggled: { action: 'accept' } } }), answering) as ToolCallResult
  t.notOk(done.isError)
  t.same(inputs, [{ inputResponses: { name: { action: 'decline' } }, requestState: 'theirs' }], 'the answer to the asked key and the upstream\'s state')
})

test('a relayed state that cannot be released: the refusal reaches the client unchanged, and a warning is logged', async (t) => {
  const relayBinding = { ...binding, upstream: 'up' }
  const asking = async (): Promise<InputRequiredAnswer> => inputRequired({ inputRequests: { name: inputRequired.elicit({ message: 'Name?', requestedSchema: { type: 'object', properties: {} } }) }, requestState: 'theirs' }) as InputRequiredAnswer
  const warnings: Array<{ data: Record<string, unknown>, message: string }> = []
  const relaying = interactions({
    releaseState: async () => { throw new Error('the database went away') },
    log: { warn: (data, message) => { warnings.push({ data, message }) } }
  })
  const first = await relaying.relay(relayBinding, channel(), asking) as InputRequiredAnswer
  const refusal: ToolCallResult = { isError: true, content: [{ type: 'text', text: 'refused before the upstream' }] }
  let released: Promise<void> | undefined
  // As the call path does when nothing reached the upstream: the release is fired, not awaited.
  const answer = await relaying.relay(relayBinding, channel({ requestState: first.requestState, inputResponses: {} }), async (_input, release) => {
    released = release?.()
    return refusal
  })
  t.equal(answer, refusal, 'the refusal, unchanged')
  t.ok(released, 'the retry was given a release')
  await t.resolves(released!, 'a failed release does not reject')
  t.equal(warnings.length, 1)
  t.match(warnings[0], { data: { tool: 'up__ask', principal: 'user-1', err: { message: 'the database went away' } }, message: /could not be released/ })
})
