import { execFile, type ExecFileException } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'tap'
import { createContextStore, type Actor } from '../db/context-store.js'
import { testDatabase, testDatabaseUrlForEmptyDb } from './db-helper.js'

// The export and import commands as a person runs them (test/export-import.test.ts has the rest;
// apart, the two files run side by side, each well inside the suite's per-file limit).

const alice: Actor = { principal: 'user:alice', client: 'claude-code' }
const root = fileURLToPath(new URL('..', import.meta.url))

async function cli (env: Record<string, string>, args: string[], stdinFile?: string): Promise<{ code: number, stdout: string, stderr: string }> {
  const command = stdinFile === undefined ? undefined : `exec "${process.execPath}" --import tsx cli.ts ${args.join(' ')} < "${stdinFile}"`
  return await new Promise((resolve) => {
    const options = { cwd: root, env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env }, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' as const }
    const done = (error: ExecFileException | null, stdout: string, stderr: string) => resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr })
    if (command === undefined) execFile(process.execPath, ['--import', 'tsx', 'cli.ts', ...args], options, done)
    else execFile('/bin/sh', ['-c', command], options, done)
  })
}

test('cli: export to stdout, import from stdin, conflicts exit 3, a bad line exits 1 naming it', async (t) => {
  t.setTimeout(150_000) // each command is a new Node process
  const source = await testDatabase(t)
  const store = createContextStore(source.sql, { maxContentBytes: 100_000 })
  await store.write('team', 'a', 'alpha', { tags: ['x'] }, alice)
  await store.write('team', 'b', 'beta', {}, alice)
  await store.write('other', 'c', 'gamma', {}, alice)
  const dir = await mkdtemp(join(tmpdir(), 'scm-backup-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  const exported = await cli({ DATABASE_URL: source.url }, ['export', '--namespace', 'team'])
  t.equal(exported.code, 0, exported.stderr)
  const lines = exported.stdout.trimEnd().split('\n').map((line) => JSON.parse(line) as { type: string, namespace?: string })
  t.match(lines[0], { type: 'header', namespace: 'team' }, 'stdout holds only the backup')
  t.same(lines.filter((line) => line.type === 'entry').map((line) => line.namespace), ['team', 'team'], 'only the namespace asked for')
  t.match(exported.stderr, /Exported 2 entries with 2 versions/)
  const backup = join(dir, 'backup.ndjson')
  await writeFile(backup, exported.stdout)

  const target = await testDatabase(t)
  const imported = await cli({ DATABASE_URL: target.url }, ['import'], backup)
  t.equal(imported.code, 0, imported.stderr)
  t.match(imported.stdout, /Imported 2 entries with 2 versions; 0 were there already/)
  t.notMatch(imported.stderr, /\r/, 'no progress bar when stderr is not a terminal')

  await createContextStore(target.sql, { maxContentBytes: 100_000 }).write('team', 'a', 'changed here', {}, alice)
  const conflicted = await cli({ DATABASE_URL: target.url }, ['import'], backup)
  t.equal(conflicted.code, 3, 'exit 3 when keys conflict')
  t.match(conflicted.stderr, /conflict, line 2: "a" in namespace "team": the database has version 2 \(readable\), the backup version 1 \(readable\); left as it is/)
  t.match(conflicted.stdout, /Imported 0 entries .* 1 were there already, unchanged; 1 conflicts/)

  const bad = join(dir, 'bad.ndjson')
  await writeFile(bad, (await readFile(backup, 'utf8')).replace('"key":"b"', '"key":"b?"'))
  const refused = await cli({ DATABASE_URL: target.url }, ['import'], bad)
  t.equal(refused.code, 1)
  t.match(refused.stderr, /^Import stopped: line 4: \/key: /m)

  const usage = await cli({ DATABASE_URL: target.url }, ['export', '--bogus'])
  t.equal(usage.code, 2)
  t.match(usage.stderr, /Usage/)
})

test('cli export never migrates: a database without a migration of this build, or with one it does not ship, is refused', async (t) => {
  t.setTimeout(150_000) // each command is a new Node process
  const { url, sql } = await testDatabase(t)
  await createContextStore(sql, { maxContentBytes: 100_000 }).write('team', 'a', 'alpha', {}, alice)
  const versions = async () => (await sql<Array<{ version: number }>>`select version from schema_migrations order by version`).map((row) => row.version)
  const [second] = await sql<[{ name: string, checksum: string }]>`select name, checksum from schema_migrations where version = 2`
  const withoutSecond = (await versions()).filter((version) => version !== 2)

  await sql`delete from schema_migrations where version = 2`
  const older = await cli({ DATABASE_URL: url }, ['export'])
  t.equal(older.code, 1, 'exit 1')
  t.equal(older.stdout, '', 'no backup written')
  t.match(older.stderr, /^Export refused: the database does not match this build's schema: it lacks migration 002 of this build \(its schema is older/m)
  t.same(await versions(), withoutSecond, 'and export did not migrate it')

  await sql`insert into schema_migrations (version, name, checksum) values (2, ${second.name}, ${second.checksum}), (999, 'from_a_newer_build', 'x')`
  const newer = await cli({ DATABASE_URL: url }, ['export'])
  t.equal(newer.code, 1, 'exit 1')
  t.equal(newer.stdout, '')
  t.match(newer.stderr, /^Export refused: .*it has migration 999, which this build does not ship/m)

  await sql`delete from schema_migrations where version = 999`
  const matching = await cli({ DATABASE_URL: url }, ['export'])
  t.equal(matching.code, 0, `the same database with exactly this build's migrations exports: ${matching.stderr}`)
  t.match(matching.stderr, /Exported 1 entries with 1 versions/)
  t.notMatch(matching.stderr, /applied migration/)

  const dir = await mkdtemp(join(tmpdir(), 'scm-backup-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const backup = join(dir, 'backup.ndjson')
  await writeFile(backup, matching.stdout)
  const empty = await testDatabaseUrlForEmptyDb(t)
  const imported = await cli({ DATABASE_URL: empty.url }, ['import'], backup)
  t.equal(imported.code, 0, `import into a database never migrated: ${imported.stderr}`)
  t.match(imported.stderr, /applied migration 001_init\.sql/, 'import migrates it first')
  t.equal((await createContextStore(empty.sql, { maxContentBytes: 100_000 }).read('team', 'a'))?.content, 'alpha')
})
