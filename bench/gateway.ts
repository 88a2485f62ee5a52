import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import autocannon, { type Context, type RequestParams } from 'autocannon'
import { freePort, killAllChildrenNow, startChild, stopAllChildren, type Child } from './children.js'
import { cpuMicros } from './cpu.js'
import { prepareDatabase } from './database.js'
import { PEERS_DIR, ROOT } from './servers.js'

// `npm run bench` (last part), or `node --import tsx bench/gateway.ts` after a build: the gateway
// mix. One read-only tool of an upstream MCP server (bench/peers/mcp-upstream.ts, SDK v2) called
// directly, and the same tool called through this server as a gateway (`bench__lookup_employee`,
// production configuration: static token, rate limits on, metrics on, a log line per request),
// interleaved round by round. Reports each side's latency and the CPU time per call of each process
// (from /proc): the gateway's own, and the upstream's, which both sides pay.
//
// The CPU ratio is (gateway CPU + upstream CPU) per call through the gateway over the upstream's
// CPU per call when called directly: what federating a call costs the machine, all in. Each round
// runs both sides one after the other (the order alternates), and the medians over the rounds are
// compared, so load from other processes weighs on both sides alike; the load average is printed
// with the numbers. Through the gateway the upstream speaks whichever protocol line the gateway
// negotiated with it (2026-07-28 for the bench upstream: one POST per call, answered with JSON);
// the direct side speaks 2025-11-25 (stateless, answered with a one-event SSE stream).

const RESULTS_DIR = join(ROOT, 'bench/results')

