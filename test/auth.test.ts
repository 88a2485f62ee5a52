import { test } from 'tap'
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
    t.match(String(response.headers['www-authenticate']), /^Bearer realm="shared-context-mcp", error="invalid_token"/)
  }

  for (const authorization of [`Basic ${TEST_TOKEN}`, 'Bearer', `Bearer ${TEST_TOKEN} extra`, '']) {
    const response = await app.inject({ method: 'POST', url: '/mcp', headers: { authorization, 'content-type': 'application/json' }, payload: { jsonrpc: '2.0', id: 1, method: 'tools/list' } })
    t.equal(response.statusCode, 401, `"${authorization.slice(0, 20)}" is refused`)
    t.equal(response.json().error.code, 'AUTH_1001')
    t.match(String(response.headers['www-authenticate']), /^Bearer /)
  }
})
