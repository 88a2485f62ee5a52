import { Client as ClientV2, StreamableHTTPClientTransport as TransportV2 } from '@modelcontextprotocol/client'
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport as TransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { Value } from '@sinclair/typebox/value'
import { test, type Test } from 'tap'
import { allTools } from '../../tools/index.js'
import { build, TEST_TOKEN, toolErrorOf } from '../helper.js'
import { addToken, feedSettled } from '../tools/helpers.js'

// Every tool, its success path and every catalogue error it can return, through the listening
// server, for the clients people use: SDK v1 (what the Inspector and most hosts ship), and SDK v2
// on both protocol lines. SDK v1's callTool checks structuredContent against the outputSchema even
// on error results; every call here must resolve with the code, not throw a schema error.

interface CallResult {
  isError?: boolean
  content: Array<{ type: string, text?: string }>
  structuredContent?: Record<string, unknown>
  _meta?: Record<string, unknown>
}

interface Session {
  protocolVersion: string | undefined
  listTools: () => Promise<Array<{ name: string, outputSchema?: unknown }>>
  callTool: (name: string, args: Record<string, unknown>) => Promise<CallResult>
}

type Connect = (t: Test, baseUrl: string, token: string) => Promise<Session>

const MAX_CONTENT_BYTES = 1024

function headers (token: string) {
  return { requestInit: { headers: { authorization: `Bearer ${token}` } } }
}

const clients: Array<[string, string, Connect]> = [
  ['SDK v1', '2025-11-25', async (t, baseUrl, token) => {
    const client = new ClientV1({ name: 'matrix-v1', version: '1.0.0' })
    const transport = new TransportV1(new URL('/mcp', baseUrl), headers(token))
    await client.connect(transport)
    t.teardown(() => client.close())
    return {
      protocolVersion: transport.protocolVersion,
      listTools: async () => (await client.listTools()).tools,
      callTool: async (name, args) => await client.callTool({ name, arguments: args }) as CallResult
    }
  }],
  ...([['SDK v2', '2025-11-25', false], ['SDK v2 auto', '2026-07-28', true]] as const).map(([label, version, negotiate]): [string, string, Connect] =>
    [label, version, async (t, baseUrl, token) => {
      const client = new ClientV2({ name: 'matrix-v2', version: '1.0.0' }, negotiate ? { versionNegotiation: { mode: 'auto' } } : {})
      await client.connect(new TransportV2(new URL('/mcp', baseUrl), headers(token)))
      t.teardown(() => client.close())
      return {
        protocolVersion: client.getNegotiatedProtocolVersion(),
        listTools: async () => (await client.listTools()).tools,
        callTool: async (name, args) => await client.callTool({ name, arguments: args }) as CallResult
      }
    }])
]

interface Case {
  tool: string
  args: (prefix: string) => Record<string, unknown>
  /** 'ok', or the catalogue code the call must fail with. */
  expect: string
  /** Who calls: the static token (all scopes) or a token with context:read in namespace "matrix-reader". */
  as?: 'reader'
  /** Further assertions on the success output or on the _meta error. */
  check?: (t: Test, value: Record<string, unknown>) => void
  /** Wait until the change feed serves every change written so far. */
  feed?: true
}

const big = 'x'.repeat(MAX_CONTENT_BYTES + 1)