function setting (name: string, fallback: number): number {
  const raw = process.env[name]
  const value = raw === undefined || raw === '' ? fallback : Number(raw)
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer (got ${JSON.stringify(raw)})`)
  return value
}

interface Side {
  label: string
  url: string
  headers: Record<string, string>
  tool: string
  /** Processes whose CPU time the side's calls cost. */
  processes: Array<{ name: string, child: Child }>
}

interface Run {
  requestsPerSecond: number
  p50Ms: number
  p99Ms: number
  responses: number
  failures: number
  sample: string | undefined
  cpuUsPerCall: Record<string, number>
}

const HEADERS = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-11-25' }

function percentile (sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
}

function bodyOf (tool: string, id: number): string {
  return JSON.stringify({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: tool, arguments: { id: `e${id % 100}` } } })
}

/** Whether an answer (JSON or an SSE stream of one message) is the employee asked for. */
function answered (status: number, body: string, id: number): boolean {
  if (status !== 200) return false
  const data = body.trimStart().startsWith('{') ? body : body.split('\n').filter((line) => line.startsWith('data: ')).map((line) => line.slice(6)).pop() ?? ''
  try {
    const message = JSON.parse(data) as { result?: { isError?: boolean, structuredContent?: { employee?: { id?: string } } } }
    return message.result?.isError !== true && message.result?.structuredContent?.employee?.id === `e${id % 100}`
  } catch {
    return false
  }
}

async function run (side: Side, seconds: number, connections: number): Promise<Run> {
  const cpuBefore = side.processes.map(({ child }) => cpuMicros(child.process.pid ?? 0))
  const durations: number[] = []
  let failures = 0
  let sample: string | undefined
  let nextId = 1
  const setupRequest = (request: RequestParams, context: Context): RequestParams => {
    const id = nextId++
    context.id = id
    context.sentAt = performance.now()
    return { ...request, body: bodyOf(side.tool, id) }
  }
  const onResponse = (status: number, body: string, context: Context): void => {
    durations.push(performance.now() - (context.sentAt as number))
    if (!answered(status, body, context.id as number)) {
      failures++
      sample ??= `${status} ${body.slice(0, 300)}`
    }
  }
  const result = await autocannon({
    url: side.url,
    connections,
    duration: seconds,
    timeout: 10,
    method: 'POST',
    headers: { ...HEADERS, ...side.headers },
    requests: [{ method: 'POST', setupRequest, onResponse }]
  })
  const responses = result['2xx'] + result['4xx'] + result['5xx'] + result['1xx'] + result['3xx']
  const sorted = durations.sort((a, b) => a - b)
  const cpuUsPerCall: Record<string, number> = {}
  side.processes.forEach(({ name, child }, index) => {
    cpuUsPerCall[name] = responses === 0 ? 0 : (cpuMicros(child.process.pid ?? 0) - (cpuBefore[index] ?? 0)) / responses
  })
  return { requestsPerSecond: result.requests.average, p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99), responses, failures: failures + result.errors + result.timeouts, sample, cpuUsPerCall }
}

interface Profile { nodes: Array<{ callFrame: { functionName: string, url: string, lineNumber: number }, hitCount?: number }> }

/** The functions with the most self time in a .cpuprofile (bench/profile.ts has the full summary for the context tools' mix). */
function selfTimes (profile: Profile, top = 25): string {
  const totals = new Map<string, number>()
  let all = 0
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0
    all += hits
    const { functionName, url, lineNumber } = node.callFrame
    const where = url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/dist\//, 'dist/')
    const key = `${functionName === '' ? '(anonymous)' : functionName} ${where}:${lineNumber + 1}`
    totals.set(key, (totals.get(key) ?? 0) + hits)
  }
  return ['\nGateway CPU profile, self time:', ...[...totals].sort((a, b) => b[1] - a[1]).slice(0, top).map(([key, hits]) => `${(100 * hits / all).toFixed(1).padStart(5)}%  ${key}`)].join('\n')
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] ?? 0
}

async function waitForAnswer (side: Side): Promise<void> {
  const deadline = Date.now() + 60_000
  let last = 'no answer yet'
  while (Date.now() < deadline) {
    try {
      const response = await fetch(side.url, { method: 'POST', headers: { ...HEADERS, ...side.headers }, body: bodyOf(side.tool, 7) })
      const text = await response.text()
      if (answered(response.status, text, 7)) return
      last = `${response.status} ${text.slice(0, 200)}`
    } catch (error) {
      last = (error as Error).message
    }
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  throw new Error(`${side.label} does not answer: ${last}`)
}

async function main (): Promise<void> {
  const seconds = setting('BENCH_GATEWAY_DURATION', 5)
  const rounds = setting('BENCH_GATEWAY_ROUNDS', 2)
  const connections = setting('BENCH_GATEWAY_CONNECTIONS', 16)
  const upstreamScript = join(PEERS_DIR, 'mcp-upstream.js')
  for (const file of [join(ROOT, 'dist/server.js'), upstreamScript]) {
    if (!existsSync(file)) throw new Error(`${file} is missing: run \`npm run bench\` (it builds the server and the peers first)`)
  }
  await mkdir(RESULTS_DIR, { recursive: true })

  const upstreamPort = await freePort()
  const upstream = startChild({ name: 'upstream', cwd: ROOT, args: [upstreamScript], env: { PORT: String(upstreamPort) }, logFile: join(RESULTS_DIR, 'gateway-upstream.log') })
  const upstreamsFile = join(RESULTS_DIR, 'gateway-upstreams.json')
  await writeFile(upstreamsFile, JSON.stringify({
    upstreams: [{ name: 'bench', url: `http://127.0.0.1:${upstreamPort}/mcp`, allow: { 'context:read': ['lookup_*'] }, concurrency: connections }]
  }))
  const databaseUrl = await prepareDatabase(process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test', 10)
  const token = `bench_${randomBytes(24).toString('base64url')}`
  const gatewayPort = await freePort()
  // BENCH_GATEWAY_PROFILE=1: the gateway runs under --cpu-prof; its hottest functions are printed at the end.
  const profileDir = join(RESULTS_DIR, 'gateway-profile')
  const profiling = process.env.BENCH_GATEWAY_PROFILE === '1'
  if (profiling) await rm(profileDir, { recursive: true, force: true })
  const gatewayChild = startChild({
    name: 'gateway',
    cwd: ROOT,
    args: [...(profiling ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []), join(ROOT, 'dist/server.js')],
    env: { DATABASE_URL: databaseUrl, PORT: String(gatewayPort), HOST: '127.0.0.1', LOG_LEVEL: 'info', AUTH_TOKEN: token, UPSTREAMS_FILE: upstreamsFile, RATE_LIMITS: 'admin=100000000/h 10000000/m; default=100000000/h 10000000/m; ip=10000000/m' },
    logFile: join(RESULTS_DIR, 'gateway-server.log')
  })
  // BENCH_GATEWAY_BASELINE=path/to/other/dist/server.js: a second gateway (another build, say main's)
  // with the same configuration, run as a third side in the same interleaved rounds: before/after
  // numbers under the same load.
  const baselineServer = process.env.BENCH_GATEWAY_BASELINE
  const baselinePort = baselineServer === undefined ? 0 : await freePort()
  const baselineChild = baselineServer === undefined
    ? undefined
    : startChild({
      name: 'baseline gateway',
      cwd: ROOT,
      args: [baselineServer],
      env: { DATABASE_URL: databaseUrl, PORT: String(baselinePort), HOST: '127.0.0.1', LOG_LEVEL: 'info', AUTH_TOKEN: token, UPSTREAMS_FILE: upstreamsFile, RATE_LIMITS: 'admin=100000000/h 10000000/m; default=100000000/h 10000000/m; ip=10000000/m' },
      logFile: join(RESULTS_DIR, 'gateway-baseline-server.log')
    })
  const direct: Side = { label: 'direct', url: `http://127.0.0.1:${upstreamPort}/mcp`, headers: {}, tool: 'lookup_employee', processes: [{ name: 'upstream', child: upstream }] }
  const federated: Side = { label: 'through the gateway', url: `http://127.0.0.1:${gatewayPort}/mcp`, headers: { authorization: `Bearer ${token}` }, tool: 'bench__lookup_employee', processes: [{ name: 'gateway', child: gatewayChild }, { name: 'upstream', child: upstream }] }
  const baseline: Side | undefined = baselineChild === undefined
    ? undefined
    : { label: 'baseline gateway', url: `http://127.0.0.1:${baselinePort}/mcp`, headers: { authorization: `Bearer ${token}` }, tool: 'bench__lookup_employee', processes: [{ name: 'gateway', child: baselineChild }, { name: 'upstream', child: upstream }] }
  const sides = baseline === undefined ? [direct, federated] : [direct, federated, baseline]
  for (const side of sides) await waitForAnswer(side)

  const loadAverage = (): string => loadavg().map((value) => value.toFixed(2)).join(' ')
  const loadBefore = loadAverage()
  console.log(`Gateway mix: ${connections} connections, ${seconds} s per run, ${rounds} rounds, one read-only upstream tool; load average ${loadBefore}`)
  for (const side of sides) await run(side, 2, connections) // warm-up
  const results = new Map<Side, Run[]>(sides.map((side) => [side, []]))
  for (let round = 1; round <= rounds; round++) {
    // Each round starts with the next side, so none always runs first (or last).
    const shift = (round - 1) % sides.length
    for (const side of [...sides.slice(shift), ...sides.slice(0, shift)]) {
      const result = await run(side, seconds, connections)
      results.get(side)?.push(result)
      const cpu = Object.entries(result.cpuUsPerCall).map(([name, us]) => `${name} ${us.toFixed(0)} µs`).join(', ')
      console.log(`  round ${round} ${side.label.padEnd(20)} ${result.requestsPerSecond.toFixed(0).padStart(6)} req/s  p50 ${result.p50Ms.toFixed(2)} ms  p99 ${result.p99Ms.toFixed(2)} ms  CPU/call: ${cpu}  failures ${result.failures}${result.sample === undefined ? '' : ` (${result.sample})`}`)
    }
  }
  const summary = (side: Side) => {
    const runs = results.get(side) ?? []
    const cpu: Record<string, number> = {}
    for (const { name } of side.processes) cpu[name] = median(runs.map((r) => r.cpuUsPerCall[name] ?? 0))
    return { requestsPerSecond: median(runs.map((r) => r.requestsPerSecond)), p50Ms: median(runs.map((r) => r.p50Ms)), p99Ms: median(runs.map((r) => r.p99Ms)), cpuUsPerCall: cpu, failures: runs.reduce((sum, r) => sum + r.failures, 0) }
  }
  const d = summary(direct)
  const f = summary(federated)
  const directCpu = d.cpuUsPerCall.upstream ?? 0
  const gatewayCpu = f.cpuUsPerCall.gateway ?? 0
  const totalCpu = gatewayCpu + (f.cpuUsPerCall.upstream ?? 0)
  const verdict = {
    cpuRatioTotal: directCpu === 0 ? 0 : totalCpu / directCpu,
    gatewayCpuOverDirect: directCpu === 0 ? 0 : gatewayCpu / directCpu,
    p99DeltaMs: f.p99Ms - d.p99Ms,
    goals: 'CPU per call ≤ 1.3× direct; p99 within 2 ms of direct',
    cpuRatio: '(gateway + upstream CPU per call through the gateway) / (upstream CPU per call called directly), medians of interleaved rounds'
  }
  const loadAfter = loadAverage()
  console.log('\n| gateway mix (medians) | req/s | p50 ms | p99 ms | gateway CPU µs/call | upstream CPU µs/call | failures |')
  console.log('|---|---|---|---|---|---|---|')
  console.log(`| direct | ${d.requestsPerSecond.toFixed(0)} | ${d.p50Ms.toFixed(2)} | ${d.p99Ms.toFixed(2)} | — | ${directCpu.toFixed(0)} | ${d.failures} |`)
  console.log(`| through the gateway | ${f.requestsPerSecond.toFixed(0)} | ${f.p50Ms.toFixed(2)} | ${f.p99Ms.toFixed(2)} | ${gatewayCpu.toFixed(0)} | ${(f.cpuUsPerCall.upstream ?? 0).toFixed(0)} | ${f.failures} |`)
  const b = baseline === undefined ? undefined : summary(baseline)
  if (b !== undefined) console.log(`| baseline gateway | ${b.requestsPerSecond.toFixed(0)} | ${b.p50Ms.toFixed(2)} | ${b.p99Ms.toFixed(2)} | ${(b.cpuUsPerCall.gateway ?? 0).toFixed(0)} | ${(b.cpuUsPerCall.upstream ?? 0).toFixed(0)} | ${b.failures} |`)
  console.log(`\nCPU per call, gateway + upstream vs direct: ${verdict.cpuRatioTotal.toFixed(2)}× (goal ≤ 1.3×: ${verdict.cpuRatioTotal <= 1.3 ? 'met' : 'not met'}); the gateway's own CPU is ${verdict.gatewayCpuOverDirect.toFixed(2)}× the upstream's`)
  if (b !== undefined && directCpu > 0) console.log(`Baseline gateway: CPU per call, gateway + upstream vs direct ${(((b.cpuUsPerCall.gateway ?? 0) + (b.cpuUsPerCall.upstream ?? 0)) / directCpu).toFixed(2)}×, p99 ${(b.p99Ms - d.p99Ms >= 0 ? '+' : '')}${(b.p99Ms - d.p99Ms).toFixed(2)} ms vs direct`)
  console.log(`Load average before ${loadBefore}, after ${loadAfter}`)
  console.log(`p99 through the gateway ${verdict.p99DeltaMs >= 0 ? '+' : ''}${verdict.p99DeltaMs.toFixed(2)} ms vs direct (goal ≤ 2 ms: ${verdict.p99DeltaMs <= 2 ? 'met' : 'not met'})`)
  await writeFile(join(RESULTS_DIR, 'gateway-latest.json'), JSON.stringify({ finishedAt: new Date().toISOString(), settings: { seconds, rounds, connections }, loadAverage: { before: loadBefore, after: loadAfter }, direct: d, federated: f, ...(b !== undefined && { baseline: b }), verdict }, null, 2) + '\n')
  if (profiling) {
    await stopAllChildren()
    const file = (await readdir(profileDir)).find((name) => name.endsWith('.cpuprofile'))
    if (file !== undefined) console.log(selfTimes(JSON.parse(await readFile(join(profileDir, file), 'utf8')) as Profile))
  }
}

process.on('exit', killAllChildrenNow)
try {
  await main()
  await stopAllChildren()
} catch (error) {
  console.error(`gateway bench failed: ${error instanceof Error ? error.message : String(error)}`)
  await stopAllChildren()
  process.exit(1)
}
