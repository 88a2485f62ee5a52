import { randomBytes } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { test, type Test as Tap } from 'tap'
import { hashToken } from '../plugins/auth.js'
import { build, TEST_TOKEN } from './helper.js'

// Tiers whose binding window differs: writers by the hour, readers by the minute.
const LIMITS = 'writer=3/h 100/m; reader=100/h 2/m; default=1000/h 60/m; ip=3/m'

/** Inserts an API token with these scopes (principal `token:<name>`) and returns the bearer token. */
async function addToken (app: FastifyInstance, name: string, scopes: string[]): Promise<string> {
  const token = `scm_rl_${name}_${randomBytes(16).toString('hex')}`
  await app.db.tokens.insertApiToken({ name, hash: hashToken(token).toString('hex'), namespace: 'default', scopes })
  return token
}

interface CallOptions { token?: string | null, address?: string, forwardedFor?: string }

/** A JSON-RPC ping to /mcp from a chosen client address. */
function ping (app: FastifyInstance, options: CallOptions = {}): Promise<LightMyRequestResponse> {
  const token = options.token === undefined ? TEST_TOKEN : options.token
  return app.inject({
    method: 'POST',
    url: '/mcp',
    remoteAddress: options.address ?? '127.0.0.1',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      ...(token !== null && { authorization: `Bearer ${token}` }),
      ...(options.forwardedFor !== undefined && { 'x-forwarded-for': options.forwardedFor })
    },
    payload: { jsonrpc: '2.0', id: 1, method: 'ping' }
  })
}

function assertRateLimited (t: Tap, response: LightMyRequestResponse, limit: number, what: string): number {
  t.equal(response.statusCode, 429, `${what}: 429`)
  t.equal(response.json().error.code, 'REQ_1103', `${what}: REQ_1103 body`)
  const retryAfter = Number(response.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1, `${what}: Retry-After in whole seconds (${String(response.headers['retry-after'])})`)
  t.equal(response.headers['ratelimit-limit'], String(limit), `${what}: RateLimit-Limit`)
  t.equal(response.headers['ratelimit-remaining'], '0', `${what}: RateLimit-Remaining`)
  t.equal(response.headers['ratelimit-reset'], String(retryAfter), `${what}: RateLimit-Reset matches Retry-After`)
  t.match(response.json().error.message, new RegExp(`retry in ${retryAfter} s`, 'i'), `${what}: the message says when to retry`)
  return retryAfter
}

test('per-principal limits by tier: burst per minute, sustained per hour, headers and REQ_1103', async (t) => {
  const app = await build(t, { RATE_LIMITS: LIMITS })
  const reader = await addToken(app, 'reader', ['context:read'])
  const writer = await addToken(app, 'writer', ['context:read', 'context:write'])
  const otherWriter = await addToken(app, 'other-writer', ['context:write'])

  const first = await ping(app, { token: reader })
  t.equal(first.statusCode, 200, 'reader call 1 passes')
  t.equal(first.headers['ratelimit-limit'], '2', 'success carries the tighter window: the reader burst of 2')
  t.equal(first.headers['ratelimit-remaining'], '1')
  t.ok(Number(first.headers['ratelimit-reset']) <= 60, 'the burst window resets within a minute')
  t.equal((await ping(app, { token: reader })).statusCode, 200, 'reader call 2 passes')
  const readerLimited = await ping(app, { token: reader })
  const readerRetry = assertRateLimited(t, readerLimited, 2, 'reader call 3')
  t.ok(readerRetry <= 60, 'a burst limit clears within the minute')
  t.match(readerLimited.json().error.message, /2 requests per minute for reader/, 'the message names the limit')

  for (let i = 1; i <= 3; i++) t.equal((await ping(app, { token: writer })).statusCode, 200, `writer call ${i} passes (writers are not held to the reader burst)`)
  const writerLimited = await ping(app, { token: writer })
  const writerRetry = assertRateLimited(t, writerLimited, 3, 'writer call 4')
  t.ok(writerRetry > 60 && writerRetry <= 3600, `the hourly limit clears within the hour, not the minute (${writerRetry} s)`)
  t.match(writerLimited.json().error.message, /3 requests per hour for writer/)

  t.equal((await ping(app, { token: otherWriter })).statusCode, 200, 'another principal of the same tier and address has its own counter')
  t.equal((await ping(app, { token: reader })).statusCode, 429, 'a limited principal stays limited')
})

