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
  pattern: '^[A-Za-z0-9_.:/-]*$',
  description: 'Only keys starting with this text (matched literally).'
})

export const Version = Type.Integer({ minimum: 1, description: 'A version number of the entry (1 is the first).' })
