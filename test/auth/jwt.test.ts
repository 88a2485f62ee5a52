import { generateKeyPair, SignJWT } from 'jose'
import { test, type Test } from 'tap'
import { createJwtAuthenticator, jwtOptionsFromConfig, looksLikeJwt, type JwtAuthenticator, type JwtAuthenticatorOptions } from '../../auth/jwt.js'
import { DEFAULT_NAMESPACE } from '../../plugins/auth.js'
import { loadConfig } from '../../schema/config.js'
import { AppError } from '../../schema/errors.js'
import { startOidcProvider, type OidcProvider } from '../oidc-provider.js'

const ROLE_MAP = {
  'hr-write': { scopes: ['context:read', 'context:write'], namespace: 'hr' },
  reader: { scopes: ['context:read'] },
  'ops-admin': { scopes: ['context:admin'], namespace: 'ops' },
  'finance-read': { scopes: ['context:read'], namespace: 'finance' }
} satisfies JwtAuthenticatorOptions['roleMap']

async function setup (t: Test, options: Partial<JwtAuthenticatorOptions> = {}): Promise<{ idp: OidcProvider, auth: JwtAuthenticator }> {
  const idp = await startOidcProvider()
  t.teardown(() => idp.close())
  const auth = createJwtAuthenticator({
    issuer: idp.issuer,
    audience: idp.audience,
    jwksUrl: idp.jwksUrl,
    roleMap: ROLE_MAP,
    defaultNamespace: DEFAULT_NAMESPACE,
    ...options
  })
  t.teardown(() => auth.close())
  return { idp, auth }
}

/** The AppError a verification failed with, after checking that its message does not echo the token. */
async function failure (t: Test, auth: JwtAuthenticator, token: string): Promise<AppError> {
  try {
    await auth.verify(token)
  } catch (error) {
    t.type(error, AppError)
    const message = (error as AppError).message
    for (const segment of token.split('.').filter((part) => part.length > 8)) t.notOk(message.includes(segment), 'the message does not echo the token')
    return error as AppError
  }
  throw new Error('expected the token to be refused')
}

const seconds = (): number => Math.floor(Date.now() / 1000)

const grantsOf = (grants: ReadonlyMap<string, ReadonlySet<string>>): Record<string, string[]> =>
  Object.fromEntries([...grants].map(([namespace, scopes]) => [namespace, [...scopes].sort()]))

test('a valid token gives a principal whose realm and client roles are merged and mapped to grants', async (t) => {
  const { idp, auth } = await setup(t)
  const exp = seconds() + 600
  const token = await idp.sign({
    sub: 'alice',
    jti: 'token-1',
    exp,
    realm_access: { roles: ['reader', 'offline_access'] },
    // Only the authorized party's and the audiences' client roles count: ops-admin belongs to another client.
    resource_access: { 'mcp-client': { roles: ['hr-write'] }, 'other-client': { roles: ['ops-admin'] } }
  })
  const identity = await auth.verify(token)
  t.equal(identity.principal.id, 'oidc:alice')
  t.same(grantsOf(identity.principal.grants), { hr: ['context:read', 'context:write'], default: ['context:read'] })
  t.same([...identity.principal.scopes].sort(), ['context:read', 'context:write'])
  t.equal(identity.principal.namespace, 'hr', 'home namespace: the first mapped role in JWT_ROLE_MAP order')
  t.equal(identity.jti, 'token-1')
  t.equal(identity.expiresAt.getTime(), exp * 1000)
  t.equal(auth.status(), 'ok')
})

