import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { killAllChildrenNow, serverRuntime, stopAllChildren, stopChild, freePort, startChild } from '../children.js'
import { cpuMicros } from '../cpu.js'
import { watchOwnPauses, watchServerPauses, type Pauses, type ServerPauses } from '../pauses.js'
import { positiveInteger, shareOf } from '../settings.js'
import { summariseProfile, type CpuProfile } from '../profile-summary.js'
import { reusableSearchDatabase, settleSearchDatabase, SEARCH_BENCH_DATABASE, type MigrationReport } from './database.js'
import { MCP_HEADERS, MIX_TOOLS, runMix, runPaced, stopMix, type MixResult, type MixTool } from './mix.js'

// The search mix of `npm run bench` (also alone: `npm run bench:search`): BENCH_SEARCH_ENTRIES
// (100k) generated notes, the search migrations and then the later ones applied to them under load (their locks, timed),
// then the production configuration of the server under BENCH_SEARCH_CONNECTIONS (8) connections
// of search_context, list_context and write_context (see mix.ts): one round as fast as it answers
// (its capacity), then BENCH_SEARCH_ROUNDS at half that rate, evenly spaced (BENCH_SEARCH_LOAD_SHARE,
// or BENCH_SEARCH_RATE req/s), where the targets are judged: search p99 < 20 ms, list_context p99 < 10 ms.
// Before the rounds the database is vacuumed and checkpointed (settleSearchDatabase).
// Exit code 0 whatever the verdict; 1 only when the benchmark broke.
// BENCH_SEARCH_REUSE=1 runs the mix on the database an earlier run left (no seeding, no migration).
// BENCH_SEARCH_PROFILE=1 runs the server under `node --cpu-prof` and prints where its CPU went
// (bench/results/profile-search/; the profiler's own cost is in the CPU per call).
// BENCH_SEARCH_NODE_FLAGS passes flags to the server's node (e.g. "--trace-gc": into its log).
// Each round also reports pauses (bench/pauses.ts): the server's and this process's own.

const TARGET_P99_MS: Partial<Record<MixTool, number>> = { search_context: 20, list_context: 10 }
const READY_TIMEOUT_MS = 60_000
const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const RESULTS_DIR = join(ROOT, 'bench/results')
const PROFILE_DIR = join(RESULTS_DIR, 'profile-search')

const settings = {
  adminDatabaseUrl: process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
  entries: positiveInteger(process.env, 'BENCH_SEARCH_ENTRIES', 100_000),
  connections: positiveInteger(process.env, 'BENCH_SEARCH_CONNECTIONS', 8),
  durationSeconds: positiveInteger(process.env, 'BENCH_SEARCH_DURATION', 15),
  warmupSeconds: positiveInteger(process.env, 'BENCH_SEARCH_WARMUP', 5),
  rounds: positiveInteger(process.env, 'BENCH_SEARCH_ROUNDS', 2),
  // As many connections as PostgreSQL has cores (it runs on this machine): search and list are
  // CPU-bound in PostgreSQL, and more connections than cores only time-slice its backends, which
  // is what the tail was made of (README "Search mix": the pool sizes measured).
  dbPoolMax: positiveInteger(process.env, 'BENCH_SEARCH_DB_POOL_MAX', cpus().length),
  reuse: process.env.BENCH_SEARCH_REUSE === '1',
  profile: process.env.BENCH_SEARCH_PROFILE === '1',
  rate: process.env.BENCH_SEARCH_RATE === undefined ? undefined : positiveInteger(process.env, 'BENCH_SEARCH_RATE', 1),
  loadShare: shareOf(process.env, 'BENCH_SEARCH_LOAD_SHARE', 0.5)
}

function migrationLines (m: MigrationReport): string[] {
  return [
    `Migrations ${m.applied.join(', ')} on ${m.entries} entries: ${(m.migrationMs / 1000).toFixed(1)} s, while one connection read and one wrote back to back:`,
    `  reads:  ${m.reads.count} during it, p99 ${m.reads.p99Ms.toFixed(1)} ms, longest ${m.reads.maxMs.toFixed(0)} ms (never blocked)`,
    `  writes: ${m.writes.count} during it, p99 ${m.writes.p99Ms.toFixed(1)} ms, longest ${m.writes.maxMs.toFixed(0)} ms; ` +
      `longest time without a completed write ${m.longestWriteGapMs.toFixed(0)} ms (held from the trigger's creation to the commit)`
  ]
}

function roundLine (round: string, result: MixResult): string {
  const tools = MIX_TOOLS.map((tool) => {
    const s = result.byTool[tool]
    return `${tool} ${s.count} p50 ${s.p50Ms.toFixed(2)} p99 ${s.p99Ms.toFixed(2)} ms${s.errors > 0 ? ` (${s.errors} errors)` : ''}`
  })
  return `  ${round}: ${result.requestsPerSecond.toFixed(0)} req/s; ${tools.join('; ')}`
}

