import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { validate } from 'dockerfile-utils'
import { finalStage, parseDockerfile, type Stage } from './dockerfile-model.js'

// @balena/dockerignore (Docker's own .dockerignore rules) is CommonJS with `module.exports = factory`,
// which its `export default` typing does not describe under NodeNext.
const dockerignore = createRequire(import.meta.url)('@balena/dockerignore') as typeof import('@balena/dockerignore').default

export interface Problem {
  file: string
  line: number
  message: string
}

const SECRET_NAME = /TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|DATABASE_URL|REDIS_URL/i

/**
 * dockerfile-utils' validator (syntax, instruction arguments, flags; warnings count too), then this
 * project's rules for its production image.
 */
export function lintDockerfile (text: string, file = 'Dockerfile'): Problem[] {
  const problems: Problem[] = []
  const add = (line: number, message: string) => problems.push({ file, line, message })

  for (const diagnostic of validate(text)) {
    const level = diagnostic.severity === 1 ? 'error' : 'warning' // LSP DiagnosticSeverity: 1 error, 2 warning
    add(diagnostic.range.start.line + 1, `dockerfile-utils ${level}: ${diagnostic.message}`)
  }

  const model = parseDockerfile(text)
  if (model.stages.length === 0) {
    add(1, 'no FROM')
    return problems
  }
  for (const stage of model.stages) {
    const image = stage.image
    if (image.includes('$')) add(stage.line, `base image "${image}" uses an ARG with no default before FROM`)
    else if (!/@sha256:[0-9a-f]{64}$/.test(image) && !/:[^:/]*\d+\.\d+\.\d+[^:/]*$/.test(image)) {
      add(stage.line, `base image "${image}" is not pinned: use a full version tag (node:X.Y.Z-bookworm-slim) or a digest`)
    }
    for (const other of stage.others) {
      if (other.keyword === 'ADD') add(other.line, 'use COPY, not ADD (no remote URLs or implicit archive extraction)')
    }
    for (const step of stage.steps) {
      if (step.keyword !== 'ENV') continue
      for (const name of Object.keys(step.vars).filter((n) => SECRET_NAME.test(n))) add(step.line, `ENV ${name}: secrets come from the environment at run time, never from the image`)
    }
  }
  for (const [name] of Object.entries(model.args).filter(([n]) => SECRET_NAME.test(n))) {
    add(1, `ARG ${name}: build arguments end up in the image history; no secrets`)
  }

  finalStageRules(finalStage(model), model.stages, add)
  return problems
}

function finalStageRules (final: Stage, stages: Stage[], add: (line: number, message: string) => void): void {
  if (stages.length < 2) add(final.line, 'use a multi-stage build: compile in one stage, run in another without dev dependencies')
  for (const step of final.steps) {
    if (step.keyword !== 'RUN') continue
    if (/\btsc\b|npm run build/.test(step.command)) add(step.line, 'the runtime stage must not compile; build in an earlier stage')
    if (/npm (ci|install|i)\b/.test(step.command) && !step.command.includes('--omit=dev')) add(step.line, 'the runtime stage installs dev dependencies: add --omit=dev')
  }
  const prunes = (stage: Stage | undefined) => stage?.steps.some((step) => step.keyword === 'RUN' && /npm (ci|prune)\b.*--omit=dev/.test(step.command)) ?? false
  const modulesFrom = final.steps.find((step) => step.keyword === 'COPY' && step.from !== undefined && step.sources.some((source) => source.endsWith('node_modules')))
  const modulesStage = modulesFrom?.keyword === 'COPY' ? stages.find((stage) => stage.name === modulesFrom.from) : undefined
  if (!prunes(final) && !prunes(modulesStage)) {
    add(final.line, 'production dependencies only: copy node_modules from a stage that ran `npm prune --omit=dev`, or run `npm ci --omit=dev` in the runtime stage')
  }

  const user = final.user?.split(':')[0]
  if (user === undefined) add(final.line, 'the runtime stage runs as root: add USER (a non-root user)')
  else if (user === 'root' || user === '0') add(final.line, `USER ${final.user ?? ''} is root`)

  if (final.cmd === undefined) add(final.line, final.cmdShellForm ? 'CMD in shell form: use the exec form so node gets SIGTERM' : 'no CMD')
  else if (final.cmd[0] !== 'node') add(final.line, `CMD should start node directly (got ${final.cmd.join(' ')})`)
  if (final.entrypoint) add(final.line, 'ENTRYPOINT is set: release_command and `docker run IMAGE node dist/cli.js ...` expect none')

  const health = final.healthcheck
  if (health === undefined || health.none) add(final.line, 'the runtime stage has no HEALTHCHECK')
  else if (health.command === undefined) add(health.line, 'HEALTHCHECK CMD in shell form: use the exec form')
  else {
    if (/\b(curl|wget)\b/.test(health.command.join(' '))) add(health.line, 'HEALTHCHECK uses curl/wget, which slim images lack: use node -e with fetch')
    if (!health.command.join(' ').includes('/health')) add(health.line, 'HEALTHCHECK should request /health')
  }

  if (final.env.HOST !== '0.0.0.0') add(final.line, 'set ENV HOST=0.0.0.0 in the runtime stage (the server listens on loopback by default)')
  const dataDir = final.env.DATA_DIR
  if (dataDir === undefined) add(final.line, 'set ENV DATA_DIR to a volume path for the embedded database')
  else if (!final.volumes.includes(dataDir)) add(final.line, `DATA_DIR ${dataDir} is not declared as a VOLUME`)
  const port = final.env.PORT
  if (port === undefined || !final.exposed.some((exposed) => exposed.split('/')[0] === port)) add(final.line, 'EXPOSE the PORT set in ENV')
}

/** Entries the build context must leave out (local state, host builds, secrets) and files the build needs. */
const MUST_IGNORE = ['node_modules', 'node_modules/fastify/package.json', 'dist', 'dist/server.js', 'data', 'data/PG_VERSION', '.env', '.git']
const MUST_KEEP = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'server.ts', 'db/migrations/001_init.sql']

export function lintDockerignore (text: string, file = '.dockerignore'): Problem[] {
  const rules = dockerignore().add(text.split(/\r?\n/))
  const problems: Problem[] = []
  for (const path of MUST_IGNORE) {
    if (!rules.ignores(path)) problems.push({ file, line: 0, message: `${path} must be excluded from the build context` })
  }
  for (const path of MUST_KEEP) {
    if (rules.ignores(path)) problems.push({ file, line: 0, message: `${path} is needed by the build but excluded` })
  }
  return problems
}

function main (): void {
  const root = resolve(fileURLToPath(new URL('..', import.meta.url)))
  const problems = [
    ...lintDockerfile(readFileSync(resolve(root, 'Dockerfile'), 'utf8')),
    ...lintDockerignore(readFileSync(resolve(root, '.dockerignore'), 'utf8'))
  ]
  for (const problem of problems) process.stderr.write(`${problem.file}:${problem.line}: ${problem.message}\n`)
  if (problems.length > 0) {
    process.stderr.write(`Dockerfile lint: ${problems.length} problem(s)\n`)
    process.exit(1)
  }
  process.stdout.write('Dockerfile lint: ok (dockerfile-utils, project rules, .dockerignore)\n')
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) main()
