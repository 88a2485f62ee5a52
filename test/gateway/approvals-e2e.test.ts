import { ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js'
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport as TransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { test } from 'tap'
import { eventually } from '../eventually.js'
import { runCli } from '../process-helper.js'
import { connectV1, connectV2, errorCodeOf, startGateway } from './gateway-helper.js'
import { startHr } from './upstreams/hr.js'

interface ErrorMeta { code: string, approval_id?: string, status?: string }

function errorOf (result: { isError?: unknown, _meta?: Record<string, unknown> }): ErrorMeta | undefined {
  return result.isError === true ? result._meta?.['shared-context-mcp/error'] as ErrorMeta | undefined : undefined
}

// One gateway for the file: hr behind it; delete_* waits for a person, add_note is asked in-band.
test('approvals through the listening server: pending → a person decides with the CLI → done once, or cancelled', async (t) => {
  t.setTimeout(150_000)
  const hr = await startHr()
  t.teardown(() => hr.close())
  const gateway = await startGateway(t, [{
    name: 'hr',
    url: hr.url,
    allow: { 'hr:read': ['list_*'], 'hr:write': ['*'] },
    confirm: ['delete_*', 'add_note'],
    approval: { mode: 'out-of-band', tools: { add_note: 'in-band' } }
  }])
  const { app, baseUrl } = gateway
  await eventually(() => app.gateway?.upstreams.every((upstream) => upstream.status === 'ok'), { what: 'hr connected' })
  const env = { DATABASE_URL: app.config.DATABASE_URL as string }
  const writer = await gateway.token(['hr-write'])
  const deletes = () => hr.runs.get('delete_employee') ?? 0
  const auditRows = (tool: string) => app.db.sql<Array<{ outcome: string, approval_id: string | null, principal: string, arguments_digest: string }>>`
    select outcome, approval_id, principal, arguments_digest from gateway_calls where tool = ${tool} order by id`

  await t.test('approved (SDK v2 client): pending, not run; approved with the CLI; get_approval runs it once; asked again, the same result', async (t) => {
    const client = await connectV2(t, baseUrl, writer)
    t.ok((await client.listTools()).tools.some((tool) => tool.name === 'get_approval'), 'get_approval is listed beside the upstream tools')
    const asked = await client.callTool({ name: 'hr__delete_employee', arguments: { id: 'e2' } })
    const pending = errorOf(asked)
    t.equal(pending?.code, 'MCP_2003', 'pending approval')
    t.equal(pending?.status, 'pending')
    t.match((asked.content as Array<{ text: string }>)[0]?.text, /hr__delete_employee \{"id":"e2"\} waits for a person's approval \(approval apr_\w+, expires /)
    const id = String(pending?.approval_id)
    t.equal(deletes(), 0, 'the upstream was not called')

    const early = await client.callTool({ name: 'get_approval', arguments: { approval_id: id } })
    t.equal(errorOf(early)?.status, 'pending', 'the model cannot make it run')

    const listed = await runCli(env, 'approvals', 'list')
    t.match(listed.stdout, new RegExp(`${id}\\tpending\\thr__delete_employee \\{"id":"e2"\\}\\tasked by oidc:`))
    const approved = await runCli(env, 'approvals', 'approve', '--id', id, '--as', 'hr-lead')
    t.equal(approved.code, 0, approved.stderr)

    const done = await client.callTool({ name: 'get_approval', arguments: { approval_id: id } })
    t.notOk(done.isError, 'approved: it ran')
    t.same(done.structuredContent, { deleted: 'e2' }, 'the upstream\'s result')
    t.equal(deletes(), 1, 'the upstream saw one call')
    const again = await client.callTool({ name: 'get_approval', arguments: { approval_id: id } })
    t.same(again.structuredContent, { deleted: 'e2' }, 'asked again: the stored outcome')
    t.equal(deletes(), 1, 'still one call')

    const rows = await eventually(async () => {
      const found = await auditRows('delete_employee')
      return found.length >= 2 ? found : undefined
    }, { what: 'the audit rows of the pending and the approved call' })
    t.match(rows, [{ outcome: 'pending', approval_id: id }, { outcome: 'ok', approval_id: id }])
    t.match(await app.db.sql`select requested_by, decided_by, status, decided_at is not null as decided from gateway_approvals where id = ${id}`,
      [{ requested_by: /^oidc:/, decided_by: 'cli:hr-lead', status: 'done', decided: true }], 'who asked, who decided, when')
  })

  await t.test('rejected (SDK v1 client): pending, rejected with the CLI, get_approval says cancelled; the upstream never called', async (t) => {
    const client = await connectV1(t, baseUrl, writer)
    const before = deletes()
    const asked = await client.callTool({ name: 'hr__delete_employee', arguments: { id: 'e3' } })
    t.equal(errorCodeOf(asked as never), 'MCP_2003', 'the SDK v1 client accepts the pending answer (no structuredContent to mismatch the outputSchema)')
    const id = String(errorOf(asked as never)?.approval_id)
    const rejected = await runCli(env, 'approvals', 'reject', '--id', id, '--as', 'hr-lead')
    t.equal(rejected.code, 0, rejected.stderr)
    const answer = await client.callTool({ name: 'get_approval', arguments: { approval_id: id } })
    t.equal(errorOf(answer as never)?.code, 'MCP_2004')
    t.equal(errorOf(answer as never)?.status, 'rejected')
    t.match((answer.content as Array<{ text: string }>)[0]?.text, /rejected by cli:hr-lead.*cancelled and never ran/)
    t.equal(deletes(), before, 'the upstream was never called')
  })

  await t.test('another user cannot collect someone\'s approval', async (t) => {
    const client = await connectV2(t, baseUrl, writer)
    const asked = await client.callTool({ name: 'hr__delete_employee', arguments: { id: 'e1' } })
    const id = String(errorOf(asked)?.approval_id)
    await runCli(env, 'approvals', 'approve', '--id', id)
    const other = await connectV2(t, baseUrl, await gateway.token(['hr-write'], { sub: 'someone-else' }))
    const stolen = await other.callTool({ name: 'get_approval', arguments: { approval_id: id } })
    t.equal(errorOf(stolen)?.code, 'REQ_1101', 'unknown to them')
    t.same((await client.callTool({ name: 'get_approval', arguments: { approval_id: id } })).structuredContent, { deleted: 'e1' }, 'its own principal collects it')
  })

  await t.test('2025 in-band: elicitation/create during the call; accept runs it once, decline never (SDK v2 and v1 clients)', async (t) => {
    const notes = () => hr.runs.get('add_note') ?? 0
    const answers: Array<'accept' | 'decline'> = ['accept', 'decline', 'accept', 'decline']
    const questions: string[] = []
    const answer = (message: unknown) => {
      questions.push(String(message))
      const action = answers.shift() ?? 'decline'
      return action === 'accept' ? { action, content: { approve: true } } : { action }
    }
    const v2 = await connectV2(t, baseUrl, writer, { capabilities: { elicitation: { form: {} } } })
    v2.setRequestHandler('elicitation/create', async (request) => answer((request.params as { message?: unknown }).message) as never)
    const before = notes()
    const ran = await v2.callTool({ name: 'hr__add_note', arguments: { id: 'e2', text: 'elicited' } })
    t.notOk(ran.isError, 'accepted in-band: it ran')
    t.same(ran.structuredContent, { noted: 'e2' })
    t.match(questions.at(-1), /Allow hr__add_note \{"id":"e2","text":"elicited"\}\?/)
    t.equal(notes(), before + 1)
    const declined = await v2.callTool({ name: 'hr__add_note', arguments: { id: 'e2', text: 'declined' } })
    t.equal(errorOf(declined)?.code, 'MCP_2004')
    t.equal(notes(), before + 1, 'declined: never run')

    const v1 = new ClientV1({ name: 'gateway-test-v1', version: '1.0.0' }, { capabilities: { elicitation: {} } })
    v1.setRequestHandler(ElicitRequestSchema, async (request) => answer(request.params.message) as never)
    await v1.connect(new TransportV1(new URL('/mcp', baseUrl), { requestInit: { headers: { authorization: `Bearer ${writer}` } } }))
    t.teardown(() => v1.close())
    const v1Ran = await v1.callTool({ name: 'hr__add_note', arguments: { id: 'e3', text: 'v1' } })
    t.notOk(v1Ran.isError, 'the SDK v1 client answers elicitation too')
    t.equal(notes(), before + 2)
    const v1Declined = await v1.callTool({ name: 'hr__add_note', arguments: { id: 'e3', text: 'v1 declined' } })
    t.equal(errorOf(v1Declined as never)?.code, 'MCP_2004')
    t.equal(notes(), before + 2)
    const rows = await app.db.sql`select mode, status from gateway_approvals where tool = 'add_note' and mode = 'elicitation' order by requested_at`
    t.match(rows, [{ status: 'done' }, { status: 'rejected' }, { status: 'done' }, { status: 'rejected' }])

    const stateless = await connectV2(t, baseUrl, writer)
    const noElicitation = await stateless.callTool({ name: 'hr__add_note', arguments: { id: 'e1', text: 'no elicitation' } })
    t.equal(errorOf(noElicitation)?.code, 'MCP_2003', 'a client without form elicitation: out-of-band')
    t.equal(notes(), before + 2)
  })

  await t.test('2026-07-28 in-band: input-required, the client\'s user accepts, the call runs once; declined, never', async (t) => {
    const answers: Array<'accept' | 'decline'> = ['accept', 'decline']
    const questions: string[] = []
    const client = await connectV2(t, baseUrl, writer, { negotiate: true, capabilities: { elicitation: { form: {} } } })
    client.setRequestHandler('elicitation/create', async (request) => {
      questions.push(String((request.params as { message?: unknown }).message))
      const action = answers.shift() ?? 'decline'
      return action === 'accept' ? { action, content: { approve: true } } : { action }
    })
    const notes = () => hr.runs.get('add_note') ?? 0
    const before = notes()
    const ran = await client.callTool({ name: 'hr__add_note', arguments: { id: 'e1', text: 'approved in-band' } })
    t.notOk(ran.isError, 'accepted: it ran')
    t.same(ran.structuredContent, { noted: 'e1' })
    t.match(questions[0], /Allow hr__add_note \{"id":"e1","text":"approved in-band"\}\?/)
    t.equal(notes(), before + 1)
    const declined = await client.callTool({ name: 'hr__add_note', arguments: { id: 'e1', text: 'declined' } })
    t.equal(errorOf(declined)?.code, 'MCP_2004')
    t.equal(notes(), before + 1, 'declined: the upstream never called')
    const rows = await app.db.sql`select mode, status, decided_by from gateway_approvals where tool = 'add_note' and mode = 'input-required' order by requested_at`
    t.match(rows, [{ mode: 'input-required', status: 'done' }, { mode: 'input-required', status: 'rejected' }])
  })
})
