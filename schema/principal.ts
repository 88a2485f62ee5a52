export const SCOPES = ['context:read', 'context:write', 'context:delete', 'context:admin'] as const
export type Scope = typeof SCOPES[number]

/** Who is calling: resolved by the auth plugin, used for scope checks, namespacing and audit. */
export interface Principal {
  /** Stable id recorded as the author of every version, e.g. `token:laptop`. */
  id: string
  /** The namespace the principal's keys live in. */
  namespace: string
  scopes: ReadonlySet<Scope>
}
