import { randomBytes } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { join } from 'node:path'
import { freePort, killAllChildrenNow, serverRuntime, startChild, stopAllChildren } from './children.js'
import { cpuMicros } from './cpu.js'
import { prepareDatabase } from './database.js'
import { runLoad, type LoadResult } from './load.js'
import { ROOT, waitUntilServing, type Server } from './servers.js'
import { readSettings } from './settings.js'

// `npm run bench:scale`: one instance against two, on one PostgreSQL. Two production-configuration
// servers (token, limits, metrics, info logs) share the bench database; each round runs the
// benchmark's load (BENCH_CONNECTIONS in all) at instance 1 alone, then split evenly over both
// (every other round the other way round). Reports the summed throughput, latency and the servers'
// CPU per request. On one machine the instances, PostgreSQL and the load generator share its cores,
// so this shows what a second instance buys when the database has headroom, not a cluster.

const RESULTS_DIR = join(ROOT, 'bench/results')
const LIMITS = 'admin=100000000/h 10000000/m; default=100000000/h 10000000/m; ip=10000000/m'

interface Outcome { rps: number, p50: number, p99: number, cpuUs: number, errors: number }

async function measure (servers: Server[], connections: number, seconds: number, keys: number, writeRatio: number): Promise<Outcome> {
  const per = Math.floor(connections / servers.length)
  const before = servers.map((server) => cpuMicros(server.child.process.pid as number))
  const results: LoadResult[] = await Promise.all(servers.map(async (server) => await runLoad(server, { durationSeconds: seconds, connections: per, keys, writeRatio })))
  const cpu = servers.reduce((sum, server, i) => sum + cpuMicros(server.child.process.pid as number) - (before[i] as number), 0)
  const responses = results.reduce((sum, r) => sum + r.responses, 0)
  const weighted = (pick: (r: LoadResult) => number): number => results.reduce((sum, r) => sum + pick(r) * r.responses, 0) / Math.max(1, responses)
  return {
    rps: results.reduce((sum, r) => sum + r.requestsPerSecond, 0),
    p50: weighted((r) => r.p50Ms),
    p99: Math.max(...results.map((r) => r.p99Ms)),
    cpuUs: cpu / Math.max(1, responses),
    errors: results.reduce((sum, r) => sum + r.totalErrors, 0)
  }
}

function line (label: string, o: Outcome): string {
  return `${label.padEnd(14)} ${o.rps.toFixed(0).padStart(6)} req/s  p50 ${o.p50.toFixed(1).padStart(6)} ms  p99(max) ${o.p99.toFixed(1).padStart(6)} ms  CPU ${o.cpuUs.toFixed(0).padStart(4)} µs/req  errors ${o.errors}`
}

function mean (list: Outcome[]): Outcome {
  const avg = (pick: (o: Outcome) => number): number => list.reduce((sum, o) => sum + pick(o), 0) / Math.max(1, list.length)
  return { rps: avg((o) => o.rps), p50: avg((o) => o.p50), p99: avg((o) => o.p99), cpuUs: avg((o) => o.cpuUs), errors: list.reduce((sum, o) => sum + o.errors, 0) }
}

async function main (): Promise<void> {
  const settings = readSettings(process.env)
  await mkdir(RESULTS_DIR, { recursive: true })
  console.log(`load average ${loadavg()[0]?.toFixed(1)} on ${cpus().length} CPUs; ${serverRuntime()}`)
  console.log(`Preparing database scm_bench with ${settings.keys} keys...`)
  const databaseUrl = await prepareDatabase(settings.adminDatabaseUrl, settings.keys)
  const token = `bench_${randomBytes(24).toString('base64url')}`
  const servers: Server[] = []
  for (const id of ['1', '2']) {
    const port = await freePort()
    const logFile = join(RESULTS_DIR, `server-scale-${id}.log`)
    const child = startChild({
      name: `instance ${id}`,
      cwd: ROOT,
      args: [join(ROOT, 'dist/server.js')],
      env: { DATABASE_URL: databaseUrl, DB_POOL_MAX: String(settings.dbPoolMax), LOG_LEVEL: 'info', HOST: '127.0.0.1', PORT: String(port), AUTH_TOKEN: token, RATE_LIMITS: LIMITS },
      logFile
    })
    servers.push({ id: 'a', label: `instance ${id}`, child, logFile, url: `http://127.0.0.1:${port}/mcp`, headers: { authorization: `Bearer ${token}` } })
  }
  await Promise.all(servers.map(async (server) => await waitUntilServing(server, settings.keys)))
  const { connections, keys, writeRatio, durationSeconds, warmupSeconds, rounds } = settings
  console.log(`${connections} connections in all, ${durationSeconds} s per run, ${rounds} rounds, DB_POOL_MAX ${settings.dbPoolMax} per instance`)
  await measure(servers, connections, warmupSeconds, keys, writeRatio)
  const one: Outcome[] = []
  const two: Outcome[] = []
  for (let round = 1; round <= rounds; round++) {
    const order = round % 2 === 1 ? ['one', 'two'] : ['two', 'one']
    for (const which of order) {
      const outcome = which === 'one' ? await measure(servers.slice(0, 1), connections, durationSeconds, keys, writeRatio) : await measure(servers, connections, durationSeconds, keys, writeRatio)
      ;(which === 'one' ? one : two).push(outcome)
      console.log(`  round ${round} ${line(which === 'one' ? '1 instance' : '2 instances', outcome)}`)
    }
  }
  const [m1, m2] = [mean(one), mean(two)]
  console.log(`\nmeans\n${line('1 instance', m1)}\n${line('2 instances', m2)}\n2/1 throughput ${(m2.rps / m1.rps).toFixed(2)}, p50 ${(m2.p50 / m1.p50).toFixed(2)}, CPU/request ${(m2.cpuUs / m1.cpuUs).toFixed(2)}`)
  console.log(`load average after: ${loadavg()[0]?.toFixed(1)}`)
}

process.on('exit', killAllChildrenNow)
try {
  await main()
} catch (error) {
  console.error(`bench:scale failed: ${error instanceof Error ? error.message : String(error)}`)
  process.exitCode = 1
} finally {
  await stopAllChildren()
}
