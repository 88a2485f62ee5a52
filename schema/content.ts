import { Type } from '@sinclair/typebox'

/** Text with no NUL characters. The byte limit depends on configuration and is checked by the tools. */
export const Content = Type.String({
  pattern: '^[^\\u0000]*$',
  description: 'UTF-8 text (Markdown is fine). Limited to MAX_CONTENT_BYTES bytes (100 KiB by default).'
})

export const Tags = Type.Array(
  Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.:/-]+$' }),
  { maxItems: 20, uniqueItems: true, description: 'Up to 20 labels (same characters as keys, 64 max each) for filtering lists.' }
)

export const Timestamp = Type.String({ format: 'date-time', description: 'ISO 8601 time.' })
