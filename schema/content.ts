import { FormatRegistry, Type } from '@sinclair/typebox'

// Output timestamps are checked against the advertised format in tests (TypeBox knows no formats by default).
FormatRegistry.Set('date-time', (value) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(value) && !Number.isNaN(Date.parse(value)))

/** No NUL: PostgreSQL text cannot hold it. */
export const NO_NUL_PATTERN = '^[^\\u0000]*$'

/**
 * Stored text. The byte limit depends on configuration, and lone UTF-16 surrogates (which would be
 * stored as U+FFFD) cannot be expressed in JSON Schema: the tools check both (tools/limits.ts).
 */
export const Content = Type.String({
  pattern: NO_NUL_PATTERN,
  description: 'UTF-8 text (Markdown is fine), no NUL characters. Limited to MAX_CONTENT_BYTES bytes (100 KiB by default).'
})

export const Tags = Type.Array(
  Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.:/-]+$' }),
  { maxItems: 20, uniqueItems: true, description: 'Up to 20 labels (same characters as keys, 64 max each) for filtering lists.' }
)

export const Timestamp = Type.String({ format: 'date-time', description: 'ISO 8601 time.' })

/** One version of an entry as the history tells it (context_history's versions, changes_since's changes). */
export const historyVersionFields = {
  version: Type.Integer(),
  action: Type.Union(['create', 'update', 'append', 'delete', 'restore'].map((action) => Type.Literal(action))),
  actor: Type.String(),
  client: Type.Union([Type.String(), Type.Null()]),
  at: Timestamp,
  bytes: Type.Union([Type.Integer(), Type.Null()], { description: 'Content size of that version; null for a delete.' })
}
