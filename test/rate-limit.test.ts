import { test } from 'tap'
import { hashToken } from '../plugins/auth.js'
import { build, rpc } from './helper.js'

test('rate limits are per principal, with Retry-After and a REQ_1103 body', async (t) => {
  const app = await build(t, { RATE_LIMIT_PER_MINUTE: '3' })
  for (let i = 0; i < 3; i++) t.equal((await rpc(app, 'tools/list')).statusCode, 200, `call ${i + 1} passes`)
  const limited = await rpc(app, 'tools/list')
  t.equal(limited.statusCode, 429)
  t.equal(limited.json().error.code, 'REQ_1103')
  t.ok(Number(limited.headers['retry-after']) > 0, 'Retry-After is set')

  const otherToken = 'other-principal-token-0123456789abcdef0123'
  await app.db.store.insertApiToken({ name: 'other', hash: hashToken(otherToken).toString('hex'), namespace: 'default', scopes: ['context:read'] })
  t.equal((await rpc(app, 'tools/list', {}, { token: otherToken })).statusCode, 200, 'another principal from the same address is not limited')
})
