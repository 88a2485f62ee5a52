import { spawn, execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { promisify } from 'node:util'
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { killAllChildrenNow, serverRuntime, startChild, stopChild, freePort } from './children.js'
import { cpuMicros } from './cpu.js'
import { prepareDatabase } from './database.js'
import { runLoad } from './load.js'
import { ROOT, logTail, waitUntilServing, type Server } from './servers.js'
import { readSettings } from './settings.js'
import { summariseProfile, type CpuProfile } from './profile-summary.js'
import { summarisePerf } from './perf-summary.js'

// `npm run bench:profile`: the production configuration (server a of `npm run bench`: token, rate
// limits on but never reached, metrics, info logging to a file) under the benchmark's load with
// node --cpu-prof, for BENCH_DURATION seconds after a BENCH_WARMUP warm-up. Writes the profile to
// bench/results/profile/ (open it in Chrome DevTools or speedscope for a flame graph) and prints
// the functions and packages with the most self time, and the functions with the most total time.
// BENCH_PROFILE_SERVER=m profiles the server with auth, limits and metrics off instead; BENCH_PROFILE_SERVER=b the floor.
// BENCH_PROFILE_PERF=1 samples the CPU instead (Linux `perf record` on the server started with
// --perf-basic-prof, bench/perf-summary.ts): CPU µs a request by package or file and by function,
// with no time spent waiting in it (what --cpu-prof's samples include); perf.data and the
// summary land in bench/results/profile/.

const RESULTS_DIR = join(ROOT, 'bench/results')
const PROFILE_DIR = join(RESULTS_DIR, 'profile')
const PERF_FREQUENCY = 1999
const PERF_DATA = join(PROFILE_DIR, 'perf.data')
async function main (): Promise<void> {
  const settings = readSettings(process.env)
  const which = process.env.BENCH_PROFILE_SERVER ?? 'a'
  if (which !== 'a' && which !== 'm' && which !== 'b') throw new Error('BENCH_PROFILE_SERVER is a (production configuration), m (auth, limits and metrics off) or b (the floor)')
  await rm(PROFILE_DIR, { recursive: true, force: true })
  await mkdir(PROFILE_DIR, { recursive: true })
  console.log(`Preparing database scm_bench with ${settings.keys} keys...`)
  const databaseUrl = await prepareDatabase(settings.adminDatabaseUrl, settings.keys)

  const token = `bench_${randomBytes(24).toString('base64url')}`
  const port = await freePort()
  const common = { DATABASE_URL: databaseUrl, DB_POOL_MAX: String(settings.dbPoolMax), LOG_LEVEL: 'info', HOST: '127.0.0.1', PORT: String(port) }
  const peers = join(ROOT, 'node_modules/.cache/scm-bench/bench/peers')
  const specs: Record<'a' | 'm' | 'b', { script: string, env: Record<string, string>, headers: Record<string, string> }> = {
    a: { script: join(ROOT, 'dist/server.js'), env: { ...common, AUTH_TOKEN: token, RATE_LIMITS: 'admin=100000000/h 10000000/m; default=100000000/h 10000000/m; ip=10000000/m' }, headers: { authorization: `Bearer ${token}` } },
    m: { script: join(peers, 'auth-off.js'), env: { ...common, BENCH_WITHOUT_METRICS: '1' }, headers: {} },
    b: { script: join(peers, 'bare-fastify.js'), env: common, headers: {} }
  }
  const spec = specs[which]
  const logFile = join(RESULTS_DIR, 'server-profile.log')
  const perf = process.env.BENCH_PROFILE_PERF === '1'
  const profilerArgs = perf ? ['--perf-basic-prof'] : ['--cpu-prof', '--cpu-prof-dir', PROFILE_DIR]
  const child = startChild({ name: `profiled ${which}`, cwd: ROOT, args: [...profilerArgs, spec.script], env: spec.env, logFile })
  const server: Server = { id: which, label: `profiled ${which}`, child, logFile, url: `http://127.0.0.1:${port}/mcp`, headers: spec.headers }
  try {
    await waitUntilServing(server, settings.keys)
    const load = { connections: settings.connections, keys: settings.keys, writeRatio: settings.writeRatio }
    console.log(`warm-up ${settings.warmupSeconds} s, then ${settings.durationSeconds} s profiled at ${settings.connections} connections; ${serverRuntime()}`)
    await runLoad(server, { ...load, durationSeconds: settings.warmupSeconds })
    const pid = child.process.pid as number
    // cpu-clock, named: on a machine with hardware counters perf would sample cycles instead, and samples / Hz would not be CPU time.
    const recorder = perf ? spawn('perf', ['record', '-q', '-e', 'cpu-clock', '-F', String(PERF_FREQUENCY), '-g', '-p', String(pid), '-o', PERF_DATA], { stdio: 'inherit' }) : undefined
    // Listened to from the start: perf may fail to start (not installed) or stop early (not allowed to attach).
    const recorded = recorder === undefined ? undefined : once(recorder, 'exit').catch((error: Error) => { throw new Error(`perf record did not start: ${error.message} (is Linux perf installed?)`) })
    recorded?.catch(() => {}) // awaited below; an early failure must not be unhandled meanwhile
    const before = cpuMicros(pid)
    const result = await runLoad(server, { ...load, durationSeconds: settings.durationSeconds })
    const cpu = (cpuMicros(pid) - before) / Math.max(1, result.responses)
    if (recorder !== undefined && recorded !== undefined) {
      const stoppedEarly = recorder.exitCode !== null
      recorder.kill('SIGINT')
      const [code] = await recorded as [number | null]
      if (stoppedEarly || (code !== 0 && code !== null)) throw new Error(`perf record stopped${stoppedEarly ? ' before the load ended' : ''} with code ${code} (may it attach to a process? see /proc/sys/kernel/perf_event_paranoid)`)
    }
    console.log(`${result.requestsPerSecond.toFixed(0)} req/s, p50 ${result.p50Ms.toFixed(1)} ms, p99 ${result.p99Ms.toFixed(1)} ms, ` +
      `${cpu.toFixed(0)} µs CPU/request (profiler included), errors ${result.totalErrors}`)
    if (child.exit !== undefined) throw new Error(`the server exited during the run:\n${await logTail(server)}`)
    if (perf) {
      // perf script names JavaScript frames from the /tmp/perf-<pid>.map the server wrote (removed in finally).
      const { stdout } = await promisify(execFile)('perf', ['script', '-i', PERF_DATA], { maxBuffer: 1 << 30 })
      const summary = summarisePerf(stdout, { responses: result.responses, frequency: PERF_FREQUENCY })
      await writeFile(join(PROFILE_DIR, 'summary.txt'), summary)
      console.log(`\n${summary}\nperf data: bench/results/profile/perf.data (perf report -i ...); summary in bench/results/profile/summary.txt`)
      return
    }
  } finally {
    await stopChild(child)
    if (perf) await rm(`/tmp/perf-${child.process.pid ?? 0}.map`, { force: true })
  }
  const file = (await readdir(PROFILE_DIR)).find((name) => name.endsWith('.cpuprofile'))
  if (file === undefined) throw new Error(`no .cpuprofile in ${PROFILE_DIR}: the server did not exit normally (see ${logFile})`)
  // The warm-up is in the profile too; it is short against the measured run.
  const summary = summariseProfile(JSON.parse(await readFile(join(PROFILE_DIR, file), 'utf8')) as CpuProfile)
  await writeFile(join(PROFILE_DIR, 'summary.txt'), summary)
  console.log(`\n${summary}\nProfile: bench/results/profile/${file} (Chrome DevTools > Performance, or speedscope); summary in bench/results/profile/summary.txt`)
}

process.on('exit', killAllChildrenNow)
try {
  await main()
} catch (error) {
  console.error(`bench:profile failed: ${error instanceof Error ? error.message : String(error)}`)
  process.exitCode = 1
}
