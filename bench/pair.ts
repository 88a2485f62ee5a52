import { cpus, loadavg } from 'node:os'
import { join } from 'node:path'
import { killAllChildrenNow, serverRuntime, stopAllChildren } from './children.js'
import { cpuMicros, syscallCounts } from './cpu.js'
import { prepareDatabase } from './database.js'
import { runLoad, stopLoad, type LoadResult } from './load.js'
import { ROOT, logTail, startServers, waitUntilServing, type Server } from './servers.js'
import { readSettings } from './settings.js'
import { checkFloorSql } from './sql-check.js'

// `npm run bench:pair`: two of the benchmark's servers (BENCH_SERVERS, exactly two, default a,b)
// under load at the same time, half the connections each, round after round, with each one's CPU
// time per request. On a machine that other work shares, `npm run bench`'s interleaved rounds see
// different moments (a server's CPU per request rose by half when the load average did); side by
// side, both servers share every moment, so their ratio holds still even when the absolute
// figures do not. Prints each round (with the read and write system calls per request, which no
// load moves) and the median ratios (first / second).

async function measured (server: Server, durationSeconds: number, connections: number, keys: number, writeRatio: number): Promise<LoadResult & { cpuUsPerRequest: number, readsPerRequest: number, writesPerRequest: number }> {
  const pid = server.child.process.pid
  if (pid === undefined) throw new Error(`${server.label} has no process id`)
  const before = cpuMicros(pid)
  const callsBefore = syscallCounts(pid)
  const result = await runLoad(server, { durationSeconds, connections, keys, writeRatio })
  if (server.child.exit !== undefined) throw new Error(`${server.label} exited (${server.child.exit}) during the run:\n${await logTail(server)}`)
  const cpuUs = cpuMicros(pid) - before
  const callsAfter = syscallCounts(pid)
  const per = (count: number) => result.responses === 0 ? 0 : count / result.responses
  return {
    ...result,
    cpuUsPerRequest: per(cpuUs),
    readsPerRequest: per(callsAfter.reads - callsBefore.reads),
    writesPerRequest: per(callsAfter.writes - callsBefore.writes)
  }
}

function median (values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y)
  return sorted[Math.floor(sorted.length / 2)] ?? 0
}

async function main (): Promise<void> {
  const settings = readSettings({ BENCH_SERVERS: 'a,b', BENCH_ROUNDS: '6', BENCH_DURATION: '6', ...process.env })
  if (settings.servers.length !== 2) throw new Error('bench:pair runs exactly two servers: BENCH_SERVERS=first,second')
  const databaseUrl = await prepareDatabase(settings.adminDatabaseUrl, settings.keys)
  await checkFloorSql(databaseUrl)
  const started = await startServers(databaseUrl, settings, join(ROOT, 'bench/results'))
  // startServers orders them its own way; keep the order asked for.
  const servers = settings.servers.map((id) => started.find((server) => server.id === id) as Server)
  await Promise.all(servers.map(async (server) => await waitUntilServing(server, settings.keys)))
  const [first, second] = servers as [Server, Server]
  const connections = Math.max(1, Math.floor(settings.connections / 2))
  const run = async (seconds: number) => await Promise.all(servers.map(async (server) => await measured(server, seconds, connections, settings.keys, settings.writeRatio)))
  console.log(`${first.id} (${first.label}) and ${second.id} (${second.label}) side by side, ${connections} connections each, ` +
    `${settings.rounds} rounds of ${settings.durationSeconds} s after a ${settings.warmupSeconds} s warm-up; load average ${loadavg()[0]?.toFixed(1)} on ${cpus().length} CPUs; ${serverRuntime()}`)
  await run(settings.warmupSeconds)
  const ratios = { cpu: [] as number[], rps: [] as number[], p99: [] as number[] }
  for (let round = 1; round <= settings.rounds; round++) {
    const [x, y] = await run(settings.durationSeconds) as [Awaited<ReturnType<typeof measured>>, Awaited<ReturnType<typeof measured>>]
    ratios.cpu.push(x.cpuUsPerRequest / y.cpuUsPerRequest)
    ratios.rps.push(x.requestsPerSecond / y.requestsPerSecond)
    ratios.p99.push(x.p99Ms / y.p99Ms)
    const line = (r: typeof x) => `${r.requestsPerSecond.toFixed(0)} req/s, p50 ${r.p50Ms.toFixed(1)} ms, p99 ${r.p99Ms.toFixed(1)} ms, ${r.cpuUsPerRequest.toFixed(0)} µs/req, syscalls r/w ${r.readsPerRequest.toFixed(2)}/${r.writesPerRequest.toFixed(2)}, errors ${r.totalErrors}`
    console.log(`  round ${round}: ${first.id} ${line(x)} | ${second.id} ${line(y)} | CPU ${first.id}/${second.id} ${(x.cpuUsPerRequest / y.cpuUsPerRequest).toFixed(3)}; load average ${loadavg()[0]?.toFixed(1)}`)
    if (x.totalErrors + y.totalErrors > 0) console.log(`    problems: ${[...x.samples, ...y.samples].join('; ')}`)
  }
  console.log(`median ${first.id}/${second.id}: CPU per request ${median(ratios.cpu).toFixed(3)}, req/s ${median(ratios.rps).toFixed(3)}, p99 ${median(ratios.p99).toFixed(3)}`)
}

process.on('exit', killAllChildrenNow)
process.once('SIGINT', () => { stopLoad(); stopAllChildren().finally(() => process.exit(130)) })
try {
  await main()
  await stopAllChildren()
} catch (error) {
  console.error(`bench:pair failed: ${error instanceof Error ? error.message : String(error)}`)
  await stopAllChildren()
  process.exitCode = 1
}
