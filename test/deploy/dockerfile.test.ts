import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { test } from 'tap'
import { buildContextFiles } from '../../scripts/check-image-steps.js'
import { finalStage, parseDockerfile } from '../../scripts/dockerfile-model.js'
import { lintDockerfile, lintDockerignore } from '../../scripts/lint-dockerfile.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
const dockerfile = readFileSync(`${root}Dockerfile`, 'utf8')
const dockerignore = readFileSync(`${root}.dockerignore`, 'utf8')

test('the Dockerfile and .dockerignore pass the lint', async (t) => {
  t.same(lintDockerfile(dockerfile), [])
  t.same(lintDockerignore(dockerignore), [])
})

test('the image: build stage compiles and prunes, runtime stage runs dist as a non-root user', async (t) => {
  const model = parseDockerfile(dockerfile)
  const [build] = model.stages
  const runs = build?.steps.flatMap((step) => step.keyword === 'RUN' ? [step.command] : []) ?? []
  t.same(runs, ['npm ci', 'npm run build && npm prune --omit=dev'])
  const final = finalStage(model)
  t.same(final.cmd, ['node', 'dist/server.js'])
  t.notOk(final.steps.some((step) => step.keyword === 'COPY' && step.from === undefined), 'the runtime stage takes nothing from the build context')
  t.ok(final.steps.some((step) => step.keyword === 'COPY' && step.sources.includes('/app/dist')), 'dist (with db/pglite-template.tar) is copied')
  t.equal(final.env.HOST, '0.0.0.0')
  t.equal(final.user, '1000:1000')
  t.same(final.volumes, [final.env.DATA_DIR])
  t.match(final.healthcheck?.command?.join(' '), /fetch\(.*\/health/)
})

test('the README states the Node version the image runs', async (t) => {
  const version = /^node:(\d+\.\d+\.\d+)-/.exec(finalStage(parseDockerfile(dockerfile)).image)?.[1]
  t.ok(version, 'the runtime image is node:X.Y.Z-…')
  t.match(readFileSync(`${root}README.md`, 'utf8'), `which the Docker image runs (${version ?? ''})`)
})

test('the lint catches what the production image must not do', async (t) => {
  const base = dockerfile
  const messages = (text: string) => lintDockerfile(text).map((problem) => problem.message).join('\n')
  t.match(messages(base.replace(/^ARG NODE_IMAGE=node:[\d.]+-/m, 'ARG NODE_IMAGE=node:26-')), /not pinned/)
  t.match(messages(base.replace('USER 1000:1000', 'USER root')), /is root/)
  t.match(messages(base.replace(/^USER .*$/m, '')), /runs as root/)
  t.match(messages(base.replace(/^HEALTHCHECK[\s\S]*?\n(?=\S)/m, 'HEALTHCHECK CMD curl -f http://127.0.0.1:3000/health || exit 1\n')), /shell form/)
  t.match(messages(base.replace(/^HEALTHCHECK[\s\S]*?\n(?=\S)/m, 'HEALTHCHECK CMD ["curl", "-f", "http://127.0.0.1:3000/health"]\n')), /curl/)
  t.match(messages(base.replace(/^HEALTHCHECK[\s\S]*?\n(?=\S)/m, '')), /no HEALTHCHECK/)
  t.match(messages(base.replace('CMD ["node", "dist/server.js"]', 'CMD node dist/server.js')), /shell form/)
  t.match(messages(base.replace('ENV NODE_ENV=production', 'ENV AUTH_TOKEN=changeme NODE_ENV=production')), /ENV AUTH_TOKEN/)
  t.match(messages(base.replace(' && npm prune --omit=dev', '')), /production dependencies only/)
  t.match(messages(base.replace('VOLUME ["/data"]', '')), /not declared as a VOLUME/)
  t.match(messages(base.replace('HOST=0.0.0.0 ', '')), /HOST=0.0.0.0/)
  t.match(messages('FROM node:26.12.1-bookworm-slim\nUSER node\nCMD ["node", "x.js"]\n'), /multi-stage/)
  t.match(messages(base.replace('COPY . .', 'COPY . .\nADD https://example.com/x.tgz /tmp/')), /not ADD/)
  t.match(messages(base.replace('RUN npm ci', 'RUN npm ci\nFROOM x')), /dockerfile-utils/)
})

test('.dockerignore lint and the build context', async (t) => {
  t.match(lintDockerignore('dist\n.env\n').map((problem) => problem.message).join('\n'), /node_modules must be excluded/)
  t.match(lintDockerignore(`${dockerignore}\n*.json\n`).map((problem) => problem.message).join('\n'), /package.json is needed/)
  const files = buildContextFiles(root, dockerignore)
  for (const needed of ['package.json', 'package-lock.json', 'tsconfig.build.json', 'server.ts', 'cli.ts', 'db/migrations/001_init.sql']) t.ok(files.includes(needed), `${needed} is in the build context`)
  t.notOk(files.some((file) => /^(node_modules|dist|data|test|\.git)\//.test(file) || file.startsWith('.env')), 'no host builds, local data, tests or secrets')
})
