/**
 * Replays the Dockerfile without Docker (CI has no engine): the build context filtered by
 * .dockerignore, the build stage's COPY and RUN steps (npm ci, npm run build, npm prune --omit=dev)
 * in a scratch directory, the runtime stage's COPY --from, then the runtime CMD with the image's ENV
 * (HOST=0.0.0.0, DATA_DIR on the volume) and AUTH_TOKEN set. Checks: no dev dependency or compiler
 * in the runtime tree; the image's HEALTHCHECK command passes; /health and /ready answer; /mcp
 * refuses no token and initializes with it; fly.toml's release_command (migrations) exits 0;
 * SIGTERM exits 0; a restart on the same volume serves again. All of it runs on the image's Node
 * version: when this machine's differs, the check runs itself again on that version from npm.
 *
 * Each stage is a directory standing in for the image's root file system, so container paths map
 * to it. The runtime stage's RUN steps are not replayed (they run as root inside the image, on
 * absolute paths); its directories are created instead.
 *
 *   node --import tsx scripts/check-image-steps.ts      (npm run check:image; KEEP_SCRATCH=1 keeps the directory)
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { chmodSync, chownSync, cpSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { basename, dirname, join, posix, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse as parseToml } from 'smol-toml'
import { finalStage, parseDockerfile, type Stage } from './dockerfile-model.js'
import { freePort } from './free-port.js'

const dockerignore = createRequire(import.meta.url)('@balena/dockerignore') as typeof import('@balena/dockerignore').default

const root = resolve(fileURLToPath(new URL('..', import.meta.url)))
const started = Date.now()

class CheckError extends Error {}

function fail (message: string): never {
  throw new CheckError(message)
}

function log (message: string): void {
  process.stdout.write(`[image ${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${message}\n`)
}

/** The build context as Docker would send it: every file under the root that .dockerignore keeps. */
export function buildContextFiles (dir: string, ignoreText: string): string[] {
  const rules = dockerignore().add(ignoreText.split(/\r?\n/))
  const hasExceptions = ignoreText.split(/\r?\n/).some((line) => line.trim().startsWith('!'))
  const files: string[] = []
  const walk = (relativeDir: string) => {
    for (const entry of readdirSync(join(dir, relativeDir), { withFileTypes: true })) {
      const path = relativeDir === '' ? entry.name : `${relativeDir}/${entry.name}`
      const ignored = rules.ignores(path)
      if (entry.isDirectory()) {
        // With no `!` exceptions nothing under an ignored directory can come back (Docker skips it too).
        if (ignored && (!hasExceptions || path === '.git' || path === 'node_modules')) continue
        walk(path)
      } else if (entry.isFile() && !ignored) {
        files.push(path)
      }
    }
  }
  walk('')
  return files.sort()
}

interface StageState {
  stage: Stage
  /** Stands in for the image's root file system. */
  rootfs: string
  workdir: string
  env: Record<string, string>
}

function hostPath (state: StageState, containerPath: string): string {
  const absolute = containerPath.startsWith('/') ? containerPath : posix.join(state.workdir, containerPath)
  return join(state.rootfs, posix.normalize(absolute))
}

function copyInto (source: string, target: string, intoDirectory: boolean, move = false): void {
  if (move && statSync(source).isDirectory() && !existsSync(target)) {
    // The source stage is not read again: moving gives the same tree and saves copying node_modules.
    mkdirSync(dirname(target), { recursive: true })
    renameSync(source, target)
  } else if (statSync(source).isDirectory()) {
    mkdirSync(target, { recursive: true })
    cpSync(source, target, { recursive: true, verbatimSymlinks: true })
  } else {
    const file = intoDirectory ? join(target, basename(source)) : target
    mkdirSync(dirname(file), { recursive: true })
    cpSync(source, file)
  }
}

