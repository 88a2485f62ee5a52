import { test, type Test } from 'tap'
import { eventually } from '../eventually.js'
import { startEverything } from './upstreams/everything.js'
import { connectV1, connectV2, errorCodeOf, startGateway } from './gateway-helper.js'

type V2Client = Awaited<ReturnType<typeof connectV2>>

/** server-everything's elicitation tool through the gateway: an accepted answer and a declined one reach the upstream. */
async function elicitationRoundTrip (t: Test, client: V2Client): Promise<void> {
  const asked: string[] = []
  client.setRequestHandler('elicitation/create', async (request) => {
    asked.push(String(request.params.message))
    return { action: 'accept', content: { name: 'Ada Lovelace', check: true } }
  })
  const result = await client.callTool({ name: 'everything__trigger-elicitation-request', arguments: {} })
  t.equal(asked.length, 1, 'the client was asked once')
  t.match(JSON.stringify(result.content), /Name: Ada Lovelace/, "the upstream got the client's answer")
  client.setRequestHandler('elicitation/create', async () => ({ action: 'decline' }))
  const declined = await client.callTool({ name: 'everything__trigger-elicitation-request', arguments: {} })
  t.match(JSON.stringify(declined.content), /declined/)
}

/** server-everything's sampling tool through the gateway: the client's answer reaches the upstream. */
async function samplingRoundTrip (t: Test, client: V2Client): Promise<void> {
  client.setRequestHandler('sampling/createMessage', async (request) => {
    const first = request.params.messages[0]?.content as { text?: string } | undefined
    return { model: 'test-model', role: 'assistant', content: { type: 'text', text: `sampled: ${first?.text ?? ''}` } }
  })
  const result = await client.callTool({ name: 'everything__trigger-sampling-request', arguments: { prompt: 'what is MCP?', maxTokens: 20 } })
  t.notOk(result.isError)
  t.match(JSON.stringify(result.content), /sampled: .*what is MCP\?/)
  t.match(JSON.stringify(result.content), /test-model/)
}

// The reference server behind the gateway: its progress, elicitation and sampling tools, through to the client and back.
test('server-everything through the gateway', async (t) => {
  const everything = await startEverything()
  t.teardown(() => everything.close())
  const gateway = await startGateway(t, [
    // No approval for these demo tools (they carry no destructive annotation of their own).
    { name: 'everything', url: everything.url, allow: { 'everything:use': { tools: ['*'], prompts: ['*'], resources: ['demo://resource/static/*', 'demo://resource/dynamic/text/*'] } }, confirm: [] }
  ])
  await eventually(() => gateway.app.gateway?.upstreams[0]?.status === 'ok', { what: 'server-everything connected' })
  const token = await gateway.token(['everything-user'])
  const client = await connectV2(t, gateway.baseUrl, token, { capabilities: { elicitation: { form: {} }, sampling: {} } })
  const names = (await client.listTools()).tools.map((tool) => tool.name)
  for (const name of ['everything__echo', 'everything__trigger-long-running-operation', 'everything__trigger-elicitation-request', 'everything__trigger-sampling-request']) {
    t.ok(names.includes(name), `${name} is federated`)
  }

  await t.test('its prompts, namespaced', async (t) => {
    const prompts = (await client.listPrompts()).prompts.map((prompt) => prompt.name)
    t.ok(prompts.includes('everything__simple-prompt'))
    t.ok(prompts.includes('everything__args-prompt'))
    const prompt = await client.getPrompt({ name: 'everything__args-prompt', arguments: { city: 'Paris' } })
    t.match(JSON.stringify(prompt.messages), /Paris/)
    const other = await connectV2(t, gateway.baseUrl, await gateway.token(['hr-read']))
    t.same((await other.listPrompts()).prompts, [], 'not for a principal without the scope')
  })

  await t.test('its resources, namespaced, within the resource globs', async (t) => {
    const resources = (await client.listResources()).resources
    t.ok(resources.length > 0, 'its static resources are listed')
    t.ok(resources.every((resource) => resource.uri.startsWith('demo://resource/static/') && resource.name.startsWith('everything__')), 'only those the globs allow, under everything__ names')
    const first = resources[0]!
    const read = await client.readResource({ uri: first.uri })
    t.equal(read.contents[0]?.uri, first.uri, 'read from the upstream')
    const templates = (await client.listResourceTemplates()).resourceTemplates.map((template) => template.uriTemplate)
    t.ok(templates.some((template) => template.startsWith('demo://resource/dynamic/text/')), 'its text template')
    t.notOk(templates.some((template) => template.startsWith('demo://resource/dynamic/blob/')), 'not the blob one the globs leave out')
    const dynamic = await client.readResource({ uri: 'demo://resource/dynamic/text/7' })
    t.match((dynamic.contents[0] as { text?: string }).text, /7/, 'a URI of the template is read from the upstream')
    const blob = await client.readResource({ uri: 'demo://resource/dynamic/blob/7' }).then(() => null, (error: { code: number }) => error)
    t.ok(blob !== null, 'a URI outside the globs is not found')
    const other = await connectV1(t, gateway.baseUrl, await gateway.token(['hr-read']))
    t.same((await other.listResources()).resources, [], 'not for a principal without the scope')
  })

  await t.test('echo', async (t) => {
    const result = await client.callTool({ name: 'everything__echo', arguments: { message: 'hello' } })
    t.match((result.content as Array<{ text: string }>)[0]?.text, /hello/)
  })

  await t.test('progress of a long-running operation reaches v2 and v1 clients', async (t) => {
    const progress: number[] = []
    const result = await client.callTool({ name: 'everything__trigger-long-running-operation', arguments: { duration: 0.3, steps: 3 } }, { onprogress: (update) => progress.push(update.progress) })
    t.notOk(result.isError)
    t.same(progress, [1, 2, 3])
    const v1 = await connectV1(t, gateway.baseUrl, token)
    const v1Progress: number[] = []
    await v1.callTool({ name: 'everything__trigger-long-running-operation', arguments: { duration: 0.2, steps: 2 } }, undefined, { onprogress: (update) => v1Progress.push(update.progress) })
    t.same(v1Progress, [1, 2])
  })

  await t.test('an elicitation of the upstream is asked of the client, and its answer goes back', async (t) => {
    await elicitationRoundTrip(t, client)
  })

  await t.test('a sampling request of the upstream is answered by the client', async (t) => {
    await samplingRoundTrip(t, client)
  })

  await t.test('a client that cannot be asked: the upstream gets a refusal, the call still answers', async (t) => {
    // A raw POST that accepts JSON only: nothing can be sent to it mid-call.
    const response = await fetch(new URL('/mcp', gateway.baseUrl), {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'everything__trigger-sampling-request', arguments: { prompt: 'x', maxTokens: 5 } } })
    })
    t.equal(response.status, 200)
    const body = await response.json() as { result?: { isError?: boolean } }
    t.ok(body.result, 'answered with a result (the upstream reports the refused sampling)')
  })
})

