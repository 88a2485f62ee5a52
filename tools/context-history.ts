import { Type } from '@sinclair/typebox'
import { AppError } from '../schema/errors.js'
import { Key, NamespaceArg } from '../schema/key.js'
import { historyVersionFields } from '../schema/content.js'
import { Cursor, decodeCursor, encodeCursor } from '../schema/cursor.js'
import { defineTool } from './registry.js'

const CURSOR_KIND = 'history'
const isVersion = (position: string) => /^[1-9][0-9]{0,15}$/.test(position) && Number.isSafeInteger(Number(position))

export const contextHistory = defineTool({
  name: 'context_history',
  title: 'Context history',
  description: 'Show who changed a key and when, newest first: each version with its action (create, update, append, ' +
    'delete, restore), author, client, time and size. Read an old version with read_context(key, version) and bring it ' +
    'back with restore_context. Pages of 20 by default; pass next_cursor back as `cursor` for older versions.',
  scope: 'context:read',
  annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  inputSchema: Type.Object({
    key: Key,
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20, description: 'Page size, 1-100 (default 20).' })),
    cursor: Type.Optional(Cursor),
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    key: Type.String(),
    versions: Type.Array(Type.Object(historyVersionFields, { additionalProperties: false })),
    next_cursor: Type.Union([Type.String(), Type.Null()])
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    const beforeVersion = input.cursor === undefined ? undefined : Number(decodeCursor(CURSOR_KIND, input.cursor, isVersion))
    const page = await ctx.store.history(ctx.namespace, input.key, {
      limit: input.limit ?? 20,
      ...(beforeVersion !== undefined && { beforeVersion })
    })
    if (page.items.length === 0 && beforeVersion === undefined) {
      throw new AppError('CTX_2001', `Key "${input.key}" has no history: it was never written.`)
    }
    return {
      key: input.key,
      versions: page.items.map((item) => ({
        version: item.version,
        action: item.action,
        actor: item.actor,
        client: item.client,
        at: item.at,
        bytes: item.bytes
      })),
      next_cursor: page.nextBeforeVersion === null ? null : encodeCursor(CURSOR_KIND, page.nextBeforeVersion)
    }
  },
  summarize: (output) => {
    const lines = output.versions.map((v) => `- v${v.version} ${v.action} by ${v.actor}${v.client === null ? '' : ` (${v.client})`} at ${v.at}${v.bytes === null ? '' : `, ${v.bytes} B`}`)
    if (output.next_cursor !== null) lines.push(`Older versions: call again with cursor "${output.next_cursor}".`)
    return `History of ${output.key}:\n${lines.join('\n')}`
  }
})
