import { Type } from '@sinclair/typebox'
import { KEY_PATTERN, KeyPrefix, NamespaceArg } from '../schema/key.js'
import { Tags, Timestamp } from '../schema/content.js'
import { Cursor, decodeCursor, encodeCursor } from '../schema/cursor.js'
import { defineTool } from './registry.js'

const CURSOR_KIND = 'list'
const keyPattern = new RegExp(KEY_PATTERN)
const isKey = (position: string) => position.length <= 255 && keyPattern.test(position)

export const listContext = defineTool({
  name: 'list_context',
  title: 'List context',
  description: 'List the keys in the shared context, in key order, with each entry\'s version, size, tags, last writer and a ' +
    'short preview — use it to discover what others have stored before reading. Narrow with `prefix` (e.g. "project/") ' +
    'or `tag`. Results come in pages (50 by default, at most 100): pass next_cursor back as `cursor` for the next page.',
  scope: 'context:read',
  annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  inputSchema: Type.Object({
    prefix: Type.Optional(KeyPrefix),
    tag: Type.Optional(Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.:/-]+$', description: 'Only entries with this tag.' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 50, description: 'Page size, 1-100 (default 50).' })),
    cursor: Type.Optional(Cursor),
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    items: Type.Array(Type.Object({
      key: Type.String(),
      version: Type.Integer(),
      bytes: Type.Integer(),
      tags: Tags,
      updated_at: Timestamp,
      updated_by: Type.String(),
      preview: Type.String({ description: 'The start of the content.' })
    }, { additionalProperties: false })),
    next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as cursor to get the next page; null on the last page.' })
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    const page = await ctx.store.list(ctx.namespace, {
      limit: input.limit ?? 50,
      ...(input.prefix !== undefined && { prefix: input.prefix }),
      ...(input.tag !== undefined && { tag: input.tag }),
      ...(input.cursor !== undefined && { afterKey: decodeCursor(CURSOR_KIND, input.cursor, isKey) })
    })
    return {
      items: page.items.map((item) => ({
        key: item.key,
        version: item.version,
        bytes: item.bytes,
        tags: item.tags,
        updated_at: item.updatedAt,
        updated_by: item.updatedBy,
        preview: item.preview
      })),
      next_cursor: page.nextAfterKey === null ? null : encodeCursor(CURSOR_KIND, page.nextAfterKey)
    }
  },
  summarize: (output) => {
    if (output.items.length === 0) return 'No entries.'
    const lines = output.items.map((item) => `- ${item.key} (v${item.version}, ${item.bytes} B): ${item.preview}`)
    if (output.next_cursor !== null) lines.push(`More entries: call again with cursor "${output.next_cursor}".`)
    return lines.join('\n')
  }
})