// In order: the successes build the data the failures run against. `p` is the client's own key prefix.
const cases: Case[] = [
  { tool: 'write_context', args: (p) => ({ key: `${p}doc`, content: 'one', tags: ['m'] }), expect: 'ok', check: (t, out) => t.match(out, { version: 1, action: 'created' }) },
  { tool: 'write_context', args: (p) => ({ key: `${p}doc`, content: 'two', expected_version: 1 }), expect: 'ok', check: (t, out) => t.match(out, { version: 2, action: 'updated' }) },
  {
    tool: 'write_context',
    args: (p) => ({ key: `${p}doc`, content: 'stale', expected_version: 1 }),
    expect: 'CTX_2002',
    check: (t, error) => {
      t.equal(error.current_version, 2, 'names the current version')
      t.match(error.message, 'retry with expected_version 2')
    }
  },
  { tool: 'write_context', args: (p) => ({ key: `${p}absent`, content: 'x', expected_version: 3 }), expect: 'CTX_2002', check: (t, error) => t.equal(error.current_version, null) },
  { tool: 'write_context', args: (p) => ({ key: `${p}big`, content: big }), expect: 'CTX_2003', check: (t, error) => t.equal(error.max_bytes, MAX_CONTENT_BYTES) },
  { tool: 'write_context', args: () => ({ key: 'bad key', content: 'x' }), expect: 'REQ_1101' },
  { tool: 'append_context', args: (p) => ({ key: `${p}log`, content: 'a' }), expect: 'ok', check: (t, out) => t.match(out, { version: 1, action: 'created', bytes: 1 }) },
  { tool: 'append_context', args: (p) => ({ key: `${p}log`, content: 'b', separator: ',' }), expect: 'ok', check: (t, out) => t.match(out, { version: 2, action: 'appended', bytes: 3 }) },
  { tool: 'append_context', args: (p) => ({ key: `${p}log`, content: big.slice(3) }), expect: 'CTX_2003' },
  { tool: 'append_context', args: (p) => ({ key: `${p}log` }), expect: 'REQ_1101' },
  { tool: 'read_context', args: (p) => ({ key: `${p}doc` }), expect: 'ok', check: (t, out) => t.match(out, { content: 'two', version: 2, tags: ['m'] }) },
  { tool: 'read_context', args: (p) => ({ key: `${p}doc`, version: 1 }), expect: 'ok', check: (t, out) => t.match(out, { content: 'one', version: 1 }) },
  { tool: 'read_context', args: (p) => ({ key: `${p}absent` }), expect: 'CTX_2001' },
  { tool: 'read_context', args: (p) => ({ key: `${p}doc`, version: 99 }), expect: 'CTX_2001' },
  { tool: 'read_context', args: () => ({ key: 'bad key' }), expect: 'REQ_1101' },
  {
    tool: 'list_context',
    args: (p) => ({ prefix: p, limit: 1 }),
    expect: 'ok',
    check: (t, out) => {
      t.equal((out.items as unknown[]).length, 1)
      t.type(out.next_cursor, 'string', 'a next page')
    }
  },
  { tool: 'list_context', args: () => ({ cursor: 'not-a-cursor' }), expect: 'REQ_1101' },
  { tool: 'list_context', args: () => ({ limit: 1000 }), expect: 'REQ_1101' },
  {
    tool: 'search_context',
    args: (p) => ({ query: 'two', prefix: p }),
    expect: 'ok',
    check: (t, out) => {
      t.match(out.items, [{ version: 2, snippet: '**two**', tags: ['m'] }], 'finds the entry, the match highlighted')
      t.equal(out.next_cursor, null)
    }
  },
  { tool: 'search_context', args: (p) => ({ query: 'twoo', prefix: p }), expect: 'ok', check: (t, out) => t.match(out.items, [{ key: /doc$/, version: 2 }], 'a misspelt word finds it too') },
  { tool: 'search_context', args: () => ({ query: '"" or -' }), expect: 'REQ_1101', check: (t, error) => t.match(error.message, /nothing to search for/) },
  { tool: 'search_context', args: () => ({ query: 'two', cursor: 'not-a-cursor' }), expect: 'REQ_1101' },
  { tool: 'context_history', args: (p) => ({ key: `${p}doc` }), expect: 'ok', check: (t, out) => t.match(out.versions, [{ version: 2, action: 'update' }, { version: 1, action: 'create' }]) },
  { tool: 'context_history', args: (p) => ({ key: `${p}absent` }), expect: 'CTX_2001' },
  { tool: 'context_history', args: (p) => ({ key: `${p}doc`, cursor: 'not-a-cursor' }), expect: 'REQ_1101' },
  {
    tool: 'changes_since',
    args: (p) => ({ prefix: p, limit: 2 }),
    expect: 'ok',
    feed: true,
    check: (t, out) => {
      t.match(out.changes, [{ key: /doc$/, version: 1, action: 'create' }, { key: /doc$/, version: 2, action: 'update' }], 'the oldest changes first')
      t.equal(out.more, true, 'more are waiting')
    }
  },
  { tool: 'changes_since', args: () => ({ cursor: 'not-a-cursor' }), expect: 'REQ_1101' },
  { tool: 'delete_context', args: (p) => ({ key: `${p}doc`, expected_version: 1 }), expect: 'CTX_2002', check: (t, error) => t.equal(error.current_version, 2) },
  { tool: 'delete_context', args: (p) => ({ key: `${p}doc`, expected_version: 2 }), expect: 'ok', check: (t, out) => t.match(out, { deleted_version: 2 }) },
  { tool: 'read_context', args: (p) => ({ key: `${p}doc` }), expect: 'CTX_2001' },
  { tool: 'delete_context', args: (p) => ({ key: `${p}doc` }), expect: 'CTX_2001' },
  { tool: 'delete_context', args: () => ({ key: 'bad key' }), expect: 'REQ_1101' },
  { tool: 'restore_context', args: (p) => ({ key: `${p}doc`, version: 1 }), expect: 'ok', check: (t, out) => t.match(out, { restored_from: 1 }) },
  { tool: 'restore_context', args: (p) => ({ key: `${p}absent`, version: 1 }), expect: 'CTX_2001' },
  { tool: 'restore_context', args: (p) => ({ key: `${p}doc`, version: 99 }), expect: 'CTX_2001' },
  { tool: 'restore_context', args: (p) => ({ key: `${p}doc` }), expect: 'REQ_1101' },
  // Every tool: an unknown argument is REQ_1101, and a namespace without a grant is AUTH_1004.
  ...allTools.map((tool): Case => ({ tool: tool.name, args: () => ({ unexpected: true }), expect: 'REQ_1101' })),
  ...allTools.map((tool): Case => ({ tool: tool.name, args: (p) => ({ key: `${p}doc`, namespace: 'elsewhere' }), expect: 'AUTH_1004', as: 'reader' })),
  // A scope the token does not have, in its own namespace.
  ...allTools.filter((tool) => tool.scope !== 'context:read').map((tool): Case => ({
    tool: tool.name,
    args: (p) => ({ key: `${p}doc`, content: 'x', version: 1 }),
    expect: 'AUTH_1004',
    as: 'reader',
    check: (t, error) => t.equal(error.required_scope, tool.scope)
  }))
]