test('without Redis, counters are per instance; RATE_LIMITS=off turns limiting off', async (t) => {
  const one = await build(t, { RATE_LIMITS: LIMITS })
  const two = await build(t, { RATE_LIMITS: LIMITS })
  const off = await build(t, { RATE_LIMITS: 'off' })
  t.equal(one.redis.status(), 'absent')
  // The same principal (token:shared) on each instance.
  const token = `scm_rl_shared_${randomBytes(16).toString('hex')}`
  for (const app of [one, two, off]) {
    await app.db.tokens.insertApiToken({ name: 'shared', hash: hashToken(token).toString('hex'), namespace: 'default', scopes: ['context:read'] })
  }
  t.equal((await ping(one, { token })).statusCode, 200)
  t.equal((await ping(one, { token })).statusCode, 200)
  t.equal((await ping(one, { token })).statusCode, 429, 'instance one has counted two calls')
  t.equal((await ping(two, { token })).statusCode, 200, 'instance two has its own counter')

  for (let i = 1; i <= 5; i++) {
    const response = await ping(off, { token })
    t.equal(response.statusCode, 200, `off: call ${i} passes`)
    t.equal(response.headers['ratelimit-limit'], undefined, 'off: no RateLimit headers')
  }
  for (let i = 0; i < 5; i++) t.equal((await ping(off, { token: 'wrong-token', address: '10.9.9.9' })).statusCode, 401)
  t.equal((await ping(off, { address: '10.9.9.9' })).statusCode, 200, 'off: failed attempts do not block an address')
})

test('an address that keeps failing authentication is refused before its token is looked up', async (t) => {
  const app = await build(t, { RATE_LIMITS: LIMITS })
  const address = '10.1.2.3'
  for (let i = 0; i < 5; i++) t.equal((await ping(app, { token: null, address })).statusCode, 401, 'a missing token (how OAuth clients start) does not count')
  t.equal((await ping(app, { token: 'first-invalid-token', address })).statusCode, 401, 'an unknown token counts')
  t.equal((await ping(app, { token: 'not-a-valid-token', address })).statusCode, 401, 'second failure')
  t.equal((await ping(app, { address })).statusCode, 200, 'a success in between does not count')
  t.equal((await ping(app, { token: 'still-not-valid', address })).statusCode, 401, 'third failure')
  const refused = await ping(app, { token: 'a-fourth-wrong-token', address })
  const retryAfter = assertRateLimited(t, refused, 3, 'a fourth token from the address after 3 failures, refused before its lookup')
  t.ok(retryAfter <= 60)
  t.match(refused.json().error.message, /failed authentication attempts/)
  t.equal((await ping(app, { address })).statusCode, 200, 'the static token costs no lookup and is still served')
  t.equal((await ping(app, { token: 'a-fourth-wrong-token', address: '10.1.2.4' })).statusCode, 401, 'another address is not affected')
  t.equal((await ping(app, { token: 'a-fourth-wrong-token', address: '::ffff:10.1.2.3' })).statusCode, 429, 'the IPv4-mapped IPv6 form is the same address')

  // A database token whose lookup throws: with the table renamed, looking it up fails with 5xx.
  const token = await addToken(app, 'lookup-would-fail', ['context:read'])
  await app.db.sql`alter table api_tokens rename to api_tokens_hidden`
  try {
    const control = await ping(app, { token, address: '10.1.2.5' })
    t.ok(control.statusCode >= 500, `from a fresh address the lookup runs and fails (${control.statusCode})`)
    const limited = await ping(app, { token, address })
    t.equal(limited.statusCode, 429, 'from the refused address: 429, so the token was never looked up')
  } finally {
    await app.db.sql`alter table api_tokens_hidden rename to api_tokens`
  }
  t.equal((await ping(app, { token, address: '10.1.2.5' })).statusCode, 200, 'a lookup failure (5xx) does not count as a failed authentication')
})

test('the client address honours TRUST_PROXY', async (t) => {
  const direct = await build(t, { RATE_LIMITS: LIMITS })
  for (let i = 1; i <= 3; i++) {
    t.equal((await ping(direct, { token: 'bad', address: '10.3.3.3', forwardedFor: `198.51.100.${i}` })).statusCode, 401)
  }
  t.equal((await ping(direct, { token: 'bad', address: '10.3.3.3', forwardedFor: '198.51.100.99' })).statusCode, 429,
    'TRUST_PROXY=false: X-Forwarded-For is ignored, the peer address is the client')

  const proxied = await build(t, { RATE_LIMITS: LIMITS, TRUST_PROXY: '10.0.0.1' })
  for (let i = 1; i <= 3; i++) {
    t.equal((await ping(proxied, { token: 'bad', address: '10.0.0.1', forwardedFor: '198.51.100.7' })).statusCode, 401)
  }
  t.equal((await ping(proxied, { token: 'bad', address: '10.0.0.1', forwardedFor: '198.51.100.7' })).statusCode, 429, 'behind a trusted proxy the forwarded client is limited')
  t.equal((await ping(proxied, { token: 'bad', address: '10.0.0.1', forwardedFor: '198.51.100.8' })).statusCode, 401, 'not every client of the proxy')
  t.equal((await ping(proxied, { token: 'bad', address: '10.0.0.2', forwardedFor: '198.51.100.7' })).statusCode, 401, 'an untrusted peer cannot claim to be another client')
})
