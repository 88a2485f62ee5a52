import { FormatRegistry, Type } from '@sinclair/typebox'

// Text must survive the round trip unchanged: no NUL (PostgreSQL text cannot hold it) and no lone
// UTF-16 surrogate (it would be stored as U+FFFD).
FormatRegistry.Set('text', (value) => value.isWellFormed() && !value.includes('\u0000'))
FormatRegistry.Set('date-time', (value) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(value) && !Number.isNaN(Date.parse(value)))

/** Stored text. The byte limit depends on configuration and is checked by the tools. */
export const Content = Type.String({
  format: 'text',
  description: 'UTF-8 text (Markdown is fine), no NUL characters. Limited to MAX_CONTENT_BYTES bytes (100 KiB by default).'
})

export const Tags = Type.Array(
  Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.:/-]+$' }),
  { maxItems: 20, uniqueItems: true, description: 'Up to 20 labels (same characters as keys, 64 max each) for filtering lists.' }
)

export const Timestamp = Type.String({ format: 'date-time', description: 'ISO 8601 time.' })
