import { test } from 'tap'
import { eventually } from '../eventually.js'
import { build, callTool, rpc, toolErrorOf } from '../helper.js'
import { runCli } from '../process-helper.js'

// No upstream at all: APPROVE_CONTEXT_TOOLS alone puts delete_context under the approval rule.
test('APPROVE_CONTEXT_TOOLS=delete_context: a delete waits for a person, runs once when approved, never when rejected', async (t) => {
  t.setTimeout(120_000)
  const app = await build(t, { APPROVE_CONTEXT_TOOLS: 'delete_context', APPROVAL_MODE: 'out-of-band' })
  const env = { DATABASE_URL: app.config.DATABASE_URL as string }
  await callTool(app, 'write_context', { key: 'plans/q3', content: 'keep me' })
  await callTool(app, 'write_context', { key: 'plans/q4', content: 'delete me' })

  const listed = (await rpc(app, 'tools/list')).json() as { result: { tools: Array<{ name: string }> } }
  t.ok(listed.result.tools.some((tool) => tool.name === 'get_approval'), 'get_approval is listed')

  const bad = await callTool(app, 'delete_context', { key: 'no such key!' })
  t.equal(toolErrorOf(bad)?.code, 'REQ_1101', 'bad arguments are refused before anyone is asked')

  const asked = await callTool(app, 'delete_context', { key: 'plans/q4' })
  const pending = toolErrorOf(asked)
  t.equal(pending?.code, 'MCP_2003')
  t.match(asked.content[0]?.text, /delete_context \{"key":"plans\/q4"\} waits for a person's approval/)
  t.match((await callTool(app, 'read_context', { key: 'plans/q4' })).structuredContent, { content: 'delete me' }, 'not deleted yet')

  const approvalId = String(pending?.approval_id)
  const shown = await runCli(env, 'approvals', 'list')
  t.match(shown.stdout, new RegExp(`${approvalId}\\tpending\\tdelete_context \\{"key":"plans/q4"\\}\\tasked by static-token`))
  t.equal((await runCli(env, 'approvals', 'approve', '--id', approvalId, '--as', 'owner')).code, 0)
  const done = await callTool(app, 'get_approval', { approval_id: approvalId })
  t.notOk(done.isError)
  t.match(done.structuredContent, { key: 'plans/q4', deleted_version: 1 }, 'approved: deleted')
  t.equal(toolErrorOf(await callTool(app, 'read_context', { key: 'plans/q4' }))?.code, 'CTX_2001')
  t.same((await callTool(app, 'get_approval', { approval_id: approvalId })).structuredContent, done.structuredContent, 'asked again: the same outcome, not a second delete')
  const history = await callTool(app, 'context_history', { key: 'plans/q4' })
  t.equal((history.structuredContent.versions as unknown[]).length, 2, 'one delete in the history')

  const second = toolErrorOf(await callTool(app, 'delete_context', { key: 'plans/q3' }))
  t.equal((await runCli(env, 'approvals', 'reject', '--id', String(second?.approval_id))).code, 0)
  const cancelled = await callTool(app, 'get_approval', { approval_id: String(second?.approval_id) })
  t.equal(toolErrorOf(cancelled)?.code, 'MCP_2004')
  t.match((await callTool(app, 'read_context', { key: 'plans/q3' })).structuredContent, { content: 'keep me' }, 'rejected: never deleted')

  const restore = await callTool(app, 'restore_context', { key: 'plans/q4', version: 1 })
  t.notOk(restore.isError, 'restore_context is not listed in APPROVE_CONTEXT_TOOLS: it runs at once')
  await eventually(async () => (await app.db.sql`select 1 from gateway_approvals where status = 'done'`).length === 1, { what: 'the approval recorded as done' })
})
