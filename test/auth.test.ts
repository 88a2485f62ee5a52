import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { buildApp } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { build, rpc, TEST_TOKEN } from './helper.js'

test('bearer tokens: only the exact token passes, whatever the length of what is presented', async (t) => {
  const app = await build(t)
  t.equal((await rpc(app, 'tools/list')).statusCode, 200, 'the exact token')

  const wrong = [
    TEST_TOKEN.slice(0, -1), // a prefix
    `${TEST_TOKEN}x`, // longer
    TEST_TOKEN.toUpperCase(),
    'x',
    'y'.repeat(4000)
  ]
  for (const token of wrong) {
    const response = await rpc(app, 'tools/list', {}, { token })
    t.equal(response.statusCode, 401, `${token.slice(0, 12)}… (${token.length} chars) is refused`)
    t.equal(response.json().error.code, 'AUTH_1002')
    t.match(String(response.headers['www-authenticate']), /^Bearer realm="shared-context-mcp", error="invalid_token"$/)
  }

  for (const authorization of [`Basic ${TEST_TOKEN}`, 'Bearer', `Bearer ${TEST_TOKEN} extra`, '']) {
    const response = await app.inject({ method: 'POST', url: '/mcp', headers: { authorization, 'content-type': 'application/json' }, payload: { jsonrpc: '2.0', id: 1, method: 'tools/list' } })
    t.equal(response.statusCode, 401, `"${authorization.slice(0, 20)}" is refused`)
    t.equal(response.json().error.code, 'AUTH_1001')
    t.match(String(response.headers['www-authenticate']), /^Bearer /)
  }
})

test('the local token: created once when none exists, again after it is revoked, once under a race', async (t) => {
  const app = await build(t, { AUTH_TOKEN: '' })
  const [first, second] = await Promise.all([app.auth.createLocalTokenIfNone(), app.auth.createLocalTokenIfNone()])
  const created = [first, second].filter((token) => token !== undefined)
  t.equal(created.length, 1, 'two instances racing create one token')
  t.equal((await rpc(app, 'tools/list', {}, { token: created[0] as string })).statusCode, 200, 'the created token works')
  t.equal(await app.auth.createLocalTokenIfNone(), undefined, 'none is created while one is active')

  t.ok(await app.db.tokens.revokeApiToken('local'))
  const replacement = await app.auth.createLocalTokenIfNone()
  t.type(replacement, 'string', 'a new local token after the old one was revoked')
  t.not(replacement, created[0])
})

test('refusing to start (public host, no auth) releases the embedded database it opened', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-refuse-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  await t.rejects(buildApp(loadConfig({ DATA_DIR: dataDir, HOST: '0.0.0.0', LOG_LEVEL: 'silent' })), /Refusing to start/)
  const app = await buildApp(loadConfig({ DATA_DIR: dataDir, AUTH_TOKEN: TEST_TOKEN, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  t.equal((await rpc(app, 'tools/list')).statusCode, 200, 'the same data folder opens again in this process')
})

test('withoutAuthentication (benchmarks only) is a build option, never the default', async (t) => {
  const { url } = await testDatabase(t)
  const config = loadConfig({ DATABASE_URL: url, AUTH_TOKEN: TEST_TOKEN, LOG_LEVEL: 'silent' })
  const open = await buildApp(config, { withoutAuthentication: true })
  t.teardown(() => open.close())
  const tokenless = await rpc(open, 'tools/call', { name: 'write_context', arguments: { key: 'bench', content: 'x' } }, { token: null })
  t.equal(tokenless.json().result.structuredContent.version, 1, 'served without a token')
  const guarded = await buildApp(config)
  t.teardown(() => guarded.close())
  t.equal((await rpc(guarded, 'tools/list', {}, { token: null })).statusCode, 401)
})
