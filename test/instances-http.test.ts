import { readdir } from 'node:fs/promises'
import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { test } from 'tap'
import { buildApp, loggerOptions } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabaseUrlForEmptyDb } from './db-helper.js'
import { TEST_TOKEN, toolErrorOf, type ToolResult } from './helper.js'

let nextId = 1

/** One tools/call over real HTTP, as a 2025-era client sends it. */
async function callOver (base: string, name: string, args: Record<string, unknown>): Promise<ToolResult> {
  const response = await fetch(`${base}/mcp`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${TEST_TOKEN}` },
    body: JSON.stringify({ jsonrpc: '2.0', id: nextId++, method: 'tools/call', params: { name, arguments: args } })
  })
  const body = await response.json() as { result?: ToolResult }
  if (response.status !== 200 || body.result === undefined) throw new Error(`${name}: HTTP ${response.status} ${JSON.stringify(body)}`)
  return body.result
}

const errorCode = (result: ToolResult) => toolErrorOf(result)?.code

test('two instances on their own ports, one PostgreSQL: migrated once, each sees the other\'s writes, compare-and-set holds across them', async (t) => {
  const { url, sql } = await testDatabaseUrlForEmptyDb(t)
  const config = loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, DB_POOL_MAX: '3', PORT: '0' })
  // What each instance says it migrated ("applied migration NNN_name.sql", from db/migrate.ts).
  const applied: string[][] = [[], []]
  const logTo = (into: string[]) => new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        const msg = line === '' ? undefined : (JSON.parse(line) as { msg?: unknown }).msg
        if (typeof msg === 'string' && msg.startsWith('applied migration ')) into.push(msg.slice('applied migration '.length))
      }
      done()
    }
  })
  // Started together on the empty database, so both race to migrate it.
  const apps: FastifyInstance[] = await Promise.all(applied.map((into) => buildApp(config, { logger: { ...loggerOptions('info', false), stream: logTo(into) } })))
  t.teardown(() => Promise.all(apps.map((app) => app.close())))
  const [one, two] = await Promise.all(apps.map((app) => app.listen({ host: '127.0.0.1', port: 0 })))
  if (one === undefined || two === undefined) throw new Error('instances missing')
  t.not(new URL(one).port, new URL(two).port, `two ports: ${one} and ${two}`)

  const migrationFiles = (await readdir(new URL('../db/migrations/', import.meta.url))).filter((file) => /^\d+_.+\.sql$/.test(file)).sort()
  t.ok(migrationFiles.length >= 2, `${migrationFiles.length} migrations shipped`)
  t.same([...applied[0] ?? [], ...applied[1] ?? []].sort(), migrationFiles, `each migration applied by exactly one instance (one: ${applied[0]?.join(', ') || 'none'}; two: ${applied[1]?.join(', ') || 'none'})`)
  const recorded = await sql<Array<{ version: number }>>`select version from schema_migrations order by version`
  t.same(recorded.map((row) => row.version), migrationFiles.map((file) => Number(file.split('_')[0])), 'and recorded')
  const tables = await sql`select 1 from information_schema.tables where table_name = 'context_entries'`
  t.equal(tables.length, 1, 'the schema exists once')

  const written = await callOver(one, 'write_context', { key: 'shared/plan', content: 'from instance one', tags: ['plan'] })
  t.match(written.structuredContent, { version: 1, action: 'created' })
  const read = await callOver(two, 'read_context', { key: 'shared/plan' })
  t.match(read.structuredContent, { content: 'from instance one', version: 1, tags: ['plan'] }, 'instance two reads what one wrote')
  const listed = await callOver(two, 'list_context', { prefix: 'shared/' })
  t.same((listed.structuredContent.items as Array<{ key: string }>).map((item) => item.key), ['shared/plan'])

  // Both read version 1; one writes first, the other's write on version 1 must fail.
  t.match((await callOver(two, 'write_context', { key: 'shared/plan', content: 'two wins', expected_version: 1 })).structuredContent, { version: 2 })
  const stale = await callOver(one, 'write_context', { key: 'shared/plan', content: 'one is stale', expected_version: 1 })
  t.equal(errorCode(stale), 'CTX_2002', 'a stale compare-and-set through the other instance is a conflict')
  t.equal(toolErrorOf(stale)?.current_version, 2, 'naming the current version')
  const createOnly = await callOver(one, 'write_context', { key: 'shared/plan', content: 'again', expected_version: 0 })
  t.equal(errorCode(createOnly), 'CTX_2002', 'create-only on a key the other instance created is a conflict')

  // Ten writers at once, alternating instances, all expecting version 2: exactly one may win.
  const racers = await Promise.all(Array.from({ length: 10 }, (_, index) =>
    callOver(index % 2 === 0 ? one : two, 'write_context', { key: 'shared/plan', content: `racer ${index}`, expected_version: 2 })))
  const winners = racers.filter((result) => result.isError !== true)
  t.equal(winners.length, 1, 'one racer wins')
  t.equal(racers.filter((result) => errorCode(result) === 'CTX_2002').length, 9, 'the other nine get CTX_2002')
  const final = await callOver(two, 'read_context', { key: 'shared/plan' })
  t.match(final.structuredContent, { version: 3 })
  const history = await sql`select version from context_history where key = 'shared/plan' order by version`
  t.same(history.map((row) => row.version), [1, 2, 3], 'history: one row per version, no lost or doubled write')

  const deleted = await callOver(one, 'delete_context', { key: 'shared/plan', expected_version: 3 })
  t.match(deleted.structuredContent, { deleted_version: 3 })
  t.equal(errorCode(await callOver(two, 'read_context', { key: 'shared/plan' })), 'CTX_2001', 'a delete through one is seen by the other')
})
