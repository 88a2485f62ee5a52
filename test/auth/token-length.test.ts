import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { test } from 'tap'
import { hashToken } from '../../plugins/auth.js'
import { build, rpc } from '../helper.js'

const LIMIT = 16 * 1024

/** A token of exactly `length` printable characters, random so that any echo of it shows. */
function tokenOf (length: number): string {
  return `scm_${randomBytes(length).toString('base64url')}`.slice(0, length)
}

/** How many API-token lookups the database has answered (the store's timing histogram counts each). */
async function tokenLookups (app: FastifyInstance): Promise<number> {
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
  const match = /^scm_db_operation_duration_seconds_count\{operation="findApiTokenByHash"\} (\d+)$/m.exec(text)
  if (match?.[1] === undefined) throw new Error('no findApiTokenByHash series in /metrics')
  return Number(match[1])
}

test(`a bearer token of ${LIMIT} characters is looked up; one of ${LIMIT + 1} is refused unread`, async (t) => {
  const app = await build(t, { AUTH_CACHE_SECONDS: '0' })

  const longest = tokenOf(LIMIT)
  await app.db.tokens.insertApiToken({ name: 'longest', hash: hashToken(longest).toString('hex'), namespace: 'default', scopes: ['context:read'] })
  let lookups = await tokenLookups(app)
  t.equal((await rpc(app, 'tools/list', {}, { token: longest })).statusCode, 200, `a stored token of exactly ${LIMIT} characters is accepted`)
  t.equal(await tokenLookups(app), lookups + 1, 'after a database lookup')

  const unknown = tokenOf(LIMIT)
  lookups = await tokenLookups(app)
  const notValid = await rpc(app, 'tools/list', {}, { token: unknown })
  t.equal(notValid.statusCode, 401)
  t.match(notValid.json(), { error: { code: 'AUTH_1002', message: /^The bearer token is not valid / } }, 'an unknown one gets the usual answer')
  t.equal(await tokenLookups(app), lookups + 1, 'after a database lookup')

  const tooLong = tokenOf(LIMIT + 1)
  lookups = await tokenLookups(app)
  const refused = await rpc(app, 'tools/list', {}, { token: tooLong })
  t.equal(refused.statusCode, 401)
  t.match(refused.json(), { error: { code: 'AUTH_1002', message: `The bearer token is longer than ${LIMIT} characters.` } }, 'one character more is refused, naming the limit')
  t.match(String(refused.headers['www-authenticate']), /error="invalid_token"$/)
  t.equal(await tokenLookups(app), lookups, 'without a database lookup')
  const storedTooLong = tokenOf(LIMIT + 1)
  await app.db.tokens.insertApiToken({ name: 'too-long', hash: hashToken(storedTooLong).toString('hex'), namespace: 'default', scopes: ['context:read'] })
  t.match((await rpc(app, 'tools/list', {}, { token: storedTooLong })).json(), { error: { code: 'AUTH_1002' } }, 'even when its hash is stored')

  for (const [response, token] of [[notValid, unknown], [refused, tooLong]] as const) {
    const echoed = Array.from({ length: token.length / 64 }, (_, index) => token.slice(index * 64, index * 64 + 64)).filter((part) => response.body.includes(part))
    t.equal(echoed.length, 0, 'the answer does not echo any part of the token')
  }
})
