import { createServer, request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Type } from '@sinclair/typebox'
import { test } from 'tap'
import { createSignedStateCodec } from '../../gateway/approval-state.js'
import type { InputRequiredAnswer } from '../../gateway/policy.js'
import type { ToolCallResult } from '../../tools/registry.js'
import { eventually } from '../eventually.js'
import { TcpProxy, viaProxy } from '../tcp-proxy.js'
import { toolErrorOf } from '../helper.js'
import { ROLE_MAP, connectV2, errorCodeOf, startAnotherInstance, startGateway } from './gateway-helper.js'
import { askNameTool } from './upstreams/ask-name.js'
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
    tools: [askNameTool({
      inputSchema: Type.Object({ greeting: Type.Optional(Type.String()) }),
      question: (args) => `${String(args.greeting ?? 'Hello')}, your name?`,
      requestState: () => `upstream-state-${++asked}`,
      result: (answer, ctx) => {
        seen.push({ state: answer.state, responses: Object.keys(ctx.server.mcpReq.inputResponses ?? {}) })
        return { ...answer }
      }
    })]
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

// A relayed retry refused before it reached the upstream (attempts 0) un-uses its state: once the
// refusal clears, the client retries with the same state. Its audit row records the refusal.
test('a relayed retry refused before the upstream (rate limit, breaker, concurrency wait) releases its state', async (t) => {
  let gate: { open: () => void, opened: Promise<void> } | undefined
  const upstream = await startDomainServer({
    name: 'ask',
    era: '2026-07-28',
    tools: [askNameTool({ inputSchema: Type.Object({ n: Type.Optional(Type.Number()) }), requestState: () => 'upstream-state' }), {
      name: 'hold',
      title: 'Hold',
      description: 'Answers once the test lets it.',
      inputSchema: Type.Object({}),
      annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      handler: async () => {
        await gate?.opened
        return { held: true }
      }
    }]
  })
  t.teardown(() => upstream.close())
  const allow = { 'everything:use': ['*'] }
  const quiet = { healthCheckSeconds: 0, refreshSeconds: 0, retry: { attempts: 0, baseDelayMs: 1, maxDelayMs: 1 } }
  const gateway = await startGateway(t, [
    { name: 'limited', url: upstream.url, allow, confirm: [], callsPerMinute: 1, ...quiet },
    { name: 'fragile', url: upstream.url, allow, confirm: [], concurrency: 1, breaker: { failures: 1, openMs: 3000 }, ...quiet }
  ])
  await eventually(() => gateway.app.gateway?.upstreams.every((entry) => entry.status === 'ok' && entry.protocol === '2026-07-28'), { what: 'both upstream entries connected on 2026-07-28' })
  const { sql } = gateway.app.db
  const capabilities = { elicitation: { form: {} } }
  type Answer = ToolCallResult & Partial<InputRequiredAnswer>
  const call = async (client: Awaited<ReturnType<typeof connectV2>>, name: string, extra: Record<string, unknown> = {}, args: Record<string, unknown> = {}, signal?: AbortSignal): Promise<Answer> =>
    await client.callTool({ name, arguments: args, ...extra } as never, { allowInputRequired: true, ...(signal !== undefined && { signal }) }) as unknown as Answer
  const accept = { name: { action: 'accept', content: { name: 'Ada' } } }
  const usedRelayStates = async (): Promise<number> => (await sql<Array<{ count: number }>>`select count(*)::int as count from gateway_used_states where state_id like 'relay:%'`)[0]?.count ?? -1
  const auditOf = async (upstreamName: string): Promise<Array<{ outcome: string, code: string | null, attempts: number }>> =>
    await sql<Array<{ outcome: string, code: string | null, attempts: number }>>`select outcome, code, attempts from gateway_calls where upstream = ${upstreamName} and tool = 'confirm_name' order by id`

  await t.test('rate limit (REQ_1103): the state is not used up; refused again by the limit, not as a replay', async (t) => {
    // The per-minute window must not roll over between the first round and its retries.
    if (Date.now() % 60_000 > 55_000) await new Promise((resolve) => setTimeout(resolve, 60_000 - (Date.now() % 60_000) + 50))
    const client = await connectV2(t, gateway.baseUrl, await gateway.token(['everything-user'], { sub: 'limited-user' }), { negotiate: true, capabilities })
    const first = await call(client, 'limited__confirm_name')
    t.match(first.requestState, /^gwr1\./)
    const runs = upstream.runs.get('confirm_name')
    for (const round of [1, 2]) {
      const refused = await call(client, 'limited__confirm_name', { inputResponses: accept, requestState: first.requestState })
      t.equal(errorCodeOf(refused), 'REQ_1103', `retry ${round}: refused by the limit (not REQ_1101, answered before)`)
      // The release is not awaited by the refusal: it lands right after it.
      t.ok(await eventually(async () => await usedRelayStates() === 0, { what: 'the state released' }), `retry ${round}: its state is not recorded as used`)
    }
    t.equal(upstream.runs.get('confirm_name'), runs, 'no refused retry reached the upstream')
    const rows = await eventually(async () => { const found = await auditOf('limited'); return found.length === 3 ? found : undefined }, { what: 'the audit rows' })
    t.same(rows, [
      { outcome: 'input_required', code: null, attempts: 1 },
      { outcome: 'rate_limited', code: 'REQ_1103', attempts: 0 },
      { outcome: 'rate_limited', code: 'REQ_1103', attempts: 0 }
    ], 'each refused retry is audited as refused, with attempts 0')
  })

  await t.test('breaker open: refused, then the same state accepted once the breaker lets a call through', async (t) => {
    const client = await connectV2(t, gateway.baseUrl, await gateway.token(['everything-user'], { sub: 'breaker-user' }), { negotiate: true, capabilities })
    const first = await call(client, 'fragile__confirm_name')
    t.match(first.requestState, /^gwr1\./)
    upstream.fail('http-503', 1)
    t.equal(errorCodeOf(await call(client, 'fragile__confirm_name', {}, { n: 1 })), 'MCP_2002', 'a failing call opens the breaker')
    const fragile = gateway.app.gateway!.upstreams.find((entry) => entry.name === 'fragile')!
    t.equal(fragile.breaker.state, 'open')
    const runs = upstream.runs.get('confirm_name')
    const refused = await call(client, 'fragile__confirm_name', { inputResponses: accept, requestState: first.requestState })
    t.equal(errorCodeOf(refused), 'MCP_2002')
    t.match(toolErrorOf(refused), { reason: 'breaker_open', attempts: 0 })
    t.ok(await eventually(async () => await usedRelayStates() === 0, { what: 'the state released' }), 'its state is not recorded as used')
    await eventually(() => fragile.breaker.retryAfterMs() === 0, { what: 'the breaker to let a probe through', timeoutMs: 10_000 })
    const done = await call(client, 'fragile__confirm_name', { inputResponses: accept, requestState: first.requestState })
    t.same(done.structuredContent, { name: 'Ada' }, 'the same state is accepted')
    t.equal(upstream.runs.get('confirm_name'), (runs ?? 0) + 1)
    const replay = await call(client, 'fragile__confirm_name', { inputResponses: accept, requestState: first.requestState })
    t.equal(errorCodeOf(replay), 'REQ_1101', 'once it reached the upstream, the state is used up')
    const rows = await eventually(async () => { const found = await auditOf('fragile'); return found.length === 4 ? found : undefined }, { what: 'the audit rows' })
    t.match(rows?.at(2), { outcome: 'breaker_open', code: 'MCP_2002', attempts: 0 }, 'the refused retry is audited as refused, with attempts 0')
    t.match(rows?.at(3), { outcome: 'ok', attempts: 1 })
  })

  await t.test('a retry cancelled while it waits for the concurrency limit: the state is released', async (t) => {
    const client = await connectV2(t, gateway.baseUrl, await gateway.token(['everything-user'], { sub: 'queued-user' }), { negotiate: true, capabilities })
    const first = await call(client, 'fragile__confirm_name', {}, { n: 2 })
    t.match(first.requestState, /^gwr1\./)
    let open = (): void => {}
    gate = { opened: new Promise<void>((resolve) => { open = resolve }), open }
    const holding = call(client, 'fragile__hold')
    await eventually(() => upstream.runs.get('hold') === 1, { what: 'the slot taken' })
    const fragile = gateway.app.gateway!.upstreams.find((entry) => entry.name === 'fragile')!
    const used = await usedRelayStates()
    const controller = new AbortController()
    const waiting = call(client, 'fragile__confirm_name', { inputResponses: accept, requestState: first.requestState }, { n: 2 }, controller.signal).catch((error: unknown) => error)
    await eventually(() => fragile.limit.queued === 1, { what: 'the retry to wait for the limit' })
    t.equal(await usedRelayStates(), used + 1, 'while it waits, its state is used')
    controller.abort(new Error('the client gave up'))
    t.ok(await waiting instanceof Error, 'the client gave up')
    await eventually(async () => await usedRelayStates() === used, { what: 'the state released' })
    gate.open()
    t.same((await holding).structuredContent, { held: true })
    const done = await call(client, 'fragile__confirm_name', { inputResponses: accept, requestState: first.requestState }, { n: 2 })
    t.same(done.structuredContent, { name: 'Ada' }, 'the same state is accepted')
    const rows = await eventually(async () => { const found = await auditOf('fragile'); return found.length === 7 ? found : undefined }, { what: 'the audit rows' })
    t.match(rows?.at(5), { outcome: 'cancelled', code: 'MCP_2002', attempts: 0 }, 'the cancelled retry is audited with attempts 0')
  })
})