// 2026-07-28 clients cannot be sent requests mid-call: the gateway answers input-required and the retry carries the answers.
test('server-everything through the gateway, for a 2026-07-28 client', async (t) => {
  const everything = await startEverything()
  t.teardown(() => everything.close())
  const gateway = await startGateway(t, [
    { name: 'everything', url: everything.url, allow: { 'everything:use': ['*'] }, confirm: [] }
  ])
  await eventually(() => gateway.app.gateway?.upstreams[0]?.status === 'ok', { what: 'server-everything connected' })
  const token = await gateway.token(['everything-user'])
  const client = await connectV2(t, gateway.baseUrl, token, { negotiate: true, capabilities: { elicitation: { form: {} }, sampling: {} } })
  t.equal(client.getNegotiatedProtocolVersion(), '2026-07-28')

  await t.test('elicitation: accepted and declined answers reach the upstream', async (t) => {
    await elicitationRoundTrip(t, client)
  })

  await t.test('sampling: the client answers, the upstream gets it', async (t) => {
    await samplingRoundTrip(t, client)
  })

  await t.test('forged, tampered, rebound and replayed states are refused', async (t) => {
    const name = 'everything__trigger-elicitation-request'
    const manual = { allowInputRequired: true } as const
    const first = await client.callTool({ name, arguments: {} }, manual) as unknown as { resultType?: string, inputRequests?: Record<string, { method: string }>, requestState?: string }
    t.equal(first.resultType, 'input_required')
    const keys = Object.keys(first.inputRequests ?? {})
    t.equal(keys.length, 1)
    t.equal(first.inputRequests?.[keys[0] as string]?.method, 'elicitation/create')
    const state = first.requestState as string
    const inputResponses = { [keys[0] as string]: { action: 'accept', content: { name: 'Grace Hopper', check: true } } }
    const retry = async (requestState: string, args: Record<string, unknown> = {}): Promise<{ isError?: boolean, content?: unknown, _meta?: Record<string, unknown> }> =>
      await client.callTool({ name, arguments: args, inputResponses, requestState } as never, manual) as never

    const forged = await retry(`gwi1.${Buffer.from('{"i":"x"}').toString('base64url')}`)
    t.equal(errorCodeOf(forged), 'REQ_1101', 'a forged state is refused')
    const flipped = state.slice(0, -2) + (state.at(-2) === 'A' ? 'B' : 'A') + state.at(-1)
    t.equal(errorCodeOf(await retry(flipped)), 'REQ_1101', 'a tampered state is refused')
    const other = await retry(state, { unexpected: true })
    t.equal(errorCodeOf(other), 'REQ_1101', 'a state for other arguments is refused')
    t.match(JSON.stringify(other.content), /another call/)

    const answered = await retry(state)
    t.notOk(answered.isError)
    t.match(JSON.stringify(answered.content), /Name: Grace Hopper/, 'the genuine state delivers the answer')
    const replayed = await retry(state)
    t.equal(errorCodeOf(replayed), 'MCP_2005', 'a replay is refused: that upstream call has ended')
  })
})
