import { Type } from '@sinclair/typebox'
import { AppError } from '../schema/errors.js'
import { Key, MAX_VERSION, NamespaceArg } from '../schema/key.js'
import { defineTool } from './registry.js'

export const deleteContext = defineTool({
  name: 'delete_context',
  title: 'Delete context',
  description: 'Delete the entry under a key. Its history is kept, so restore_context can bring it back. Pass the version you ' +
    'last read as expected_version to delete only if nobody changed it since (otherwise error CTX_2002 and nothing is deleted).',
  scope: 'context:delete',
  annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
  inputSchema: Type.Object({
    key: Key,
    expected_version: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_VERSION, description: 'Delete only if the entry is at this version.' })),
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    key: Type.String(),
    deleted_version: Type.Integer({ description: 'The version that was deleted; restore_context can restore it.' })
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    const result = await ctx.store.delete(ctx.namespace, input.key, input.expected_version, ctx.actor)
    if (result.status === 'not_found') {
      throw new AppError('CTX_2001', `No entry under key "${input.key}"; nothing was deleted.`)
    }
    if (result.status === 'conflict') {
      throw new AppError('CTX_2002', `Key "${input.key}" is at version ${result.currentVersion}, not ${input.expected_version}; nothing was deleted. Read it again and decide.`, { current_version: result.currentVersion })
    }
    return { key: input.key, deleted_version: result.deletedVersion }
  },
  summarize: (output) => `Deleted ${output.key} (was version ${output.deleted_version}; restore_context can bring it back).`
})
