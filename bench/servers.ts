import { randomBytes } from 'node:crypto'
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { checkAnswer, makeCall } from './calls.js'
import { freePort, startChild, type Child } from './children.js'
import { MCP_HEADERS, type Target } from './load.js'
import type { Settings } from './settings.js'

// The servers of the comparison and how to start them.

export type ServerId = 'a' | 'b' | 'c' | 'n' | 'm' | 'p'

export interface Server extends Target {
  id: ServerId
  label: string
  child: Child
  logFile: string
}

/** Each round runs the servers in this order (every other round reversed). */
const RUN_ORDER: ServerId[] = ['a', 'p', 'b', 'n', 'm', 'c']
const READY_TIMEOUT_MS = 60_000
const READY_POLL_MS = 200

// Peers run from the JavaScript that `tsc -p bench/tsconfig.json` compiles (into node_modules/.cache,
// out of git's and eslint's way), as the server under test runs from dist/: no TypeScript loader in
// any server process.
export const ROOT = fileURLToPath(new URL('..', import.meta.url))
export const PEERS_DIR = join(ROOT, 'node_modules/.cache/scm-bench/bench/peers')

interface ServerSpec {
  id: ServerId
  label: string
  script: string
  env: Record<string, string>
  headers: Record<string, string>
}

export async function startServers (databaseUrl: string, settings: Settings, resultsDir: string): Promise<Server[]> {
  await mkdir(resultsDir, { recursive: true })
  const token = `bench_${randomBytes(24).toString('base64url')}`
  const common = { DATABASE_URL: databaseUrl, DB_POOL_MAX: String(settings.dbPoolMax) }
  // a and n log at info, the default: one JSON line per request, into bench/results/server-<id>.log
  // (the server's stdout). A file rather than /dev/null: every line is really written, as it is to
  // a container's log pipe, and the file shows a server's errors afterwards.
  const logging = { LOG_LEVEL: 'info', HOST: '127.0.0.1' }
  const specs: ServerSpec[] = [
    {
      // The production configuration: a static token checked on every request, per-principal rate
      // limits on (set far above what the run can reach, so none trips), metrics on (always are).
      id: 'a',
      label: 'production config',
      script: join(ROOT, 'dist/server.js'),
      env: { ...common, ...logging, AUTH_TOKEN: token, RATE_LIMITS: 'admin=100000000/h 10000000/m; default=100000000/h 10000000/m; ip=10000000/m' },
      headers: { authorization: `Bearer ${token}` }
    },
    {
      // a's build and settings without authentication and with RATE_LIMITS off (the launcher does
      // both); metrics on.
      id: 'n',
      label: 'auth+limits off',
      script: join(PEERS_DIR, 'auth-off.js'),
      env: { ...common, ...logging },
      headers: {}
    },
    {
      // n with metrics off as well (no metrics hooks, the store untimed); logging as a.
      id: 'm',
      label: 'auth+limits+metrics off',
      script: join(PEERS_DIR, 'auth-off.js'),
      env: { ...common, ...logging, BENCH_WITHOUT_METRICS: '1' },
      headers: {}
    },
    {
      // Before/after in one interleaved run: a's configuration on another build of this server
      // (BENCH_BASELINE_DIR: a checkout of an earlier commit, built, with its own dist/).
      id: 'p',
      label: 'a on BENCH_BASELINE_DIR',
      script: join(settings.baselineDir ?? ROOT, 'dist/server.js'),
      env: { ...common, ...logging, AUTH_TOKEN: token, RATE_LIMITS: 'admin=100000000/h 10000000/m; default=100000000/h 10000000/m; ip=10000000/m' },
      headers: { authorization: `Bearer ${token}` }
    },
    { id: 'b', label: 'floor: Fastify+postgres', script: join(PEERS_DIR, 'bare-fastify.js'), env: common, headers: {} },
    { id: 'c', label: 'SDK stateless example', script: join(PEERS_DIR, 'sdk-example.js'), env: common, headers: {} }
  ]
  const servers: Server[] = []
  for (const id of RUN_ORDER) {
    const spec = specs.find(s => s.id === id)
    if (spec === undefined || !settings.servers.includes(id)) continue
    const port = await freePort()
    const logFile = join(resultsDir, `server-${spec.id}.log`)
    const child = startChild({ name: spec.label, cwd: ROOT, args: [spec.script], env: { ...spec.env, PORT: String(port) }, logFile })
    servers.push({ id: spec.id, label: spec.label, child, logFile, url: `http://127.0.0.1:${port}/mcp`, headers: spec.headers })
  }
  return servers
}

export async function logTail (server: Server, lines = 20): Promise<string> {
  const text = await readFile(server.logFile, 'utf8').catch(() => '')
  return text.split('\n').slice(-lines).join('\n')
}

/** Waits until the server answers one read_context correctly. */
export async function waitUntilServing (server: Server, keys: number): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS
  let problem = 'no answer yet'
  while (Date.now() < deadline) {
    if (server.child.exit !== undefined) {
      throw new Error(`${server.label} exited (${server.child.exit}) before serving:\n${await logTail(server)}`)
    }
    const call = makeCall(keys, 0)
    try {
      const response = await fetch(server.url, { method: 'POST', headers: { ...MCP_HEADERS, ...server.headers }, body: call.body })
      const check = checkAnswer(response.status, await response.text(), response.headers.get('content-type') ?? '', call)
      if (check.verdict === 'ok') return
      problem = check.detail ?? check.verdict
    } catch (error) {
      problem = (error as Error).message
    }
    await new Promise(resolve => setTimeout(resolve, READY_POLL_MS))
  }
  throw new Error(`${server.label} did not answer read_context correctly within ${READY_TIMEOUT_MS} ms; last problem: ${problem}`)
}
