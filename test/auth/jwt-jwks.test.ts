import { setTimeout as sleep } from 'node:timers/promises'
import { generateKeyPair } from 'jose'
import { test, type Test } from 'tap'
import { createJwtAuthenticator, type JwtAuthenticator, type JwtAuthenticatorOptions } from '../../auth/jwt.js'
import { AppError } from '../../schema/errors.js'
import { startOidcProvider, type OidcProvider } from '../oidc-provider.js'

const COOLDOWN_MS = 30_000

/** A provider and an authenticator whose cooldown clock the test moves (`advance`); other timings are the defaults unless given. */
async function setup (t: Test, options: Partial<JwtAuthenticatorOptions> = {}, useDiscovery = false): Promise<{ idp: OidcProvider, auth: JwtAuthenticator, advance: (ms: number) => void }> {
  const idp = await startOidcProvider()
  t.teardown(() => idp.close())
  let clock = Date.now()
  const auth = createJwtAuthenticator({
    issuer: idp.issuer,
    audience: idp.audience,
    jwksUrl: useDiscovery ? undefined : idp.jwksUrl,
    defaultNamespace: 'default',
    ...options,
    jwks: { now: () => clock, ...options.jwks }
  })
  t.teardown(() => auth.close())
  return { idp, auth, advance: (ms) => { clock += ms } }
}

async function codeOf (promise: Promise<unknown>): Promise<string> {
  try {
    await promise
  } catch (error) {
    if (error instanceof AppError) return error.code
    throw error
  }
  return 'accepted'
}

async function errorOf (promise: Promise<unknown>): Promise<AppError> {
  try {
    await promise
  } catch (error) {
    if (error instanceof AppError) return error
    throw error
  }
  throw new Error('expected a refusal')
}

