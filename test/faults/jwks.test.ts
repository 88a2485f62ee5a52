import { test } from 'tap'
import { createJwtAuthenticator } from '../../auth/jwt.js'
import { AppError } from '../../schema/errors.js'
import { startOidcProvider } from '../oidc-provider.js'
import { TcpProxy } from '../tcp-proxy.js'

// The JWKS endpoint stalled at the TCP level (connection accepted, never answered), with keys
// already cached — beyond test/auth/jwt-jwks.test.ts, whose endpoint answers HTTP badly or hangs
// before any key was fetched. No clock assertion: what is pinned is the order of the answers.

const COOLDOWN_MS = 30_000

test('JWKS stalled: cached keys keep working while a fetch for an unknown kid hangs; that one gets DEP_3002', async (t) => {
  const idp = await startOidcProvider()
  t.teardown(() => idp.close())
  const target = new URL(idp.jwksUrl)
  const proxy = new TcpProxy(target.hostname, Number(target.port))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const viaProxy = new URL(idp.jwksUrl)
  viaProxy.port = String(proxy.port)
  let clock = Date.now()
  const auth = createJwtAuthenticator({
    issuer: idp.issuer,
    audience: idp.audience,
    jwksUrl: viaProxy.toString(),
    defaultNamespace: 'default',
    jwks: { now: () => clock, timeoutMs: 1000 }
  })
  t.teardown(() => auth.close())
  const known = await idp.sign()
  await auth.verify(known)
  t.equal(auth.status(), 'ok', 'keys fetched through the proxy')

  proxy.stall()
  clock += COOLDOWN_MS
  const unknown = await idp.sign({}, { kid: await idp.addKey() })
  const order: string[] = []
  const hanging = auth.verify(unknown).then(() => 'accepted', (error: unknown) => error instanceof AppError ? error.code : String(error)).then((code) => { order.push('unknown kid'); return code })
  const cached = await Promise.all(Array.from({ length: 5 }, () => auth.verify(known).then(() => { order.push('known kid'); return 'accepted' })))
  t.same(cached, Array(5).fill('accepted'), 'tokens signed with a cached key are accepted')
  t.equal(await hanging, 'DEP_3002', 'the unknown kid, whose keys cannot be fetched, is DEP_3002')
  t.same(order, [...Array(5).fill('known kid'), 'unknown kid'], 'the cached-key tokens did not wait for the hanging fetch')
  t.equal(proxy.state, 'stalled')
  t.equal(auth.status(), 'degraded')

  await proxy.restore()
  clock += COOLDOWN_MS
  await auth.verify(unknown)
  t.equal(auth.status(), 'ok', 'recovers once the endpoint answers')
})
