import { test } from 'tap'
import { buildApp } from '../app.js'
import { migrate } from '../db/migrate.js'
import { hashToken } from '../plugins/auth.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { callTool } from './helper.js'
import { runCli } from './process-helper.js'

const tokenIn = (stdout: string): string => {
  const token = /^(scm_\S+)$/m.exec(stdout)?.[1]
  if (token === undefined) throw new Error(`no token printed:\n${stdout}`)
  return token
}

test('admin means admin: --namespace X with context:admin is admin of X only, --global-admin of every namespace, and the CLI says which', async (t) => {
  t.setTimeout(120_000) // each command is a new Node process
  const { url } = await testDatabase(t)
  const env = { DATABASE_URL: url }

  const scoped = await runCli(env, 'token', 'create', '--name', 'ops-admin', '--namespace', 'ops', '--scopes', 'context:admin')
  t.equal(scoped.code, 0, scoped.stderr)
  t.match(scoped.stdout, /admin of namespace ops only/, 'the CLI says plainly that it is admin of one namespace')
  t.notMatch(scoped.stdout, /global admin/)
  const global = await runCli(env, 'token', 'create', '--name', 'root', '--global-admin')
  t.equal(global.code, 0, global.stderr)
  t.match(global.stdout, /global admin: every scope in every namespace/, 'and that this one is admin everywhere')
  const both = await runCli(env, 'token', 'create', '--name', 'x', '--global-admin', '--scopes', 'context:read')
  t.equal(both.code, 2, '--global-admin with --scopes is a usage error')

  const listed = await runCli(env, 'token', 'list')
  t.match(listed.stdout, /ops-admin\tops\tcontext:admin \(admin of namespace ops only/)
  t.match(listed.stdout, /root\tdefault\tcontext:admin \(global admin/)

  const app = await buildApp(loadConfig({ DATABASE_URL: url, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  await app.ready()
  const opsAdmin = { token: tokenIn(scoped.stdout) }
  const root = { token: tokenIn(global.stdout) }

  t.notOk((await callTool(app, 'write_context', { key: 'runbook', content: 'restart', ttl_seconds: 3600 }, opsAdmin)).isError, 'every scope in its own namespace')
  t.notOk((await callTool(app, 'delete_context', { key: 'runbook' }, opsAdmin)).isError)
  const escape = await callTool(app, 'write_context', { key: 'planted', content: 'x', namespace: 'hr' }, opsAdmin)
  t.match(escape.content[0]?.text, /^AUTH_1004:/, 'nothing in another namespace')
  t.match(escape.content[0]?.text, /namespace "hr"/)
  const elsewhere = await callTool(app, 'read_context', { key: 'planted', namespace: 'default' }, opsAdmin)
  t.match(elsewhere.content[0]?.text, /^AUTH_1004:/, 'not even reading')

  t.notOk((await callTool(app, 'write_context', { key: 'planted', content: 'x', namespace: 'hr' }, root)).isError, 'the global admin writes in any namespace')
  t.equal((await callTool(app, 'read_context', { key: 'planted', namespace: 'hr' }, root)).structuredContent.content, 'x')
  const [row] = await app.db.sql<[{ namespace: string }]>`select namespace from context_entries where key = 'planted'`
  t.equal(row.namespace, 'hr', 'only the global admin\'s write landed')
})

test('migration 003: API tokens that had context:admin before it stay global admins; others do not become one', async (t) => {
  const { sql } = await testDatabase(t)
  // Back to the schema of the previous release (001 and 002 applied), then its tokens, then the upgrade.
  await sql`alter table api_tokens drop column global_admin`
  await sql`delete from schema_migrations where version = 3`
  await sql`insert into api_tokens (name, hash, namespace, scopes) values
    ('old-admin', ${hashToken('a').toString('hex')}, 'team', '{context:admin}'),
    ('old-writer', ${hashToken('b').toString('hex')}, 'team', '{context:read,context:write}')`
  await migrate(sql)
  const rows = await sql<Array<{ name: string, global_admin: boolean }>>`select name, global_admin from api_tokens order by name`
  t.same(rows.map((r) => [r.name, r.global_admin]), [['old-admin', true], ['old-writer', false]])
})