/** The environment for replayed commands: this machine's, minus what `npm run` and CI add, plus the stage's ENV. */
function commandEnv (extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (value === undefined || /^npm_|^INIT_CWD$|^NODE_ENV$|^NODE_OPTIONS$|DATABASE_URL|REDIS_URL|^AUTH_TOKEN$/.test(name)) continue
    env[name] = value
  }
  return { ...env, ...extra }
}

/** The image's USER as numeric ids, when this replay can take them on (it runs as root, as CI does). */
interface RunAs { uid: number, gid: number }
let runtimeUser: RunAs | undefined
/** The runtime stage's node, where the image has it (set in main). */
let runtimeNode = process.execPath

function runAsOf (user: string | undefined): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined
  const match = /^(\d+)(?::(\d+))?$/.exec(user ?? '')
  if (match === null) fail(`the runtime stage's USER must be numeric (uid[:gid]) to be replayed, got ${user ?? 'none'}`)
  const uid = Number(match[1])
  return { uid, gid: Number(match[2] ?? uid) }
}

async function runLogged (command: string, args: string[], options: { cwd: string, env: Record<string, string>, logFile: string, timeoutMs: number, as?: RunAs | undefined }): Promise<void> {
  const out = createWriteStream(options.logFile)
  const child = spawn(command, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'], ...options.as })
  child.stdout.pipe(out, { end: false })
  child.stderr.pipe(out, { end: false })
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs)
  const [code, signal] = await once(child, 'exit') as [number | null, NodeJS.Signals | null]
  clearTimeout(timer)
  await new Promise<void>((resolve) => out.end(resolve))
  if (code !== 0) {
    const tail = readFileSync(options.logFile, 'utf8').split('\n').slice(-40).join('\n')
    fail(`\`${[command, ...args].join(' ')}\` failed (${signal ?? `exit ${code}`}); last output:\n${tail}`)
  }
}