test('roles of the azp client and a top-level roles array count, other audiences\' client roles do not; with a trusted scope claim, scope/scp values that are ours apply in the default namespace', async (t) => {
  const { idp, auth } = await setup(t, { trustScopeClaim: true })
  const fromAzpClient = await auth.verify(await idp.sign({
    aud: [idp.audience, 'account'],
    azp: 'finance-app',
    realm_access: undefined,
    resource_access: { 'finance-app': { roles: ['finance-read'] }, account: { roles: ['hr-write'] } },
    roles: ['ops-admin'],
    scope: 'openid profile context:write'
  }))
  t.same(grantsOf(fromAzpClient.principal.grants), {
    ops: ['context:admin'],
    finance: ['context:read'],
    default: ['context:write']
  }, 'hr-write on the account client (another audience) grants nothing')
  t.equal(fromAzpClient.principal.namespace, 'ops', 'ops-admin comes before finance-read in the map')
  t.equal(fromAzpClient.principal.globalAdmin, false, 'admin mapped to a namespace is admin there only')

  const adminScope = await auth.verify(await idp.sign({ realm_access: undefined, scope: 'openid context:admin context:read' }))
  t.same(grantsOf(adminScope.principal.grants), { default: ['context:read'] }, 'context:admin is never taken from the scope claim')
  t.equal(adminScope.principal.globalAdmin, false)

  const fromScp = await auth.verify(await idp.sign({ realm_access: undefined, scp: ['context:delete', 'User.Read'] }))
  t.same(grantsOf(fromScp.principal.grants), { default: ['context:delete'] })
})

test('a token without mapped roles verifies to a principal without grants', async (t) => {
  const { idp, auth } = await setup(t)
  const identity = await auth.verify(await idp.sign({ realm_access: { roles: ['unmapped'] }, jti: undefined }))
  t.equal(identity.principal.grants.size, 0)
  t.equal(identity.principal.scopes.size, 0)
  t.equal(identity.principal.namespace, DEFAULT_NAMESPACE)
  t.equal(identity.jti, undefined)
})

test('an ES256 key the issuer publishes is accepted', async (t) => {
  const { idp, auth } = await setup(t)
  const identity = await auth.verify(await idp.sign({ sub: 'bob' }, { kid: 'es256-2' }))
  t.equal(identity.principal.id, 'oidc:bob')
})

test('a token for another audience is refused (no token passthrough)', async (t) => {
  const { idp, auth } = await setup(t)
  const error = await failure(t, auth, await idp.sign({ aud: ['https://other.example.com/api', 'account'] }))
  t.equal(error.code, 'AUTH_1002')
  t.match(error.message, /another audience/)
  t.match(error.message, idp.audience, 'says which audience to request')
})

test('a token from another issuer is refused', async (t) => {
  const { idp, auth } = await setup(t)
  const error = await failure(t, auth, await idp.sign({ iss: 'https://evil.example.com/realms/test' }))
  t.equal(error.code, 'AUTH_1002')
  t.match(error.message, /issuer/)
})

test('expiry is checked with the configured clock skew', async (t) => {
  const { idp, auth } = await setup(t, { clockSkewSeconds: 30 })
  const expired = await failure(t, auth, await idp.sign({ exp: seconds() - 120 }))
  t.equal(expired.code, 'AUTH_1002')
  t.match(expired.message, /expired/)
  const withinSkew = await auth.verify(await idp.sign({ exp: seconds() - 10 }))
  t.equal(withinSkew.principal.id, 'oidc:user-1', 'expired 10 s ago is within 30 s of skew')

  const strict = createJwtAuthenticator({ issuer: idp.issuer, audience: idp.audience, jwksUrl: idp.jwksUrl, clockSkewSeconds: 0, defaultNamespace: DEFAULT_NAMESPACE })
  t.teardown(() => strict.close())
  t.equal((await failure(t, strict, await idp.sign({ exp: seconds() - 10 }))).code, 'AUTH_1002', 'no skew: refused')
})

test('a token that is not valid yet (nbf) is refused beyond the skew', async (t) => {
  const { idp, auth } = await setup(t)
  const early = await failure(t, auth, await idp.sign({ nbf: seconds() + 120 }))
  t.equal(early.code, 'AUTH_1002')
  t.match(early.message, /not valid yet/)
  t.ok(await auth.verify(await idp.sign({ nbf: seconds() + 10 })), 'nbf 10 s ahead is within the skew')
})

test('a token signed by another key that claims a published kid is refused', async (t) => {
  const { idp, auth } = await setup(t)
  const { privateKey } = await generateKeyPair('RS256')
  const error = await failure(t, auth, await idp.sign({}, { kid: 'rs256-1', privateKey }))
  t.equal(error.code, 'AUTH_1002')
  t.match(error.message, /signature/)
})

