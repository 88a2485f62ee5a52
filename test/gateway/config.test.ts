import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test, type Test } from 'tap'
import { globsOf, loadUpstreams } from '../../gateway/config.js'
import { federatedNameOf, MAX_TOOL_NAME } from '../../gateway/federation.js'
import { CircuitBreaker, ConcurrencyLimit, backoffDelayMs, classifyFailure } from '../../gateway/resilience.js'
import { ConfigError, loadConfig } from '../../schema/config.js'
import { defaultApprovalMode } from '../../plugins/gateway.js'
import { SdkError, SdkErrorCode } from '@modelcontextprotocol/client'

function fileWith (t: Test, content: unknown): string {
  const directory = mkdtempSync(join(tmpdir(), 'scm-upstreams-'))
  t.teardown(() => rmSync(directory, { recursive: true, force: true }))
  const path = join(directory, 'upstreams.json')
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content))
  return path
}

const HR = { name: 'hr', url: 'http://127.0.0.1:9/mcp', allow: { 'hr:read': ['list_*'] } }

test('UPSTREAMS_FILE: defaults, and environment variables in headers', async (t) => {
  // eslint-disable-next-line no-template-curly-in-string -- the file's own syntax
  const path = fileWith(t, { upstreams: [{ ...HR, headers: { Authorization: 'Bearer ${HR_TOKEN}' } }] })
  const { upstreams, problems } = loadUpstreams(path, { HR_TOKEN: 's3cret' })
  t.same(problems, [])
  t.equal(upstreams[0]?.headers.Authorization, 'Bearer s3cret')
  t.match(upstreams[0], { critical: false, timeoutMs: 30000, concurrency: 16, retry: { attempts: 3, baseDelayMs: 200 }, breaker: { failures: 5, openMs: 30000 }, healthCheckSeconds: 15 })
  t.equal(upstreams[0]?.confirm, undefined, 'no confirm: the gate decides by annotations')
})

test('UPSTREAMS_FILE: every problem listed, secrets never shown, the server refuses to start', async (t) => {
  const path = fileWith(t, {
    upstreams: [
      // eslint-disable-next-line no-template-curly-in-string -- the file's own syntax
      { ...HR, headers: { 'X-Key': 'k-${MISSING_KEY}' } },
      { ...HR, name: 'HR' },
      { name: 'bad__name', url: 'ftp://x', allow: { 'Not A Scope': ['*'] }, timeoutMs: 5, extra: true }
    ]
  })
  const { problems } = loadUpstreams(path, {})
  t.ok(problems.some((problem) => /upstreams\[2\]\.name/.test(problem)), 'a name with "__"')
  t.match(loadUpstreams(fileWith(t, { upstreams: [{ ...HR, name: 'hr_' }] }), {}).problems, [/upstreams\[0\]\.name/], 'a name ending in "_" (hr_ + _x and hr + x_ would meet)')
  t.ok(problems.some((problem) => /upstreams\[2\]\.url/.test(problem)), 'a URL that is not HTTP')
  t.ok(problems.some((problem) => /upstreams\[2\]\.timeoutMs/.test(problem)), 'a timeout below the minimum')
  t.ok(problems.some((problem) => /upstreams\[2\]/.test(problem) && /additional|extra/i.test(problem)), 'an unknown field')
  const fixedPath = fileWith(t, { upstreams: [{ ...HR, headers: { 'X-Key': 'k-${MISSING_KEY}' } }, { ...HR, name: 'HR' }, { ...HR, name: 'x', allow: { 'Not A Scope': ['*'] } }] }) // eslint-disable-line no-template-curly-in-string
  const second = loadUpstreams(fixedPath, { OTHER: 'v' }).problems
  t.match(second, [/upstreams\[0\]\.headers\.X-Key: environment variable MISSING_KEY is not set/, /upstreams\[1\]\.name: "HR" is used twice/, /upstreams\[2\]\.allow: .*not a scope name/])
  t.throws(() => loadConfig({ UPSTREAMS_FILE: fixedPath }), ConfigError, 'loadConfig refuses it (server.ts then exits 1)')
  t.match(loadUpstreams(fileWith(t, '{ not json'), {}).problems, [/is not JSON/])
  t.match(loadUpstreams('/nonexistent/upstreams.json', {}).problems, [/cannot read .* \(ENOENT\)/])
  const secretPath = fileWith(t, { upstreams: [{ ...HR, headers: { Authorization: 42 } }] })
  const secretProblems = loadUpstreams(secretPath, {}).problems.join('\n')
  t.match(secretProblems, /headers\.Authorization/)
  t.notMatch(secretProblems, /42/, 'a header value is never shown')
  t.throws(() => loadConfig({ UPSTREAMS_FILE: fileWith(t, { upstreams: [{ ...HR, identity: {} }] }) }), /GATEWAY_IDENTITY_KEY: required/)
})

