import { test } from 'tap'
import { build, callTool, rpc } from '../helper.js'

test('initialize, tools/list and a write/read round trip', async (t) => {
  const app = await build(t)
  const init = await rpc(app, 'initialize', { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'test', version: '1' } })
  t.equal(init.statusCode, 200, init.body)
  const initBody = init.json()
  t.equal(initBody.result.protocolVersion, '2025-06-18')
  t.match(initBody.result.instructions, /expected_version/)
  const list = await rpc(app, 'tools/list')
  t.same(list.json().result.tools.map((tool: { name: string }) => tool.name).sort(), ['append_context', 'changes_since', 'context_history', 'delete_context', 'list_context', 'read_context', 'restore_context', 'search_context', 'write_context'])
  const written = await callTool(app, 'write_context', { key: 'a/b', content: 'hello' })
  t.same(written.structuredContent, { key: 'a/b', version: 1, action: 'created', updated_at: written.structuredContent.updated_at })
  const read = await callTool(app, 'read_context', { key: 'a/b' })
  t.equal(read.structuredContent.content, 'hello')
  t.equal(read.structuredContent.updated_by, 'static-token')
})
