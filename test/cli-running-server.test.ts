import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { openSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'tap'
import { createSql } from '../db/connect.js'
import { SOCKET_URL } from '../db/embedded.js'
import { callToolOverHttp, runCli, servingUrl, startServer, waitFor } from './process-helper.js'

// The CLI next to a running server on the embedded database (its own file: it starts a server and eight CLI processes).

const root = fileURLToPath(new URL('..', import.meta.url))

/** The CLI with a file as its stdin (import). */
async function cliWithStdin (env: Record<string, string>, stdinFile: string, ...args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'cli.ts', ...args], { cwd: root, env: { PATH: process.env.PATH ?? '', ...env }, stdio: [openSync(stdinFile, 'r'), 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const [code] = await once(child, 'exit') as [number | null]
  return { code, stdout, stderr }
}

test('cli with the embedded database while its server runs: every admin command goes through the server\'s socket', async (t) => {
  t.setTimeout(170_000)
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-cli-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const server = startServer({ DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'warn', AUTH_CACHE_SECONDS: '0' })
  t.teardown(() => server.child.kill('SIGKILL'))
  await waitFor(server, (output) => output.includes('claude mcp add'))
  const url = servingUrl(server)
  const env = { DATA_DIR: dataDir }

  const created = await runCli(env, 'token', 'create', '--name', 'while-running')
  t.equal(created.code, 0, created.stderr)
  t.match(created.stderr, /in use by a running server .*using its database through/)
  const token = /^(scm_\S+)$/m.exec(created.stdout)?.[1] as string
  const written = await callToolOverHttp(url, token, 'write_context', { key: 'from-mcp', content: 'written through /mcp' })
  t.equal(written.status, 200, 'the new token authenticates against the running server')
  t.notOk(written.body.result?.isError)

  const listed = await runCli(env, 'token', 'list')
  t.equal(listed.code, 0, listed.stderr)
  t.match(listed.stdout, /^while-running\tdefault\t/m)

  const exported = await runCli(env, 'export')
  t.equal(exported.code, 0, exported.stderr)
  t.match(exported.stdout, /"key":"from-mcp".*"content":"written through \/mcp"/)

  const backup = join(dataDir, '..', `${dataDir.split('/').at(-1) ?? 'x'}.ndjson`)
  t.teardown(() => rm(backup, { force: true }))
  await writeFile(backup, exported.stdout.replaceAll('"key":"from-mcp"', '"key":"imported"'))
  const imported = await cliWithStdin(env, backup, 'import')
  t.equal(imported.code, 0, imported.stderr)
  t.match(imported.stdout, /Imported 1 entries/)
  const read = await callToolOverHttp(url, token, 'read_context', { key: 'imported' })
  t.equal(read.body.result?.structuredContent.content, 'written through /mcp', 'the imported entry is readable through /mcp')

  const jti = await runCli(env, 'token', 'revoke-jti', '--jti', 'jti-while-running', '--expires-at', '2099-01-01T00:00:00Z')
  t.equal(jti.code, 0, jti.stderr)
  const sql = createSql(SOCKET_URL, { max: 1, connectTimeoutMs: 5000, path: join(dataDir, 'postgres.sock') })
  t.teardown(() => sql.end())
  t.same(await sql`select jti from revoked_jtis`, [{ jti: 'jti-while-running' }], 'stored in the server\'s database')

  // A CLI built newer than the running server: the server's database lacks a migration of the CLI's build.
  const [newest] = await sql<[{ version: number, name: string, checksum: string }]>`delete from schema_migrations where version = (select max(version) from schema_migrations) returning version, name, checksum`
  const older = await runCli(env, 'token', 'list')
  t.equal(older.code, 1)
  t.match(older.stderr, new RegExp(`lacks this build's migration ${String(newest.version).padStart(3, '0')}_.*Restart it with this build`), 'refused with what to do, not a database error')
  await sql`insert into schema_migrations (version, name, checksum) values (${newest.version}, ${newest.name}, ${newest.checksum})`

  const migrated = await runCli(env, 'migrate')
  t.equal(migrated.code, 0, migrated.stderr)
  t.match(migrated.stdout, /up to date/)

  const revoked = await runCli(env, 'token', 'revoke', '--name', 'while-running')
  t.equal(revoked.code, 0, revoked.stderr)
  t.equal((await callToolOverHttp(url, token, 'read_context', { key: 'imported' })).status, 401, 'the revoked token is refused (AUTH_CACHE_SECONDS=0)')

  server.child.kill('SIGTERM')
  t.equal(await server.exited, 0, 'the server was never disturbed and exits cleanly')
})

test('cli export against a running server: a reader that stalls does not stall the server', async (t) => {
  t.setTimeout(170_000)
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-cli-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const server = startServer({ DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'warn' })
  t.teardown(() => server.child.kill('SIGKILL'))
  await waitFor(server, (output) => output.includes('claude mcp add'))
  const url = servingUrl(server)
  const created = await runCli({ DATA_DIR: dataDir }, 'token', 'create', '--name', 'export-test')
  const token = /^(scm_\S+)$/m.exec(created.stdout)?.[1] as string
  // Far more than a pipe and the streams in between hold, so a direct export would block mid-transaction.
  for (let i = 0; i < 8; i++) {
    t.equal((await callToolOverHttp(url, token, 'write_context', { key: `big/${i}`, content: 'x'.repeat(90_000) })).status, 200)
  }

  const exporter = spawn(process.execPath, ['--import', 'tsx', 'cli.ts', 'export'], { cwd: root, env: { PATH: process.env.PATH ?? '', DATA_DIR: dataDir }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => exporter.kill('SIGKILL'))
  const exited = once(exporter, 'exit')
  const chunks: Buffer[] = [await once(exporter.stdout, 'data').then(([chunk]) => chunk as Buffer)]
  exporter.stdout.pause() // a reader that stops reading (| less, Ctrl-Z)

  const during = await callToolOverHttp(url, token, 'write_context', { key: 'during-export', content: 'still served' })
  t.equal(during.status, 200, 'the server answers a write while the export\'s reader stalls')
  t.equal(exporter.exitCode, null, 'and the export is still waiting for its reader')

  exporter.stdout.on('data', (chunk: Buffer) => chunks.push(chunk))
  exporter.stdout.resume()
  const [code] = await exited as [number | null]
  t.equal(code, 0)
  const lines = Buffer.concat(chunks).toString('utf8').trim().split('\n').map((line) => JSON.parse(line) as { type: string })
  t.equal(lines.filter((line) => line.type === 'entry').length, 8, 'every entry exported, whole')
  t.equal(lines.at(-1)?.type, 'end')
  server.child.kill('SIGTERM')
  t.equal(await server.exited, 0)
})
