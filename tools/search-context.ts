import { createHash } from 'node:crypto'
import { Type } from '@sinclair/typebox'
import { MAX_RANKED, SNIPPET_MAX_CHARS, type SearchPosition } from '../db/context-store.js'
import { NO_NUL_PATTERN, Tags, Timestamp } from '../schema/content.js'
import { Cursor, decodeCursor, encodeCursor } from '../schema/cursor.js'
import { AppError } from '../schema/errors.js'
import { KeyPrefix, NamespaceArg } from '../schema/key.js'
import { assertWellFormed } from './limits.js'
import { defineTool } from './registry.js'

const CURSOR_KIND = 'search'
export const MAX_QUERY_CHARS = 500
// "<search> <as of> <score> <key>": the search the cursor belongs to, when its first page ran,
// and the last item's score and key. Keys hold no spaces.
const POSITION = /^([0-9a-f]{16}) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\d{1,12}) ([A-Za-z0-9_.:/-]{1,255})$/

interface SearchArguments { query: string, prefix?: string, tag?: string, updated_after?: string }

/** Which search a cursor belongs to: a page of one search must not continue another. */
function searchId (namespace: string, input: SearchArguments): string {
  const identity = JSON.stringify([namespace, input.query, input.prefix ?? '', input.tag ?? null, input.updated_after ?? null])
  return createHash('sha256').update(identity).digest('hex').slice(0, 16)
}

function positionOf (cursor: string, id: string): SearchPosition {
  const position = decodeCursor(CURSOR_KIND, cursor, (text) => POSITION.test(text))
  const [, cursorId, asOf, score, key] = POSITION.exec(position) as unknown as [string, string, string, string, string]
  if (cursorId !== id) {
    throw new AppError('REQ_1101', 'cursor belongs to another search: pass the same query, prefix, tag and updated_after as for the page it came from, or omit cursor to start again.')
  }
  return { asOf, score: Number(score), key }
}

function updatedAfter (value: string): Date {
  const date = new Date(value)
  // JSON Schema's date-time takes year 0000, which PostgreSQL has not (1 BC is year 1 before 1 AD).
  if (date.getUTCFullYear() < 1) {
    throw new AppError('REQ_1101', 'Invalid arguments for search_context: updated_after must be a time from the year 1 on, e.g. "2026-01-31T00:00:00Z".')
  }
  return date
}

export const searchContext = defineTool({
  name: 'search_context',
  title: 'Search context',
  description: 'Find entries of the shared context by what they say, when you do not know their keys: the words you give ' +
    'are looked up in every entry\'s key, tags and content, best match first, each with a snippet of the matching text ' +
    '(matches between ** and **). Misspelt words and parts of identifiers still find entries (postgress, createContext). ' +
    'Give a few distinctive words ("postgres connection pool"), not a sentence: all words must match, as whole words ' +
    '(postgres does not find PostgreSQL: ask "postgres or postgresql"); "quoted phrase", or and -word work as in web ' +
    'search. Snippets are excerpts: read_context the keys you need before relying on ' +
    'them or changing them. If you know the key, call read_context directly; to see everything under a prefix, ' +
    'list_context. Narrow with prefix, tag or updated_after; more results: pass next_cursor back as cursor.',
  scope: 'context:read',
  annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  inputSchema: Type.Object({
    query: Type.String({
      minLength: 1,
      maxLength: MAX_QUERY_CHARS,
      pattern: NO_NUL_PATTERN,
      description: `Words to look for, e.g. "postgres connection pool" (1-${MAX_QUERY_CHARS} characters, no NUL); all must match; "a phrase", or, -word work.`
    }),
    prefix: Type.Optional(KeyPrefix),
    tag: Type.Optional(Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.:/-]+$', description: 'Only entries with this tag.' })),
    updated_after: Type.Optional(Type.String({ format: 'date-time', description: 'Only entries written after this time (ISO 8601, e.g. "2026-01-31T00:00:00Z").' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 50, default: 10, description: 'Results per page, 1-50 (default 10).' })),
    cursor: Type.Optional(Cursor),
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    items: Type.Array(Type.Object({
      key: Type.String(),
      version: Type.Integer(),
      score: Type.Number({ minimum: 0, maximum: 1, description: 'Relevance: higher is better; comparable within one search only.' }),
      snippet: Type.String({ maxLength: SNIPPET_MAX_CHARS, description: 'The part of the content that matched, matching words between ** and **.' }),
      tags: Tags,
      updated_at: Timestamp,
      updated_by: Type.String()
    }, { additionalProperties: false })),
    next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as cursor (with the same query and filters) for more results; null when there are no more.' }),
    partial: Type.Boolean({ description: `true: more than ${MAX_RANKED} entries matched, and the results are the best of the ${MAX_RANKED} most recently written; add words or a filter to search them all.` })
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    assertWellFormed(input.query, 'query', 'Send the words as plain text.')
    if (input.prefix !== undefined) assertWellFormed(input.prefix, 'prefix', 'Send the prefix as plain text.')
    const id = searchId(ctx.namespace, input)
    const page = await ctx.store.search(ctx.namespace, {
      query: input.query,
      limit: input.limit ?? 10,
      ...(input.prefix !== undefined && { prefix: input.prefix }),
      ...(input.tag !== undefined && { tag: input.tag }),
      ...(input.updated_after !== undefined && { updatedAfter: updatedAfter(input.updated_after) }),
      ...(input.cursor !== undefined && { after: positionOf(input.cursor, id) })
    })
    if (page.status === 'no_words') {
      throw new AppError('REQ_1101', 'query has nothing to search for: only operators, punctuation, excluded (-) words or words too common to index. ' +
        'Use plain words, e.g. "postgres connection pool".')
    }
    return {
      items: page.items.map((item) => ({
        key: item.key,
        version: item.version,
        score: item.score,
        snippet: item.snippet,
        tags: item.tags,
        updated_at: item.updatedAt,
        updated_by: item.updatedBy
      })),
      next_cursor: page.next === null ? null : encodeCursor(CURSOR_KIND, `${id} ${page.next.asOf} ${page.next.score} ${page.next.key}`),
      partial: page.partial
    }
  },
  summarize: (output) => {
    if (output.items.length === 0) return 'No entries match. Try other or fewer words, or list_context to browse.'
    const lines = output.items.map((item) => `- ${item.key} (v${item.version}, score ${item.score}): ${item.snippet}`)
    if (output.next_cursor !== null) lines.push(`More results: call again with the same query and cursor "${output.next_cursor}".`)
    if (output.partial) lines.push(`More than ${MAX_RANKED} entries match: these are the best of the ${MAX_RANKED} most recent. Add words or a prefix, tag or updated_after filter to search them all.`)
    return lines.join('\n')
  }
})
