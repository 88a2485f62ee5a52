import { test } from 'tap'
import { createTokenStore } from '../../db/token-store.js'
import { testDatabase } from '../db-helper.js'

test('token store', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createTokenStore(sql)

  t.test('api tokens', async (t) => {
    t.equal(await store.countActiveApiTokens(), 0)
    const token = await store.insertApiToken({ name: 'laptop', hash: 'h1', namespace: 'team', scopes: ['context:read', 'context:write'] })
    t.match(token, { name: 'laptop', namespace: 'team', scopes: ['context:read', 'context:write'] })
    t.match(token.id, /^[0-9a-f-]{36}$/)
    t.same(await store.findApiTokenByHash('h1'), { ...token, revoked: false })
    t.equal(await store.findApiTokenByHash('nope'), null)
    t.equal(await store.countActiveApiTokens(), 1)
    await t.rejects(store.insertApiToken({ name: 'laptop', hash: 'h2', namespace: 'team', scopes: [] }), { code: '23505' })

    await store.touchApiToken(token.id)
    const [touched] = await store.listApiTokens()
    t.ok(touched?.lastUsedAt, 'last_used_at set')
    await sql`update api_tokens set last_used_at = now() - interval '2 minutes' where id = ${token.id}`
    const before = (await store.listApiTokens())[0]?.lastUsedAt
    await store.touchApiToken(token.id)
    t.not((await store.listApiTokens())[0]?.lastUsedAt, before, 'touched again after the interval')

    t.equal(await store.revokeApiToken('laptop'), token.id, 'returns the revoked token\'s id')
    t.equal(await store.revokeApiToken('laptop'), null)
    t.same(await store.findApiTokenByHash('h1'), { ...token, revoked: true }, 'a revoked token is found as revoked')
    t.equal(await store.countActiveApiTokens(), 0)
  })

  t.test('revoked jtis', async (t) => {
    await store.revokeJti('jti-1', new Date(Date.now() + 60_000))
    await store.revokeJti('jti-old', new Date(Date.now() - 60_000))
    t.equal(await store.isJtiRevoked('jti-1'), true)
    t.equal(await store.isJtiRevoked('jti-2'), false)
    t.equal(await store.isJtiRevoked('jti-old'), false, 'expired revocations no longer matter')
    t.equal(await store.purgeExpiredJtis(), 1)
  })
})
