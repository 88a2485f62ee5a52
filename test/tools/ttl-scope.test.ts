import { test } from 'tap'
import { build, callTool, rpc } from '../helper.js'
import { addToken } from './helpers.js'

test('a TTL is a deferred delete: write_context with ttl_seconds needs context:delete', async (t) => {
  const app = await build(t)
  const writer = await addToken(app, 'writer', 'default', ['context:read', 'context:write'])
  const deleter = await addToken(app, 'deleter', 'default', ['context:read', 'context:write', 'context:delete'])
  const admin = await addToken(app, 'ns-admin', 'default', ['context:admin'])
  const as = (token: string) => ({ token })
  const expiryOf = async (key: string) => {
    const rows = await app.db.sql<Array<{ expires_at: Date | null }>>`select expires_at from context_entries where namespace = 'default' and key = ${key}`
    return rows.length === 0 ? 'absent' : rows[0]?.expires_at === null ? 'none' : 'set'
  }

  const created = await callTool(app, 'write_context', { key: 'doomed', content: 'x', ttl_seconds: 1 }, as(writer))
  t.equal(created.isError, true)
  t.match(created.content[0]?.text, /^AUTH_1004:/, 'creating with a TTL is refused without context:delete')
  t.match(created.content[0]?.text, /ttl_seconds.*context:delete/, 'the message names ttl_seconds and the scope it needs')
  t.equal(await expiryOf('doomed'), 'absent', 'nothing was written')

  t.notOk((await callTool(app, 'write_context', { key: 'kept', content: 'v1' }, as(writer))).isError, 'the same writer may write without a TTL')
  const shortened = await callTool(app, 'write_context', { key: 'kept', content: 'v2', ttl_seconds: 1 }, as(writer))
  t.match(shortened.content[0]?.text, /^AUTH_1004:/, 'setting a TTL on a key without one is refused')
  t.equal((await callTool(app, 'read_context', { key: 'kept' }, as(writer))).structuredContent.content, 'v1', 'the key keeps its content')
  t.equal(await expiryOf('kept'), 'none', 'and has no expiry')

  t.notOk((await callTool(app, 'write_context', { key: 'expiring', content: 'v1', ttl_seconds: 3600 }, as(deleter))).isError, 'with context:delete a TTL is allowed')
  t.equal(await expiryOf('expiring'), 'set')
  const changed = await callTool(app, 'write_context', { key: 'expiring', content: 'v2', ttl_seconds: 60 }, as(writer))
  t.match(changed.content[0]?.text, /^AUTH_1004:/, 'shortening (or any change of) an expiry needs context:delete too')
  t.notOk((await callTool(app, 'write_context', { key: 'expiring', content: 'v2' }, as(writer))).isError, 'a write without ttl_seconds removes the expiry; context:write is enough')
  t.equal(await expiryOf('expiring'), 'none')

  t.notOk((await callTool(app, 'write_context', { key: 'by-admin', content: 'x', ttl_seconds: 60 }, as(admin))).isError, 'context:admin of the namespace includes context:delete')

  const listed = await rpc(app, 'tools/list', {}, as(writer))
  const tool = (listed.json() as { result: { tools: Array<{ name: string, description: string }> } }).result.tools.find((candidate) => candidate.name === 'write_context')
  t.match(tool?.description, /ttl_seconds.*context:delete/s, 'the tool description says so')
})