async function buildStages (stages: Stage[], context: string, scratch: string): Promise<StageState[]> {
  const states: StageState[] = []
  // A COPY --from may move a directory instead of copying it when no later COPY reads that path again.
  const reads: Array<{ from: string, source: string, line: number }> = []
  for (const stage of stages) {
    for (const step of stage.steps) {
      if (step.keyword === 'COPY' && step.from !== undefined) for (const source of step.sources) reads.push({ from: step.from, source: posix.normalize(source), line: step.line })
    }
  }
  const overlaps = (a: string, b: string) => a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`)
  const readAgain = (from: string, source: string, line: number) =>
    reads.some((read) => read.from === from && read.line > line && overlaps(read.source, posix.normalize(source)))
  for (const [index, stage] of stages.entries()) {
    const isFinal = index === stages.length - 1
    const state: StageState = { stage, rootfs: join(scratch, `stage-${index}-${stage.name ?? 'unnamed'}`), workdir: '/', env: {} }
    mkdirSync(state.rootfs, { recursive: true })
    states.push(state)
    log(`FROM ${stage.image}${stage.name === undefined ? '' : ` AS ${stage.name}`}`)
    for (const step of stage.steps) {
      switch (step.keyword) {
        case 'WORKDIR':
          state.workdir = step.path
          mkdirSync(hostPath(state, '.'), { recursive: true })
          break
        case 'ENV':
          Object.assign(state.env, step.vars)
          break
        case 'COPY': {
          if (step.sources.some((source) => /[*?[]/.test(source))) fail(`Dockerfile:${step.line}: COPY with wildcards is not replayed by this check`)
          const from = step.from === undefined ? undefined : states.find((s, i) => s.stage.name === step.from || String(i) === step.from)
          if (step.from !== undefined && from === undefined) fail(`Dockerfile:${step.line}: COPY --from=${step.from}: no such earlier stage`)
          const intoDirectory = step.dest.endsWith('/') || step.dest === '.' || step.sources.length > 1
          const target = hostPath(state, step.dest)
          for (const source of step.sources) {
            const path = from === undefined ? join(context, posix.normalize(source)) : hostPath({ ...from, workdir: '/' }, source)
            if (from === undefined && relative(context, path).startsWith('..')) fail(`Dockerfile:${step.line}: COPY ${source} points outside the build context`)
            if (!existsSync(path)) {
              fail(`Dockerfile:${step.line}: COPY ${from === undefined ? '' : `--from=${step.from ?? ''} `}${source}: not found${from === undefined ? ' in the build context (excluded by .dockerignore?)' : ` in stage ${step.from ?? ''}`}`)
            }
            copyInto(path, target, intoDirectory, step.from !== undefined && !readAgain(step.from, source, step.line))
          }
          log(`COPY ${step.from === undefined ? '' : `--from=${step.from} `}${step.sources.join(' ')} ${step.dest}`)
          break
        }
        case 'RUN': {
          if (isFinal) {
            log(`RUN ${step.command}   (not replayed: runtime stage, runs as root in the image)`)
            break
          }
          if (/(^|[\s=;&|(])\/(?!dev\/null)/.test(step.command)) fail(`Dockerfile:${step.line}: RUN uses an absolute path; replaying it would touch this machine: ${step.command}`)
          const stepStarted = Date.now()
          await runLogged('sh', ['-c', step.command], {
            cwd: hostPath(state, '.'),
            // prefer-offline: tarballs from this machine's npm cache without revalidating them; the
            // lockfile still fixes every version and integrity hash, so what installs is the same.
            env: commandEnv({ npm_config_prefer_offline: 'true', ...state.env }),
            logFile: join(scratch, `run-line-${step.line}.log`),
            timeoutMs: 300_000
          })
          log(`RUN ${step.command}   (${((Date.now() - stepStarted) / 1000).toFixed(1)} s)`)
          break
        }
      }
    }
  }
  return states
}

function checkRuntimeTree (state: StageState): void {
  const app = hostPath(state, '.')
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> }
  for (const name of Object.keys(pkg.dependencies ?? {})) {
    if (!existsSync(join(app, 'node_modules', name, 'package.json'))) fail(`runtime stage: production dependency ${name} is missing from node_modules`)
  }
  for (const name of ['typescript', 'tsx', 'tap', 'eslint', 'type-coverage']) {
    if (existsSync(join(app, 'node_modules', name))) fail(`runtime stage: dev dependency ${name} is in node_modules (npm prune --omit=dev missing?)`)
  }
  for (const file of ['package.json', 'dist/server.js', 'dist/cli.js', 'dist/db/pglite-template.tar', 'dist/db/migrations']) {
    if (!existsSync(join(app, file))) fail(`runtime stage: ${file} is missing`)
  }
  const sources = readdirSync(app).filter((name) => name.endsWith('.ts'))
  if (sources.length > 0) fail(`runtime stage: TypeScript sources copied in (${sources.join(', ')}); only dist/ is needed`)
  log('runtime tree: production dependencies present; no compiler, dev dependencies or sources; dist/db/pglite-template.tar present')
}

interface Server {
  exited: Promise<number | null>
  output: () => string
  kill: (signal: NodeJS.Signals) => void
  running: () => boolean
}

function startServer (command: string[], cwd: string, env: Record<string, string>): Server {
  const [program, ...args] = command
  if (program !== 'node') fail(`CMD must start node, got ${command.join(' ')}`)
  const child = spawn(runtimeNode, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'], ...runtimeUser })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = once(child, 'exit').then((args: unknown[]) => args[0] as number | null)
  return { exited, output: () => output, kill: (signal) => child.kill(signal), running: () => child.exitCode === null && child.signalCode === null }
}

async function get (url: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  const response = await fetch(url, { headers, signal: AbortSignal.timeout(5000) })
  return { status: response.status, body: await response.text() }
}

async function waitHealthy (server: Server, base: string, timeoutMs: number): Promise<number> {
  const start = Date.now()
  while (Date.now() - start < timeoutMs) {
    if (!server.running()) fail(`the server exited before /health answered:\n${server.output()}`)
    try {
      if ((await get(`${base}/health`)).status === 200) return Date.now() - start
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  fail(`/health did not answer within ${timeoutMs} ms:\n${server.output()}`)
}

async function stopWithSigterm (server: Server): Promise<void> {
  const start = Date.now()
  server.kill('SIGTERM')
  const code = await Promise.race([server.exited, new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 20_000))])
  if (code === 'timeout') {
    server.kill('SIGKILL')
    fail(`SIGTERM: the server was still running after 20 s:\n${server.output()}`)
  }
  if (code !== 0) fail(`SIGTERM: exit code ${code ?? 'null (killed by a signal)'}, expected 0:\n${server.output()}`)
  log(`SIGTERM -> exit 0 after ${Date.now() - start} ms`)
}

async function runHealthcheck (final: Stage, cwd: string, env: Record<string, string>): Promise<void> {
  const command = final.healthcheck?.command
  if (command === undefined || command[0] !== 'node') fail('the runtime stage needs an exec-form HEALTHCHECK running node')
  const child = spawn(runtimeNode, command.slice(1), { cwd, env, stdio: ['ignore', 'pipe', 'pipe'], ...runtimeUser })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
  const [code] = await once(child, 'exit') as [number | null]
  clearTimeout(timer)
  if (code !== 0) fail(`the image's HEALTHCHECK command failed (exit ${code ?? 'killed'}): ${output}`)
  log('HEALTHCHECK command: exit 0')
}

