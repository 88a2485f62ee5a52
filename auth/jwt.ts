import type { FastifyBaseLogger } from 'fastify'
import { errors, jwtVerify, type JWSAlgorithm, type JWTHeaderParameters, type JWTPayload } from 'jose'
import { builtInIssuerOf, type Config } from '../schema/config.js'
import { AppError } from '../schema/errors.js'
import { NAMESPACE_PATTERN } from '../schema/key.js'
import type { Principal } from '../schema/principal.js'
import { createJwksCache, JwksUnavailableError, type JwksCache, type JwksCacheOptions } from './jwks.js'
import { jwtAudience, parseRoleMap, principalFromClaims, type RoleMap } from './roles.js'

export { jwtAudience, jwtConfigProblems } from './roles.js'

export interface JwtIdentity {
  principal: Principal
  jti: string | undefined
  /** The grant the token was issued under (the built-in authorization server's gid claim): revoking the grant refuses the token. */
  grantId: string | undefined
  expiresAt: Date
}

export interface JwtAuthenticator {
  /**
   * Throws AppError: AUTH_1002 for any invalid token; DEP_3002 when the key cannot be obtained
   * because the JWKS is unreachable. Messages never echo the token.
   */
  verify: (token: string) => Promise<JwtIdentity>
  /** 'ok' after the last JWKS fetch succeeded; 'degraded' when it failed or none succeeded yet. */
  status: () => 'ok' | 'degraded'
  /** Stops the background refresh timer. */
  close: () => void
}

export interface JwtAuthenticatorOptions {
  issuer: string
  audience: string
  /** Unset: discovered from the issuer's openid-configuration. */
  jwksUrl?: string | undefined
  roleMap?: RoleMap
  /** The client whose resource_access roles count (JWT_ROLE_CLIENT); unset: the token's azp. */
  roleClient?: string | undefined
  clockSkewSeconds?: number
  /**
   * Whether our scope names in the `scope`/`scp` claim grant those scopes (JWT_TRUST_SCOPE_CLAIM;
   * default false: only mapped roles do). True for an issuer that grants only scopes its users
   * consented to, such as a built-in authorization server.
   */
  trustScopeClaim?: boolean
  /** Where role grants without a namespace and OAuth scope claims apply (plugins/auth.ts DEFAULT_NAMESPACE). */
  defaultNamespace: string
  /**
   * A claim naming the namespace the scope claim applies in; when set, a token without it is
   * refused (the built-in authorization server's `namespace`, chosen on its consent page).
   */
  namespaceClaim?: string | undefined
  /** A claim naming the token's grant, checked against the revocation list beside the jti (the built-in authorization server's `gid`). */
  grantClaim?: string | undefined
  /** The principal id is `<prefix>:<sub>`; default `oidc`. */
  subjectPrefix?: string | undefined
  /** Where the issuer's keys come from; default: its JWKS, fetched and cached (auth/jwks.ts). */
  keySet?: Pick<JwksCache, 'getKey' | 'status' | 'close'> | undefined
  log?: FastifyBaseLogger | undefined
  /** Cache tuning; defaults in JWKS_DEFAULTS. */
  jwks?: Pick<JwksCacheOptions, 'cooldownMs' | 'refreshIntervalMs' | 'timeoutMs' | 'maxBytes' | 'now'>
}

