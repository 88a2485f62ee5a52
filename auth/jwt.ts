import type { FastifyBaseLogger } from 'fastify'
import { errors, jwtVerify, type JWSAlgorithm, type JWTPayload } from 'jose'
import type { Config } from '../schema/config.js'
import { AppError } from '../schema/errors.js'
import type { Principal } from '../schema/principal.js'
import { createJwksCache, JwksUnavailableError, type JwksCacheOptions } from './jwks.js'
import { jwtAudience, parseRoleMap, principalFromClaims, type RoleMap } from './roles.js'

export { jwtAudience, jwtConfigProblems } from './roles.js'

export interface JwtIdentity {
  principal: Principal
  jti: string | undefined
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
  /** Where role grants without a namespace and OAuth scope claims apply (plugins/auth.ts DEFAULT_NAMESPACE). */
  defaultNamespace: string
  log?: FastifyBaseLogger | undefined
  /** Cache tuning; defaults in JWKS_DEFAULTS. */
  jwks?: Pick<JwksCacheOptions, 'cooldownMs' | 'refreshIntervalMs' | 'timeoutMs' | 'maxBytes' | 'now'>
}

/** Asymmetric algorithms only: a shared-secret (HS*) or unsigned token is never accepted. */
export const JWT_ALGORITHMS: JWSAlgorithm[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']

const MAX_SUBJECT_LENGTH = 255
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/

/** Whether a bearer token has the shape of a compact JWS (three base64url segments), as opposed to an API token. */
export function looksLikeJwt (token: string): boolean {
  return JWT_SHAPE.test(token)
}

/** The authenticator options the configuration gives; undefined when OIDC_ISSUER is unset. */
export function jwtOptionsFromConfig (config: Config, defaultNamespace: string): JwtAuthenticatorOptions | undefined {
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

/** OIDC/JWT resource server: verifies access tokens against the issuer's JWKS and maps roles to grants. */
export function createJwtAuthenticator (options: JwtAuthenticatorOptions): JwtAuthenticator {
  const { issuer, audience, defaultNamespace, log } = options
  const roleMap = options.roleMap ?? {}
  const clockTolerance = options.clockSkewSeconds ?? 30
  const jwks = createJwksCache({ ...options.jwks, issuer, jwksUrl: options.jwksUrl, log })

  async function verify (token: string): Promise<JwtIdentity> {
    let payload: JWTPayload
    try {
      ({ payload } = await jwtVerify(token, jwks.getKey, {
        issuer,
        audience,
        clockTolerance,
        algorithms: JWT_ALGORITHMS,
        requiredClaims: ['exp', 'sub']
      }))
    } catch (error) {
      if (error instanceof JwksUnavailableError) throw new AppError('DEP_3002', error.message)
      if (!(error instanceof errors.JOSEError)) log?.warn({ reason: (error as Error).message }, 'unexpected failure verifying a JWT')
      throw describeFailure(error, audience)
    }
    const { sub, jti, exp } = payload
    if (typeof sub !== 'string' || sub.length === 0 || sub.length > MAX_SUBJECT_LENGTH) {
      throw invalid(`The bearer token's "sub" claim must be a string of 1-${MAX_SUBJECT_LENGTH} characters.`)
    }
    return {
      principal: principalFromClaims(`oidc:${sub}`, payload, roleMap, defaultNamespace, options.roleClient),
      jti: typeof jti === 'string' ? jti : undefined,
      expiresAt: new Date((exp as number) * 1000)
    }
  }

  return { verify, status: jwks.status, close: jwks.close }
}
