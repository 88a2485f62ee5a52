import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'tap'
import { backendTestFiles } from '../../scripts/backend-tests.js'

const root = fileURLToPath(new URL('../..', import.meta.url))

test('CI\'s PostgreSQL + Redis pass gets every test file that uses the test database or Redis', async (t) => {
  const all = readdirSync(join(root, 'test'), { recursive: true, encoding: 'utf8' }).filter((path) => path.endsWith('.test.ts')).map((path) => `test/${path}`)
  const backend = backendTestFiles(root)
  const usesBackend = all.filter((file) => /from '(\.\.?\/)+(db-helper|helper|tools\/helpers)\.js'|process\.env\.(TEST_DATABASE_URL|REDIS_URL)/.test(readFileSync(join(root, file), 'utf8')))
  t.ok(usesBackend.length > 20, `the check finds them (${usesBackend.length})`)
  t.strictSame(usesBackend.filter((file) => !backend.includes(file)), [], 'every file that builds an app or a test database, or reads the variables, is on the list')
  for (const file of ['test/db/embedded.test.ts', 'test/server-embedded.test.ts', 'test/auth/jwt.test.ts']) {
    t.notOk(backend.includes(file), `${file} runs once: it uses neither`)
  }
  t.ok(backend.includes('test/db/migrate.test.ts') && backend.includes('test/redis.test.ts'), 'the files that skip without them are on it')
})
