import { test } from 'tap'
import { buildApp } from '../app.js'
import { oauthScopesOf, principalFromClaims, roleMapProblems } from '../auth/roles.js'
import { loadConfig } from '../schema/config.js'
import { mayUse, multiNamespacePrincipal, scopeNameProblem, singleNamespacePrincipal } from '../schema/principal.js'
import { testDatabase } from './db-helper.js'
import { callTool, rpc } from './helper.js'
import { runCli } from './process-helper.js'

test('scope names are an open set of domain:action names; under context: only the server\'s own', async (t) => {
  for (const name of ['context:read', 'context:admin', 'hr:read', 'finance:approve_invoices', 'approvals:decide', 'a1:b-2']) t.equal(scopeNameProblem(name), undefined, name)
  for (const name of ['context:everything', 'HR:read', 'hr', 'hr:', ':read', 'hr:read:all', 'hr read', `hr:${'x'.repeat(70)}`, 'openid']) t.type(scopeNameProblem(name), 'string', name)
  t.match(scopeNameProblem('context:wirte'), /unknown scope "context:wirte"; known scopes are context:read/)
})

test('context:admin and global admins cover the context scopes only', async (t) => {
  const admin = singleNamespacePrincipal('token:admin', 'team', ['context:admin'])
  t.ok(mayUse(admin, 'team', 'context:delete'))
  t.notOk(mayUse(admin, 'team', 'hr:read'), 'a namespace admin is not an HR user')
  const global = singleNamespacePrincipal('token:root', 'team', [], true)
  t.ok(mayUse(global, 'elsewhere', 'context:write'))
  t.notOk(mayUse(global, 'team', 'hr:write'), 'nor is a global admin')
  const hr = multiNamespacePrincipal('oidc:alice', new Map([['team', new Set(['hr:read', 'context:read'])]]), 'team', false)
  t.ok(mayUse(hr, 'team', 'hr:read'))
  t.notOk(mayUse(hr, 'team', 'hr:write'))
  t.notOk(mayUse(hr, 'other', 'hr:read'), 'granted in its namespace')
})

test('JWT_ROLE_MAP grants the gateway\'s scope names; the scope claim carries them when trusted', async (t) => {
  const roleMap = { 'hr-read': { scopes: ['context:read', 'hr:read'] }, 'hr-write': { scopes: ['hr:read', 'hr:write'], namespace: 'hr' } }
  t.same(roleMapProblems(JSON.stringify(roleMap)), [])
  t.doesNotThrow(() => loadConfig({ JWT_ROLE_MAP: JSON.stringify(roleMap), LOG_LEVEL: 'silent' }))
  const problems = roleMapProblems(JSON.stringify({ bad: { scopes: ['hr:read', 'Finance', 'context:everything'] } }))
  t.equal(problems.length, 2)
  t.match(problems[0], /role "bad" scopes\[1\]: "Finance" is not a scope name/)
  t.match(problems[1], /role "bad" scopes\[2\]: unknown scope "context:everything"/)

  const principal = principalFromClaims('oidc:alice', { realm_access: { roles: ['hr-read', 'hr-write'] } }, roleMap, 'default')
  t.same([...principal.grants.get('default') ?? []].sort(), ['context:read', 'hr:read'])
  t.same([...principal.grants.get('hr') ?? []].sort(), ['hr:read', 'hr:write'])
  t.ok(principal.scopes.has('hr:write'))

  t.same([...oauthScopesOf({ scope: 'openid profile hr:read context:read context:admin context:bogus' })].sort(), ['context:read', 'hr:read'],
    'OpenID scopes, context:admin and unknown context: names are never taken from the claim')
})

test('token create --scopes context:read,hr:read: the token carries hr:read', async (t) => {
  t.setTimeout(120_000)
  const { url } = await testDatabase(t)
  const env = { DATABASE_URL: url }
  const created = await runCli(env, 'token', 'create', '--name', 'hr-bot', '--scopes', 'context:read,hr:read')
  t.equal(created.code, 0, created.stderr)
  const token = /^(scm_\S+)$/m.exec(created.stdout)?.[1] as string
  t.match(created.stdout, /context:read, hr:read in namespace default only/)
  const onlyHr = await runCli(env, 'token', 'create', '--name', 'hr-only', '--scopes', 'hr:read')
  const hrOnlyToken = /^(scm_\S+)$/m.exec(onlyHr.stdout)?.[1] as string
  const bad = await runCli(env, 'token', 'create', '--name', 'typo', '--scopes', 'context:read,context:wirte,HR')
  t.equal(bad.code, 2)
  t.match(bad.stderr, /Unknown scope\(s\): unknown scope "context:wirte".*"HR" is not a scope name/)

  const app = await buildApp(loadConfig({ DATABASE_URL: url, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  await app.ready()
  const listed = (await rpc(app, 'tools/list', {}, { token })).json() as { result: { tools: Array<{ name: string }> } }
  t.ok(listed.result.tools.some((tool) => tool.name === 'read_context'), 'context:read still lists the read tools')
  t.notOk(listed.result.tools.some((tool) => tool.name === 'write_context'))
  const read = await callTool(app, 'read_context', { key: 'nothing-here' }, { token })
  t.match(read.content[0]?.text, /^CTX_2001/, 'context:read works as before')
  const written = await callTool(app, 'write_context', { key: 'k', content: 'x' }, { token })
  t.match(written.content[0]?.text, /^AUTH_1004/, 'hr:read is no context scope')
  const hrOnly = await rpc(app, 'tools/list', {}, { token: hrOnlyToken })
  t.equal(hrOnly.statusCode, 200, 'a token with only a gateway scope is accepted')
  t.same((hrOnly.json() as { result: { tools: unknown[] } }).result.tools, [], 'and sees no context tool')
})