async function until (condition: () => boolean, what: string): Promise<void> {
  for (let waited = 0; !condition(); waited += 10) {
    if (waited > 10_000) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

test('an unknown kid is refused within the cooldown without a fetch, and refreshes the keys after it', async (t) => {
  const { idp, auth, advance } = await setup(t)
  await auth.verify(await idp.sign())
  t.equal(idp.jwksFetches, 1, 'one fetch at start')

  const newKid = await idp.addKey()
  const withNewKey = await idp.sign({}, { kid: newKid })
  t.equal(await codeOf(auth.verify(withNewKey)), 'AUTH_1002', 'within the cooldown: unknown kid')
  t.equal(idp.jwksFetches, 1, 'no fetch within the cooldown')

  advance(COOLDOWN_MS)
  t.equal(await codeOf(auth.verify(withNewKey)), 'accepted', 'after the cooldown the new key is fetched')
  t.equal(idp.jwksFetches, 2)

  const oldKeyToken = await idp.sign()
  await idp.rotate()
  advance(COOLDOWN_MS)
  t.equal(await codeOf(auth.verify(await idp.sign())), 'accepted', 'the rotated-in key is fetched')
  t.equal(idp.jwksFetches, 3)
  const error = await errorOf(auth.verify(oldKeyToken))
  t.equal(error.code, 'AUTH_1002', 'the withdrawn key is gone from the cache')
  t.match(error.message, /unknown kid/)

  advance(COOLDOWN_MS)
  t.equal(await codeOf(auth.verify(await idp.sign({}, { kid: 'never-published', privateKey: (await generateKeyPair('RS256')).privateKey }))), 'AUTH_1002', 'still unknown after a refresh')
  t.equal(idp.jwksFetches, 4)
  t.equal(auth.status(), 'ok')
})

test('under load the JWKS is fetched at most once per cooldown', async (t) => {
  const { idp, auth, advance } = await setup(t)
  await auth.verify(await idp.sign())
  const newKid = await idp.addKey('ES256')
  const token = await idp.sign({}, { kid: newKid })

  advance(COOLDOWN_MS)
  const first = await Promise.all(Array.from({ length: 100 }, () => codeOf(auth.verify(token))))
  t.same(new Set(first), new Set(['accepted']), '100 concurrent verifications with a new kid all pass')
  t.equal(idp.jwksFetches, 2, 'they shared one fetch')

  const unknownToken = await idp.sign({}, { kid: await idp.addKey() })
  advance(COOLDOWN_MS - 1)
  const second = await Promise.all(Array.from({ length: 100 }, () => codeOf(auth.verify(unknownToken))))
  t.same(new Set(second), new Set(['AUTH_1002']), 'unknown kids within the cooldown are refused')
  t.equal(idp.jwksFetches, 2, 'no fetch within the cooldown')

  advance(1)
  t.equal(await codeOf(auth.verify(unknownToken)), 'accepted')
  t.equal(idp.jwksFetches, 3)
})

test('identity provider down: cached keys keep working, an unknown kid gets DEP_3002, and it recovers', async (t) => {
  const { idp, auth, advance } = await setup(t)
  const known = await idp.sign()
  await auth.verify(known)
  t.equal(auth.status(), 'ok')

  idp.jwksMode = 'fail'
  const unknown = await idp.sign({}, { kid: await idp.addKey() })
  advance(COOLDOWN_MS)
  const error = await errorOf(auth.verify(unknown))
  t.equal(error.code, 'DEP_3002')
  t.equal(error.statusCode, 503)
  t.match(error.message, /identity provider/)
  t.equal(idp.jwksFetches, 2)
  t.equal(auth.status(), 'degraded')

  t.equal(await codeOf(auth.verify(known)), 'accepted', 'the cached key keeps working')
  t.equal(await codeOf(auth.verify(unknown)), 'DEP_3002', 'still unavailable within the cooldown')
  t.equal(idp.jwksFetches, 2, 'a failed fetch counts for the cooldown')

  idp.jwksMode = 'ok'
  advance(COOLDOWN_MS)
  t.equal(await codeOf(auth.verify(unknown)), 'accepted', 'recovered once the endpoint is back')
  t.equal(auth.status(), 'ok')
  t.equal(idp.jwksFetches, 3)
})

test('no key set yet and the endpoint drops the connection: DEP_3002 and degraded', async (t) => {
  const idp = await startOidcProvider()
  t.teardown(() => idp.close())
  idp.jwksMode = 'drop'
  const auth = createJwtAuthenticator({ issuer: idp.issuer, audience: idp.audience, jwksUrl: idp.jwksUrl, defaultNamespace: 'default' })
  t.teardown(() => auth.close())
  t.equal(auth.status(), 'degraded', 'degraded before any fetch succeeded')
  const token = await idp.sign()
  t.equal(await codeOf(auth.verify(token)), 'DEP_3002')
  t.equal(await codeOf(auth.verify(token)), 'DEP_3002')
  t.equal(idp.jwksFetches, 1, 'one attempt per cooldown, also before any key set was fetched')
  t.equal(auth.status(), 'degraded')
})

test('a JWKS endpoint that does not answer times out', async (t) => {
  const idp = await startOidcProvider()
  t.teardown(() => idp.close())
  idp.jwksMode = 'hang'
  const auth = createJwtAuthenticator({ issuer: idp.issuer, audience: idp.audience, jwksUrl: idp.jwksUrl, defaultNamespace: 'default', jwks: { timeoutMs: 200 } })
  t.teardown(() => auth.close())
  t.equal(await codeOf(auth.verify(await idp.sign())), 'DEP_3002')
  t.equal(auth.status(), 'degraded')
})

test('a JWKS body over the size cap is refused', async (t) => {
  const { idp, auth } = await setup(t, { jwks: { maxBytes: 200 } })
  t.equal(await codeOf(auth.verify(await idp.sign())), 'DEP_3002')
  t.equal(auth.status(), 'degraded')
})

test('without JWKS_URL the key set is discovered from the openid-configuration, once', async (t) => {
  const { idp, auth, advance } = await setup(t, {}, true)
  t.equal(await codeOf(auth.verify(await idp.sign())), 'accepted')
  t.equal(idp.discoveryFetches, 1)
  t.equal(idp.jwksFetches, 1)

  advance(COOLDOWN_MS)
  t.equal(await codeOf(auth.verify(await idp.sign({}, { kid: await idp.addKey() }))), 'accepted')
  t.equal(idp.discoveryFetches, 1, 'jwks_uri is remembered')
  t.equal(idp.jwksFetches, 2)
})

test('a discovery document for another issuer is not trusted', async (t) => {
  const idp = await startOidcProvider()
  t.teardown(() => idp.close())
  idp.discoveryOverrides = { issuer: 'https://evil.example.com' }
  const auth = createJwtAuthenticator({ issuer: idp.issuer, audience: idp.audience, defaultNamespace: 'default' })
  t.teardown(() => auth.close())
  t.equal(await codeOf(auth.verify(await idp.sign())), 'DEP_3002')
  t.equal(idp.discoveryFetches, 1)
  t.equal(idp.jwksFetches, 0, 'its jwks_uri is not followed')
  t.equal(auth.status(), 'degraded')
})

test('background refresh: retried after the cooldown when it failed, every interval when it worked, stopped by close', async (t) => {
  const idp = await startOidcProvider()
  t.teardown(() => idp.close())
  idp.jwksMode = 'fail'
  const auth = createJwtAuthenticator({
    issuer: idp.issuer,
    audience: idp.audience,
    jwksUrl: idp.jwksUrl,
    defaultNamespace: 'default',
    jwks: { cooldownMs: 20, refreshIntervalMs: 60_000 }
  })
  t.teardown(() => auth.close())
  // A second cache refreshing every 20 ms from a provider of its own: its fetches show that the
  // moments when a wrong refresh would have come have passed.
  const clock = await startOidcProvider()
  t.teardown(() => clock.close())
  const reference = createJwtAuthenticator({ issuer: clock.issuer, audience: clock.audience, jwksUrl: clock.jwksUrl, defaultNamespace: 'default', jwks: { cooldownMs: 10, refreshIntervalMs: 20 } })
  t.teardown(() => reference.close())
  const refreshesOfReference = async (count: number) => {
    const start = clock.jwksFetches
    await until(() => clock.jwksFetches >= start + count, `${count} refreshes of the reference cache`)
  }
  await until(() => idp.jwksFetches >= 2, 'a retry of the failed fetch')
  t.equal(auth.status(), 'degraded')
  idp.jwksMode = 'ok'
  await until(() => auth.status() === 'ok', 'the status to recover without any request')
  const fetches = idp.jwksFetches
  await refreshesOfReference(3) // more than the 20 ms cooldown
  t.equal(idp.jwksFetches, fetches, 'after a success the next refresh waits for the interval')

  const frequent = createJwtAuthenticator({
    issuer: idp.issuer,
    audience: idp.audience,
    jwksUrl: idp.jwksUrl,
    defaultNamespace: 'default',
    jwks: { cooldownMs: 10, refreshIntervalMs: 20 }
  })
  const before = idp.jwksFetches
  await until(() => idp.jwksFetches >= before + 3, 'periodic refreshes')
  frequent.close()
  const atClose = idp.jwksFetches
  await refreshesOfReference(5) // many times the closed cache's 20 ms interval
  t.ok(idp.jwksFetches - atClose <= 1, `at most the one fetch already under way when close came arrived (${idp.jwksFetches - atClose})`)
  const afterClose = idp.jwksFetches
  await refreshesOfReference(3)
  t.equal(idp.jwksFetches, afterClose, 'and no refresh after close')
})