test('UPSTREAMS_FILE allow: the short form names tools, the long form each kind; both validated', async (t) => {
  const path = fileWith(t, { upstreams: [{ ...HR, allow: { 'hr:read': ['list_*'], 'hr:docs': { resources: ['hr://handbook', 'hr://employees/{id}?x=1'], prompts: ['onboarding'] } } }] })
  const { upstreams, problems } = loadUpstreams(path, {})
  t.same(problems, [])
  const allow = upstreams[0]!.allow
  t.same([globsOf(allow['hr:read']!, 'tools'), globsOf(allow['hr:read']!, 'prompts'), globsOf(allow['hr:read']!, 'resources')], [['list_*'], [], []], 'a list: tools only')
  t.same([globsOf(allow['hr:docs']!, 'tools'), globsOf(allow['hr:docs']!, 'prompts'), globsOf(allow['hr:docs']!, 'resources')], [[], ['onboarding'], ['hr://handbook', 'hr://employees/{id}?x=1']])
  for (const bad of [{ tool: ['x'] }, {}, { resources: ['has space'] }, { prompts: ['bad name!'] }]) {
    t.match(loadUpstreams(fileWith(t, { upstreams: [{ ...HR, allow: { 'hr:read': bad } }] }), {}).problems, [/upstreams\[0\]\.allow\.hr:read/], `refused: ${JSON.stringify(bad)}`)
  }
})

test('federated names: <upstream>__<tool> within 64 characters of [A-Za-z0-9_-], never colliding', async (t) => {
  t.equal(federatedNameOf('hr', 'list_employees'), 'hr__list_employees')
  const long = federatedNameOf('finance', 'x'.repeat(80))
  t.ok(long.length <= MAX_TOOL_NAME)
  t.match(long, /^finance__x+_[0-9a-f]{8}$/)
  t.not(federatedNameOf('finance', 'x'.repeat(80)), federatedNameOf('finance', 'x'.repeat(81)), 'cut names keep a hash of the whole')
  const dotted = federatedNameOf('everything', 'get.thing')
  t.match(dotted, /^everything__get_thing_[0-9a-f]{8}$/)
  t.not(dotted, federatedNameOf('everything', 'get_thing'))
})

test('backoff: about 200/400/800 ms, ±20% jitter, capped', async (t) => {
  t.equal(backoffDelayMs(1, 200, 5000, () => 0.5), 200)
  t.equal(backoffDelayMs(2, 200, 5000, () => 0.5), 400)
  t.equal(backoffDelayMs(3, 200, 5000, () => 0.5), 800)
  t.equal(backoffDelayMs(1, 200, 5000, () => 0), 160)
  t.equal(backoffDelayMs(1, 200, 5000, () => 1), 240)
  t.equal(backoffDelayMs(10, 200, 5000, () => 0.5), 5000)
})

test('circuit breaker: opens after repeated failures, one half-open probe, closes on its success', async (t) => {
  let now = 0
  const states: string[] = []
  const breaker = new CircuitBreaker({ failures: 3, openMs: 1000 }, (state) => states.push(state), () => now)
  breaker.failed()
  breaker.failed()
  t.ok(breaker.allow(), 'still closed after 2')
  breaker.failed()
  t.equal(breaker.state, 'open')
  t.notOk(breaker.allow(), 'open: refused')
  now = 999
  t.notOk(breaker.allow())
  now = 1000
  t.ok(breaker.allow(), 'the probe')
  t.equal(breaker.state, 'half_open')
  t.notOk(breaker.allow(), 'one probe at a time')
  breaker.failed()
  t.equal(breaker.state, 'open', 'a failed probe opens it again')
  now = 2000
  t.ok(breaker.allow())
  breaker.succeeded()
  t.equal(breaker.state, 'closed')
  t.same(states, ['open', 'half_open', 'open', 'half_open', 'closed'])
})

