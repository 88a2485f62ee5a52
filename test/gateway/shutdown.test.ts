import { test } from 'tap'
import { drainDeadline } from '../../plugins/shutdown-deadline.js'
import { UpstreamClosed } from '../../gateway/resilience.js'
import { eventually } from '../eventually.js'
import { startHr } from './upstreams/hr.js'
import { connectV1, connectV2, errorCodeOf, startGateway } from './gateway-helper.js'

test('the drains of one shutdown share one deadline within SHUTDOWN_TIMEOUT_MS', async (t) => {
  let clock = 1000
  const config = { SHUTDOWN_TIMEOUT_MS: 10_000 }
  const first = drainDeadline(config, () => clock)
  t.equal(first, 1000 + 8000, 'the budget less what closing needs after the drain')
  clock += 5000
  t.equal(drainDeadline(config, () => clock), first, 'a later drain gets the same deadline, not a new full budget')
  t.equal(drainDeadline({ SHUTDOWN_TIMEOUT_MS: 1000 }, () => 0), 500, 'a small budget: half of it for the drain')
})

// A call that outlives the drain deadline is cancelled upstream and answered; nothing new starts after close.
test('SIGTERM with an upstream call that would outlast SHUTDOWN_TIMEOUT_MS', async (t) => {
  const hr = await startHr()
  t.teardown(() => hr.close())
  const gateway = await startGateway(t, [{ name: 'hr', url: hr.url, allow: { 'hr:read': ['*'] } }], { SHUTDOWN_TIMEOUT_MS: '1000' })
  const { app, baseUrl } = gateway
  await eventually(() => app.gateway?.upstreams[0]?.status === 'ok', { what: 'hr connected' })
  const token = await gateway.token(['hr-read'])
  const v2 = await connectV2(t, baseUrl, token)
  const v1 = await connectV1(t, baseUrl, token)
  const upstream = app.gateway!.upstreams[0]!

  // 1000 steps of 50 ms: far beyond the budget.
  const calls = [
    v2.callTool({ name: 'hr__slow_report', arguments: { steps: 1000, step_ms: 50 } }),
    v1.callTool({ name: 'hr__slow_report', arguments: { steps: 1000, step_ms: 50 } })
  ]
  await eventually(() => (hr.runs.get('slow_report') ?? 0) === 2, { what: 'both calls to reach hr' })
  const closing = app.close()
  const refused = await eventually(() => upstream.callTool('list_employees', {}, { signal: new AbortController().signal }).then(() => false, (error: unknown) => error instanceof UpstreamClosed), { what: 'a new call to be refused' })
  t.ok(refused, 'no new call (nor connection) once the drain began')
  t.equal(upstream.inFlight, 2, 'while the two calls still run')

  const results = await Promise.all(calls)
  for (const result of results) {
    t.equal(errorCodeOf(result), 'MCP_2002', 'cut off at the deadline, answered as a tool error (the v1 client accepts it)')
    t.match((result._meta?.['shared-context-mcp/error'] as { reason?: string } | undefined)?.reason, 'shutting_down')
  }
  await closing
  await eventually(() => hr.cancelled.filter((name) => name === 'slow_report').length === 2, { what: 'hr to see both calls cancelled' })
  t.equal(hr.runs.get('slow_report'), 2, 'nothing was repeated')
})
