import { test } from 'tap'
import { eventually } from '../eventually.js'
import { startHr } from './upstreams/hr.js'
import { connectV1, connectV2, errorCodeOf, startGateway } from './gateway-helper.js'

type Meta = { attempts?: number, reason?: string, upstream?: string }

function errorOf (result: { _meta?: Record<string, unknown> }): Meta {
  return (result._meta?.['shared-context-mcp/error'] ?? {}) as Meta
}

// Three hr servers behind one gateway, each under its own name so that one's breaker is not another's.
test('upstream failures: codes, retries, breaker, health, drain', async (t) => {
  const [hr, slow, flaky] = await Promise.all([startHr(), startHr(), startHr()])
  for (const server of [hr, slow, flaky]) t.teardown(() => server.close())
  const retry = { attempts: 3, baseDelayMs: 10, maxDelayMs: 100 }
  const gateway = await startGateway(t, [
    { name: 'hr', url: hr.url, allow: { 'hr:write': ['*'] }, retry, breaker: { failures: 100, openMs: 1000 } },
    { name: 'slow', url: slow.url, allow: { 'hr:write': ['*'] }, retry, timeoutMs: 300 },
    { name: 'limited', url: hr.url, allow: { 'hr:write': ['list_*'] }, callsPerMinute: 2 },
    { name: 'flaky', url: flaky.url, allow: { 'hr:write': ['*'] }, retry, breaker: { failures: 3, openMs: 400 }, critical: true, connectTimeoutMs: 500 }
  ], { RATE_LIMITS: 'off' })
  const { app, baseUrl } = gateway
  await eventually(() => app.gateway?.upstreams.every((upstream) => upstream.status === 'ok'), { what: 'the upstreams connected' })
  const client = await connectV2(t, baseUrl, await gateway.token(['hr-write']))
  const runs = (name: string): number => hr.runs.get(name) ?? 0

  await t.test('503 on a read-only call: retried, then the upstream\'s answer', async (t) => {
    const before = { runs: runs('list_employees'), requests: hr.callRequests }
    hr.fail('http-503', 2)
    const result = await client.callTool({ name: 'hr__list_employees', arguments: {} })
    t.notOk(result.isError)
    t.equal(hr.callRequests - before.requests, 3, 'two refused attempts, then the one that ran')
    t.equal(runs('list_employees') - before.runs, 1)
  })

  await t.test('503 on a non-idempotent call: not repeated (an application may answer 503 after its side effects) — MCP_2002', async (t) => {
    const before = hr.callRequests
    hr.fail('http-503', 1)
    const result = await client.callTool({ name: 'hr__add_note', arguments: { id: 'e1', text: 'hi' } })
    t.equal(errorCodeOf(result), 'MCP_2002')
    t.equal(errorOf(result).attempts, 1)
    t.equal(errorOf(result).reason, 'http_503')
    t.equal(hr.callRequests - before, 1, 'one attempt only')
  })

  await t.test('504 on a read-only call: retried (repeating it is safe)', async (t) => {
    const before = { runs: runs('list_employees'), requests: hr.callRequests }
    hr.fail('http-504', 1)
    const result = await client.callTool({ name: 'hr__list_employees', arguments: {} })
    t.notOk(result.isError)
    t.equal(hr.callRequests - before.requests, 2, 'the refused attempt, then the one that ran')
    t.equal(runs('list_employees') - before.runs, 1)
  })

  await t.test('502 on a non-idempotent call: not repeated (a proxy may have passed it on) — MCP_2002', async (t) => {
    const before = hr.callRequests
    hr.fail('http-502', 1)
    const result = await client.callTool({ name: 'hr__add_note', arguments: { id: 'e1', text: 'hi' } })
    t.equal(errorCodeOf(result), 'MCP_2002')
    t.equal(errorOf(result).attempts, 1)
    t.equal(hr.callRequests - before, 1, 'one attempt only')
    t.match(String((result.content as Array<{ text: string }>)[0]?.text), /^MCP_2002: hr__add_note: the upstream server "hr" failed/)
  })

  await t.test('connection reset mid-request: a non-idempotent call is not repeated (it may have run), a read-only one is', async (t) => {
    const before = { runs: runs('add_note'), requests: hr.callRequests }
    hr.fail('reset', 1)
    const result = await client.callTool({ name: 'hr__add_note', arguments: { id: 'e2', text: 'x' } })
    t.equal(errorCodeOf(result), 'MCP_2002')
    t.equal(errorOf(result).attempts, 1)
    t.equal(hr.callRequests - before.requests, 1)
    t.equal(runs('add_note') - before.runs, 0, 'this time it had not run')
    hr.fail('reset', 1)
    const read = await client.callTool({ name: 'hr__list_employees', arguments: {} })
    t.notOk(read.isError, 'the read-only call was repeated and answered')
  })

  await t.test('connection refused (the request never reached the upstream): repeated even when not idempotent', async (t) => {
    await slow.kill()
    const result = await client.callTool({ name: 'slow__add_note', arguments: { id: 'e2', text: 'x' } })
    t.equal(errorCodeOf(result), 'MCP_2002')
    t.equal(errorOf(result).reason, 'econnrefused')
    t.equal(errorOf(result).attempts, 4, '1 + 3 retries')
    t.equal(slow.runs.get('add_note') ?? 0, 0)
    await slow.start()
    await eventually(async () => (await client.callTool({ name: 'slow__add_note', arguments: { id: 'e2', text: 'x' } })).isError !== true, { what: 'slow to answer again' })
  })

  await t.test('connection reset after a non-idempotent call ran: never repeated', async (t) => {
    const before = { runs: runs('add_note'), requests: hr.callRequests }
    hr.fail('reset-after', 1)
    const result = await client.callTool({ name: 'hr__add_note', arguments: { id: 'e3', text: 'once' } })
    t.equal(errorCodeOf(result), 'MCP_2002')
    t.equal(runs('add_note') - before.runs, 1, 'the call ran exactly once upstream')
    t.equal(hr.callRequests - before.requests, 1)
  })

  await t.test('connection reset after a read-only call ran: repeated, and answered', async (t) => {
    const before = runs('list_employees')
    hr.fail('reset-after', 1)
    const result = await client.callTool({ name: 'hr__list_employees', arguments: {} })
    t.notOk(result.isError)
    t.equal(runs('list_employees') - before, 2)
  })

  await t.test('503 on every attempt: MCP_2002 after 1 + 3 attempts, as a tool error the v1 client accepts', async (t) => {
    const before = hr.callRequests
    hr.fail('http-503', Infinity)
    t.teardown(() => hr.clearFaults())
    const v1 = await connectV1(t, baseUrl, await gateway.token(['hr-write']))
    const result = await v1.callTool({ name: 'hr__list_employees', arguments: {} }) as { isError?: boolean, _meta?: Record<string, unknown> }
    hr.clearFaults()
    t.equal(errorCodeOf(result), 'MCP_2002')
    t.equal(errorOf(result).attempts, 4)
    t.equal(errorOf(result).reason, 'http_503')
    t.equal(hr.callRequests - before, 4)
  })

  await t.test('callsPerMinute: a principal\'s attempts at an upstream are counted', async (t) => {
    for (let call = 0; call < 2; call++) t.notOk((await client.callTool({ name: 'limited__list_employees', arguments: {} })).isError)
    const limited = await client.callTool({ name: 'limited__list_employees', arguments: {} })
    t.equal(errorCodeOf(limited), 'REQ_1103')
    const other = await connectV2(t, baseUrl, await gateway.token(['hr-write'], { sub: 'another-user' }))
    t.notOk((await other.callTool({ name: 'limited__list_employees', arguments: {} })).isError, 'per principal')
  })

  await t.test('a stalled upstream: MCP_2001 after timeoutMs, not repeated', async (t) => {
    const before = slow.callRequests
    slow.fail('stall', 1)
    const result = await client.callTool({ name: 'slow__list_employees', arguments: {} })
    t.equal(errorCodeOf(result), 'MCP_2001')
    t.match(String((result.content as Array<{ text: string }>)[0]?.text), /did not answer within 300 ms/)
    t.equal(slow.callRequests - before, 1)
    const after = await client.callTool({ name: 'slow__list_employees', arguments: {} })
    t.notOk(after.isError, 'the next call is served')
  })

  await t.test('a killed critical upstream: MCP_2002, breaker opens, /ready degraded; it recovers through a half-open probe', async (t) => {
    await flaky.kill()
    const first = await client.callTool({ name: 'flaky__list_employees', arguments: {} })
    t.equal(errorCodeOf(first), 'MCP_2002')
    t.equal(errorOf(first).reason, 'econnrefused')
    t.equal(errorOf(first).attempts, 3, 'retried until the breaker opened (3 failures)')
    const paused = await client.callTool({ name: 'flaky__list_employees', arguments: {} })
    t.equal(errorCodeOf(paused), 'MCP_2002')
    t.equal(errorOf(paused).reason, 'breaker_open')
    t.equal(errorOf(paused).attempts, 0, 'not sent upstream at all')
    const ready = await (await fetch(new URL('/ready', baseUrl))).json() as { status: string, upstreams: Array<{ name: string, status: string, breaker: string }> }
    t.equal(ready.status, 'degraded', 'a critical upstream is down')
    t.match(ready.upstreams.find((upstream) => upstream.name === 'flaky'), { status: 'down', breaker: 'open' })
    t.match(ready.upstreams.find((upstream) => upstream.name === 'hr'), { status: 'ok', breaker: 'closed' })
    const metrics = await (await fetch(new URL('/metrics', baseUrl))).text()
    t.match(metrics, /scm_gateway_breaker_state\{upstream="flaky"\} 2/)
    t.match(metrics, /scm_gateway_calls_total\{upstream="flaky",tool="list_employees",outcome="breaker_open"\} 1/)
    t.match(metrics, /scm_gateway_retries_total\{upstream="hr",reason="http_503"\} \d+/)
    t.match(metrics, /scm_gateway_call_duration_seconds_count\{upstream="hr"\} \d+/)

    await flaky.start()
    const recovered = await eventually(async () => {
      const result = await client.callTool({ name: 'flaky__list_employees', arguments: {} })
      return result.isError === true ? undefined : result
    }, { what: 'the half-open probe to close the breaker' })
    t.notOk(recovered?.isError)
    await eventually(async () => ((await (await fetch(new URL('/ready', baseUrl))).json()) as { status: string }).status === 'ok', { what: '/ready ok again' })
    t.equal(app.gateway?.upstreams.find((upstream) => upstream.name === 'flaky')?.breaker.state, 'closed')
  })

  await t.test('the rest of the server is unaffected by a dead upstream', async (t) => {
    await flaky.kill()
    const written = await client.callTool({ name: 'write_context', arguments: { key: 'gateway/unaffected', content: 'still here' } })
    t.equal(written.isError, true, 'hr-write has no context scope: refused as usual, not by the gateway')
    t.equal(errorCodeOf(written), 'AUTH_1004')
    const hrAnswer = await client.callTool({ name: 'hr__list_employees', arguments: {} })
    t.notOk(hrAnswer.isError, 'other upstreams keep working')
  })

  await t.test('SIGTERM (close) lets a call in flight upstream finish', async (t) => {
    const longCall = client.callTool({ name: 'hr__slow_report', arguments: { steps: 6, step_ms: 50 } })
    await eventually(() => (hr.runs.get('slow_report') ?? 0) > 0, { what: 'the slow call to reach hr' })
    const closing = app.close()
    const result = await longCall
    t.notOk(result.isError, 'answered, not cut off')
    t.same(result.structuredContent, { steps: 6 })
    await closing
  })
})
