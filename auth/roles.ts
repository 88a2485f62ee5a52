import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import type { JWTPayload } from 'jose'
import type { Config } from '../schema/config.js'
import { NAMESPACE_PATTERN } from '../schema/key.js'
import { SCOPES, SCOPE_NAME_PATTERN, isContextScope, isScopeName, multiNamespacePrincipal, scopeNameProblem, type Principal, type Scope } from '../schema/principal.js'

// Scope names are an open set (the gateway's upstream rules use hr:read and the like); under
// context: only this server's own (a typo such as context:wirte is refused).
export const RoleGrantSchema = Type.Object({
  scopes: Type.Array(Type.String({ pattern: SCOPE_NAME_PATTERN, maxLength: 64 }), { minItems: 1 }),
  namespace: Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: NAMESPACE_PATTERN }))
}, { additionalProperties: false })

/** JWT_ROLE_MAP: role name -> the scopes it grants and the namespace they apply in (default namespace when omitted). */
export const RoleMapSchema = Type.Record(Type.String({ minLength: 1 }), RoleGrantSchema)
export type RoleMap = Static<typeof RoleMapSchema>

/** What is wrong with a JWT_ROLE_MAP value, one line a problem, each naming the variable. */
export function roleMapProblems (json: string): string[] {
  let value: unknown
  try {
    value = JSON.parse(json)
  } catch {
    return ['JWT_ROLE_MAP: must be JSON, e.g. {"hr-write": {"scopes": ["context:read", "context:write"], "namespace": "hr"}}']
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return ['JWT_ROLE_MAP: must be a JSON object mapping role names to {"scopes": [...], "namespace"?: "..."}']
  }
  const problems: string[] = []
  const seen = new Set<string>()
  for (const error of Value.Errors(RoleMapSchema, value)) {
    if (seen.has(error.path)) continue
    seen.add(error.path)
    const [role, field, index] = error.path.split('/').slice(1).map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    const where = role === undefined ? '' : ` role ${JSON.stringify(role)}${field === undefined ? '' : ` ${field}${index === undefined ? '' : `[${index}]`}`}`
    const message = field === 'scopes' && index !== undefined
      ? typeof error.value === 'string' ? String(scopeNameProblem(error.value)) : 'must be a scope name such as context:read or hr:read'
      : field === 'namespace'
        ? 'must be 1-255 characters of A-Z a-z 0-9 _ . : / -'
        : error.message
    problems.push(`JWT_ROLE_MAP:${where}: ${message}`)
  }
  return problems
}

/**
 * The scopes OAuth clients may ask for and the consent page may grant: the context scopes but
 * context:admin (only roles and API tokens carry it), then the scope names the gateway's upstream
 * rules use (UPSTREAMS_FILE `allow`), sorted.
 */
export function grantableScopes (config: Pick<Config, 'upstreams'>): string[] {
  const gateway = new Set<string>()
  for (const upstream of config.upstreams ?? []) for (const scope of Object.keys(upstream.allow)) if (!isContextScope(scope)) gateway.add(scope)
  return [...SCOPES.filter((scope) => scope !== 'context:admin'), ...[...gateway].sort()]
}

/** The audience tokens must carry: JWT_AUDIENCE, else PUBLIC_URL/mcp; undefined when neither is set. */
export function jwtAudience (config: Pick<Config, 'JWT_AUDIENCE' | 'PUBLIC_URL'>): string | undefined {
  if (config.JWT_AUDIENCE !== undefined) return config.JWT_AUDIENCE
  if (config.PUBLIC_URL !== undefined) return `${config.PUBLIC_URL.replace(/\/+$/, '')}/mcp`
  return undefined
}

/** Cross-field checks of the OIDC settings for loadConfig: one line a problem, naming the variable. */
export function jwtConfigProblems (config: Partial<Pick<Config, 'OIDC_ISSUER' | 'JWT_AUDIENCE' | 'PUBLIC_URL' | 'JWT_ROLE_MAP'>>): string[] {
  const problems = typeof config.JWT_ROLE_MAP === 'string' ? roleMapProblems(config.JWT_ROLE_MAP) : []
  if (config.OIDC_ISSUER !== undefined && config.PUBLIC_URL === undefined) {
    problems.push('PUBLIC_URL: required when OIDC_ISSUER is set; OAuth clients learn the resource (PUBLIC_URL/mcp) and the default JWT audience from it')
  }
  return problems
}

