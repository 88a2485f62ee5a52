import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose'

export type SigningAlg = 'RS256' | 'ES256'

/** How the JWKS endpoint answers: normally, with 503, by dropping the connection, or never. */
export type JwksMode = 'ok' | 'fail' | 'drop' | 'hang'

export interface SignOptions {
  /** Kid to sign with (default: the current signing key). */
  kid?: string
  /** Signs with this private key instead of the kid's own, still naming `kid` in the header. */
  privateKey?: CryptoKey
  alg?: string
  /** The typ header (default "JWT"); null leaves it out. */
  typ?: string | null
}

export interface OidcProvider {
  /** e.g. http://127.0.0.1:PORT/realms/test */
  issuer: string
  jwksUrl: string
  /** The audience tokens carry unless overridden. */
  audience: string
  /** Requests to the JWKS endpoint, whatever the answer. */
  readonly jwksFetches: number
  readonly discoveryFetches: number
  jwksMode: JwksMode
  /** Overrides fields of the openid-configuration document. */
  discoveryOverrides: Record<string, unknown>
  /**
   * A Keycloak-shaped access token. `claims` override the defaults; a claim set to undefined is left
   * out (e.g. `{ exp: undefined }` for a token without exp).
   */
  sign: (claims?: Record<string, unknown>, options?: SignOptions) => Promise<string>
  /** Publishes a new key (not yet fetched by any cache) and returns its kid. */
  addKey: (alg?: SigningAlg) => Promise<string>
  /** Publishes a new key, makes it the default signing key, and withdraws the previous one. */
  rotate: () => Promise<string>
  close: () => Promise<void>
}

interface KeyEntry { kid: string, alg: SigningAlg, privateKey: CryptoKey, jwk: JWK }

const nowSeconds = (): number => Math.floor(Date.now() / 1000)

/** A minimal OpenID provider on 127.0.0.1 serving discovery and a JWKS, for tests of the JWT resource server. */
export async function startOidcProvider (options: { audience?: string } = {}): Promise<OidcProvider> {
  const keys = new Map<string, KeyEntry>()
  let signingKid = ''
  let jwksFetches = 0
  let discoveryFetches = 0
  let keyCount = 0
  const hanging = new Set<() => void>()

  async function createKey (alg: SigningAlg): Promise<string> {
    const kid = `${alg.toLowerCase()}-${++keyCount}`
    const { publicKey, privateKey } = await generateKeyPair(alg)
    keys.set(kid, { kid, alg, privateKey, jwk: { ...await exportJWK(publicKey), kid, alg, use: 'sig' } })
    return kid
  }

  signingKid = await createKey('RS256')
  await createKey('ES256')

  const app = Fastify({ logger: false, forceCloseConnections: true })
  app.get('/realms/test/.well-known/openid-configuration', async () => {
    discoveryFetches++
    return { issuer: provider.issuer, jwks_uri: provider.jwksUrl, ...provider.discoveryOverrides }
  })
  app.get('/realms/test/protocol/openid-connect/certs', async (request, reply) => {
    jwksFetches++
    switch (provider.jwksMode) {
      case 'fail': return reply.code(503).send({ error: 'unavailable' })
      case 'drop':
        request.raw.socket.destroy()
        return reply
      case 'hang':
        await new Promise<void>((resolve) => hanging.add(resolve))
        return reply.code(503).send({ error: 'closing' })
      default: return { keys: [...keys.values()].map((entry) => entry.jwk) }
    }
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('the test OIDC provider has no TCP address')
  const issuer = `http://127.0.0.1:${address.port}/realms/test`

  const provider: OidcProvider = {
    issuer,
    jwksUrl: `${issuer}/protocol/openid-connect/certs`,
    audience: options.audience ?? 'https://ctx.example.com/mcp',
    get jwksFetches () { return jwksFetches },
    get discoveryFetches () { return discoveryFetches },
    jwksMode: 'ok',
    discoveryOverrides: {},

    async sign (claims = {}, signOptions = {}) {
      const kid = signOptions.kid ?? signingKid
      const entry = keys.get(kid)
      const privateKey = signOptions.privateKey ?? entry?.privateKey
      if (privateKey === undefined) throw new Error(`no key ${kid}`)
      const now = nowSeconds()
      const payload: Record<string, unknown> = {
        iss: issuer,
        aud: provider.audience,
        sub: 'user-1',
        azp: 'mcp-client',
        jti: randomUUID(),
        iat: now,
        exp: now + 300,
        typ: 'Bearer',
        realm_access: { roles: ['offline_access'] },
        resource_access: {},
        ...claims
      }
      for (const [name, value] of Object.entries(payload)) if (value === undefined) delete payload[name]
      return await new SignJWT(payload)
        .setProtectedHeader({ alg: signOptions.alg ?? entry?.alg ?? 'RS256', kid, ...(signOptions.typ !== null && { typ: signOptions.typ ?? 'JWT' }) })
        .sign(privateKey)
    },

    addKey: (alg = 'RS256') => createKey(alg),

    async rotate () {
      const previous = signingKid
      signingKid = await createKey('RS256')
      keys.delete(previous)
      return signingKid
    },

    async close () {
      for (const resolve of hanging) resolve()
      await app.close()
    }
  }
  return provider
}
