/**
 * The long run of the proof under faults (README "Proof under faults"); never part of CI.
 *
 *   npm run torture -- --minutes N
 *
 * Runs test/faults/ at torture scale against this machine's PostgreSQL (TEST_PG_URL, default
 * postgres://postgres@127.0.0.1:5432/test) and Redis (REDIS_URL_FOR_TESTS): linearizability with
 * 3 instances for about half the time, fuzzing with more cases, more kill -9 rounds, the fault
 * and exhaustion files, then the memory check (RSS after 20k requests within 20% of after 2k).
 * Prints the figures as a Markdown table and exits 1 if anything failed.
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { buildApp } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from '../test/db-helper.js'
import { TEST_TOKEN } from '../test/helper.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const minutesArg = process.argv.indexOf('--minutes')
const MINUTES = minutesArg === -1 ? 3 : Number(process.argv[minutesArg + 1])
if (!Number.isFinite(MINUTES) || MINUTES <= 0) {
  process.stderr.write('usage: npm run torture -- --minutes N\n')
  process.exit(2)
}
const PG_URL = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
const REDIS_URL = process.env.REDIS_URL_FOR_TESTS ?? 'redis://127.0.0.1:6379'

interface Run { file: string, ok: boolean, output: string, seconds: number }

async function tap (file: string, env: Record<string, string>): Promise<Run> {
  const started = performance.now()
  const child = spawn(process.execPath, [`${root}node_modules/tap/dist/esm/run.mjs`, '--timeout', String(Math.ceil(MINUTES * 60 * 2 + 300)), file], {
    cwd: root,
    env: { ...process.env, TEST_DATABASE_URL: PG_URL, REDIS_URL, ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  const run = { file, ok: code === 0, output, seconds: Math.round((performance.now() - started) / 1000) }
  process.stdout.write(`${run.ok ? 'ok' : 'FAILED'} ${file} (${run.seconds} s)\n`)
  if (!run.ok) process.stdout.write(output.split('\n').filter((line) => /not ok|Error|anomal/.test(line)).slice(0, 40).join('\n') + '\n')
  return run
}

/** RSS after 2k and after 20k tool calls on one in-process instance. */
async function memory (): Promise<{ after2k: number, after20k: number }> {
  const closers: Array<() => unknown> = []
  const { url } = await testDatabase({ teardown: (fn: () => unknown) => { closers.push(fn) } } as Parameters<typeof testDatabase>[0])
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent', RATE_LIMITS: 'off' }))
  await app.ready()
  let sent = 0
  const burst = async (count: number) => {
    const workers = Array.from({ length: 16 }, async () => {
      while (sent < count) {
        const n = sent++
        const name = n % 3 === 0 ? 'write_context' : n % 3 === 1 ? 'read_context' : 'list_context'
        const args = name === 'write_context' ? { key: `mem/${n % 200}`, content: `value ${n}` } : name === 'read_context' ? { key: `mem/${n % 200}` } : { prefix: 'mem/', limit: 20 }
        await app.inject({
          method: 'POST',
          url: '/mcp',
          headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
          payload: { jsonrpc: '2.0', id: n, method: 'tools/call', params: { name, arguments: args } }
        })
      }
    })
    await Promise.all(workers)
  }
  const rss = () => {
    (globalThis as { gc?: () => void }).gc?.()
    return process.memoryUsage().rss
  }
  await burst(2000)
  const after2k = rss()
  await burst(20_000)
  const after20k = rss()
  await app.close()
  for (const close of closers.reverse()) await close()
  return { after2k, after20k }
}

const match = (run: Run, pattern: RegExp) => pattern.exec(run.output)

const linSeconds = Math.max(20, Math.round(MINUTES * 60 * 0.45))
process.stdout.write(`torture: ${MINUTES} min; linearizability ${linSeconds} s with 3 instances on ${new URL(PG_URL).host}\n`)
const lin = await tap('test/faults/linearizability.test.ts', { LIN_SECONDS: String(linSeconds), LIN_INSTANCES: '3' })
const fuzz = await tap('test/faults/fuzz.test.ts', { FUZZ_RUNS: String(Math.round(1500 * MINUTES)) })
const crash = await tap('test/faults/crash.test.ts', { CRASH_ROUNDS: String(2 + Math.round(MINUTES)) })
// The same on the embedded database's data folder (an empty TEST_DATABASE_URL means PGlite).
const crashEmbedded = await tap('test/faults/crash.test.ts', { CRASH_ROUNDS: String(1 + Math.round(MINUTES / 2)), TEST_DATABASE_URL: '' })
const others = await Promise.all(['test/faults/database.test.ts', 'test/faults/redis.test.ts', 'test/faults/jwks.test.ts', 'test/faults/exhaustion.test.ts'].map((file) => tap(file, {})))
const mem = await memory()
const growth = mem.after20k / mem.after2k - 1
const memoryOk = growth <= 0.2

const linFigures = match(lin, /# (\d+) operations on (\d+) keys \((\d+) ok, (\d+) unknown outcome: (\d+) found applied in the history, (\d+) not\), (\d+) cuts and (\d+) stalls, (\d+) anomalies/)
const crashFigures = match(crash, /# (\d+) acknowledged writes over (\d+) kills, (\d+) lost/)
const embeddedFigures = match(crashEmbedded, /# (\d+) acknowledged writes over (\d+) kills, (\d+) lost/)
const fuzzSeed = match(fuzz, /fast-check seed (\d+), (\d+) runs per property/)
const mb = (bytes: number) => `${Math.round(bytes / 1024 / 1024)} MB`
const rows: Array<[string, string]> = [
  ['linearizability: operations checked', linFigures === null ? '?' : `${linFigures[1]} on ${linFigures[2]} hot keys, 16 clients, 3 instances, ${linSeconds} s (${linFigures[3]} ok, ${linFigures[4]} unknown outcome: ${linFigures[5]} found applied, ${linFigures[6]} not)`],
  ['faults injected', linFigures === null ? '?' : `${Number(linFigures[7]) + Number(linFigures[8])} (${linFigures[7]} cuts, ${linFigures[8]} stalls of database connections)`],
  ['anomalies', linFigures?.[9] ?? '?'],
  ['fuzz cases', fuzzSeed === null ? '?' : `${Number(fuzzSeed[2]) * 2} (seed ${fuzzSeed[1]}), ${fuzz.ok ? 'no violation' : 'VIOLATIONS'}`],
  ['kill -9 rounds / acknowledged writes / lost', `PostgreSQL ${crashFigures === null ? '?' : `${crashFigures[2]} / ${crashFigures[1]} / ${crashFigures[3]}`}; embedded ${embeddedFigures === null ? '?' : `${embeddedFigures[2]} / ${embeddedFigures[1]} / ${embeddedFigures[3]}`}`],
  ['fault and exhaustion files', others.every((run) => run.ok) ? 'all passed' : `failed: ${others.filter((run) => !run.ok).map((run) => run.file).join(', ')}`],
  ['RSS after 2k / 20k requests', `${mb(mem.after2k)} / ${mb(mem.after20k)} (${growth >= 0 ? '+' : ''}${(growth * 100).toFixed(1)}%, limit +20%)`]
]
process.stdout.write(`\n| measure | result |\n|---|---|\n${rows.map(([name, value]) => `| ${name} | ${value} |`).join('\n')}\n`)
const ok = lin.ok && fuzz.ok && crash.ok && crashEmbedded.ok && others.every((run) => run.ok) && memoryOk
process.stdout.write(ok ? '\ntorture: all passed\n' : '\ntorture: FAILED\n')
process.exit(ok ? 0 : 1)