/** Asymmetric algorithms only: a shared-secret (HS*) or unsigned token is never accepted. */
export const JWT_ALGORITHMS: JWSAlgorithm[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']

const MAX_SUBJECT_LENGTH = 255
const NAMESPACE = new RegExp(NAMESPACE_PATTERN)
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/

/** Whether a bearer token has the shape of a compact JWS (three base64url segments), as opposed to an API token. */
export function looksLikeJwt (token: string): boolean {
  return JWT_SHAPE.test(token)
}

/**
 * The authenticator options the configuration gives: for OIDC_ISSUER, or for the built-in
 * authorization server (OAUTH_SERVER=on), whose tokens carry the scopes and namespace the owner
 * chose on its consent page and are signed with keys from the database (`keySet`, given by the
 * caller). Undefined when neither is set.
 */
export function jwtOptionsFromConfig (config: Config, defaultNamespace: string): JwtAuthenticatorOptions | undefined {
  const builtIn = builtInIssuerOf(config)
  if (builtIn !== undefined) {
    return {
      issuer: builtIn,
      audience: `${builtIn}/mcp`,
      clockSkewSeconds: config.JWT_CLOCK_SKEW_SECONDS,
      trustScopeClaim: true,
      namespaceClaim: 'namespace',
      grantClaim: 'gid',
      subjectPrefix: 'oauth',
      defaultNamespace
    }
  }
  if (config.OIDC_ISSUER === undefined) return undefined
  const audience = jwtAudience(config)
  if (audience === undefined) throw new Error('JWT_AUDIENCE or PUBLIC_URL must be set when OIDC_ISSUER is set')
  return {
    issuer: config.OIDC_ISSUER,
    audience,
    jwksUrl: config.JWKS_URL,
    roleMap: parseRoleMap(config.JWT_ROLE_MAP),
    roleClient: config.JWT_ROLE_CLIENT,
    clockSkewSeconds: config.JWT_CLOCK_SKEW_SECONDS,
    trustScopeClaim: config.JWT_TRUST_SCOPE_CLAIM === 'true',
    defaultNamespace
  }
}

function invalid (message: string): AppError {
  return new AppError('AUTH_1002', message)
}

/** Turns a jose failure into a message that says what was wrong, without the token or its claims' values. */
function describeFailure (error: unknown, audience: string): AppError {
  if (error instanceof errors.JWTExpired) return invalid('The bearer token has expired. Get a new token from the identity provider.')
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.reason === 'missing') return invalid(`The bearer token lacks the required "${error.claim}" claim.`)
    switch (error.claim) {
      case 'iss': return invalid('The bearer token was issued by an issuer this server does not trust.')
      case 'aud': return invalid(`The bearer token is for another audience; request a token for ${audience}.`)
      case 'nbf': return invalid('The bearer token is not valid yet (nbf is in the future).')
      default: return invalid(`The bearer token's "${error.claim}" claim is not valid.`)
    }
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return invalid(`The bearer token's signing algorithm is not accepted; use one of ${JWT_ALGORITHMS.join(', ')}.`)
  if (error instanceof errors.JWSSignatureVerificationFailed) return invalid('The bearer token\'s signature does not verify.')
  if (error instanceof errors.JWKSNoMatchingKey) return invalid('The bearer token was signed with a key the identity provider does not publish (unknown kid).')
  if (error instanceof errors.JWKSMultipleMatchingKeys) return invalid('The bearer token names no kid and the identity provider publishes several keys for its algorithm.')
  return invalid('The bearer token is not a valid JWT.')
}

// The `typ` header of an access token besides RFC 9068's at+jwt: absent, or the generic JWT (media type case-insensitive, "application/" optional).
const ACCESS_TOKEN_TYPES = new Set(['jwt'])
// Claims an OpenID Connect ID token carries and an access token normally does not (OIDC Core 3.1.3.6, 3.3.2.11).
const ID_TOKEN_CLAIMS = ['nonce', 'at_hash', 'c_hash'] as const
// Claims that mark an access token: the granted scopes (scope, scp) and the client it was issued to (RFC 9068 client_id, Okta cid).
const ACCESS_TOKEN_CLAIMS = ['scope', 'scp', 'client_id', 'cid'] as const

/**
 * Why a verified token is not an access token, or undefined when it is one. An OpenID Connect ID
 * token says who signed in to a client; its audience is that client, so one whose audience
 * happens to match (client id = JWT_AUDIENCE) must still not be accepted as an access token.
 * Accepted: RFC 9068 tokens (typ header at+jwt), Keycloak access tokens (typ claim "Bearer"), and
 * plain JWT access tokens (Auth0, Okta, Entra ID) — those carry no nonce, or carry a scope or client claim.
 */