test('concurrency limit: at most N at once, the rest wait in order, an abandoned wait leaves the queue', async (t) => {
  const limit = new ConcurrencyLimit(2)
  const first = await limit.acquire()
  const second = await limit.acquire()
  const order: string[] = []
  const third = limit.acquire().then((release) => { order.push('third'); return release })
  const controller = new AbortController()
  const abandoned = limit.acquire(controller.signal).then(() => 'acquired', () => 'gave up')
  const fourth = limit.acquire().then((release) => { order.push('fourth'); return release })
  t.equal(limit.queued, 3)
  controller.abort()
  t.equal(await abandoned, 'gave up')
  first()
  second()
  ;(await third)()
  ;(await fourth)()
  t.same(order, ['third', 'fourth'])
  t.equal(limit.inFlight, 0)
})

test('failure classification: what may be repeated', async (t) => {
  const fetchFailure = (code: string) => Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error(code), { code }) })
  t.match(classifyFailure(fetchFailure('ECONNREFUSED')), { kind: 'unreachable', transient: true, mayHaveReached: false })
  t.match(classifyFailure(fetchFailure('ENOTFOUND')), { transient: true, mayHaveReached: false })
  t.match(classifyFailure(fetchFailure('ECONNRESET')), { kind: 'unreachable', transient: true, mayHaveReached: true })
  t.match(classifyFailure({ data: { status: 503 } }), { transient: true, mayHaveReached: true }, 'a 503 may come after side effects')
  t.match(classifyFailure({ data: { status: 504 } }), { transient: true, mayHaveReached: true })
  t.match(classifyFailure({ data: { status: 502 } }), { transient: true, mayHaveReached: true })
  t.match(classifyFailure({ data: { status: 500 } }), { transient: false })
  t.match(classifyFailure(new Error('Invalid params')), { kind: 'upstream_error', transient: false })
  t.match(classifyFailure(Object.assign(new Error('Invalid params'), { code: -32602 })), { kind: 'upstream_error', reason: 'error' }, 'a JSON-RPC error: the upstream answered')
  t.match(classifyFailure(new Error('something of ours')), { kind: 'upstream_error', reason: 'local' }, 'an error without a JSON-RPC code is no answer of the upstream')
  t.match(classifyFailure(new SdkError(SdkErrorCode.RequestTimeout, 'Request timed out')), { kind: 'timeout' }, "the SDK client's request timeout (a stalled initialize too) is a timeout")
  t.match(classifyFailure(new SdkError(SdkErrorCode.ConnectionClosed, 'Connection closed')), { kind: 'unreachable', transient: true })
})

test('concurrency limit: a released slot goes to the first waiter, not to an acquire that runs before it resumes', async (t) => {
  const limit = new ConcurrencyLimit(1)
  const held = await limit.acquire()
  const waiter = limit.acquire()
  held()
  let late = false
  const latecomer = limit.acquire().then((release) => { late = true; return release })
  const release = await waiter
  t.equal(limit.inFlight, 1, 'the waiter holds the one slot')
  t.equal(late, false, 'and the latecomer waits')
  release()
  ;(await latecomer)()
  t.equal(late, true, 'then the latecomer gets it')
  t.equal(limit.inFlight, 0)
})

test('the default approval mode: in-band only where the server is this machine\'s alone', async (t) => {
  const cases: Array<[Record<string, string>, string]> = [
    [{ HOST: '127.0.0.1' }, 'in-band'],
    [{ HOST: '127.0.0.1', PUBLIC_URL: 'http://localhost:3000' }, 'in-band'],
    [{ HOST: '127.0.0.1', PUBLIC_URL: 'https://ctx.example.com' }, 'out-of-band'],
    [{ HOST: '0.0.0.0', AUTH_TOKEN: 'a'.repeat(40) }, 'out-of-band']
  ]
  for (const [env, mode] of cases) t.equal(defaultApprovalMode(loadConfig(env)), mode, JSON.stringify(env))
})
