import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import autocannon, { type Context, type RequestParams } from 'autocannon'
import { freePort, killAllChildrenNow, serverRuntime, startChild, stopAllChildren, type Child } from './children.js'
import { cpuMicros } from './cpu.js'
import { prepareDatabase } from './database.js'
import { percentile, runPacedCalls } from './paced.js'
import { summariseProfile, type CpuProfile } from './profile-summary.js'
import { positiveInteger, shareOf } from './settings.js'
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
//
// Two phases, each BENCH_GATEWAY_ROUNDS interleaved rounds of BENCH_GATEWAY_DURATION seconds:
// closed loop at BENCH_GATEWAY_CONNECTIONS (the capacity), then both sides at one fixed rate,
// evenly spaced (BENCH_GATEWAY_RATE, or BENCH_GATEWAY_LOAD_SHARE, 0.5, of the gateway's closed-loop
// throughput), where the goals are judged.

const RESULTS_DIR = join(ROOT, 'bench/results')

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

/** One side at a fixed rate, evenly spaced (bench/paced.ts): latency from each call's due time. */
async function runAtRate (side: Side, seconds: number, connections: number, rate: number): Promise<Run> {
  const cpuBefore = side.processes.map(({ child }) => cpuMicros(child.process.pid ?? 0))
  const result = await runPacedCalls({
    url: side.url,
    headers: { ...HEADERS, ...side.headers },
    rate,
    durationSeconds: seconds,
    connections,
    next: (index) => {
      const id = index + 1
      return { body: bodyOf(side.tool, id), check: (status, body) => answered(status, body, id) ? undefined : `HTTP ${status}, not employee e${id % 100}` }
    }
  })
  const responses = result.latenciesMs.length
  const cpuUsPerCall: Record<string, number> = {}
  side.processes.forEach(({ name, child }, index) => {
    cpuUsPerCall[name] = responses === 0 ? 0 : (cpuMicros(child.process.pid ?? 0) - (cpuBefore[index] ?? 0)) / responses
  })
  return {
    requestsPerSecond: result.requestsPerSecond,
    p50Ms: percentile(result.latenciesMs, 0.5),
    p99Ms: percentile(result.latenciesMs, 0.99),
    responses,
    failures: result.failures + result.transportErrors,
    sample: result.samples[0],
    cpuUsPerCall
  }
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
  const seconds = positiveInteger(process.env, 'BENCH_GATEWAY_DURATION', 5)
  const rounds = positiveInteger(process.env, 'BENCH_GATEWAY_ROUNDS', 2)
  const connections = positiveInteger(process.env, 'BENCH_GATEWAY_CONNECTIONS', 16)
  const settings = {
    rate: process.env.BENCH_GATEWAY_RATE === undefined ? undefined : positiveInteger(process.env, 'BENCH_GATEWAY_RATE', 1),
    loadShare: shareOf(process.env, 'BENCH_GATEWAY_LOAD_SHARE', 0.5)
  }
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
  console.log(`Gateway mix: ${connections} connections, ${seconds} s per run, ${rounds} rounds, one read-only upstream tool; load average ${loadBefore}; ${serverRuntime()}`)
  for (const side of sides) await run(side, 2, connections) // warm-up

  /** `rounds` rounds of every side; each round starts with the next side, so none always runs first (or last). */
  const interleaved = async (phase: string, runOne: (side: Side) => Promise<Run>): Promise<Map<Side, Run[]>> => {
    const results = new Map<Side, Run[]>(sides.map((side) => [side, []]))
    for (let round = 1; round <= rounds; round++) {
      const shift = (round - 1) % sides.length
      for (const side of [...sides.slice(shift), ...sides.slice(0, shift)]) {
        const result = await runOne(side)
        results.get(side)?.push(result)
        const cpu = Object.entries(result.cpuUsPerCall).map(([name, us]) => `${name} ${us.toFixed(0)} µs`).join(', ')
        console.log(`  ${phase} round ${round} ${side.label.padEnd(20)} ${result.requestsPerSecond.toFixed(0).padStart(6)} req/s  p50 ${result.p50Ms.toFixed(2)} ms  p99 ${result.p99Ms.toFixed(2)} ms  CPU/call: ${cpu}  failures ${result.failures}${result.sample === undefined ? '' : ` (${result.sample})`}`)
      }
    }
    return results
  }
  const summary = (results: Map<Side, Run[]>, side: Side) => {
    const runs = results.get(side) ?? []
    const cpu: Record<string, number> = {}
    for (const { name } of side.processes) cpu[name] = median(runs.map((r) => r.cpuUsPerCall[name] ?? 0))
    return { requestsPerSecond: median(runs.map((r) => r.requestsPerSecond)), p50Ms: median(runs.map((r) => r.p50Ms)), p99Ms: median(runs.map((r) => r.p99Ms)), cpuUsPerCall: cpu, failures: runs.reduce((sum, r) => sum + r.failures, 0) }
  }
  type Summary = ReturnType<typeof summary>
  const verdictOf = (d: Summary, f: Summary) => {
    const directCpu = d.cpuUsPerCall.upstream ?? 0
    const gatewayCpu = f.cpuUsPerCall.gateway ?? 0
    const totalCpu = gatewayCpu + (f.cpuUsPerCall.upstream ?? 0)
    return {
      cpuRatioTotal: directCpu === 0 ? 0 : totalCpu / directCpu,
      gatewayCpuOverDirect: directCpu === 0 ? 0 : gatewayCpu / directCpu,
      p99DeltaMs: f.p99Ms - d.p99Ms
    }
  }
  const table = (title: string, d: Summary, f: Summary, b: Summary | undefined): void => {
    console.log(`\n| ${title} (medians) | req/s | p50 ms | p99 ms | gateway CPU µs/call | upstream CPU µs/call | failures |`)
    console.log('|---|---|---|---|---|---|---|')
    console.log(`| direct | ${d.requestsPerSecond.toFixed(0)} | ${d.p50Ms.toFixed(2)} | ${d.p99Ms.toFixed(2)} | — | ${(d.cpuUsPerCall.upstream ?? 0).toFixed(0)} | ${d.failures} |`)
    for (const [label, s] of [['through the gateway', f], ['baseline gateway', b]] as const) {
      if (s !== undefined) console.log(`| ${label} | ${s.requestsPerSecond.toFixed(0)} | ${s.p50Ms.toFixed(2)} | ${s.p99Ms.toFixed(2)} | ${(s.cpuUsPerCall.gateway ?? 0).toFixed(0)} | ${(s.cpuUsPerCall.upstream ?? 0).toFixed(0)} | ${s.failures} |`)
    }
    for (const [label, s] of [['through the gateway', f], ['baseline gateway', b]] as const) {
      if (s === undefined) continue
      const v = verdictOf(d, s)
      console.log(`${label}: CPU per call, gateway + upstream vs direct ${v.cpuRatioTotal.toFixed(2)}× (the gateway's own ${v.gatewayCpuOverDirect.toFixed(2)}×), p99 ${v.p99DeltaMs >= 0 ? '+' : ''}${v.p99DeltaMs.toFixed(2)} ms vs direct`)
    }
  }

  // Closed loop: each connection sends its next call when the last is answered (the capacity). Its
  // latency is queueing (connections / throughput), so the side with less capacity has the longer
  // queue whatever the hop itself costs: the goals are judged at a fixed rate both sides are
  // offered alike, below saturation (BENCH_GATEWAY_RATE, or BENCH_GATEWAY_LOAD_SHARE of the
  // gateway's closed-loop throughput).
  const closedLoop = await interleaved('closed loop', (side) => run(side, seconds, connections))
  const saturated = { direct: summary(closedLoop, direct), federated: summary(closedLoop, federated), ...(baseline !== undefined && { baseline: summary(closedLoop, baseline) }) }
  const rate = settings.rate ?? Math.max(1, Math.round(saturated.federated.requestsPerSecond * settings.loadShare))
  console.log(`then ${rounds} rounds of each side at ${rate} req/s, evenly spaced`)
  const paced = await interleaved(`${rate} req/s`, (side) => runAtRate(side, seconds, connections, rate))
  const d = summary(paced, direct)
  const f = summary(paced, federated)
  const b = baseline === undefined ? undefined : summary(paced, baseline)
  const verdict = {
    ...verdictOf(d, f),
    goals: `at ${rate} req/s: CPU per call ≤ 1.3× direct; p99 within 2 ms of direct`,
    cpuRatio: '(gateway + upstream CPU per call through the gateway) / (upstream CPU per call called directly), medians of interleaved rounds'
  }
  const loadAfter = loadAverage()
  table('closed loop', saturated.direct, saturated.federated, saturated.baseline)
  table(`at ${rate} req/s, evenly spaced`, d, f, b)
  console.log(`\nAt ${rate} req/s: CPU per call, gateway + upstream vs direct ${verdict.cpuRatioTotal.toFixed(2)}× (goal ≤ 1.3×: ${verdict.cpuRatioTotal <= 1.3 ? 'met' : 'not met'}); ` +
    `p99 through the gateway ${verdict.p99DeltaMs >= 0 ? '+' : ''}${verdict.p99DeltaMs.toFixed(2)} ms vs direct (goal ≤ 2 ms: ${verdict.p99DeltaMs <= 2 ? 'met' : 'not met'})`)
  console.log(`Load average before ${loadBefore}, after ${loadAfter}`)
  await writeFile(join(RESULTS_DIR, 'gateway-latest.json'), JSON.stringify({ finishedAt: new Date().toISOString(), settings: { seconds, rounds, connections, rate }, loadAverage: { before: loadBefore, after: loadAfter }, saturated, direct: d, federated: f, ...(b !== undefined && { baseline: b }), verdict }, null, 2) + '\n')
  if (profiling) {
    await stopAllChildren()
    const file = (await readdir(profileDir)).find((name) => name.endsWith('.cpuprofile'))
    if (file !== undefined) console.log(`\nGateway CPU profile:\n${summariseProfile(JSON.parse(await readFile(join(profileDir, file), 'utf8')) as CpuProfile)}`)
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
