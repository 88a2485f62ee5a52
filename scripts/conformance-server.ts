/**
 * The official MCP conformance suite's server scenarios that apply to this server, against /mcp as
 * built in dist/:
 *
 *   npm run conformance:server             (builds dist/ first when a source is newer)
 *   npm run conformance:server -- --verbose                  (extra arguments go to the suite)
 *
 * 2025-era: server-initialize, ping, tools-list, dns-rebinding-protection; 2026-07-28:
 * server-stateless, http-header-validation, caching (and tools-list, dns-rebinding-protection
 * again at that version). The other server scenarios call the suite's own fixture tools, prompts
 * and resources by name, or features this server does not offer (prompts, sessions, SSE polling,
 * sampling, elicitation).
 * The suite sends no Authorization header, so the server runs with authentication off (the build
 * option the benchmark uses) on a free loopback port, with an embedded database in a temporary
 * DATA_DIR; everything else is the production configuration (host checks, metrics, rate limits).
 * Needs the npm registry (npx fetches node@22 and the suite). Not part of `npm test`.
 */
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort } from './free-port.js'

const SUITE = '@modelcontextprotocol/conformance@0.2.0-alpha.12'
const RUNS: ReadonlyArray<{ specVersion: string, scenarios: string[] }> = [
  { specVersion: '2025-11-25', scenarios: ['server-initialize', 'ping', 'tools-list', 'dns-rebinding-protection'] },
  { specVersion: '2026-07-28', scenarios: ['server-stateless', 'http-header-validation', 'caching', 'tools-list', 'dns-rebinding-protection'] }
]

// Checks that fail by design (each with its reason); the suite fails a run on any other failure,
// and on an entry there that passes.
const EXPECTED_FAILURES = fileURLToPath(new URL('conformance-server-expected.yaml', import.meta.url))

const dist = (module: string): string => new URL(`../dist/${module}`, import.meta.url).href
const { buildApp, loggerOptions } = await import(dist('app.js')) as typeof import('../app.js')
const { loadConfig } = await import(dist('schema/config.js')) as typeof import('../schema/config.js')

interface Check { id: string, name: string, status: string, errorMessage?: string }

/** One scenario under one spec version; resolves with the suite's exit code. */
async function runScenario (url: string, scenario: string, specVersion: string, outputDir: string): Promise<number> {
  const child = spawn('npx', ['-y', '-p', 'node@22', '-p', SUITE, 'conformance', 'server', '--url', url, '--scenario', scenario,
    '--spec-version', specVersion, '--output-dir', outputDir, '--expected-failures', EXPECTED_FAILURES, ...process.argv.slice(2)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true // its own process group: npx's children end with it
  })
  const stop = (): void => { if (child.pid !== undefined && child.exitCode === null) process.kill(-child.pid, 'SIGTERM') }
  process.once('exit', stop)
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const code = await new Promise<number>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (exit) => { resolve(exit ?? 1) })
  })
  process.off('exit', stop)
  if (process.argv.includes('--verbose')) process.stdout.write(output.split('\n').filter((line) => !line.startsWith('npm warn')).map((line) => `  | ${line}\n`).join(''))
  return code
}

/** The checks of the one scenario run into `outputDir` (the suite writes `server-<scenario>-<time>/checks.json`). */
async function checksOf (outputDir: string, scenario: string): Promise<Check[] | undefined> {
  for (const entry of await readdir(outputDir)) {
    if (!entry.startsWith(`server-${scenario}-`)) continue
    const text = await readFile(join(outputDir, entry, 'checks.json'), 'utf8').catch(() => undefined)
    if (text !== undefined) return JSON.parse(text) as Check[]
  }
  return undefined
}

async function main (): Promise<number> {
  const expectedFailures = new Set((await readFile(EXPECTED_FAILURES, 'utf8')).split('\n')
    .map((line) => /^\s*-\s*(\S+)\s*$/.exec(line)?.[1]).filter((entry): entry is string => entry !== undefined))
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-conformance-data-'))
  const port = await freePort()
  const config = loadConfig({ HOST: '127.0.0.1', PORT: String(port), DATA_DIR: dataDir, LOG_LEVEL: 'warn' })
  const app = await buildApp(config, { logger: loggerOptions(config.LOG_LEVEL, false), withoutAuthentication: true })
  let failed = false
  try {
    await app.listen({ port, host: '127.0.0.1' })
    const url = `http://127.0.0.1:${port}/mcp`
    console.log(`Server ${url} (dist/, authentication off); running ${SUITE} under Node 22`)
    for (const { specVersion, scenarios } of RUNS) {
      for (const scenario of scenarios) {
        const outputDir = await mkdtemp(join(tmpdir(), 'scm-conformance-results-'))
        try {
          const exitCode = await runScenario(url, scenario, specVersion, outputDir)
          const checks = await checksOf(outputDir, scenario)
          if (checks === undefined) {
            failed = true
            console.log(`✗ ${specVersion} ${scenario}: no results (suite exit code ${exitCode})`)
            continue
          }
          const count = (status: string): number => checks.filter((check) => check.status === status).length
          const expected = checks.filter((check) => check.status === 'FAILURE' && expectedFailures.has(`${scenario}:${check.id}`)).length
          // The suite's exit code applies the expected failures: 0 means no other failure and no stale entry.
          const ok = count('SUCCESS') > 0 && exitCode === 0
          if (!ok) failed = true
          console.log(`${ok ? '✓' : '✗'} ${specVersion} ${scenario}: ${count('SUCCESS')} passed, ${count('FAILURE')} failed` +
            `${expected > 0 ? ` (${expected} expected: ${expected === count('FAILURE') ? 'all' : 'not all'} in the baseline)` : ''}, ${count('WARNING')} warnings` +
            `${exitCode === 0 ? '' : ` (suite exit code ${exitCode})`}`)
          for (const check of checks) {
            if (check.status !== 'SUCCESS' || process.argv.includes('--verbose')) {
              const note = expectedFailures.has(`${scenario}:${check.id}`) ? ' [expected]' : ''
              console.log(`    ${check.status}${note} ${check.id}${check.errorMessage === undefined ? '' : `: ${check.errorMessage.slice(0, 200)}`}`)
            }
          }
        } finally {
          await rm(outputDir, { recursive: true, force: true })
        }
      }
    }
  } finally {
    await app.close()
    await rm(dataDir, { recursive: true, force: true })
  }
  return failed ? 1 : 0
}

process.exitCode = await main()
