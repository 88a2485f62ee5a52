import type { Principal } from '../schema/principal.js'
import { globsOf, type AllowEntry, type AllowKind } from './config.js'

/**
 * Access to upstream tools, prompts and resources: deny by default. A principal sees and calls
 * `<upstream>__<tool>` only if one of its scopes is named in the upstream's `allow` with a glob
 * matching the tool's name; prompts (by name) and resources (by URI) likewise, with the globs of
 * their own kind.
 * Scopes are an open set here (hr:read, finance:read …): whatever the principal was granted.
 */

/** A tool-name glob (* any run, ? one character) as an anchored RegExp. */
export function globToRegExp (glob: string): RegExp {
  const source = glob.replace(/[.+^${}()|[\]\\/]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
  return new RegExp(`^${source}$`)
}

export function matchesAny (name: string, globs: readonly RegExp[]): boolean {
  return globs.some((glob) => glob.test(name))
}

export type AllowRules = ReadonlyArray<{ scope: string, globs: RegExp[] }>

export function compileAllow (allow: Record<string, AllowEntry>, kind: AllowKind): AllowRules {
  return Object.entries(allow).map(([scope, entry]) => ({ scope, globs: globsOf(entry, kind).map(globToRegExp) }))
}

/** The scopes that allow a tool (computed once per listing, so a call checks a set). */
export function scopesAllowing (rules: AllowRules, tool: string): ReadonlySet<string> {
  return new Set(rules.filter((rule) => matchesAny(tool, rule.globs)).map((rule) => rule.scope))
}

/** Whether any of the principal's scopes is among `allowing`. */
export function mayCall (principal: Principal, allowing: ReadonlySet<string>): boolean {
  for (const scope of principal.scopes as ReadonlySet<string>) if (allowing.has(scope)) return true
  return false
}

/** The cache key of what a principal may see: its scope set. */
export function scopeKey (principal: Principal): string {
  return [...principal.scopes].sort().join(' ')
}