/**
 * CPU time (µs) of the server process and of the server's PostgreSQL backends (other processes on
 * this machine, read from /proc like the server's): where a call's time goes, per call.
 */
async function cpuSplit (admin: postgres.Sql, serverPid: number): Promise<{ server: number, database: Map<number, number> }> {
  const backends = await admin<Array<{ pid: number }>>`
    select pid from pg_stat_activity where datname = ${SEARCH_BENCH_DATABASE} and application_name = 'shared-context-mcp'`
  const database = new Map<number, number>()
  for (const { pid } of backends) {
    try {
      database.set(pid, cpuMicros(pid))
    } catch {
      // gone meanwhile
    }
  }
  return { server: cpuMicros(serverPid), database }
}

function cpuPerCall (before: Awaited<ReturnType<typeof cpuSplit>>, after: Awaited<ReturnType<typeof cpuSplit>>, calls: number): { serverUs: number, databaseUs: number } {
  let database = 0
  for (const [pid, us] of after.database) database += us - (before.database.get(pid) ?? 0)
  return { serverUs: (after.server - before.server) / Math.max(1, calls), databaseUs: database / Math.max(1, calls) }
}

async function waitUntilServing (url: string, headers: Record<string, string>, exited: () => string | undefined): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS
  let problem = 'no answer yet'
  while (Date.now() < deadline) {
    const exit = exited()
    if (exit !== undefined) throw new Error(`the server exited (${exit}) before serving`)
    try {
      const response = await fetch(url, {
        method: 'POST',
        headers: { ...MCP_HEADERS, ...headers },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'search_context', arguments: { query: 'rollout' } } })
      })
      const body = await response.json() as { result?: { isError?: boolean } }
      if (response.status === 200 && body.result !== undefined && body.result.isError !== true) return
      problem = `HTTP ${response.status}`
    } catch (error) {
      problem = (error as Error).message
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  throw new Error(`the server did not answer search_context within ${READY_TIMEOUT_MS} ms: ${problem}`)
}

/**
 * Seeds and migrates the bench database in a child process (prepare.ts says why), one of the
 * bench's children (children.ts: stopped however the bench ends), and returns its report.
 */
async function prepareInOwnProcess (): Promise<MigrationReport[]> {
  const reportFile = join(RESULTS_DIR, 'search-prepare.json')
  const logFile = join(RESULTS_DIR, 'search-prepare.log')
  await rm(reportFile, { force: true })
  const child = startChild({
    name: 'search database preparation',
    cwd: ROOT,
    args: ['--import', 'tsx', join(ROOT, 'bench/search/prepare.ts'), settings.adminDatabaseUrl, String(settings.entries), reportFile],
    env: {},
    logFile
  })
  await once(child.process, 'exit')
  if (child.exit !== 'exit code 0') throw new Error(`preparing the search database failed (${child.exit ?? 'no exit'}):\n${(await readFile(logFile, 'utf8')).slice(-2000)}`)
  const migrations = JSON.parse(await readFile(reportFile, 'utf8')) as MigrationReport[]
  console.log(`  seeded ${settings.entries} entries in ${(migrations[0]?.seedSeconds ?? 0).toFixed(1)} s (bench/results/search-prepare.log); then the search migrations and the later ones, under load`)
  return migrations
}

