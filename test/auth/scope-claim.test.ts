import { test } from 'tap'
import { loadConfig } from '../../schema/config.js'
import { build, callTool } from '../helper.js'
import { startOidcProvider } from '../oidc-provider.js'

const PUBLIC_URL = 'https://ctx.example.com'
const ROLE_MAP = JSON.stringify({ 'hr-write': { scopes: ['context:read', 'context:write'], namespace: 'hr' } })

test('JWT_TRUST_SCOPE_CLAIM: off by default, true or false only', async (t) => {
  t.equal(loadConfig({}).JWT_TRUST_SCOPE_CLAIM, 'false')
  t.equal(loadConfig({ JWT_TRUST_SCOPE_CLAIM: 'true' }).JWT_TRUST_SCOPE_CLAIM, 'true')
  t.throws(() => loadConfig({ JWT_TRUST_SCOPE_CLAIM: 'yes' }), /JWT_TRUST_SCOPE_CLAIM/)
})

test('a role-less JWT whose scope claim names context:write: refused by default, writes in default when the operator trusts the claim', async (t) => {
  const idp = await startOidcProvider({ audience: `${PUBLIC_URL}/mcp` })
  t.teardown(() => idp.close())
  const env = { PUBLIC_URL, OIDC_ISSUER: idp.issuer, JWT_ROLE_MAP: ROLE_MAP, ALLOWED_HOSTS: 'localhost' }
  // What an identity provider that grants any requested scope issues to anyone who can sign in.
  const scopeOnly = await idp.sign({ sub: 'mallory', realm_access: { roles: [] }, scope: 'openid context:read context:write' })
  const scpOnly = await idp.sign({ sub: 'mallory', realm_access: { roles: [] }, scp: ['context:write'] })

  const strict = await build(t, env)
  for (const token of [scopeOnly, scpOnly]) {
    const refused = await strict.inject({
      method: 'POST',
      url: '/mcp',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      payload: { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'write_context', arguments: { key: 'planted', content: 'x' } } }
    })
    t.equal(refused.statusCode, 403, 'by default the scope claim grants nothing: no grants at all')
    t.equal(refused.json().error.code, 'AUTH_1004')
    t.match(refused.json().error.message, /JWT_TRUST_SCOPE_CLAIM/, 'the refusal says how scope claims could count')
  }
  const roleHolder = await idp.sign({ sub: 'alice', realm_access: { roles: ['hr-write'] }, scope: 'context:delete' })
  const roleWrite = await callTool(strict, 'write_context', { key: 'policy', content: 'v1' }, { token: roleHolder })
  t.notOk(roleWrite.isError, 'a mapped role still grants')
  const deleteByScope = await callTool(strict, 'delete_context', { key: 'policy', namespace: 'default' }, { token: roleHolder })
  t.match(deleteByScope.content[0]?.text, /^AUTH_1004:/, 'context:delete from the scope claim is not granted')
  const [planted] = await strict.db.sql<[{ count: number }]>`select count(*) as count from context_entries where key = 'planted'`
  t.equal(planted.count, 0, 'nothing was written by the scope-only tokens')

  const trusting = await build(t, { ...env, JWT_TRUST_SCOPE_CLAIM: 'true' })
  const written = await callTool(trusting, 'write_context', { key: 'planted', content: 'x' }, { token: scopeOnly })
  t.notOk(written.isError, 'with JWT_TRUST_SCOPE_CLAIM=true the scope claim grants context:write')
  const [row] = await trusting.db.sql<[{ namespace: string, updated_by: string }]>`select namespace, updated_by from context_entries where key = 'planted'`
  t.same(row, { namespace: 'default', updated_by: 'oidc:mallory' }, 'in the default namespace')
  const admin = await idp.sign({ sub: 'mallory', realm_access: { roles: [] }, scope: 'context:admin context:read' })
  const escalated = await callTool(trusting, 'read_context', { key: 'policy', namespace: 'hr' }, { token: admin })
  t.match(escalated.content[0]?.text, /^AUTH_1004:/, 'context:admin is never taken from the scope claim, trusted or not')
})