// 2026-07-28 lets an input-required carry a requestState alone (no inputRequests, or none in it):
// the client pauses, then retries with the state. Such an answer is relayed, and the retry reaches
// the upstream with its state. Malformed ones (inputRequests no object, a request without a method,
// neither inputRequests nor requestState) are MCP_2002 malformed_answer, neither passed on nor repeated.
test('a relayed upstream input-required: a requestState alone is relayed; a malformed one is MCP_2002 malformed_answer', async (t) => {
  const upstream = await startDomainServer({
    name: 'ask',
    era: '2026-07-28',
    tools: [{
      name: 'lookup',
      title: 'Lookup',
      description: 'Answers at once (the proxy in front answers for it when told to).',
      inputSchema: Type.Object({ shape: Type.Optional(Type.String()) }),
      annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      handler: async () => ({ found: true })
    }]
  })
  t.teardown(() => upstream.close())
  // In front of it: tools/call of lookup with a `shape` is answered by the proxy with that shape of
  // input_required, and a retry carrying the shape's requestState with a result naming what it got.
  const relayed: Record<string, Record<string, unknown>> = {
    missing: { resultType: 'input_required', requestState: 'upstream-state-missing' },
    empty: { resultType: 'input_required', inputRequests: {}, requestState: 'upstream-state-empty' }
  }
  const malformed: Record<string, { answer: Record<string, unknown>, why: RegExp }> = {
    'not-an-object': { answer: { resultType: 'input_required', inputRequests: ['elicitation/create'], requestState: 'upstream-state' }, why: /inputRequests is not an object/ },
    'no-method': { answer: { resultType: 'input_required', inputRequests: { name: { params: {} } }, requestState: 'upstream-state' }, why: /input request "name" names no method/ },
    neither: { answer: { resultType: 'input_required' }, why: /neither inputRequests nor requestState/ },
    'neither-empty': { answer: { resultType: 'input_required', inputRequests: {} }, why: /neither inputRequests nor requestState/ }
  }
  let answered = 0
  const retries: Array<{ shape: string | undefined, requestState: unknown, inputResponses: unknown }> = []
  const proxy = createServer((request, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      const body = Buffer.concat(chunks)
      const message = body.length === 0 ? undefined : JSON.parse(body.toString('utf8')) as { id?: unknown, method?: string, params?: { arguments?: { shape?: string }, requestState?: unknown, inputResponses?: unknown } }
      const shape = message?.method === 'tools/call' ? message.params?.arguments?.shape : undefined
      if (shape !== undefined) {
        answered++
        let result = relayed[shape] ?? malformed[shape]?.answer
        if (message?.params?.requestState !== undefined) {
          retries.push({ shape, requestState: message.params.requestState, inputResponses: message.params.inputResponses })
          result = { content: [{ type: 'text', text: 'done' }], structuredContent: { state: message.params.requestState } }
        }
        response.writeHead(200, { 'content-type': 'application/json' })
        response.end(JSON.stringify({ jsonrpc: '2.0', id: message?.id, result }))
        return
      }
      const forwarded = httpRequest(upstream.url, { method: request.method, headers: request.headers }, (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers)
        answer.pipe(response)
      })
      forwarded.on('error', () => response.destroy())
      forwarded.end(body)
    })
  })
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { proxy.closeAllConnections(); proxy.close(() => resolve()) }))
  const gateway = await startGateway(t, [{
    name: 'ask',
    url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}${new URL(upstream.url).pathname}`,
    allow: { 'everything:use': ['*'] },
    confirm: [],
    retry: { attempts: 3, baseDelayMs: 1, maxDelayMs: 5 }
  }])
  await eventually(() => gateway.app.gateway?.upstreams[0]?.protocol === '2026-07-28', { what: 'the upstream connected on 2026-07-28' })
  const client = await connectV2(t, gateway.baseUrl, await gateway.token(['everything-user']), { negotiate: true, capabilities: { elicitation: { form: {} } } })
  type Answer = ToolCallResult & Partial<InputRequiredAnswer>
  const call = async (extra: Record<string, unknown>, shape?: string): Promise<Answer> =>
    await client.callTool({ name: 'ask__lookup', arguments: shape === undefined ? {} : { shape }, ...extra } as never, { allowInputRequired: true }) as unknown as Answer
  const upstreamEntry = gateway.app.gateway!.upstreams[0]!

  for (const shape of Object.keys(relayed)) {
    const first = await call({}, shape)
    t.equal(first.resultType, 'input_required', `${shape}: relayed as input_required`)
    t.same(Object.keys(first.inputRequests ?? {}), [], `${shape}: asking the client nothing`)
    t.match(first.requestState, /^gwr1\./, `${shape}: under our signed state`)
    const done = await call({ requestState: first.requestState }, shape)
    t.notOk(done.isError, `${shape}: the retry succeeds`)
    t.same(done.structuredContent, { state: `upstream-state-${shape}` }, `${shape}: the retry reached the upstream with its own requestState`)
    t.same(retries.at(-1), { shape, requestState: `upstream-state-${shape}`, inputResponses: {} }, `${shape}: no answers go back (nothing was asked)`)
    t.equal(errorCodeOf(await call({ requestState: first.requestState }, shape)), 'REQ_1101', `${shape}: a replay is refused`)
  }
  t.equal(upstreamEntry.breaker.state, 'closed', 'a requestState-only answer is no failure of the upstream')
  for (const [shape, { why }] of Object.entries(malformed)) {
    const before = answered
    const result = await call({}, shape)
    t.equal(result.resultType, undefined, `${shape}: not passed on as input_required`)
    t.equal(errorCodeOf(result), 'MCP_2002', `${shape}: MCP_2002`)
    t.match(toolErrorOf(result), { reason: 'malformed_answer', attempts: 1 }, `${shape}: malformed_answer`)
    t.match(toolErrorOf(result)?.message, why, `${shape}: the message says what is wrong`)
    t.equal(answered, before + 1, `${shape}: asked once, not repeated`)
  }
  const fine = await call({})
  t.same(fine.structuredContent, { found: true }, 'the same tool, answered properly, comes through')
  const { sql } = gateway.app.db
  const outcomes = await eventually(async () => {
    const rows = await sql<Array<{ outcome: string, code: string | null }>>`select outcome, code from gateway_calls where tool = 'lookup' order by id`
    return rows.length === 9 ? rows.map((row) => [row.outcome, row.code]) : undefined
  }, { what: 'the audit rows' })
  const malformedRow = ['upstream_error', 'MCP_2002']
  t.same(outcomes, [['input_required', null], ['ok', null], ['input_required', null], ['ok', null], malformedRow, malformedRow, malformedRow, malformedRow, ['ok', null]])
})

// The database says whether a relayed state was answered before: while it is down, the retry is
// refused as unavailable (DEP_3001), and nothing reaches the upstream; once it is back, the same
// state is accepted.
test('a relayed retry while the database is down is DEP_3001, and the upstream is not called', async (t) => {
  const upstream = await startDomainServer({
    name: 'ask',
    era: '2026-07-28',
    tools: [askNameTool()]
  })
  t.teardown(() => upstream.close())
  const a = await startGateway(t, [{ name: 'ask', url: upstream.url, allow: { 'everything:use': ['*'] }, confirm: [], healthCheckSeconds: 0, refreshSeconds: 0 }])
  // A second instance whose database connections go through a proxy the test cuts.
  const target = new URL(String(a.app.config.DATABASE_URL))
  const proxy = new TcpProxy(target.hostname, Number(target.port))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const b = await startAnotherInstance(t, a, { DATABASE_URL: viaProxy(target.toString(), proxy), DB_CONNECT_TIMEOUT_MS: '2000' })
  await eventually(() => b.app.gateway?.upstreams[0]?.protocol === '2026-07-28', { what: 'the upstream connected on 2026-07-28' })
  // No jti: this token's revocation is not looked up (in the database), so the request reaches the gateway.
  const client = await connectV2(t, b.baseUrl, await a.token(['everything-user'], { jti: undefined }), { negotiate: true, capabilities: { elicitation: { form: {} } } })
  const call = async (extra: Record<string, unknown>): Promise<ToolCallResult & Partial<InputRequiredAnswer>> =>
    await client.callTool({ name: 'ask__confirm_name', arguments: {}, ...extra } as never, { allowInputRequired: true }) as unknown as ToolCallResult & Partial<InputRequiredAnswer>
  const first = await call({})
  t.match(first.requestState, /^gwr1\./)
  const runs = upstream.runs.get('confirm_name')
  const retry = { inputResponses: { name: { action: 'accept', content: { name: 'Ada' } } }, requestState: first.requestState }

  await proxy.cut()
  const refused = await call(retry)
  t.equal(errorCodeOf(refused), 'DEP_3001', 'a tool error with the catalogue\'s database-unavailable code')
  t.match(toolErrorOf(refused)?.message, /database is unavailable/)
  t.equal(upstream.runs.get('confirm_name'), runs, 'the upstream was not called')

  await proxy.restore()
  const done = await eventually(async () => {
    const answer = await call(retry)
    return errorCodeOf(answer) === 'DEP_3001' ? undefined : answer
  }, { what: 'the database back' })
  t.same(done?.structuredContent, { name: 'Ada' }, 'once the database is back, the same state is accepted')
  t.equal(upstream.runs.get('confirm_name'), (runs ?? 0) + 1)
})
