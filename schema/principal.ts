export const SCOPES = ['context:read', 'context:write', 'context:delete', 'context:admin'] as const
export type Scope = typeof SCOPES[number]

/** Who is calling: resolved by the auth plugin, used for scope checks, namespacing and audit. */
export interface Principal {
  /** Stable id recorded as the author of every version, e.g. `token:laptop` or `oidc:<sub>`. */
  id: string
  /** The namespace a tool call acts in when it names none. */
  namespace: string
  /** Scopes per namespace; context:admin in a namespace's grant allows every scope there. */
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

/** Whether the principal may use `scope` in `namespace`. */
export function mayUse (principal: Principal, namespace: string, scope: Scope): boolean {
  if (principal.globalAdmin) return true
  const granted = principal.grants.get(namespace)
  return granted !== undefined && (granted.has(scope) || granted.has('context:admin'))
}

/** The rate-limit tier of a principal: its strongest scope. */
export type RateLimitTier = 'admin' | 'writer' | 'reader' | 'default'
export function tierOf (principal: Principal): RateLimitTier {
  if (principal.scopes.has('context:admin')) return 'admin'
  if (principal.scopes.has('context:write') || principal.scopes.has('context:delete')) return 'writer'
  if (principal.scopes.has('context:read')) return 'reader'
  return 'default'
}
