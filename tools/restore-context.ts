import { Type } from '@sinclair/typebox'
import { AppError } from '../schema/errors.js'
import { Key, NamespaceArg, Version } from '../schema/key.js'
import { defineTool } from './registry.js'

export const restoreContext = defineTool({
  name: 'restore_context',
  title: 'Restore context',
  description: 'Bring back an earlier version of a key (also one that was deleted): its content and tags become a new ' +
    'version on top of the history, so nothing is lost and the restore itself can be undone. Find the version with context_history.',
  scope: 'context:write',
  annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
  inputSchema: Type.Object({
    key: Key,
    version: Version,
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    key: Type.String(),
    version: Type.Integer({ description: 'The new version holding the restored content.' }),
    restored_from: Type.Integer()
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    const result = await ctx.store.restore(ctx.namespace, input.key, input.version, ctx.actor)
    if (result.status === 'not_found') {
      throw new AppError('CTX_2001', `Key "${input.key}" has no history: it was never written.`)
    }
    if (result.status === 'version_not_found') {
      throw new AppError('CTX_2001', `Key "${input.key}" has no restorable version ${input.version}. Use context_history to see its versions (a delete cannot be restored; restore the version before it).`)
    }
    return { key: input.key, version: result.version, restored_from: result.restoredFrom }
  },
  summarize: (output) => `Restored ${output.key} from version ${output.restored_from}: now version ${output.version}.`
})
