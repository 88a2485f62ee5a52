import { createHash } from 'node:crypto'
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'tap'
import { createSql } from '../../db/connect.js'
import { migrate, MigrationChecksumError, MIGRATION_LOCK_KEY } from '../../db/migrate.js'
import { ON_PGLITE, testDatabaseUrlForEmptyDb } from '../db-helper.js'

const migrationsDir = fileURLToPath(new URL('../../db/migrations/', import.meta.url))

interface MigrationRow { version: number, name: string, checksum: string }

// The migrations this build ships, in order: every test expects each of them applied exactly once.
const SHIPPED = (await readdir(migrationsDir)).filter((file) => /^\d+_[A-Za-z0-9_-]+\.sql$/.test(file)).sort()
const SHIPPED_VERSIONS = SHIPPED.map((file) => Number(file.split('_')[0]))
/** File names for migrations after every shipped one. */
const AFTER_SHIPPED = Math.max(...SHIPPED_VERSIONS) + 1
const laterFile = (offset: number, name: string) => `${String(AFTER_SHIPPED + offset).padStart(3, '0')}_${name}.sql`

test('migrate applies, is idempotent, takes new files and guards applied ones', async (t) => {
  const { sql } = await testDatabaseUrlForEmptyDb(t)
  const scratch = await mkdtemp(join(tmpdir(), 'scm-migrations-'))
  t.teardown(async () => { await rm(scratch, { recursive: true, force: true }) })
  const logged: string[] = []

  t.ok(SHIPPED.length >= 4 && SHIPPED[0] === '001_init.sql', 'the shipped migrations are found')
  t.same(await migrate(sql, { log: (msg) => logged.push(msg) }), { applied: SHIPPED })
  t.match(logged, SHIPPED.map((file) => new RegExp(file.replace('.', '\\.'))))
  const tables = await sql<{ table_name: string }[]>`
    select table_name from information_schema.tables where table_schema = 'public' order by table_name`
  t.same(tables.map(row => row.table_name), ['api_tokens', 'context_entries', 'context_history', 'context_search', 'context_tags', 'gateway_approvals', 'gateway_calls', 'gateway_state_keys', 'gateway_used_states', 'oauth_grant_bindings', 'oauth_keys', 'oauth_owner', 'oauth_payloads', 'revoked_jtis', 'schema_migrations', 'search_settings', 'search_terms'])
  const original = await readFile(join(migrationsDir, '001_init.sql'), 'utf8')
  const recorded = await sql<MigrationRow[]>`select version, name, checksum from schema_migrations order by version`
  t.same(recorded[0], { version: 1, name: 'init', checksum: createHash('sha256').update(original).digest('hex') })
  t.same(recorded.map(row => [row.version, row.name]).slice(0, 4), [[1, 'init'], [2, 'expiry_index'], [3, 'api_token_global_admin'], [4, 'oauth']])
  t.same(recorded.map(row => row.version), SHIPPED_VERSIONS)

  t.same(await migrate(sql), { applied: [] }, 'a second run applies nothing')

  await cp(migrationsDir, scratch, { recursive: true })
  await writeFile(join(scratch, laterFile(0, 'notes')), 'create table notes (id int primary key);\ninsert into notes values (1);\n')
  await writeFile(join(scratch, 'README.md'), 'not a migration')
  t.same(await migrate(sql, { dir: scratch }), { applied: [laterFile(0, 'notes')] }, 'only the new file runs, several statements at once')
  t.same(await sql`select id from notes`, [{ id: 1 }])

  await rm(join(scratch, '001_init.sql'))
  t.same(await migrate(sql, { dir: scratch }), { applied: [] }, 'an applied migration missing from disk is fine')

  await writeFile(join(scratch, '001_init.sql'), original.replace(/\n/g, '\r\n'))
  t.same(await migrate(sql, { dir: scratch }), { applied: [] }, 'CRLF line endings are no change')

  await writeFile(join(scratch, '001_init.sql'), original + '\n-- edited later\n')
  await writeFile(join(scratch, laterFile(1, 'more')), 'create table more (id int);\n')
  const error = await migrate(sql, { dir: scratch }).then(() => null, (err: unknown) => err)
  t.ok(error instanceof MigrationChecksumError, 'a changed applied migration is refused')
  t.match((error as Error).message, /001_init\.sql.*changed.*new migration/s)
  t.same((await sql<MigrationRow[]>`select version from schema_migrations order by version`).map(row => row.version), [...SHIPPED_VERSIONS, AFTER_SHIPPED],
    'nothing applied after the checksum error')
})

test('four instances migrating one empty database at once each apply every file once', async (t) => {
  const { url } = await testDatabaseUrlForEmptyDb(t)
  const instances = Array.from({ length: 4 }, () => createSql(url, { max: 2, connectTimeoutMs: 10_000 }))
  t.teardown(async () => { await Promise.all(instances.map(async (sql) => { await sql.end({ timeout: 5 }) })) })

  const results = await Promise.all(instances.map(async (sql) => await migrate(sql)))
  t.same(results.flatMap(result => result.applied).sort(), SHIPPED, 'each file applied by exactly one instance')
  const first = instances[0]
  if (first === undefined) throw new Error('no instance')
  t.same(await first`select version from schema_migrations order by version`, SHIPPED_VERSIONS.map((version) => ({ version })))
  t.same(await first`select count(*) as count from context_entries`, [{ count: 0 }], 'all instances find the schema')
})

test('a migrator waits for the lock only as long as lockTimeoutMs', { skip: ON_PGLITE ? 'PGlite has one backend: a held lock blocks every connection, not just migrators' : false }, async (t) => {
  const { sql, url } = await testDatabaseUrlForEmptyDb(t)
  const holder = createSql(url, { max: 1, connectTimeoutMs: 10_000 })
  t.teardown(async () => { await holder.end({ timeout: 5 }) })
  const connection = await holder.reserve()
  await connection`begin`
  await connection`select pg_advisory_xact_lock(${MIGRATION_LOCK_KEY}::bigint)`

  await t.rejects(migrate(sql, { lockTimeoutMs: 300 }), { code: '55P03', message: /lock timeout/ }, 'PostgreSQL cancelled the wait at lock_timeout')
  const [held] = await sql<[{ count: number }]>`
    select count(*) as count from pg_locks
    where locktype = 'advisory' and granted and database = (select oid from pg_database where datname = current_database())`
  t.equal(held.count, 1, 'while the other holder still had the lock: the migrator gave up by itself')

  await connection`rollback`
  connection.release()
  t.same(await migrate(sql, { lockTimeoutMs: 300 }), { applied: SHIPPED }, 'goes ahead once the lock is free')
})
