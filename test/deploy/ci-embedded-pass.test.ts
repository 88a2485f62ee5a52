import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'tap'
import { backendTestFiles, embeddedPassFiles } from '../../scripts/embedded-pass-tests.js'

const root = fileURLToPath(new URL('../..', import.meta.url))
const all = readdirSync(join(root, 'test'), { recursive: true, encoding: 'utf8' }).filter((path) => path.endsWith('.test.ts')).map((path) => `test/${path}`)

test('the files that use the test database or Redis are found, through the helpers too', async (t) => {
  const backend = backendTestFiles(root)
  const usesBackend = all.filter((file) => /from '(\.\.?\/)+(db-helper|helper|tools\/helpers)\.js'|process\.env\.(TEST_DATABASE_URL|REDIS_URL)/.test(readFileSync(join(root, file), 'utf8')))
  t.ok(usesBackend.length > 20, `the check finds them (${usesBackend.length})`)
  t.strictSame(usesBackend.filter((file) => !backend.includes(file)), [], 'every file that builds an app or a test database, or reads the variables, is found')
  for (const file of ['test/db/embedded.test.ts', 'test/server-embedded.test.ts', 'test/auth/jwt.test.ts']) {
    t.notOk(backend.includes(file), `${file} uses neither`)
  }
})

test('CI\'s embedded pass gets every store\'s SQL, search, the migrations and the files that branch on the backend', async (t) => {
  const embedded = embeddedPassFiles(root)
  const backend = backendTestFiles(root)
  t.strictSame(embedded.filter((file) => !backend.includes(file)), [], 'only files whose outcome can depend on the backend')
  const storeLevel = backend.filter((file) => file.startsWith('test/db/') || file.startsWith('test/tools/') || file.endsWith('-store.test.ts'))
  t.ok(storeLevel.length > 15, `the store-level files are found (${storeLevel.length})`)
  t.strictSame(storeLevel.filter((file) => !embedded.includes(file)), [], 'every store-level file is on it')
  const branching = backend.filter((file) => readFileSync(join(root, file), 'utf8').includes('ON_PGLITE'))
  t.strictSame(branching.filter((file) => !embedded.includes(file)), [], 'every file that behaves differently on PGlite is on it')
  for (const file of ['test/tools/search-context.test.ts', 'test/db/search-migration.test.ts', 'test/db/migrate.test.ts', 'test/oauth/sdk-flow.test.ts', 'test/export-import.test.ts']) {
    t.ok(embedded.includes(file), `${file} is on it`)
  }
  t.notOk(embedded.includes('test/oauth/cli.test.ts'), 'a file above the stores runs once, on PostgreSQL')
})

test('CI runs the whole suite on PostgreSQL and Redis, then the embedded pass', async (t) => {
  const ci = readFileSync(join(root, '.ci/run'), 'utf8')
  t.match(ci, /run_suite "PostgreSQL and Redis" none "" TEST_DATABASE_URL=/, 'every file, nothing skipped')
  t.match(ci, /scripts\/embedded-pass-tests\.ts/, 'the embedded pass takes the script\'s files')
})