/** Parses a JWT_ROLE_MAP that loadConfig accepted; throws on one it would not have. */
export function parseRoleMap (json: string): RoleMap {
  const problems = roleMapProblems(json)
  if (problems.length > 0) throw new Error(problems.join('\n'))
  return JSON.parse(json) as RoleMap
}

function stringsOf (value: unknown): string[] {
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === 'string') : []
}

function ownField (object: unknown, name: string): unknown {
  return typeof object === 'object' && object !== null && Object.hasOwn(object, name)
    ? (object as Record<string, unknown>)[name]
    : undefined
}

/**
 * Every role the token carries: Keycloak's realm_access.roles, resource_access.<client>.roles of one
 * client — JWT_ROLE_CLIENT, else the authorized party (azp) — and a top-level `roles` array (Entra
 * ID, Auth0). Not every audience's client roles: Keycloak lists other clients (`account`) in aud,
 * and a role named like ours on one of them must not grant anything here.
 */
export function rolesOf (claims: JWTPayload, roleClient?: string): Set<string> {
  const roles = new Set<string>(stringsOf(ownField(claims.realm_access, 'roles')))
  const client = roleClient ?? (typeof claims.azp === 'string' ? claims.azp : undefined)
  if (client !== undefined) {
    for (const role of stringsOf(ownField(ownField(claims.resource_access, client), 'roles'))) roles.add(role)
  }
  for (const role of stringsOf(claims.roles)) roles.add(role)
  return roles
}

/**
 * OAuth scope values (`scope` string or `scp` string/array) that are scope names (context:read,
 * hr:read; not OpenID's openid or profile) — except context:admin, which only a mapped role grants:
 * some identity providers issue any API scope a client asks for.
 */
export function oauthScopesOf (claims: JWTPayload): Set<Scope> {
  const values = [
    ...(typeof claims.scope === 'string' ? claims.scope.split(' ') : []),
    ...(typeof claims.scp === 'string' ? claims.scp.split(' ') : stringsOf(claims.scp))
  ]
  return new Set(values.filter((value) => value !== 'context:admin' && isScopeName(value)))
}

/**
 * The principal of a verified token: each mapped role grants its scopes in its namespace; with
 * `trustScopeClaim`, our scope names in `scope`/`scp` apply in the default namespace too. Off by
 * default (JWT_TRUST_SCOPE_CLAIM): many identity providers put any scope a client requests into
 * the token, which would let every user who can sign in bypass the role map. The home namespace
 * is that of the first role in the map's order that the token carries, else the default one. No
 * grants is a valid outcome.
 */
export function principalFromClaims (id: string, claims: JWTPayload, roleMap: RoleMap, defaultNamespace: string, roleClient?: string, trustScopeClaim = false, scopeNamespace = defaultNamespace): Principal {
  const roles = rolesOf(claims, roleClient)
  const grants = new Map<string, Set<Scope>>()
  const grant = (namespace: string, scopes: Iterable<Scope>): void => {
    const granted = grants.get(namespace) ?? new Set<Scope>()
    for (const scope of scopes) granted.add(scope)
    grants.set(namespace, granted)
  }
  let home: string | undefined
  let globalAdmin = false
  for (const [role, mapped] of Object.entries(roleMap)) {
    if (!roles.has(role)) continue
    // A role that maps to context:admin without a namespace is admin everywhere; with one, only there.
    if (mapped.namespace === undefined && mapped.scopes.includes('context:admin')) globalAdmin = true
    const namespace = mapped.namespace ?? defaultNamespace
    home ??= namespace
    grant(namespace, mapped.scopes)
  }
  const oauthScopes = trustScopeClaim ? oauthScopesOf(claims) : new Set<Scope>()
  if (oauthScopes.size > 0) {
    grant(scopeNamespace, oauthScopes)
    home ??= scopeNamespace
  }
  return multiNamespacePrincipal(id, grants, home ?? defaultNamespace, globalAdmin)
}
