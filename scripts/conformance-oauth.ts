/**
 * The official MCP conformance suite's authorization server scenarios
 * (`authorization-server-metadata-endpoint`, `authorization-code-grant`) against the built-in
 * authorization server as built in dist/:
 *
 *   npm run conformance:oauth              (builds dist/ first when a source is newer)
 *   npm run conformance:oauth -- --spec-version 2025-11-25     (extra arguments go to the suite)
 *
 * Starts the server in this process with OAUTH_SERVER=on on a free loopback port, an embedded
 * database in a temporary DATA_DIR and a random owner password; registers a public client through
 * /oauth/register for the suite's loopback callback; runs the suite under Node 22 (npm's `node`
 * package); and when the suite prints its authorization URL, signs in on the consent page as a
 * browser would (test/oauth/oauth-helper.ts) and follows the redirect to the suite's callback.
 * Prints every check and exits non-zero when one failed or a scenario did not report.
 * Needs the npm registry (npx fetches node@22 and the suite). Not part of `npm test`.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { authorizeInBrowser } from '../test/oauth/oauth-helper.js'
import { freePort } from './free-port.js'

const SUITE = '@modelcontextprotocol/conformance@0.2.0-alpha.12'
const SCENARIOS = ['authorization-server-metadata-endpoint', 'authorization-code-grant']

// The server under test is dist/ (what `npm start` and the image run), typed by its sources.
const dist = (module: string): string => new URL(`../dist/${module}`, import.meta.url).href
const { buildApp, loggerOptions } = await import(dist('app.js')) as typeof import('../app.js')
const { loadConfig } = await import(dist('schema/config.js')) as typeof import('../schema/config.js')
const { hashOwnerPassword } = await import(dist('oauth/owner-password.js')) as typeof import('../oauth/owner-password.js')

interface Check { id: string, name: string, status: string, description?: string, errorMessage?: string, details?: { body?: unknown } }

async function json (response: Response, what: string): Promise<Record<string, unknown>> {
  const body = await response.text()
  if (!response.ok) throw new Error(`${what}: HTTP ${response.status}: ${body}`)
  return JSON.parse(body) as Record<string, unknown>
}

/** Each scenario's checks from the suite's --output-dir (one `authorization-server-<scenario>-<time>/checks.json` each). */
async function checksOf (outputDir: string): Promise<Map<string, Check[]>> {
  const results = new Map<string, Check[]>()
  for (const entry of await readdir(outputDir)) {
    const scenario = SCENARIOS.find((name) => entry.startsWith(`authorization-server-${name}-`))
    // A scenario the suite was stopped in has its folder but no checks.json.
    const text = scenario === undefined ? undefined : await readFile(join(outputDir, entry, 'checks.json'), 'utf8').catch(() => undefined)
    if (scenario !== undefined && text !== undefined) results.set(scenario, JSON.parse(text) as Check[])
  }
  return results
}

/** The suite, run to its end; `onLine` sees each line it prints and may stop it. Resolves with its exit code. */
async function runSuite (args: string[], onLine: (line: string, stop: () => void) => void): Promise<number> {
  const child = spawn('npx', ['-y', '-p', 'node@22', '-p', SUITE, 'conformance', 'authorization', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    detached: true // its own process group: npx's children end with it (below)
  })
  const stopSuite = (): void => { if (child.pid !== undefined && child.exitCode === null) process.kill(-child.pid, 'SIGTERM') }
  process.once('exit', stopSuite)
  createInterface({ input: child.stdout }).on('line', (line) => {
    process.stdout.write(`  | ${line}\n`)
    onLine(line, stopSuite)
  })
  return await new Promise((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (code) => {
      process.off('exit', stopSuite)
      resolve(code ?? 1)
    })
  })
}

