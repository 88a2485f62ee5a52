import { Type } from '@sinclair/typebox'

export const KEY_PATTERN = '^[A-Za-z0-9_.:/-]+$'

export const Key = Type.String({
  minLength: 1,
  maxLength: 255,
  pattern: KEY_PATTERN,
  description: 'Entry key: 1-255 characters of A-Z a-z 0-9 _ . - / : — use "/" to build hierarchies, e.g. "project/decisions/db".'
})

export const KeyPrefix = Type.String({
  maxLength: 255,
  pattern: '^[^\\u0000]*$',
  description: 'Only keys starting with this text, matched literally (% and _ are not wildcards).'
})

// Versions are bigint in the database; JSON numbers are exact only up to 2^53 - 1.
export const MAX_VERSION = Number.MAX_SAFE_INTEGER

export const Version = Type.Integer({ minimum: 1, maximum: MAX_VERSION, description: 'A version number of the entry (1 is the first).' })

export const NAMESPACE_PATTERN = '^[A-Za-z0-9_.:/-]{1,255}$'

/** The optional namespace argument every tool takes; without it a call acts in the caller's own namespace. */
export const NamespaceArg = Type.String({
  minLength: 1,
  maxLength: 255,
  pattern: NAMESPACE_PATTERN,
  description: 'Namespace to act in. Omit it to use your own; another namespace needs a grant for it (or context:admin).'
})