async function checkServing (base: string, token: string): Promise<void> {
  const ready = await get(`${base}/ready`)
  if (ready.status !== 200 || !ready.body.includes('"ok"')) fail(`/ready: ${ready.status} ${ready.body}`)
  const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'check-image-steps', version: '1' } } })
  const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
  const anonymous = await fetch(`${base}/mcp`, { method: 'POST', headers, body, signal: AbortSignal.timeout(5000) })
  if (anonymous.status !== 401) fail(`/mcp without a token on 0.0.0.0: ${anonymous.status}, expected 401`)
  const initialized = await fetch(`${base}/mcp`, { method: 'POST', headers: { ...headers, authorization: `Bearer ${token}` }, body, signal: AbortSignal.timeout(5000) })
  const text = await initialized.text()
  if (initialized.status !== 200 || !text.includes('"serverInfo"')) fail(`/mcp initialize with AUTH_TOKEN: ${initialized.status} ${text.slice(0, 500)}`)
  log('/ready 200; /mcp 401 without a token, initialize 200 with AUTH_TOKEN')
}

function releaseCommand (): string[] {
  const fly = parseToml(readFileSync(join(root, 'fly.toml'), 'utf8')) as { deploy?: { release_command?: unknown } }
  const command = fly.deploy?.release_command
  if (typeof command !== 'string') fail('fly.toml has no [deploy] release_command')
  return command.split(/\s+/)
}

/**
 * Runs this check again on the image's exact Node, from npm's node-<platform>-<arch> package (the
 * binaries the `node` package installs), so that npm ci, the build and the server run on what the
 * image runs. npm exec keeps the download in npm's cache for the next run.
 */
async function rerunOnNode (version: string): Promise<never> {
  if (process.env.CHECK_IMAGE_NODE === version) fail(`asked for Node ${version} from npm, got ${process.versions.node}`)
  const nodePackage = `node-${process.platform}-${process.arch}@${version}`
  log(`Node ${process.versions.node} here, ${version} in the image: running again on ${nodePackage} (npm exec)`)
  const child = spawn('npm', ['exec', '--yes', `--package=${nodePackage}`, '--', 'node', '--import', 'tsx', fileURLToPath(import.meta.url)], {
    cwd: root,
    env: { ...process.env, CHECK_IMAGE_NODE: version },
    stdio: 'inherit'
  })
  const [code] = await once(child, 'exit') as [number | null]
  process.exit(code ?? 1)
}