const outputSchemas = new Map(allTools.map((tool) => [tool.name, tool.outputSchema]))

test('every tool, its successes and its catalogue errors, for SDK v1 and SDK v2 clients on both protocol lines', async (t) => {
  const app = await build(t, { MAX_CONTENT_BYTES: String(MAX_CONTENT_BYTES) })
  const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' })
  const readerToken = await addToken(app, 'matrix-reader', 'matrix-reader', ['context:read'])

  for (const [label, protocolVersion, connect] of clients) {
    await t.test(label, async (t) => {
      const sessions = { main: await connect(t, baseUrl, TEST_TOKEN), reader: await connect(t, baseUrl, readerToken) }
      t.equal(sessions.main.protocolVersion, protocolVersion, `negotiates ${protocolVersion}`)
      // Listing the tools is what makes the clients validate results against the outputSchemas.
      const listed = await sessions.main.listTools()
      t.strictSame(listed.map((tool) => tool.name), allTools.map((tool) => tool.name))
      t.ok(listed.every((tool) => tool.outputSchema !== undefined), 'every tool advertises an outputSchema')
      t.strictSame((await sessions.reader.listTools()).map((tool) => tool.name), ['read_context', 'list_context', 'search_context', 'context_history', 'changes_since'])

      const prefix = `${label.replace(/ /g, '-')}/`
      const seen = new Set<string>()
      for (const { tool, args, expect, as, check, feed } of cases) {
        if (feed === true) await feedSettled(app)
        const what = `${as ?? 'main'} ${tool} ${JSON.stringify(args(prefix)).slice(0, 80)}`
        const result = await sessions[as ?? 'main'].callTool(tool, args(prefix)).catch((error: Error) => error)
        if (result instanceof Error) {
          t.fail(`${what} resolves, but the client threw: ${result.message}`)
          continue
        }
        const text = result.content[0]?.text ?? ''
        if (expect === 'ok') {
          t.not(result.isError, true, `${what} succeeds: ${text.slice(0, 120)}`)
          const schema = outputSchemas.get(tool)
          t.ok(schema !== undefined && Value.Check(schema, result.structuredContent), `${what}: output matches the outputSchema`)
          check?.(t, result.structuredContent ?? {})
        } else {
          t.equal(result.isError, true, `${what} resolves as an error result`)
          t.match(text, new RegExp(`^${expect}: `), `${what}: the text starts with ${expect}`)
          const error = toolErrorOf(result)
          t.equal(error?.code, expect, `${what}: _meta carries ${expect}`)
          t.equal(text, `${expect}: ${error?.message}`, `${what}: the text is the code and the _meta message`)
          t.equal(result.structuredContent, undefined, `${what}: no structuredContent`)
          check?.(t, error ?? {})
        }
        seen.add(`${tool} ${expect}`)
      }
      for (const tool of allTools) {
        t.ok(seen.has(`${tool.name} ok`), `${tool.name}: a success was run`)
        for (const code of ['REQ_1101', 'AUTH_1004']) t.ok(seen.has(`${tool.name} ${code}`), `${tool.name}: ${code} was run`)
      }

      // An unknown tool is a protocol error: each client rejects with -32602 and the code in data.
      const unknown = await sessions.main.callTool('no_such_tool', {}).then(() => null, (error: unknown) => error)
      t.match(unknown, { code: -32602, data: { code: 'REQ_1101' }, message: /Unknown tool "no_such_tool"/ }, 'an unknown tool is JSON-RPC -32602 with data.code REQ_1101')
    })
  }
})
