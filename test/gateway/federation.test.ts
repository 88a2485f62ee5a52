import { McpError } from '@modelcontextprotocol/sdk/types.js'
import { ProtocolError } from '@modelcontextprotocol/client'
import { jwtVerify } from 'jose'
import { identityKeyFor } from '../../gateway/signed-identity.js'
import { test } from 'tap'
import { eventually } from '../eventually.js'
import { EMPLOYEES } from './upstreams/hr.js'
import { connectV1, connectV2, errorCodeOf, postMcp, startDomainGateway } from './gateway-helper.js'

const IDENTITY_KEY = 'gateway-identity-key-0123456789abcdef'

// One gateway for the file: hr (2025 line) and finance (2026-07-28) behind it.
test('the gateway, through the listening server, with SDK v1 and v2 clients', async (t) => {
  const gateway = await startDomainGateway(t, (urls) => [
    {
      name: 'hr',
      url: urls.hr,
      // eslint-disable-next-line no-template-curly-in-string -- the file's own syntax, expanded by the gateway
      headers: { Authorization: 'Bearer ${HR_UPSTREAM_TOKEN}' },
      allow: { 'hr:read': ['list_*', 'slow_*'], 'hr:write': ['*'] },
      identity: { audience: 'hr-upstream' }
    },
    { name: 'finance', url: urls.finance, allow: { 'finance:read': ['list_*'] }, critical: true }
  ], { HR_UPSTREAM_TOKEN: 'hr-upstream-secret', GATEWAY_IDENTITY_KEY: IDENTITY_KEY })
  const { app, baseUrl, hr, finance } = gateway
  t.equal(app.gateway?.upstreams.find((upstream) => upstream.name === 'hr')?.protocol, '2025-11-25', 'hr speaks the 2025 line')
  t.equal(app.gateway?.upstreams.find((upstream) => upstream.name === 'finance')?.protocol, '2026-07-28', 'finance speaks 2026-07-28')

  const hrReader = await gateway.token(['hr-read'])

  await t.test('HR read: an hr-read user lists employees (v2 client, 2025 line)', async (t) => {
    const client = await connectV2(t, baseUrl, hrReader)
    const names = (await client.listTools()).tools.map((tool) => tool.name)
    t.ok(names.includes('hr__list_employees'))
    t.notOk(names.includes('hr__delete_employee'), 'hr:read does not show hr:write tools')
    t.notOk(names.some((name) => name.startsWith('finance__')), 'nor another domain')
    const listed = (await client.listTools()).tools.find((tool) => tool.name === 'hr__list_employees')
    t.equal(listed?.title, 'List employees')
    t.equal(listed?.annotations?.readOnlyHint, true, 'annotations are the upstream\'s')
    t.match(listed?.description, /^\[hr\] Lists the employees/)
    const result = await client.callTool({ name: 'hr__list_employees', arguments: {} })
    t.notOk(result.isError)
    t.same((result.structuredContent as { employees: unknown }).employees, EMPLOYEES, 'the upstream\'s data')
  })

  await t.test('HR read with the SDK v1 client, and the 2026-07-28 line', async (t) => {
    const v1 = await connectV1(t, baseUrl, hrReader)
    const result = await v1.callTool({ name: 'hr__list_employees', arguments: { department: 'research' } })
    t.same((result.structuredContent as { employees: unknown[] }).employees, [EMPLOYEES[2]])
    const modern = await connectV2(t, baseUrl, hrReader, { negotiate: true })
    t.equal(modern.getNegotiatedProtocolVersion(), '2026-07-28')
    const viaModern = await modern.callTool({ name: 'hr__list_employees', arguments: {} })
    t.equal((viaModern.structuredContent as { employees: unknown[] }).employees.length, 3)
    const financeReader = await connectV2(t, baseUrl, await gateway.token(['finance-read']), { negotiate: true })
    const invoices = await financeReader.callTool({ name: 'finance__list_invoices', arguments: {} })
    t.equal((invoices.structuredContent as { invoices: unknown[] }).invoices.length, 2, '2026-07-28 client to a 2026-07-28 upstream')
    t.notOk(JSON.stringify(invoices._meta ?? {}).includes('"finance"'), "the upstream's envelope keys (its serverInfo) are not passed on as ours")
  })

  await t.test('arguments that are no object are refused before anything reaches the upstream', async (t) => {
    const before = hr.callHeaders.length
    for (const args of ['x', [1], 42, null]) {
      const response = await postMcp(baseUrl, hrReader, { jsonrpc: '2.0', id: 8, method: 'tools/call', params: { name: 'hr__list_employees', arguments: args } })
      const body = await response.json() as { error?: { code: number, data?: { code?: string } } }
      t.match(body.error, { code: -32602, data: { code: 'REQ_1101' } }, `arguments ${JSON.stringify(args)}: invalid params, REQ_1101`)
    }
    t.equal(hr.callHeaders.length, before, 'the upstream was never called')
  })

  await t.test('cross-domain denied: the same refusal as an unknown tool', async (t) => {
    const hidden = await postMcp(baseUrl, hrReader, { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'finance__list_invoices', arguments: {} } })
    const unknown = await postMcp(baseUrl, hrReader, { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'finance__list_invoicez', arguments: {} } })
    t.equal(hidden.status, unknown.status)
    const hiddenBody = await hidden.json() as { error: { code: number, message: string, data: unknown } }
    const unknownBody = await unknown.json() as { error: { code: number, message: string, data: unknown } }
    t.equal(hiddenBody.error.code, unknownBody.error.code)
    t.same(hiddenBody.error.data, unknownBody.error.data)
    t.equal(hiddenBody.error.message.replace('finance__list_invoices', 'NAME'), unknownBody.error.message.replace('finance__list_invoicez', 'NAME'), 'word for word, but for the name')
    t.equal(finance.runs.get('list_invoices') ?? 0, 1, 'only the finance reader\'s call above reached finance')

    const v1 = await connectV1(t, baseUrl, hrReader)
    const refusals = await Promise.all(['finance__list_invoices', 'finance__list_invoicez'].map(async (name) => {
      try {
        await v1.callTool({ name, arguments: {} })
        return 'no error'
      } catch (error) {
        return error instanceof McpError ? `${error.code} ${error.message.replace(name, 'NAME')}` : String(error)
      }
    }))
    t.equal(refusals[0], refusals[1], 'the v1 client sees the same refusal')
    const v2 = await connectV2(t, baseUrl, hrReader)
    const v2Refusal = await v2.callTool({ name: 'hr__delete_employee', arguments: { id: 'e1' } }).then(() => 'no error', (error: unknown) => error instanceof ProtocolError ? error.code : String(error))
    t.equal(v2Refusal, -32602, 'a tool of another scope of the same upstream is unknown too')
  })

  await t.test('the caller\'s token is never forwarded; the configured credential and a signed principal JWT are', async (t) => {
    const before = hr.callHeaders.length
    const client = await connectV2(t, baseUrl, hrReader)
    await client.callTool({ name: 'hr__list_employees', arguments: {} })
    const headers = hr.callHeaders.slice(before)
    t.equal(headers.length, 1)
    t.equal(headers[0]?.authorization, 'Bearer hr-upstream-secret', 'the upstream gets its own credential')
    t.notOk(JSON.stringify(headers).includes(hrReader), 'nor any header carries the caller\'s token')
    const identity = headers[0]?.['x-gateway-principal']
    t.type(identity, 'string')
    const { payload } = await jwtVerify(String(identity), new TextEncoder().encode(identityKeyFor(IDENTITY_KEY, 'hr')), { audience: 'hr-upstream', issuer: 'https://ctx.example.com' })
    t.equal(payload.sub, 'oidc:user-hr-read', 'the JWT names the principal')
    t.equal(payload.scope, 'hr:read', 'with only the scopes the upstream\'s rules name')
    for (const [key, what] of [[IDENTITY_KEY, 'GATEWAY_IDENTITY_KEY itself'], [identityKeyFor(IDENTITY_KEY, 'finance'), 'another upstream\'s key']] as const) {
      await t.rejects(jwtVerify(String(identity), new TextEncoder().encode(key)), `it does not verify with ${what}: no upstream can sign for another`)
    }
    t.ok((payload.exp ?? 0) - (payload.iat ?? 0) <= 60, 'short-lived')
  })

  await t.test('long call: progress and the upstream\'s log messages reach the client', async (t) => {
    const client = await connectV2(t, baseUrl, hrReader)
    const progress: number[] = []
    const logs: string[] = []
    client.setNotificationHandler('notifications/message', (notification) => { logs.push(String(notification.params.data)) })
    const result = await client.callTool({ name: 'hr__slow_report', arguments: { steps: 4, step_ms: 30 } }, { onprogress: (update) => progress.push(update.progress) })
    t.same((result.structuredContent as { steps: number }).steps, 4)
    t.same(progress, [1, 2, 3, 4], 'every progress step, in order')
    t.same(logs, ['report of 4 steps done'])
    const v1 = await connectV1(t, baseUrl, hrReader)
    const v1Progress: number[] = []
    await v1.callTool({ name: 'hr__slow_report', arguments: { steps: 2, step_ms: 10 } }, undefined, { onprogress: (update) => v1Progress.push(update.progress) })
    t.same(v1Progress, [1, 2], 'the v1 client too')
    const modern = await connectV2(t, baseUrl, hrReader, { negotiate: true })
    const modernProgress: number[] = []
    await modern.callTool({ name: 'hr__slow_report', arguments: { steps: 3, step_ms: 10 } }, { onprogress: (update) => modernProgress.push(update.progress) })
    t.same(modernProgress, [1, 2, 3], 'and on the 2026-07-28 line')
  })

  await t.test('client disconnect mid-call cancels the upstream call', async (t) => {
    const cancelledBefore = hr.cancelled.length
    const runsBefore = hr.runs.get('slow_report') ?? 0
    const response = await postMcp(baseUrl, hrReader, { jsonrpc: '2.0', id: 9, method: 'tools/call', params: { name: 'hr__slow_report', arguments: { steps: 1000, step_ms: 50 }, _meta: { progressToken: 'p' } } })
    const reader = response.body!.getReader()
    await reader.read() // the stream opened: the call runs upstream
    await eventually(() => (hr.runs.get('slow_report') ?? 0) > runsBefore, { what: 'the call to reach hr' })
    await reader.cancel() // the client goes away
    await eventually(() => hr.cancelled.length > cancelledBefore, { what: 'the upstream handler to see its call cancelled' })
    t.equal(hr.runs.get('slow_report'), runsBefore + 1, 'ran once, not retried')
    await eventually(() => app.gateway?.upstreams.every((upstream) => upstream.limit.inFlight === 0), { what: 'the concurrency slot to be free again' })
  })

  // The SDK v1 client (what most desktop clients bundle) takes the request options third, after a result schema.
  type Tap = Parameters<typeof connectV1>[0]
  const SLOW_REPORT = { name: 'hr__slow_report', arguments: { steps: 1000, step_ms: 50 } }
  const cancellingCallers = {
    'SDK v1': async (t: Tap, signal: AbortSignal) => await (await connectV1(t, baseUrl, hrReader)).callTool(SLOW_REPORT, undefined, { signal }),
    'SDK v2': async (t: Tap, signal: AbortSignal) => await (await connectV2(t, baseUrl, hrReader)).callTool(SLOW_REPORT, { signal })
  }
  for (const [line, callCancellable] of Object.entries(cancellingCallers)) {
    await t.test(`a client that cancels its call (${line}, AbortSignal) cancels the upstream call`, async (t) => {
      const cancelledBefore = hr.cancelled.length
      const runsBefore = hr.runs.get('slow_report') ?? 0
      const controller = new AbortController()
      const call = callCancellable(t, controller.signal).then(() => 'answered', () => 'cancelled')
      await eventually(() => (hr.runs.get('slow_report') ?? 0) > runsBefore, { what: 'the call to reach hr' })
      controller.abort()
      t.equal(await call, 'cancelled')
      await eventually(() => hr.cancelled.length > cancelledBefore, { what: 'the upstream handler to see its call cancelled' })
    })
  }

  await t.test('expired token 401 AUTH_1002; revoked 401 AUTH_1003', async (t) => {
    const now = Math.floor(Date.now() / 1000)
    const expired = await gateway.token(['hr-read'], { iat: now - 7200, exp: now - 3600 })
    const expiredAnswer = await postMcp(baseUrl, expired, { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'hr__list_employees', arguments: {} } })
    t.equal(expiredAnswer.status, 401)
    t.equal((await expiredAnswer.json() as { error: { code: string } }).error.code, 'AUTH_1002')
    await app.db.tokens.revokeJti('revoked-hr-reader', new Date(Date.now() + 3_600_000))
    const revoked = await gateway.token(['hr-read'], { jti: 'revoked-hr-reader' })
    const revokedAnswer = await postMcp(baseUrl, revoked, { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'hr__list_employees', arguments: {} } })
    t.equal(revokedAnswer.status, 401)
    t.equal((await revokedAnswer.json() as { error: { code: string } }).error.code, 'AUTH_1003')
  })

  await t.test('an upstream\'s list_changed reaches clients: new tools appear', async (t) => {
    // context:read too: the 2025-era session stream (GET /mcp) that carries the notification needs it.
    const financeReader = await gateway.token(['finance-read', 'context-reader'])
    const client = await connectV2(t, baseUrl, financeReader)
    let notified = 0
    client.setNotificationHandler('notifications/tools/list_changed', () => { notified++ })
    t.notOk((await client.listTools()).tools.some((tool) => tool.name === 'finance__list_budgets'))
    await eventually(() => gateway.app.live.counts().streams > 0, { what: 'the session stream to open' })
    finance.addTool({
      name: 'list_budgets',
      title: 'List budgets',
      description: 'Lists the budgets.',
      inputSchema: (await import('@sinclair/typebox')).Type.Object({}),
      annotations: { readOnlyHint: true },
      handler: async () => ({ budgets: [] })
    })
    await eventually(() => notified > 0, { what: 'notifications/tools/list_changed on the 2025-era session stream' })
    t.ok((await client.listTools()).tools.some((tool) => tool.name === 'finance__list_budgets'), 'the new finance tool is listed')
    const result = await client.callTool({ name: 'finance__list_budgets', arguments: {} })
    t.notOk(result.isError)
  })

  await t.test('tool errors of the upstream pass through as they are', async (t) => {
    const client = await connectV2(t, baseUrl, hrReader)
    const result = await client.callTool({ name: 'hr__slow_report', arguments: { steps: 0, step_ms: 1 } })
    t.equal(result.isError, true, 'the upstream refused the arguments')
    t.equal(errorCodeOf(result), undefined, 'its own error, not one of ours')
  })
})
