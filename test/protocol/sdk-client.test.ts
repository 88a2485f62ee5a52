import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client'
import { test } from 'tap'
import { build, rpc, TEST_TOKEN, toolErrorOf } from '../helper.js'

type Tap = Parameters<typeof build>[0]

/** The official SDK client over the real network against the listening server. */
async function connect (t: Tap, baseUrl: string, options: { protocolVersion?: string, negotiate?: boolean }): Promise<Client> {
  const client = new Client(
    { name: 'sdk-test-client', version: '1.0.0' },
    options.negotiate === true ? { versionNegotiation: { mode: 'auto' } } : {}
  )
  const transport = new StreamableHTTPClientTransport(new URL('/mcp', baseUrl), {
    requestInit: { headers: { authorization: `Bearer ${TEST_TOKEN}` } }
  })
  if (options.protocolVersion !== undefined) transport.setProtocolVersion?.(options.protocolVersion)
  await client.connect(transport)
  t.teardown(() => client.close())
  return client
}

test('the SDK client speaks 2025-11-25 and 2026-07-28 to the running server', async (t) => {
  const app = await build(t)
  const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' })

  const legacy = await connect(t, baseUrl, {})
  t.equal(legacy.getNegotiatedProtocolVersion(), '2025-11-25')
  t.match(legacy.getInstructions(), /expected_version/)
  const tools = await legacy.listTools()
  t.equal(tools.tools.length, 9)
  const readTool = tools.tools.find((tool) => tool.name === 'read_context')
  t.ok(readTool?.annotations?.readOnlyHint, 'read_context is read-only')
  t.equal(readTool?.inputSchema.type, 'object')
  t.ok(readTool?.outputSchema, 'output schema advertised')

  const written = await legacy.callTool({ name: 'write_context', arguments: { key: 'proto/legacy', content: 'from 2025' } })
  t.notOk(written.isError)
  t.equal((written.structuredContent as { version: number }).version, 1)

  const modern = await connect(t, baseUrl, { negotiate: true })
  t.equal(modern.getNegotiatedProtocolVersion(), '2026-07-28')
  const read = await modern.callTool({ name: 'read_context', arguments: { key: 'proto/legacy' } })
  t.notOk(read.isError)
  t.equal((read.structuredContent as { content: string }).content, 'from 2025')
  const modernWrite = await modern.callTool({ name: 'append_context', arguments: { key: 'proto/legacy', content: 'and 2026' } })
  t.equal((modernWrite.structuredContent as { version: number }).version, 2)
  const history = await legacy.callTool({ name: 'context_history', arguments: { key: 'proto/legacy' } })
  const versions = (history.structuredContent as { versions: Array<{ client: string | null, actor: string }> }).versions
  t.equal(versions[0]?.client, 'sdk-test-client', 'a 2026-07-28 write records the client name from the envelope')
  t.equal(versions[0]?.actor, 'static-token')

  const failing = await modern.callTool({ name: 'read_context', arguments: { key: 'proto/missing' } })
  t.equal(failing.isError, true)
  t.equal(failing.structuredContent, undefined, 'an error result carries no structuredContent')
  t.equal(toolErrorOf(failing)?.code, 'CTX_2001', 'the code survives the 2026-07-28 path in _meta')
  t.match(failing.content[0], { type: 'text', text: /^CTX_2001: / })
})

test('2025-era tools/call (answered by answerToolCall) and 2026-07-28 tools/call (answered by the SDK) agree', async (t) => {
  const app = await build(t)
  const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' })
  const modern = await connect(t, baseUrl, { negotiate: true })
  t.equal(modern.getNegotiatedProtocolVersion(), '2026-07-28')
  await rpc(app, 'tools/call', { name: 'write_context', arguments: { key: 'same/a', content: 'alpha', tags: ['t'] } })
  await rpc(app, 'tools/call', { name: 'append_context', arguments: { key: 'same/a', content: 'beta' } })

  const calls: Array<[string, Record<string, unknown>]> = [
    ['read_context', { key: 'same/a' }],
    ['read_context', { key: 'same/a', version: 1 }],
    ['read_context', { key: 'same/missing' }],
    ['list_context', { prefix: 'same/' }],
    ['context_history', { key: 'same/a' }],
    ['write_context', { key: 'same/a', content: 'stale', expected_version: 1 }],
    ['read_context', { key: 'bad key' }]
  ]
  for (const [name, args] of calls) {
    const legacy = (await rpc(app, 'tools/call', { name, arguments: args })).json().result
    // The 2026-07-28 path adds the server's info to every result's _meta; the rest, the tool error's _meta included, is the same.
    const { _meta: { 'io.modelcontextprotocol/serverInfo': _serverInfo, ...meta } = {}, ...viaSdk } = await modern.callTool({ name, arguments: args })
    t.same(Object.keys(meta).length === 0 ? viaSdk : { ...viaSdk, _meta: meta }, legacy, `${name} ${JSON.stringify(args)}`)
  }

  const unknownLegacy = (await rpc(app, 'tools/call', { name: 'nope', arguments: {} })).json().error
  const unknownModern = await modern.callTool({ name: 'nope', arguments: {} }).then(() => undefined, (error: { code: number, data: unknown }) => error)
  t.equal(unknownLegacy.code, -32602)
  t.equal(unknownModern?.code, -32602)
  t.same(unknownLegacy.data, { code: 'REQ_1101' })
  t.same(unknownModern?.data, { code: 'REQ_1101' })
})
