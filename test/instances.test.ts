import { readdir } from 'node:fs/promises'
import { test } from 'tap'
import { buildApp } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabaseUrlForEmptyDb } from './db-helper.js'
import { callTool, TEST_TOKEN, toolErrorOf } from './helper.js'

test('four app instances started at once on one empty database: schema applied once, all serve the same data', async (t) => {
  const { url, sql } = await testDatabaseUrlForEmptyDb(t)
  const config = loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent', DB_POOL_MAX: '2' })
  const apps = await Promise.all(Array.from({ length: 4 }, async () => {
    const app = await buildApp(config)
    await app.ready()
    return app
  }))
  t.teardown(() => Promise.all(apps.map((app) => app.close())))

  const shipped = (await readdir(new URL('../db/migrations/', import.meta.url))).filter((file) => /^\d+_.+\.sql$/.test(file)).sort()
  t.same(await sql`select version from schema_migrations order by version`, shipped.map((file) => ({ version: Number(file.split('_')[0]) })), 'each migration recorded once')
  const [first, second, third] = apps
  if (first === undefined || second === undefined || third === undefined) throw new Error('instances missing')
  t.equal((await callTool(first, 'write_context', { key: 'shared', content: 'from one' })).structuredContent.version, 1)
  t.equal((await callTool(second, 'read_context', { key: 'shared' })).structuredContent.content, 'from one', 'read through another instance')
  const conflict = await callTool(third, 'write_context', { key: 'shared', content: 'stale', expected_version: 0 })
  t.equal(toolErrorOf(conflict)?.code, 'CTX_2002', 'compare-and-set holds across instances')
})
