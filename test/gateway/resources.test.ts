import { test } from 'tap'
import { eventually } from '../eventually.js'
import { ROLE_MAP, connectV1, connectV2, postMcp, startDomainGateway } from './gateway-helper.js'

interface RpcError { code: number, message: string, data?: Record<string, unknown> }

// Upstream resources and prompts, federated with their own allow globs: hr (2025 line) first, finance (2026-07-28) second.
test('upstream resources and prompts through the gateway', async (t) => {
  const gateway = await startDomainGateway(t, (urls) => [
    {
      name: 'hr',
      url: urls.hr,
      // Long enough that only a cancellation ends the hanging reads below.
      timeoutMs: 600_000,
      allow: {
        'hr:read': { tools: ['list_*'], resources: ['hr://handbook', 'hr://employees/*'], prompts: ['onboarding'] },
        // The short form names tools only: no prompt or resource of hr for hr:audit.
        'hr:audit': ['*']
      }
    },
    { name: 'finance', url: urls.finance, timeoutMs: 600_000, allow: { 'finance:read': { tools: ['list_*'], resources: ['*'] } } }
  ], { JWT_ROLE_MAP: JSON.stringify({ ...ROLE_MAP, 'hr-audit': { scopes: ['hr:audit'] } }) }, (upstream) => upstream.catalog.resources.length > 0)
  const { app, baseUrl, hr, finance } = gateway
  const hrReader = await gateway.token(['hr-read'])
  const financeReader = await gateway.token(['finance-read'])

  await t.test('resources/list and templates/list show only what the scope allows, namespaced by name', async (t) => {
    for (const client of [await connectV2(t, baseUrl, hrReader), await connectV2(t, baseUrl, hrReader, { negotiate: true }), await connectV1(t, baseUrl, hrReader)]) {
      const resources = (await client.listResources()).resources
      t.same(resources.map((resource) => [resource.uri, resource.name]), [['hr://handbook', 'hr__handbook']], 'the handbook, not the salaries')
      t.match(resources[0]?.description, /^\[hr\] /)
      const templates = (await client.listResourceTemplates()).resourceTemplates
      t.same(templates.map((template) => [template.uriTemplate, template.name]), [['hr://employees/{id}', 'hr__employee']])
    }
    const finances = await connectV2(t, baseUrl, financeReader, { negotiate: true })
    t.same((await finances.listResources()).resources.map((resource) => resource.uri), ['finance://ledger/2026'],
      'finance\'s copy of hr://handbook is not federated (hr listed that URI first), nor its context:// one')
    const writer = await connectV2(t, baseUrl, await gateway.token(['hr-audit']))
    t.same((await writer.listResources()).resources, [], 'tool globs allow no resources')
    t.same((await writer.listResourceTemplates()).resourceTemplates, [])
  })

  await t.test('resources/read goes to the upstream that listed the URI, or whose template matches it', async (t) => {
    const before = hr.reads.length
    for (const client of [await connectV2(t, baseUrl, hrReader), await connectV2(t, baseUrl, hrReader, { negotiate: true }), await connectV1(t, baseUrl, hrReader)]) {
      const handbook = await client.readResource({ uri: 'hr://handbook' })
      t.same(handbook.contents.map((content) => (content as { text?: string }).text), ['Be kind. Ship on Thursdays.'], 'hr\'s handbook, not finance\'s')
      const record = await client.readResource({ uri: 'hr://employees/e2' })
      t.same(record.contents.map((content) => (content as { text?: string }).text), ['record of e2'], 'read through the template')
    }
    t.equal(hr.reads.length, before + 6, 'every read reached hr')
    const finances = await connectV1(t, baseUrl, financeReader)
    const ledger = await finances.readResource({ uri: 'finance://ledger/2026' })
    t.same(ledger.contents.map((content) => (content as { text?: string }).text), ['inv-1 open, inv-2 paid'], 'a 2025 client reads a 2026-07-28 upstream')
  })

  await t.test('a hidden resource answers as an unknown one, on both lines; our context:// stays ours', async (t) => {
    const readsBefore = [hr.reads.length, finance.reads.length]
    const legacy = async (token: string, uri: string): Promise<RpcError> => {
      const response = await postMcp(baseUrl, token, { jsonrpc: '2.0', id: 3, method: 'resources/read', params: { uri } })
      return (await response.json() as { error: RpcError }).error
    }
    const masked = (error: RpcError, uri: string): unknown => JSON.parse(JSON.stringify(error).replaceAll(uri, '<uri>'))
    // Hidden: listed by hr but not allowed; through a template but not allowed; finance's handbook (hr's URI).
    for (const [token, hidden] of [[hrReader, 'hr://salaries'], [hrReader, 'finance://ledger/2026'], [financeReader, 'hr://handbook'], [financeReader, 'hr://employees/e1']] as const) {
      const unknown = 'hr://nothing/here'
      const hiddenError = await legacy(token, hidden)
      t.equal(hiddenError.code, -32002, `${hidden}: resource not found (2025 line)`)
      t.same(masked(hiddenError, hidden), masked(await legacy(token, unknown), unknown), `${hidden}: the same answer as an unknown URI`)
      const modern = await connectV2(t, baseUrl, token, { negotiate: true })
      const modernError = await modern.readResource({ uri: hidden }).then(() => null, (error: { code: number, message: string }) => error)
      const unknownError = await modern.readResource({ uri: unknown }).then(() => null, (error: { code: number, message: string }) => error)
      t.equal(modernError?.code, unknownError?.code, `${hidden}: the same code as unknown on 2026-07-28`)
      t.equal(modernError?.message.replaceAll(hidden, '<uri>'), unknownError?.message.replaceAll(unknown, '<uri>'))
    }
    const shadow = await legacy(financeReader, 'context://someone-else/secret')
    t.equal(shadow.data?.code, 'CTX_2001', 'a context:// URI is answered by our store, never by an upstream')
    t.same([hr.reads.length, finance.reads.length], readsBefore, 'no hidden read reached an upstream')
  })

  await t.test('a 2025-line client\'s federated read is cancelled upstream when it disconnects, or cancels it', async (t) => {
    for (const [upstream, uri, token] of [[hr, 'hr://employees/slow', hrReader], [finance, 'finance://slow', financeReader]] as const) {
      upstream.addResource({ name: 'slow', uri, text: () => 'late', hangs: true })
      // hr's read goes through its template (a stateless 2025 upstream sends no list_changed); finance lists the new one.
      if (upstream === finance) await eventually(() => app.gateway?.upstreams.some((listing) => listing.catalog.resources.some((resource) => resource.uri === uri)), { what: `${uri} federated` })
      const readsOf = (): number => upstream.reads.filter((read) => read === uri).length
      const disconnecting = new AbortController()
      const pending = fetch(new URL('/mcp', baseUrl), {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${token}` },
        body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'resources/read', params: { uri } }),
        signal: disconnecting.signal
      }).then(() => 'answered', () => 'aborted')
      await eventually(() => readsOf() === 1, { what: `the read of ${uri} to reach the upstream` })
      t.same(upstream.readsCancelled, [], 'the read hangs until cancelled')
      disconnecting.abort()
      t.equal(await pending, 'aborted')
      await eventually(() => upstream.readsCancelled.filter((read) => read === uri).length === 1, { what: `the upstream read of ${uri} cancelled after the disconnect` })

      // The SDK v1 client's abort sends notifications/cancelled in its session; its POST stays open.
      const v1 = await connectV1(t, baseUrl, token)
      const cancelling = new AbortController()
      const read = v1.readResource({ uri }, { signal: cancelling.signal }).then(() => 'read', () => 'cancelled')
      await eventually(() => readsOf() === 2, { what: `the second read of ${uri} to reach the upstream` })
      t.equal(upstream.readsCancelled.length, 1, 'the second read hangs until cancelled')
      cancelling.abort()
      t.equal(await read, 'cancelled')
      await eventually(() => upstream.readsCancelled.filter((read) => read === uri).length === 2, { what: `the upstream read of ${uri} cancelled after notifications/cancelled` })
    }
  })

  await t.test('prompts: their own globs, not the tool globs', async (t) => {
    const reader = await connectV2(t, baseUrl, hrReader)
    t.same((await reader.listPrompts()).prompts.map((prompt) => prompt.name), ['hr__onboarding'])
    const prompt = await reader.getPrompt({ name: 'hr__onboarding' })
    t.match(JSON.stringify(prompt.messages), /Welcome the new hire/)
    const hidden = await reader.getPrompt({ name: 'hr__termination' }).then(() => null, (error: { code: number, message: string }) => error)
    const unknown = await reader.getPrompt({ name: 'hr__terminatiom' }).then(() => null, (error: { code: number, message: string }) => error)
    t.equal(hidden?.code, unknown?.code, 'a hidden prompt answers as an unknown one')
    t.equal(hidden?.message.replace('termination', 'X'), unknown?.message.replace('terminatiom', 'X'))
    const writer = await connectV1(t, baseUrl, await gateway.token(['hr-audit']))
    t.same((await writer.listPrompts()).prompts, [], 'hr:audit (tools: *) sees no prompt')
  })

  await t.test('an upstream\'s resources/list_changed reaches clients, on both lines', async (t) => {
    // context:read too: the 2025-era session stream (GET /mcp) that carries the notification needs it.
    const token = await gateway.token(['finance-read', 'context-reader'])
    const client = await connectV2(t, baseUrl, token)
    let notified = 0
    client.setNotificationHandler('notifications/resources/list_changed', () => { notified++ })
    t.notOk((await client.listResources()).resources.some((resource) => resource.uri === 'finance://policy'))
    await eventually(() => app.live.counts().streams > 0, { what: 'the session stream to open' })
    // A 2026-07-28 client hears it on its subscriptions/listen stream.
    const modern = await connectV2(t, baseUrl, token, { negotiate: true })
    let heard = 0
    modern.setNotificationHandler('notifications/resources/list_changed', () => { heard++ })
    const subscription = await modern.listen({ resourcesListChanged: true })
    t.teardown(() => subscription.close())
    t.match(subscription.honoredFilter, { resourcesListChanged: true })
    await eventually(() => app.live.counts().listenStreams > 0, { what: 'the listen stream to open' })
    finance.addResource({ name: 'policy', uri: 'finance://policy', text: () => 'Pay on time.' })
    await eventually(() => notified > 0, { what: 'notifications/resources/list_changed on the 2025-era session stream' })
    await eventually(() => heard > 0, { what: 'notifications/resources/list_changed on the 2026-07-28 listen stream' })
    t.ok((await client.listResources()).resources.some((resource) => resource.uri === 'finance://policy' && resource.name === 'finance__policy'), 'the new resource is listed')
    const read = await client.readResource({ uri: 'finance://policy' })
    t.same(read.contents.map((content) => (content as { text?: string }).text), ['Pay on time.'])
  })
})
