import { execFile } from 'node:child_process'
import { readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { test } from 'tap'

const root = fileURLToPath(new URL('..', import.meta.url))

async function build (): Promise<string> {
  const { stdout } = await promisify(execFile)('npm', ['run', 'build'], { cwd: root, maxBuffer: 10 * 1024 * 1024 })
  return stdout
}

function modifiedTimes (): Record<string, number> {
  const files = ['dist/server.js', 'dist/cli.js', 'dist/plugins/auth.js', 'dist/db/pglite-template.tar', 'dist/tsconfig.build.tsbuildinfo',
    ...readdirSync(join(root, 'db/migrations')).map((name) => `dist/db/migrations/${name}`)]
  return Object.fromEntries(files.map((file) => [file, statSync(join(root, file)).mtimeMs]))
}

test('a second `npm run build` with nothing changed rewrites nothing (so `npm start` starts at once)', async (t) => {
  await build() // brings dist/ up to date; CI has built already, so this is the no-op too
  const before = modifiedTimes()
  // A migration renamed or removed in the source must not live on in dist/, where the server would apply it.
  const stale = join(root, 'dist/db/migrations/998_renamed_since.sql')
  writeFileSync(stale, 'select 1;\n')
  const output = await build()
  t.strictSame(modifiedTimes(), before, 'the compiled files, the migrations and the PGlite template are left as they were')
  t.strictSame(readdirSync(join(root, 'dist/db/migrations')), readdirSync(join(root, 'db/migrations')), 'dist/ holds exactly the source\'s migrations')
  t.match(output, /pglite-template\.tar is current \(PGlite \d+\.\d+\.\d+/, 'the template is kept while the PGlite version is the same')
})

test('the PGlite template is made again when the installed PGlite is another version', async (t) => {
  await build()
  const stamp = join(root, 'dist/db/pglite-template.version')
  const version = readFileSync(stamp, 'utf8')
  const before = statSync(join(root, 'dist/db/pglite-template.tar')).mtimeMs
  writeFileSync(stamp, '0.0.1')
  // If the build failed before stamping, the next build must make the template again.
  t.teardown(() => { if (readFileSync(stamp, 'utf8') === '0.0.1') rmSync(stamp) })
  const output = await build()
  t.notMatch(output, 'is current')
  t.ok(statSync(join(root, 'dist/db/pglite-template.tar')).mtimeMs > before, 'a new template')
  t.equal(readFileSync(stamp, 'utf8'), version, 'stamped with the installed version')
})

test('`npm start` builds only when a source is newer than dist/', async (t) => {
  const prestart = async () => (await promisify(execFile)(process.execPath, ['scripts/build-if-stale.mjs'], { cwd: root, maxBuffer: 10 * 1024 * 1024 })).stdout
  await prestart() // up to date from here on
  const before = modifiedTimes()
  t.notMatch(await prestart(), /> shared-context-mcp@[\d.]+ build/, 'nothing changed: no build at all')
  t.strictSame(modifiedTimes(), before)

  const source = join(root, 'schema/errors.ts')
  const now = new Date()
  utimesSync(source, now, now) // an edit, as far as file times tell
  t.match(await prestart(), /> shared-context-mcp@[\d.]+ build/, 'a source newer than dist/: built')
  t.notMatch(await prestart(), /> shared-context-mcp@[\d.]+ build/, 'and then current again')
})

test('an edit under oauth/ alone is built: tsc -b looks only at the files tsconfig.build.json includes, prestart only at SOURCE_FOLDERS', async (t) => {
  const prestart = async () => (await promisify(execFile)(process.execPath, ['scripts/build-if-stale.mjs'], { cwd: root, maxBuffer: 10 * 1024 * 1024 })).stdout
  await prestart()
  const compiled = join(root, 'dist/oauth/pages.js')
  const before = statSync(compiled).mtimeMs
  const now = new Date()
  utimesSync(join(root, 'oauth/pages.ts'), now, now)
  t.match(await prestart(), /> shared-context-mcp@[\d.]+ build/, 'prestart builds')
  t.ok(statSync(compiled).mtimeMs > before, 'and tsc -b compiles the file again')
})