async function main (): Promise<void> {
  const model = parseDockerfile(readFileSync(join(root, 'Dockerfile'), 'utf8'))
  const final = finalStage(model)
  const imageNode = /^node:(\d+)\.(\d+)\.(\d+)/.exec(final.image)
  if (imageNode === null) fail(`the runtime image ${final.image} is not node:X.Y.Z-…; this check runs the steps on this machine's Node`)
  const imageVersion = `${imageNode[1] ?? ''}.${imageNode[2] ?? ''}.${imageNode[3] ?? ''}`
  if (imageVersion !== process.versions.node) await rerunOnNode(imageVersion)
  log(`Node ${process.versions.node}, as in the image`)

  const scratch = mkdtempSync(join(tmpdir(), 'scm-image-'))
  let server: Server | undefined
  try {
    const context = join(scratch, 'context')
    const files = buildContextFiles(root, readFileSync(join(root, '.dockerignore'), 'utf8'))
    for (const file of files) copyInto(join(root, file), join(context, file), false)
    log(`build context: ${files.length} files (.dockerignore applied) in ${scratch}`)

    const states = await buildStages(model.stages, context, scratch)
    const runtime = states.at(-1) as StageState
    checkRuntimeTree(runtime)

    const cwd = hostPath(runtime, '.')
    const token = randomBytes(32).toString('hex')
    const port = await freePort()
    const dataDir = runtime.env.DATA_DIR ?? fail('the runtime stage sets no DATA_DIR')
    mkdirSync(hostPath(runtime, dataDir), { recursive: true })
    // As in the image: node in /usr/local/bin (this one may be in root's npm cache, which USER cannot read).
    runtimeNode = hostPath(runtime, '/usr/local/bin/node')
    copyInto(process.execPath, runtimeNode, false)
    chmodSync(runtimeNode, 0o755)
    // As in the image: the server runs as USER, owns only the volume, and reads the rest.
    runtimeUser = runAsOf(final.user)
    if (runtimeUser !== undefined) {
      chmodSync(scratch, 0o755)
      chownSync(hostPath(runtime, dataDir), runtimeUser.uid, runtimeUser.gid)
      log(`running the runtime as USER ${runtimeUser.uid}:${runtimeUser.gid}`)
    }
    const env = commandEnv({ ...runtime.env, PORT: String(port), DATA_DIR: hostPath(runtime, dataDir), AUTH_TOKEN: token, LOG_LEVEL: 'warn' })
    const base = `http://127.0.0.1:${port}`
    const command = final.cmd ?? fail('the runtime stage has no exec-form CMD')

    server = startServer(command, cwd, env)
    log(`CMD ${command.join(' ')} (HOST=${env.HOST ?? ''}, DATA_DIR=${dataDir} on a new volume): /health after ${await waitHealthy(server, base, 60_000)} ms`)
    await runHealthcheck(final, cwd, env)
    await checkServing(base, token)
    await stopWithSigterm(server)

    const release = releaseCommand()
    if (release[0] !== 'node') fail(`fly.toml release_command must run node: ${release.join(' ')}`)
    await runLogged(runtimeNode, release.slice(1), { cwd, env, logFile: join(scratch, 'release-command.log'), timeoutMs: 60_000, as: runtimeUser })
    log(`fly.toml release_command \`${release.join(' ')}\`: exit 0`)

    server = startServer(command, cwd, env)
    log(`restart on the same volume: /health after ${await waitHealthy(server, base, 60_000)} ms`)
    const ready = await get(`${base}/ready`)
    if (ready.status !== 200) fail(`/ready after restart: ${ready.status} ${ready.body}`)
    await stopWithSigterm(server)
    server = undefined
    log(`ok: the image's steps build, serve and stop cleanly (${((Date.now() - started) / 1000).toFixed(1)} s)`)
  } finally {
    if (server?.running() === true) server.kill('SIGKILL')
    if (process.env.KEEP_SCRATCH === '1') log(`kept ${scratch}`)
    else {
      rmSync(scratch, { recursive: true, force: true })
      log('scratch directory removed')
    }
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  main().catch((error: unknown) => {
    process.stderr.write(`check-image-steps: ${error instanceof CheckError ? error.message : String((error as Error).stack ?? error)}\n`)
    process.exit(1)
  })
}
