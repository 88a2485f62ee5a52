import { Registry } from 'prom-client'
import { test } from 'tap'
import { createSql } from '../../db/connect.js'
import { createGatewayStore } from '../../db/gateway-store.js'
import { argumentsDigest, createCallAudit, registerApprovalMetrics } from '../../gateway/approvals.js'
import type { CallRecord } from '../../gateway/policy.js'
import { testDatabase } from '../db-helper.js'

const call: CallRecord = {
  principal: 'oidc:alice',
  namespace: 'team',
  client: 'claude-ai',
  upstream: 'hr',
  tool: 'list_employees',
  argumentsDigest: argumentsDigest({ department: 'sales', salary: 123456 }),
  outcome: 'ok',
  attempts: 2,
  durationMs: 41.2
}

function capturingLog () {
  const lines: Array<{ level: string, message: string, object: Record<string, unknown> }> = []
  return {
    lines,
    warn: (object: Record<string, unknown>, message: string) => { lines.push({ level: 'warn', message, object }) },
    error: (object: Record<string, unknown>, message: string) => { lines.push({ level: 'error', message, object }) }
  }
}

test('call audit: one row per call with the digest; a failed write is logged and counted, never thrown', async (t) => {
  const { url, sql } = await testDatabase(t)
  const store = createGatewayStore(sql)
  const registry = new Registry()
  const log = capturingLog()
  const metrics = registerApprovalMetrics(registry, store, log)
  const audit = createCallAudit(store, log, metrics)

  await audit.record(call)
  await audit.record({ ...call, outcome: 'timeout', code: 'SRV_9001', attempts: 3, durationMs: 30_000, approvalId: 'apr_AAAAAAAAAAAAAAAA' })
  const rows = await sql`select namespace, principal, client, upstream, tool, arguments_digest, outcome, code, attempts, duration_ms, approval_id from gateway_calls order by id`
  t.same(rows, [
    { namespace: 'team', principal: 'oidc:alice', client: 'claude-ai', upstream: 'hr', tool: 'list_employees', arguments_digest: call.argumentsDigest, outcome: 'ok', code: null, attempts: 2, duration_ms: 41, approval_id: null },
    { namespace: 'team', principal: 'oidc:alice', client: 'claude-ai', upstream: 'hr', tool: 'list_employees', arguments_digest: call.argumentsDigest, outcome: 'timeout', code: 'SRV_9001', attempts: 3, duration_ms: 30000, approval_id: 'apr_AAAAAAAAAAAAAAAA' }
  ])
  t.notMatch(JSON.stringify(rows), /sales|123456/, 'never the arguments')

  t.match(await registry.getSingleMetricAsString('scm_gateway_audit_failures_total'), /scm_gateway_audit_failures_total 0/)
  t.match(await registry.getSingleMetricAsString('scm_gateway_pending_approvals'), /scm_gateway_pending_approvals 0/)
  await store.createApproval({
    namespace: 'team', requestedBy: 'oidc:alice', client: null, upstream: 'hr', tool: 'delete_employee', arguments: {}, argumentsDigest: argumentsDigest({}), mode: 'out-of-band', expiresInSeconds: 60
  })
  t.match(await registry.getSingleMetricAsString('scm_gateway_pending_approvals'), /scm_gateway_pending_approvals 1/, 'read at each scrape')

  // The database gone: a pool of its own, closed.
  const lost = createSql(url, { max: 1, connectTimeoutMs: 1000 })
  await lost.end()
  const lostStore = createGatewayStore(lost)
  const lostRegistry = new Registry()
  const lostMetrics = registerApprovalMetrics(lostRegistry, lostStore, log)
  const lostAudit = createCallAudit(lostStore, log, lostMetrics)
  await t.resolves(lostAudit.record(call), 'the call path never sees the failure')
  t.match(await lostRegistry.getSingleMetricAsString('scm_gateway_audit_failures_total'), /scm_gateway_audit_failures_total 1/, 'counted')
  const logged = log.lines.find((line) => line.message === 'gateway audit row could not be written')
  t.match(logged, { level: 'error', object: { upstream: 'hr', tool: 'list_employees', outcome: 'ok' } }, 'logged, with what it was about')
  t.notMatch(JSON.stringify(logged?.object ?? {}), /sales/, 'and never the arguments')
  t.match(await lostRegistry.getSingleMetricAsString('scm_gateway_pending_approvals'), /scm_gateway_pending_approvals Nan/, 'an unreadable database reads as NaN')
})

test('call audit: rows of calls that end while a write is in flight go together in the next one, in the order the calls ended; a refused batch fails each of its calls and no other', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createGatewayStore(sql)
  const rows = Array.from({ length: 25 }, (_, index) => ({ ...call, tool: `tool_${index}`, code: null, approvalId: null }))
  await Promise.all(rows.map((row) => store.recordCall(row)))
  const written = await sql<Array<{ tool: string }>>`select tool from gateway_calls order by id`
  t.same(written.map((row) => row.tool), rows.map((row) => row.tool), 'every row, in order')

  // A row the table refuses (a digest that is no SHA-256) fails the batch it is in, and only that one.
  const first = store.recordCall({ ...rows[0]!, tool: 'alone' })
  const refused = [store.recordCall({ ...rows[0]!, tool: 'bad', argumentsDigest: 'nope' }), store.recordCall({ ...rows[0]!, tool: 'same_batch' })]
  await first
  for (const write of refused) await t.rejects(write, { message: /gateway_calls_digest/ })
  await store.recordCall({ ...rows[0]!, tool: 'after' })
  const tools = (await sql<Array<{ tool: string }>>`select tool from gateway_calls order by id`).map((row) => row.tool)
  t.same(tools.slice(25), ['alone', 'after'], 'the next batch is written')
})