function notAnAccessToken (header: JWTHeaderParameters, payload: JWTPayload): string | undefined {
  const headerType = typeof header.typ === 'string' ? header.typ.toLowerCase().replace(/^application\//, '') : undefined
  if (headerType === 'at+jwt') return undefined
  if (headerType !== undefined && !ACCESS_TOKEN_TYPES.has(headerType)) {
    return 'The bearer token\'s typ header names another kind of token than an access token (at+jwt or JWT). Send an access token.'
  }
  const claimType = payload.typ
  if (typeof claimType === 'string') {
    if (claimType.toLowerCase() === 'bearer') return undefined
    if (claimType.toLowerCase() === 'id') return idToken('its typ claim is "ID"')
    return 'The bearer token\'s typ claim names another kind of token than an access token ("Bearer"), e.g. a refresh token. Send an access token.'
  }
  const idClaim = ID_TOKEN_CLAIMS.find((claim) => payload[claim] !== undefined)
  if (idClaim !== undefined && !ACCESS_TOKEN_CLAIMS.some((claim) => payload[claim] !== undefined)) {
    return idToken(`it carries "${idClaim}" and no scope or client_id claim`)
  }
  return undefined
}

function idToken (sign: string): string {
  return `The bearer token is an OpenID Connect ID token (${sign}): it says who signed in, and grants no access. Send the access token your client received with it.`
}

/** OIDC/JWT resource server: verifies access tokens against the issuer's JWKS and maps roles to grants. */
export function createJwtAuthenticator (options: JwtAuthenticatorOptions): JwtAuthenticator {
  const { issuer, audience, defaultNamespace, log } = options
  const roleMap = options.roleMap ?? {}
  const clockTolerance = options.clockSkewSeconds ?? 30
  const jwks = options.keySet ?? createJwksCache({ ...options.jwks, issuer, jwksUrl: options.jwksUrl, log })
  const subjectPrefix = options.subjectPrefix ?? 'oidc'

  async function verify (token: string): Promise<JwtIdentity> {
    let payload: JWTPayload
    let header: JWTHeaderParameters
    try {
      ({ payload, protectedHeader: header } = await jwtVerify(token, jwks.getKey, {
        issuer,
        audience,
        clockTolerance,
        algorithms: JWT_ALGORITHMS,
        requiredClaims: ['exp', 'sub']
      }))
    } catch (error) {
      if (error instanceof JwksUnavailableError) throw new AppError('DEP_3002', error.message)
      if (error instanceof AppError) throw error
      if (!(error instanceof errors.JOSEError)) log?.warn({ reason: (error as Error).message }, 'unexpected failure verifying a JWT')
      throw describeFailure(error, audience)
    }
    const notAccess = notAnAccessToken(header, payload)
    if (notAccess !== undefined) throw invalid(notAccess)
    const { sub, jti, exp } = payload
    if (typeof sub !== 'string' || sub.length === 0 || sub.length > MAX_SUBJECT_LENGTH) {
      throw invalid(`The bearer token's "sub" claim must be a string of 1-${MAX_SUBJECT_LENGTH} characters.`)
    }
    let scopeNamespace = defaultNamespace
    if (options.namespaceClaim !== undefined) {
      const named = payload[options.namespaceClaim]
      if (typeof named !== 'string' || !NAMESPACE.test(named)) throw invalid(`The bearer token names no valid namespace in its "${options.namespaceClaim}" claim. Sign in again.`)
      scopeNamespace = named
    }
    const grantId = options.grantClaim === undefined ? undefined : payload[options.grantClaim]
    return {
      principal: principalFromClaims(`${subjectPrefix}:${sub}`, payload, roleMap, defaultNamespace, options.roleClient, options.trustScopeClaim === true, scopeNamespace),
      jti: typeof jti === 'string' ? jti : undefined,
      grantId: typeof grantId === 'string' ? grantId : undefined,
      expiresAt: new Date((exp as number) * 1000)
    }
  }

  return { verify, status: jwks.status, close: jwks.close }
}