async function main (): Promise<number> {
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-conformance-data-'))
  const outputDir = await mkdtemp(join(tmpdir(), 'scm-conformance-results-'))
  const port = await freePort()
  const callbackPort = await freePort()
  const url = `http://127.0.0.1:${port}`
  const resource = `${url}/mcp`
  const config = loadConfig({ OAUTH_SERVER: 'on', PUBLIC_URL: url, HOST: '127.0.0.1', PORT: String(port), DATA_DIR: dataDir, LOG_LEVEL: 'warn' })
  const app = await buildApp(config, { logger: loggerOptions(config.LOG_LEVEL, false) })
  try {
    await app.listen({ port, host: '127.0.0.1' })
    const password = randomBytes(18).toString('base64url')
    await app.oauth?.store.setOwnerPasswordHash(await hashOwnerPassword(password))

    // As a client would: discover the endpoints, then register (the suite's callback is always 127.0.0.1:PORT/callback).
    const metadata = await json(await fetch(`${url}/.well-known/oauth-authorization-server`), 'metadata')
    const redirectUri = `http://127.0.0.1:${callbackPort}/callback`
    const registration = await json(await fetch(String(metadata.registration_endpoint), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ client_name: 'MCP conformance suite', redirect_uris: [redirectUri], token_endpoint_auth_method: 'none' })
    }), 'registration')
    const clientId = String(registration.client_id)
    console.log(`Server ${url} (dist/), client ${clientId} registered for ${redirectUri}; running ${SUITE} under Node 22`)

    let signIn: Promise<void> | undefined
    let signInError: unknown
    const exitCode = await runSuite(
      ['--url', url, '--client-id', clientId, '--resource', resource, '--port', String(callbackPort), '--output-dir', outputDir, ...process.argv.slice(2)],
      (line, stop) => {
        if (signIn !== undefined || !line.startsWith(`${String(metadata.authorization_endpoint)}?`)) return
        signIn = (async () => {
          const { callback } = await authorizeInBrowser({ app, url, resource }, line, { password })
          console.log(`Consent given as the owner; the browser goes to ${callback.origin}${callback.pathname}`)
          const response = await fetch(callback)
          if (!response.ok) throw new Error(`the suite's callback answered HTTP ${response.status}`)
        })()
        // Without its callback the suite waits five minutes: end it now instead.
        signIn.catch((error: unknown) => {
          signInError = error
          stop()
        })
      })

    const results = await checksOf(outputDir)
    let failed = exitCode !== 0
    if (signInError !== undefined) {
      failed = true
      console.log(`\nSigning in on the consent page failed: ${(signInError instanceof Error ? signInError.message : String(signInError)).slice(0, 300)}`)
    }
    console.log('\nConformance results:')
    for (const scenario of SCENARIOS) {
      const checks = results.get(scenario)
      if (checks === undefined) {
        failed = true
        console.log(`✗ ${scenario}: no results`)
        continue
      }
      const count = (status: string): number => checks.filter((check) => check.status === status).length
      if (count('FAILURE') > 0 || count('SUCCESS') === 0) failed = true
      console.log(`${count('FAILURE') === 0 && count('SUCCESS') > 0 ? '✓' : '✗'} ${scenario}: ${count('SUCCESS')} passed, ${count('FAILURE')} failed, ${count('WARNING')} warnings, ${count('SKIPPED')} skipped`)
      for (const check of checks) {
        console.log(`    ${check.status} ${check.id}${check.errorMessage === undefined ? '' : `: ${check.errorMessage}`}`)
        // The token response as the suite saw it (it shortens the tokens themselves).
        if (scenario === 'authorization-code-grant' && check.details?.body !== undefined) console.log(`      token response: ${JSON.stringify(check.details.body)}`)
      }
    }
    if (exitCode !== 0) console.log(`The suite exited with ${exitCode}.`)
    return failed ? 1 : 0
  } finally {
    await app.close()
    await rm(dataDir, { recursive: true, force: true })
    await rm(outputDir, { recursive: true, force: true })
  }
}

process.exitCode = await main()
