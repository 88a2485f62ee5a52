import { Type } from '@sinclair/typebox'
import { decodePosition, encodePosition } from '../db/change-feed.js'
import { AppError } from '../schema/errors.js'
import { KeyPrefix, NamespaceArg } from '../schema/key.js'
import { historyVersionFields } from '../schema/content.js'
import { Cursor } from '../schema/cursor.js'
import { defineTool } from './registry.js'

export const changesSince = defineTool({
  name: 'changes_since',
  title: 'Changes since',
  description: 'Catch up on what changed in the shared context while you were away: every create, update, append, ' +
    'delete and restore since your last call, oldest first, each once, with key, version, action, author, client, ' +
    'time and size (no content: read_context the keys you need). Keep next_cursor and pass it back as `cursor` next ' +
    'time (it stays valid across sessions and restarts); without a cursor the feed starts at the oldest change, or ' +
    'with from: "now" at the present (an empty page and a cursor to follow from). Narrow with `prefix` or `tag`. ' +
    'Use list_context or search_context instead to see what exists now.',
  scope: 'context:read',
  annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  inputSchema: Type.Object({
    cursor: Type.Optional(Cursor),
    from: Type.Optional(Type.Union([Type.Literal('start'), Type.Literal('now')], {
      description: 'Without a cursor: "start" (default) serves the whole retained history, "now" only what changes from now on.'
    })),
    prefix: Type.Optional(KeyPrefix),
    tag: Type.Optional(Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.:/-]+$', description: 'Only changes of entries with this tag.' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 50, description: 'Page size, 1-100 (default 50).' })),
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    changes: Type.Array(Type.Object({ key: Type.String(), ...historyVersionFields }, { additionalProperties: false })),
    next_cursor: Type.String({ description: 'Pass as cursor next time to get only the changes after these.' }),
    more: Type.Boolean({ description: 'More changes are waiting: call again with next_cursor now.' })
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    if (input.cursor !== undefined && input.from !== undefined) {
      throw new AppError('REQ_1101', 'Invalid arguments for changes_since: pass either cursor (to continue) or from (to start), not both.')
    }
    const after = input.cursor !== undefined
      ? decodePosition(input.cursor)
      : input.from === 'now' ? await ctx.store.feedHead() : null
    const page = await ctx.store.changesSince({
      namespace: ctx.namespace,
      after,
      limit: input.limit ?? 50,
      ...(input.prefix !== undefined && { prefix: input.prefix }),
      ...(input.tag !== undefined && { tag: input.tag })
    })
    return {
      changes: page.changes.map(({ position: _position, ...change }) => change),
      next_cursor: encodePosition(page.position),
      more: page.more
    }
  },
  summarize: (output) => {
    const lines = output.changes.map((c) => `- ${c.key} v${c.version} ${c.action} by ${c.actor}${c.client === null ? '' : ` (${c.client})`} at ${c.at}${c.bytes === null ? '' : `, ${c.bytes} B`}`)
    if (lines.length === 0) lines.push('No changes.')
    lines.push(output.more
      ? `More changes are waiting: call again with cursor "${output.next_cursor}".`
      : `Up to date. Next time pass cursor "${output.next_cursor}" to get only newer changes.`)
    return lines.join('\n')
  }
})
