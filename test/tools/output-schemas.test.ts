import { isCallToolResult } from '@modelcontextprotocol/server'
import { Value } from '@sinclair/typebox/value'
import { test } from 'tap'
import { allTools } from '../../tools/index.js'
import { build, callTool, rpc, toolErrorOf } from '../helper.js'
import { feedSettled } from './helpers.js'

/** The output with one field too many: at the top, and in the first item of each array of objects. */
function withLeakedField (output: Record<string, unknown>): Array<[string, Record<string, unknown>]> {
  const variants: Array<[string, Record<string, unknown>]> = [['top level', { ...output, leaked: 'x' }]]
  for (const [field, value] of Object.entries(output)) {
    if (!Array.isArray(value) || typeof value[0] !== 'object' || value[0] === null) continue
    variants.push([`${field}[0]`, { ...output, [field]: [{ ...value[0], leaked: 'x' }, ...value.slice(1)] }])
  }
  return variants
}

// tools/call results skip the SDK's own result validation (plugins/mcp.ts): this pins that every
// result is a valid CallToolResult and every success matches the tool's advertised outputSchema —
// exactly: the schemas forbid additional properties, so a field a handler leaks fails here.
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
    ['search_context', { query: 'three', limit: 1 }],
    ['context_history', { key: 'o/a', limit: 2 }],
    ['delete_context', { key: 'o/b' }],
    ['restore_context', { key: 'o/b', version: 1 }],
    ['changes_since', { prefix: 'o/', limit: 2 }],
    // failures
    ['read_context', { key: 'o/missing' }],
    ['write_context', { key: 'o/a', content: 'stale', expected_version: 1 }],
    ['delete_context', { key: 'o/missing' }],
    ['list_context', { limit: 1000 }],
    ['search_context', { query: '-three' }],
    ['changes_since', { cursor: 'garbled' }]
  ]
  const schemas = new Map(allTools.map((tool) => [tool.name, tool.outputSchema]))
  let successes = 0
  let failures = 0
  const leaksCaught = new Set<string>()
  for (const [name, args] of calls) {
    if (name === 'changes_since') await feedSettled(app) // so that the feed has items to check
    const result = await callTool(app, name, args)
    t.ok(isCallToolResult(result), `${name} answers a CallToolResult`)
    t.equal(result.content[0]?.type, 'text', `${name} has a text block`)
    if (result.isError === true) {
      failures++
      t.equal(result.structuredContent, undefined, `${name} failure has no structuredContent for clients to validate`)
      t.match(toolErrorOf(result), { code: /^[A-Z]{3}_\d{4}$/, message: String }, `${name} failure has a catalogue code in _meta`)
      t.match(result.content[0]?.text, /^[A-Z]{3}_\d{4}: /, `${name} failure text starts with the code`)
    } else {
      successes++
      const schema = schemas.get(name)
      if (schema === undefined) throw new Error(`no tool ${name}`)
      t.ok(Value.Check(schema, result.structuredContent), `${name} output matches its outputSchema: ${JSON.stringify([...Value.Errors(schema, result.structuredContent)].slice(0, 1))}`)
      for (const [where, leaked] of withLeakedField(result.structuredContent)) {
        t.notOk(Value.Check(schema, leaked), `${name}: a field leaked at ${where} fails the outputSchema`)
        leaksCaught.add(`${name} ${where}`)
      }
    }
  }
  t.equal(successes, 13)
  t.equal(failures, 6)
  t.ok(leaksCaught.has('list_context items[0]') && leaksCaught.has('context_history versions[0]') && leaksCaught.has('search_context items[0]') && leaksCaught.has('changes_since changes[0]'), 'nested items were checked too')
  for (const tool of allTools) t.ok(leaksCaught.has(`${tool.name} top level`), `${tool.name} success was checked for leaks`)
})

test('malformed tools/call params are JSON-RPC invalid-params errors', async (t) => {
  const app = await build(t)
  for (const params of [{}, { name: 5 }, { name: 'read_context', arguments: [] }, { name: 'read_context', arguments: 'key' }]) {
    const response = await rpc(app, 'tools/call', params)
    t.equal(response.statusCode, 200)
    t.equal(response.json().error?.code, -32602, JSON.stringify(params))
  }
})
