/** This server's own scopes: what the context tools need. Their meaning is fixed. */
export const SCOPES = ['context:read', 'context:write', 'context:delete', 'context:admin'] as const
export type ContextScope = typeof SCOPES[number]

/**
 * A scope name: `domain:action` in lower case, e.g. context:read or hr:read. The set is open: the
 * gateway's upstream rules (UPSTREAMS_FILE `allow`) give names such as hr:read their meaning; API
 * tokens, JWT_ROLE_MAP and the consent page grant them. Under `context:` only this server's own
 * names exist (a typo there is refused rather than granted as a scope nothing checks).
 */
export type Scope = string
export const SCOPE_PATTERN = '^[a-z][a-z0-9_-]*:[a-z][a-z0-9_-]*$'
/** SCOPE_PATTERN, with only this server's own names under context: (for TypeBox schemas). */
export const SCOPE_NAME_PATTERN = `^(?:${SCOPES.join('|')}|(?!context:)[a-z][a-z0-9_-]*:[a-z][a-z0-9_-]*)$`
const SCOPE_NAME = new RegExp(SCOPE_PATTERN)
const MAX_SCOPE_CHARS = 64

/** Why `name` is no scope name, or undefined when it is one. */
export function scopeNameProblem (name: string): string | undefined {
  if (name.length > MAX_SCOPE_CHARS || !SCOPE_NAME.test(name)) return `"${name.slice(0, MAX_SCOPE_CHARS)}" is not a scope name: domain:action in lower case (a-z 0-9 _ -), at most ${MAX_SCOPE_CHARS} characters, e.g. hr:read`
  if (name.startsWith('context:') && !(SCOPES as readonly string[]).includes(name)) return `unknown scope "${name}"; known scopes are ${SCOPES.join(', ')}, and other domains' domain:action names (e.g. hr:read)`
  return undefined
}

export function isScopeName (name: string): boolean {
  return scopeNameProblem(name) === undefined
}

export function isContextScope (name: string): name is ContextScope {
  return (SCOPES as readonly string[]).includes(name)
}

/** Who is calling: resolved by the auth plugin, used for scope checks, namespacing and audit. */
export interface Principal {
  /** Stable id recorded as the author of every version, e.g. `token:laptop` or `oidc:<sub>`. */
  id: string
  /** The namespace a tool call acts in when it names none. */
  namespace: string
  /** Scopes per namespace; context:admin in a namespace's grant allows every context scope there (never another domain's). */
  grants: ReadonlyMap<string, ReadonlySet<Scope>>
  /** Every scope granted anywhere: decides which tools tools/list shows, and the rate-limit tier. */
  scopes: ReadonlySet<Scope>
  /** context:admin in every namespace (an API token created with --global-admin, or a role mapped to context:admin without a namespace). */
  globalAdmin: boolean
  /**
   * Set when the token's revocation could not be checked and REVOCATION_FAIL_MODE lets reads
   * through: every call that needs more than context:read fails with this error.
   */
  writesRefused?: Error
}

/**
 * A principal whose scopes all apply to one namespace (API tokens, the static token). context:admin
 * among them is admin of that namespace only, unless `globalAdmin` makes it admin of every one.
 */
export function singleNamespacePrincipal (id: string, namespace: string, scopes: Iterable<Scope>, globalAdmin = false): Principal {
  const set = new Set(scopes)
  if (globalAdmin) set.add('context:admin')
  return { id, namespace, grants: new Map([[namespace, set]]), scopes: set, globalAdmin }
}

/** A principal built from several grants; its home namespace is the first one given. */
export function multiNamespacePrincipal (id: string, grants: ReadonlyMap<string, ReadonlySet<Scope>>, homeNamespace: string, globalAdmin: boolean): Principal {
  const scopes = new Set<Scope>()
  for (const granted of grants.values()) for (const scope of granted) scopes.add(scope)
  if (globalAdmin) scopes.add('context:admin')
  return { id, namespace: homeNamespace, grants, scopes, globalAdmin }
}

/**
 * Whether the principal may use `scope` in `namespace`. context:admin (and a global admin) covers
 * the context scopes only: an admin of the shared context is not thereby an HR or finance user.
 */
export function mayUse (principal: Principal, namespace: string, scope: Scope): boolean {
  const context = isContextScope(scope)
  if (principal.globalAdmin && context) return true
  const granted = principal.grants.get(namespace)
  return granted !== undefined && (granted.has(scope) || (context && granted.has('context:admin')))
}

/** The rate-limit tier of a principal: its strongest scope. */
export type RateLimitTier = 'admin' | 'writer' | 'reader' | 'default'
export function tierOf (principal: Principal): RateLimitTier {
  if (principal.scopes.has('context:admin')) return 'admin'
  if (principal.scopes.has('context:write') || principal.scopes.has('context:delete')) return 'writer'
  if (principal.scopes.has('context:read')) return 'reader'
  return 'default'
}
