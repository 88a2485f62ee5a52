import { isCallToolResult } from '@modelcontextprotocol/server'
import { Value } from '@sinclair/typebox/value'
import { test } from 'tap'
import { allTools } from '../../tools/index.js'
import { build, callTool, rpc } from '../helper.js'

// tools/call results skip the SDK's own result validation (plugins/mcp.ts): this pins that every
// result is a valid CallToolResult and every success matches the tool's advertised outputSchema.
test('every tool result is a CallToolResult whose structuredContent matches the outputSchema', async (t) => {
  const app = await build(t)
  const calls: Array<[string, Record<string, unknown>]> = [
    ['write_context', { key: 'o/a', content: 'one', tags: ['x'] }],
    ['write_context', { key: 'o/a', content: 'two', expected_version: 1, ttl_seconds: 3600 }],
    ['append_context', { key: 'o/a', content: 'three' }],
    ['append_context', { key: 'o/b', content: 'new', separator: ' | ' }],
    ['read_context', { key: 'o/a' }],
    ['read_context', { key: 'o/a', version: 1 }],
    ['list_context', { prefix: 'o/', limit: 1 }],
    ['list_context', { tag: 'x' }],
    ['context_history', { key: 'o/a', limit: 2 }],
    ['delete_context', { key: 'o/b' }],
    ['restore_context', { key: 'o/b', version: 1 }],
    // failures
    ['read_context', { key: 'o/missing' }],
    ['write_context', { key: 'o/a', content: 'stale', expected_version: 1 }],
    ['delete_context', { key: 'o/missing' }],
    ['list_context', { limit: 1000 }]
  ]
  const schemas = new Map(allTools.map((tool) => [tool.name, tool.outputSchema]))
  let successes = 0
  let failures = 0
  for (const [name, args] of calls) {
    const result = await callTool(app, name, args)
    t.ok(isCallToolResult(result), `${name} answers a CallToolResult`)
    t.equal(result.content[0]?.type, 'text', `${name} has a text block`)
    if (result.isError === true) {
      failures++
      t.match(result.structuredContent, { error: { code: /^[A-Z]{3}_\d{4}$/, message: String } }, `${name} failure has a catalogue code`)
    } else {
      successes++
      const schema = schemas.get(name)
      t.ok(schema !== undefined && Value.Check(schema, result.structuredContent), `${name} output matches its outputSchema: ${JSON.stringify([...Value.Errors(schema!, result.structuredContent)].slice(0, 1))}`)
    }
  }
  t.equal(successes, 11)
  t.equal(failures, 4)
})

test('malformed tools/call params are JSON-RPC invalid-params errors', async (t) => {
  const app = await build(t)
  for (const params of [{}, { name: 5 }, { name: 'read_context', arguments: [] }, { name: 'read_context', arguments: 'key' }]) {
    const response = await rpc(app, 'tools/call', params)
    t.equal(response.statusCode, 200)
    t.equal(response.json().error?.code, -32602, JSON.stringify(params))
  }
})