test('HS256 and unsigned (alg none) tokens are refused', async (t) => {
  const { idp, auth } = await setup(t)
  const now = seconds()
  const claims = { iss: idp.issuer, aud: idp.audience, sub: 'mallory', exp: now + 300, realm_access: { roles: ['ops-admin'] } }
  const hs256 = await new SignJWT(claims).setProtectedHeader({ alg: 'HS256', kid: 'rs256-1' }).sign(new TextEncoder().encode('a-shared-secret-of-at-least-32-bytes!!'))
  const hsError = await failure(t, auth, hs256)
  t.equal(hsError.code, 'AUTH_1002')
  t.match(hsError.message, /algorithm is not accepted/)

  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const none = `${encode({ alg: 'none', typ: 'JWT' })}.${encode(claims)}.`
  t.ok(looksLikeJwt(none), 'an unsigned token still goes to the JWT verifier')
  const noneError = await failure(t, auth, none)
  t.equal(noneError.code, 'AUTH_1002')
  t.match(noneError.message, /algorithm is not accepted/)
})

test('a token without exp or without sub is refused', async (t) => {
  const { idp, auth } = await setup(t)
  const noExp = await failure(t, auth, await idp.sign({ exp: undefined }))
  t.equal(noExp.code, 'AUTH_1002')
  t.match(noExp.message, /"exp" claim/)
  const noSub = await failure(t, auth, await idp.sign({ sub: undefined }))
  t.equal(noSub.code, 'AUTH_1002')
  t.match(noSub.message, /"sub" claim/)
  const longSub = await failure(t, auth, await idp.sign({ sub: 'x'.repeat(256) }))
  t.match(longSub.message, /"sub" claim must be a string of 1-255/)
})

test('a malformed token is refused as invalid', async (t) => {
  const { auth } = await setup(t)
  const error = await failure(t, auth, 'eyJub3QiOiJqc29uIn0.bm90LWpzb24.c2ln')
  t.equal(error.code, 'AUTH_1002')
  t.match(error.message, /not a valid JWT/)
})

test('looksLikeJwt tells compact JWS from API tokens', async (t) => {
  t.ok(looksLikeJwt('eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl'))
  t.notOk(looksLikeJwt('scm_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG'))
  t.notOk(looksLikeJwt('a.b'))
  t.notOk(looksLikeJwt('a.b.c.d'))
  t.notOk(looksLikeJwt('a+b.c.d'))
  t.notOk(looksLikeJwt('.b.c'))
})

test('configured from the environment: audience from PUBLIC_URL, role map from JWT_ROLE_MAP', async (t) => {
  const idp = await startOidcProvider({ audience: 'https://ctx.example.com/mcp' })
  t.teardown(() => idp.close())
  const config = loadConfig({
    OIDC_ISSUER: idp.issuer,
    JWKS_URL: idp.jwksUrl,
    PUBLIC_URL: 'https://ctx.example.com/',
    JWT_ROLE_MAP: JSON.stringify({ 'hr-write': { scopes: ['context:write'], namespace: 'hr' } }),
    JWT_CLOCK_SKEW_SECONDS: '5'
  })
  const options = jwtOptionsFromConfig(config, DEFAULT_NAMESPACE)
  if (options === undefined) throw new Error('expected options')
  t.equal(options.audience, 'https://ctx.example.com/mcp', 'trailing slash of PUBLIC_URL stripped')
  t.equal(options.clockSkewSeconds, 5)
  const auth = createJwtAuthenticator(options)
  t.teardown(() => auth.close())
  const identity = await auth.verify(await idp.sign({ realm_access: { roles: ['hr-write'] } }))
  t.same(grantsOf(identity.principal.grants), { hr: ['context:write'] })
  t.equal((await failure(t, auth, await idp.sign({ exp: seconds() - 10 }))).code, 'AUTH_1002', 'the 5 s skew applies')

  t.equal(jwtOptionsFromConfig(loadConfig({}), DEFAULT_NAMESPACE), undefined, 'no OIDC_ISSUER: no JWT authentication')
})
