import { existsSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { join } from 'node:path'
import { killAllChildrenNow, serverRuntime, stopAllChildren } from './children.js'
import { cpuMicros } from './cpu.js'
import { prepareDatabase } from './database.js'
import { runLoad, stopLoad, type LoadOptions } from './load.js'
import { judge, runLine, summarise, table, type Round, type ServerSummary } from './report.js'
import { PEERS_DIR, ROOT, logTail, startServers, waitUntilServing, type Server, type ServerId } from './servers.js'
import { readSettings } from './settings.js'
import { checkFloorSql } from './sql-check.js'

// `npm run bench`: this server in its production configuration (a) against itself with auth and
// rate limits off (n), a floor of bare Fastify + postgres.js running the same SQL text (b) and the
// SDK's stateless example (c), interleaved round by round, every response validated, with each
// server's CPU time per request from /proc. Exit code 0 whatever the verdict (it is a
// measurement); 1 only when the benchmark itself broke.
// This runner (autocannon and the validator) runs under tsx, which only transpiles each module once
// at load time; the servers themselves run compiled JavaScript (see servers.ts).

const RESULTS_DIR = join(ROOT, 'bench/results')

async function main (): Promise<void> {
  const settings = readSettings(process.env)
  for (const file of [join(ROOT, 'dist/server.js'), join(PEERS_DIR, 'bare-fastify.js'), join(PEERS_DIR, 'sdk-example.js'), join(PEERS_DIR, 'auth-off.js')]) {
    if (!existsSync(file)) throw new Error(`${file} is missing: run \`npm run bench\` (it builds the server and the peers first)`)
  }
  await mkdir(RESULTS_DIR, { recursive: true })
  const loadBefore = loadavg()[0] ?? 0
  if (loadBefore > cpus().length) {
    console.log(`Note: the machine is busy (load average ${loadBefore.toFixed(1)} on ${cpus().length} CPUs); expect noisy numbers.`)
  }

  console.log(`Preparing database scm_bench with ${settings.keys} keys...`)
  const databaseUrl = await prepareDatabase(settings.adminDatabaseUrl, settings.keys)
  // The floor must run the very statements the store runs.
  await checkFloorSql(databaseUrl)
  const servers = await startServers(databaseUrl, settings, RESULTS_DIR)
  await Promise.all(servers.map(async server => await waitUntilServing(server, settings.keys)))

  const load: LoadOptions = { durationSeconds: settings.durationSeconds, connections: settings.connections, keys: settings.keys, writeRatio: settings.writeRatio }
  console.log(`${settings.connections} connections, ${settings.durationSeconds} s per run, ${settings.rounds} rounds, ` +
    `${settings.writeRatio * 100}% writes over ${settings.keys} keys; ${serverRuntime()}`)

  const warmups = new Map<ServerId, Round>()
  for (const server of servers) {
    console.log(`  warm-up ${server.id} ${server.label} (${settings.warmupSeconds} s)`)
    warmups.set(server.id, await measured(server, { ...load, durationSeconds: settings.warmupSeconds }))
  }
  const rounds = new Map<ServerId, Round[]>(servers.map(s => [s.id, []]))
  for (let round = 1; round <= settings.rounds; round++) {
    // a b n c, then c n b a, ...: a slow drift of the machine (other work, PostgreSQL's own upkeep)
    // does not always favour the same server.
    const order = round % 2 === 1 ? servers : [...servers].reverse()
    for (const server of order) {
      const result = await measured(server, load)
      rounds.get(server.id)?.push(result)
      console.log(runLine(server.id, server.label, round, result))
      for (const sample of result.samples) console.log(`      ${sample}`)
    }
  }

  const summaries: Partial<Record<ServerId, ServerSummary>> = Object.fromEntries(servers.map(s =>
    [s.id, summarise(s.label, rounds.get(s.id) ?? [], warmups.get(s.id) as Round)]))
  const verdict = judge(summaries)
  console.log(table(summaries, verdict))
  for (const server of servers.filter(s => s.id !== 'b' && s.id !== 'c')) {
    const log = await readFile(server.logFile, 'utf8')
    const lines = log.split('\n').filter(line => line.includes('"msg":"request completed"')).length
    const served = [warmups.get(server.id), ...(rounds.get(server.id) ?? [])].reduce((sum, r) => sum + (r?.responses ?? 0), 0)
    console.log(`${server.id}: ${lines} "request completed" log lines for ${served} measured requests (plus the readiness probes)`)
  }

  await writeFile(join(RESULTS_DIR, 'latest.json'), JSON.stringify({
    finishedAt: new Date().toISOString(),
    machine: { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model, loadAverageBefore: loadBefore, loadAverageAfter: loadavg()[0] },
    settings: { ...settings, adminDatabaseUrl: undefined },
    servers: summaries,
    verdict
  }, null, 2) + '\n')
  console.log('Results written to bench/results/latest.json; server logs in bench/results/server-*.log')
}

/** One load run, with the server's CPU time over it; a server that died meanwhile breaks the benchmark. */
async function measured (server: Server, load: LoadOptions): Promise<Round> {
  const pid = server.child.process.pid
  if (pid === undefined) throw new Error(`${server.label} has no process id`)
  const cpuBefore = cpuMicros(pid)
  const result = await runLoad(server, load)
  if (server.child.exit !== undefined) {
    throw new Error(`${server.label} exited (${server.child.exit}) during the run:\n${await logTail(server)}`)
  }
  const cpuUs = cpuMicros(pid) - cpuBefore
  return { ...result, cpuUsPerRequest: result.responses === 0 ? 0 : cpuUs / result.responses }
}

let stopping = false
async function shutdown (code: number): Promise<never> {
  if (!stopping) {
    stopping = true
    stopLoad()
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
  console.error(`bench failed: ${error instanceof Error ? error.message : String(error)}`)
  await shutdown(1)
}
