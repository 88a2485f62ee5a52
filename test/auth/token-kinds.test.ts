import { test, type Test } from 'tap'
import { createJwtAuthenticator, type JwtAuthenticator } from '../../auth/jwt.js'
import { DEFAULT_NAMESPACE } from '../../plugins/auth.js'
import { AppError } from '../../schema/errors.js'
import { build, rpc } from '../helper.js'
import { startOidcProvider, type OidcProvider } from '../oidc-provider.js'

const PUBLIC_URL = 'https://ctx.example.com'
const ROLE_MAP = { reader: { scopes: ['context:read' as const] } }

async function setup (t: Test): Promise<{ idp: OidcProvider, auth: JwtAuthenticator }> {
  const idp = await startOidcProvider({ audience: `${PUBLIC_URL}/mcp` })
  t.teardown(() => idp.close())
  const auth = createJwtAuthenticator({ issuer: idp.issuer, audience: idp.audience, jwksUrl: idp.jwksUrl, roleMap: ROLE_MAP, defaultNamespace: DEFAULT_NAMESPACE })
  t.teardown(() => auth.close())
  return { idp, auth }
}

async function refusal (auth: JwtAuthenticator, token: string): Promise<AppError | undefined> {
  try {
    await auth.verify(token)
    return undefined
  } catch (error) {
    if (error instanceof AppError) return error
    throw error
  }
}

// Claims the default signer adds that are Keycloak-specific; left out for the other issuers' shapes.
const NOT_KEYCLOAK = { typ: undefined, realm_access: undefined, resource_access: undefined, azp: undefined }

test('ID tokens are refused with AUTH_1002 that says an ID token was sent where an access token is needed', async (t) => {
  const { idp, auth } = await setup(t)
  const idTokens: Array<[string, Promise<string>]> = [
    ['a Keycloak ID token (typ claim "ID", with nonce and at_hash)', idp.sign({ typ: 'ID', nonce: 'n-1', at_hash: 'abc', roles: ['reader'] })],
    ['a Keycloak ID token without a nonce (typ claim "ID" alone)', idp.sign({ typ: 'ID', roles: ['reader'] })],
    ['a generic OIDC ID token (nonce, no scope or client_id)', idp.sign({ ...NOT_KEYCLOAK, nonce: 'n-2', auth_time: 1, roles: ['reader'] })],
    ['a generic OIDC ID token from the code flow (at_hash, no nonce)', idp.sign({ ...NOT_KEYCLOAK, at_hash: 'abc', roles: ['reader'] }, { typ: null })]
  ]
  for (const [what, signed] of idTokens) {
    const error = await refusal(auth, await signed)
    t.equal(error?.code, 'AUTH_1002', `${what}: refused`)
    t.match(error?.message, /ID token.*Send the access token/, `${what}: the message says what was sent and what is needed`)
  }

  const otherKinds: Array<[string, Promise<string>]> = [
    ['a Keycloak refresh token (typ claim "Refresh")', idp.sign({ typ: 'Refresh', roles: ['reader'] })],
    ['a logout token (typ header logout+jwt)', idp.sign({ ...NOT_KEYCLOAK, roles: ['reader'] }, { typ: 'logout+jwt' })]
  ]
  for (const [what, signed] of otherKinds) {
    const error = await refusal(auth, await signed)
    t.equal(error?.code, 'AUTH_1002', `${what}: refused`)
    t.match(error?.message, /not an access token|than an access token/, `${what}: the message says it is not an access token`)
  }
})

test('the access tokens of the common issuers are accepted', async (t) => {
  const { idp, auth } = await setup(t)
  const accessTokens: Array<[string, Promise<string>]> = [
    ['RFC 9068 (typ header at+jwt, client_id, scope)', idp.sign({ ...NOT_KEYCLOAK, client_id: 'claude', scope: 'openid', roles: ['reader'] }, { typ: 'at+jwt' })],
    ['RFC 9068 with the full media type application/at+jwt', idp.sign({ ...NOT_KEYCLOAK, client_id: 'claude', roles: ['reader'] }, { typ: 'application/at+jwt' })],
    ['RFC 9068 even with a nonce: the typ header says what it is', idp.sign({ ...NOT_KEYCLOAK, client_id: 'claude', nonce: 'n', roles: ['reader'] }, { typ: 'at+jwt' })],
    ['Keycloak (typ claim "Bearer")', idp.sign({ roles: ['reader'] })],
    ['Keycloak before version 25, which copies the nonce into access tokens', idp.sign({ nonce: 'n-3', session_state: 's', scope: 'openid', roles: ['reader'] })],
    ['Auth0 (typ header JWT, scope and azp, no nonce)', idp.sign({ ...NOT_KEYCLOAK, azp: 'abc', scope: 'openid profile', roles: ['reader'] })],
    ['Okta (no typ header, scp array and cid)', idp.sign({ ...NOT_KEYCLOAK, cid: '0oa1', uid: '00u1', scp: ['openid'], roles: ['reader'] }, { typ: null })],
    ['Okta-style with a nonce but a client claim (cid)', idp.sign({ ...NOT_KEYCLOAK, cid: '0oa1', nonce: 'n-4', roles: ['reader'] }, { typ: null })],
    ['Entra ID app token (roles only, no scope, no nonce)', idp.sign({ ...NOT_KEYCLOAK, roles: ['reader'], appid: 'x' }, { typ: 'JWT' })]
  ]
  for (const [what, signed] of accessTokens) {
    const token = await signed
    const error = await refusal(auth, token)
    t.equal(error, undefined, `${what}: accepted${error === undefined ? '' : ` (refused: ${error.message})`}`)
    if (error === undefined) t.same([...(await auth.verify(token)).principal.scopes], ['context:read'], `${what}: its roles are mapped`)
  }
})

test('over HTTP an ID token gets 401 AUTH_1002 with error="invalid_token"; the access token of the same user works', async (t) => {
  const idp = await startOidcProvider({ audience: `${PUBLIC_URL}/mcp` })
  t.teardown(() => idp.close())
  const app = await build(t, { PUBLIC_URL, OIDC_ISSUER: idp.issuer, JWT_ROLE_MAP: JSON.stringify(ROLE_MAP), ALLOWED_HOSTS: 'localhost' })

  const idToken = await idp.sign({ typ: 'ID', nonce: 'n', roles: ['reader'] })
  const refused = await rpc(app, 'tools/list', {}, { token: idToken })
  t.equal(refused.statusCode, 401)
  t.equal(refused.json().error.code, 'AUTH_1002')
  t.match(refused.json().error.message, /ID token/)
  t.match(refused.headers['www-authenticate'], 'error="invalid_token"')

  const accepted = await rpc(app, 'tools/list', {}, { token: await idp.sign({ roles: ['reader'] }) })
  t.equal(accepted.statusCode, 200)
})