async function main (): Promise<void> {
  if (!existsSync(join(ROOT, 'dist/server.js'))) throw new Error('dist/server.js is missing: run `npm run bench:search` (it builds first)')
  await mkdir(RESULTS_DIR, { recursive: true })
  if (settings.profile) {
    await rm(PROFILE_DIR, { recursive: true, force: true })
    await mkdir(PROFILE_DIR, { recursive: true })
  }
  const loadBefore = loadavg()[0] ?? 0
  console.log(`Search mix: preparing ${settings.entries} entries (load average ${loadBefore.toFixed(1)} on ${cpus().length} CPUs)...`)
  let migrations: MigrationReport[] | null = null
  let prepared = settings.reuse ? await reusableSearchDatabase(settings.adminDatabaseUrl, settings.entries) : null
  if (prepared === null) {
    migrations = await prepareInOwnProcess()
    prepared = await reusableSearchDatabase(settings.adminDatabaseUrl, settings.entries)
    if (prepared === null) throw new Error('the prepared search database does not hold the entries and migrations it should')
  }
  const { url, keys } = prepared
  if (migrations === null) console.log('  reusing the bench database of an earlier run (BENCH_SEARCH_REUSE): no seeding, no migration figures')
  else for (const line of migrations.flatMap(migrationLines)) console.log(line)
  const settleStarted = performance.now()
  await settleSearchDatabase(url)
  console.log(`  vacuumed and checkpointed before measuring (${((performance.now() - settleStarted) / 1000).toFixed(1)} s)`)

  const token = `bench_${randomBytes(24).toString('base64url')}`
  const port = await freePort()
  const logFile = join(RESULTS_DIR, 'server-search.log')
  const child = startChild({
    name: 'search mix server',
    cwd: ROOT,
    args: [...(process.env.BENCH_SEARCH_NODE_FLAGS ?? '').split(' ').filter(Boolean), ...(settings.profile ? ['--cpu-prof', '--cpu-prof-dir', PROFILE_DIR] : []), join(ROOT, 'dist/server.js')],
    env: {
      DATABASE_URL: url,
      DB_POOL_MAX: String(settings.dbPoolMax),
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'info',
      AUTH_TOKEN: token,
      RATE_LIMITS: 'admin=100000000/h 10000000/m; default=100000000/h 10000000/m; ip=10000000/m'
    },
    logFile
  })
  const target = { url: `http://127.0.0.1:${port}/mcp`, headers: { authorization: `Bearer ${token}` } }
  await waitUntilServing(target.url, target.headers, () => child.exit)

  const { connections, durationSeconds } = settings
  console.log(`${connections} connections, ${durationSeconds} s per round (70% search, 20% list, 10% write), DB_POOL_MAX ${settings.dbPoolMax}; ${serverRuntime()}`)
  const warmup = await runMix(target, keys, { durationSeconds: settings.warmupSeconds, connections, seed: 1 })
  console.log(roundLine('warm-up', warmup))
  // Capacity: every connection sends its next call as soon as the last is answered. Latency at
  // saturation is queueing (8 callers on 2 cores wait for each other), so the targets are judged
  // at a fixed rate below it: BENCH_SEARCH_RATE, or BENCH_SEARCH_LOAD_SHARE of the capacity,
  // evenly spaced (runPaced; autocannon's overallRate sends in bursts, see mix.ts).
  const saturated = await runMix(target, keys, { durationSeconds, connections, seed: 2 })
  console.log(roundLine('saturated', saturated))
  const rate = settings.rate ?? Math.max(1, Math.round(saturated.requestsPerSecond * settings.loadShare))
  console.log(`then ${settings.rounds} rounds at ${rate} req/s (${(rate / saturated.requestsPerSecond * 100).toFixed(0)}% of capacity)`)
  const rounds: MixResult[] = []
  const cpu: Array<{ serverUs: number, databaseUs: number }> = []
  const pauses: Array<{ server: ServerPauses, bench: Pauses }> = []
  const admin = postgres(url, { max: 1, onnotice: () => {} })
  const serverPid = child.process.pid ?? 0
  for (let round = 1; round <= settings.rounds; round++) {
    const serverPauses = await watchServerPauses(`http://127.0.0.1:${port}/metrics`)
    const cpuBefore = await cpuSplit(admin, serverPid)
    const ownPauses = watchOwnPauses()
    const result = await runPaced(target, keys, { durationSeconds, connections, seed: round + 2, rate })
    const own = ownPauses()
    if (child.exit !== undefined) throw new Error(`the server exited (${child.exit}) during the run:\n${(await readFile(logFile, 'utf8')).slice(-2000)}`)
    const perCall = cpuPerCall(cpuBefore, await cpuSplit(admin, serverPid), result.responses)
    cpu.push(perCall)
    console.log(`  round ${round} CPU per call: server ${(perCall.serverUs / 1000).toFixed(2)} ms, its PostgreSQL backends ${(perCall.databaseUs / 1000).toFixed(2)} ms`)
    rounds.push(result)
    console.log(`${roundLine(`round ${round}`, result)}; all p99 ${result.correctedP99Ms.toFixed(2)} ms; ` +
      `waits for a free connection p99 ${result.sendWait?.p99Ms.toFixed(2) ?? '-'} ms, longest ${result.sendWait?.maxMs.toFixed(0) ?? '-'} ms`)
    const server = await serverPauses()
    pauses.push({ server, bench: own })
    console.log(`    pauses: the server's collections over 10 ms ${server.longCollections}, its event loop held up to ${server.longestDelayMs.toFixed(0)} ms; ` +
      `this process's collections over 10 ms ${own.longCollections} (longest ${own.longestCollectionMs.toFixed(1)} ms), its event loop held up to ${own.longestDelayMs.toFixed(0)} ms`)
    for (const sample of result.samples) console.log(`      ${sample}`)
  }

  await admin.end({ timeout: 5 })
  if (settings.profile) await printProfile(child)
  const mean = (values: number[]) => values.reduce((sum, v) => sum + v, 0) / Math.max(1, values.length)
  const cpuMeans = { serverMs: mean(cpu.map((c) => c.serverUs)) / 1000, databaseMs: mean(cpu.map((c) => c.databaseUs)) / 1000 }
  const summarise = (results: MixResult[]) => Object.fromEntries(MIX_TOOLS.map((tool) => [tool, {
    count: results.reduce((sum, r) => sum + r.byTool[tool].count, 0),
    p50Ms: mean(results.map((r) => r.byTool[tool].p50Ms)),
    p99Ms: mean(results.map((r) => r.byTool[tool].p99Ms)),
    errors: results.reduce((sum, r) => sum + r.byTool[tool].errors + r.transportErrors, 0)
  }])) as Record<MixTool, MixResult['byTool'][MixTool]>
  const table = (summary: ReturnType<typeof summarise>) => `| tool | calls | p50 ms | p99 ms | errors |\n|---|---|---|---|---|\n${MIX_TOOLS.map((tool) =>
    `| ${tool} | ${summary[tool].count} | ${summary[tool].p50Ms.toFixed(2)} | ${summary[tool].p99Ms.toFixed(2)} | ${summary[tool].errors} |`).join('\n')}`
  const summary = summarise(rounds)
  const saturation = summarise([saturated])
  const checks = Object.entries(TARGET_P99_MS).map(([tool, target]) => {
    const p99 = summary[tool as MixTool].p99Ms
    return { name: `${tool} p99 ${p99.toFixed(2)} ms < ${target} ms at ${rate} req/s`, pass: p99 < (target ?? 0) }
  })
  const loadAfter = loadavg()[0] ?? 0
  console.log(`\nSaturated: ${saturated.requestsPerSecond.toFixed(0)} req/s\n${table(saturation)}`)
  console.log(`\nAt ${rate} req/s, evenly spaced (means of ${rounds.length} rounds, timed from when each call was due; all calls' p99 ${mean(rounds.map((r) => r.correctedP99Ms)).toFixed(2)} ms):\n${table(summary)}`)
  console.log(`CPU per call at ${rate} req/s: server ${cpuMeans.serverMs.toFixed(2)} ms, its PostgreSQL backends ${cpuMeans.databaseMs.toFixed(2)} ms ` +
    `(${((cpuMeans.serverMs + cpuMeans.databaseMs) * rate / 10).toFixed(0)}% of one CPU at this rate)`)
  console.log(`load average ${loadBefore.toFixed(1)} before, ${loadAfter.toFixed(1)} after`)
  for (const check of checks) console.log(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}`)

  await writeFile(join(RESULTS_DIR, 'search.json'), JSON.stringify({
    finishedAt: new Date().toISOString(),
    machine: { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model, loadAverageBefore: loadBefore, loadAverageAfter: loadAfter },
    settings: { ...settings, adminDatabaseUrl: undefined },
    migrations,
    saturated: { requestsPerSecond: saturated.requestsPerSecond, summary: saturation },
    rate,
    cpuPerCall: cpuMeans,
    summary,
    rounds,
    pauses,
    checks
  }, null, 2) + '\n')
  console.log('Results written to bench/results/search.json; server log in bench/results/server-search.log')
}

/** Stops the profiled server (it writes its profile as it exits) and prints the profile's summary. */
async function printProfile (child: Parameters<typeof stopChild>[0]): Promise<void> {
  await stopChild(child)
  const file = (await readdir(PROFILE_DIR)).find((name) => name.endsWith('.cpuprofile'))
  if (file === undefined) throw new Error(`no .cpuprofile in ${PROFILE_DIR}: the server did not exit normally`)
  const summary = summariseProfile(JSON.parse(await readFile(join(PROFILE_DIR, file), 'utf8')) as CpuProfile)
  await writeFile(join(PROFILE_DIR, 'summary.txt'), summary)
  console.log(`\n${summary}\nProfile: bench/results/profile-search/${file}; summary in bench/results/profile-search/summary.txt`)
}

let stopping = false
async function shutdown (code: number): Promise<never> {
  if (!stopping) {
    stopping = true
    stopMix()
    await stopAllChildren()
  }
  process.exit(code)
}

process.on('exit', killAllChildrenNow)
process.once('SIGINT', () => { console.error('\ninterrupted'); shutdown(130).catch(() => process.exit(130)) })
process.once('SIGTERM', () => { shutdown(143).catch(() => process.exit(143)) })

try {
  await main()
  await shutdown(0)
} catch (error) {
  console.error(`search bench failed: ${error instanceof Error ? error.message : String(error)}`)
  await shutdown(1)
}
