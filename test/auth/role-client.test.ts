import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { buildApp } from '../../app.js'
import { loadConfig } from '../../schema/config.js'
import { testDatabase } from '../db-helper.js'
import { rpc } from '../helper.js'
import { startOidcProvider, type OidcProvider } from '../oidc-provider.js'

const PUBLIC_URL = 'https://ctx.example.com'
const ROLE_MAP = JSON.stringify({ 'team-write': { scopes: ['context:read', 'context:write'], namespace: 'team' } })
const WRITER_TOOLS = ['read_context', 'write_context', 'append_context', 'list_context', 'search_context', 'context_history', 'restore_context', 'changes_since']

/** One database, one identity provider, and an app for each JWT_ROLE_CLIENT value (undefined: unset). */
async function setup (t: Test, roleClients: Array<string | undefined>): Promise<{ idp: OidcProvider, apps: FastifyInstance[] }> {
  const idp = await startOidcProvider({ audience: `${PUBLIC_URL}/mcp` })
  t.teardown(() => idp.close())
  const { url } = await testDatabase(t)
  const apps: FastifyInstance[] = []
  t.teardown(() => Promise.all(apps.map((app) => app.close())))
  for (const roleClient of roleClients) {
    const app = await buildApp(loadConfig({
      DATABASE_URL: url,
      LOG_LEVEL: 'silent',
      PUBLIC_URL,
      ALLOWED_HOSTS: 'localhost',
      OIDC_ISSUER: idp.issuer,
      JWT_ROLE_MAP: ROLE_MAP,
      ...(roleClient !== undefined && { JWT_ROLE_CLIENT: roleClient })
    }))
    apps.push(app)
    await app.ready()
  }
  return { idp, apps }
}

/** What /mcp lets the token do: its tool names, or the refusal's status and code. */
async function accessOf (app: FastifyInstance, token: string): Promise<string[] | string> {
  const response = await rpc(app, 'tools/list', {}, { token })
  if (response.statusCode !== 200) return `${response.statusCode} ${(response.json() as { error: { code: string } }).error.code}`
  return (response.json() as { result: { tools: Array<{ name: string }> } }).result.tools.map((tool) => tool.name)
}

test('JWT_ROLE_CLIENT: that client\'s resource_access roles count; the azp client\'s and other audiences\' do not', async (t) => {
  const { idp, apps: [named, unset] } = await setup(t, ['context-server', undefined])
  if (named === undefined || unset === undefined) throw new Error('apps missing')
  const noRealmRoles = { realm_access: { roles: ['offline_access'] } }

  const fromNamedClient = await idp.sign({ ...noRealmRoles, sub: 'alice', azp: 'mcp-client', resource_access: { 'context-server': { roles: ['team-write'] } } })
  t.strictSame(await accessOf(named, fromNamedClient), WRITER_TOOLS, 'roles under resource_access.<JWT_ROLE_CLIENT> count')
  const written = await rpc(named, 'tools/call', { name: 'write_context', arguments: { key: 'plan', content: 'ship it' } }, { token: fromNamedClient })
  t.equal((written.json() as { result: { structuredContent: { version: number } } }).result.structuredContent.version, 1)
  const [row] = await named.db.sql<[{ namespace: string, updated_by: string }]>`select namespace, updated_by from context_entries where key = 'plan'`
  t.strictSame(row, { namespace: 'team', updated_by: 'oidc:alice' }, 'in the role\'s namespace')

  const fromAzpClient = await idp.sign({ ...noRealmRoles, azp: 'mcp-client', resource_access: { 'mcp-client': { roles: ['team-write'] } } })
  t.equal(await accessOf(named, fromAzpClient), '403 AUTH_1004', 'roles under the token\'s azp client do not count when JWT_ROLE_CLIENT names another client')
  t.strictSame(await accessOf(unset, fromAzpClient), WRITER_TOOLS, 'the same token with JWT_ROLE_CLIENT unset: the azp client\'s roles count')
  t.equal(await accessOf(unset, fromNamedClient), '403 AUTH_1004', 'and with it unset, roles of a client that is not the azp do not')

  const fromOtherAudience = await idp.sign({
    ...noRealmRoles,
    aud: [idp.audience, 'account', 'context-server-admin'],
    azp: 'mcp-client',
    resource_access: { account: { roles: ['team-write'] }, 'context-server-admin': { roles: ['team-write'] } }
  })
  for (const [name, app] of [['JWT_ROLE_CLIENT set', named], ['JWT_ROLE_CLIENT unset', unset]] as const) {
    t.equal(await accessOf(app, fromOtherAudience), '403 AUTH_1004', `${name}: client roles of the token's other audiences never count`)
  }
})
