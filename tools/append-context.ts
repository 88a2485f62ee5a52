import { Type } from '@sinclair/typebox'
import { AppError } from '../schema/errors.js'
import { Key, NamespaceArg } from '../schema/key.js'
import { Content, NO_NUL_PATTERN } from '../schema/content.js'
import { assertContentFits, assertWellFormed } from './limits.js'
import { defineTool } from './registry.js'

export const appendContext = defineTool({
  name: 'append_context',
  title: 'Append to context',
  description: 'Add text to the end of an entry (creating it if it does not exist) without reading it first — safe when ' +
    'several agents add to the same log, list of findings or decision record at once: every append lands, none is lost. ' +
    'The separator (default a newline) goes between the old content and the new.',
  scope: 'context:write',
  annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
  inputSchema: Type.Object({
    key: Key,
    content: Content,
    separator: Type.Optional(Type.String({ maxLength: 16, pattern: NO_NUL_PATTERN, description: 'Put between the existing content and the new text; default "\\n".' })),
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    key: Type.String(),
    version: Type.Integer(),
    action: Type.Union([Type.Literal('created'), Type.Literal('appended')]),
    bytes: Type.Integer({ description: 'Size of the whole entry after the append, in bytes.' })
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    assertWellFormed(input.content, 'content')
    if (input.separator !== undefined) assertWellFormed(input.separator, 'separator')
    assertContentFits(input.content, ctx.maxContentBytes)
    const result = await ctx.store.append(ctx.namespace, input.key, input.content, input.separator ?? '\n', ctx.actor)
    if (result.status === 'too_large') {
      throw new AppError('CTX_2003', `Appending would make "${input.key}" ${result.bytes} bytes; the limit is ${ctx.maxContentBytes} bytes. Nothing was written; continue in a new key (e.g. "${input.key}/2") or summarise the entry with write_context.`, { bytes: result.bytes, max_bytes: ctx.maxContentBytes })
    }
    return { key: input.key, version: result.version, action: result.status, bytes: result.bytes }
  },
  summarize: (output) => `${output.action === 'created' ? 'Created' : 'Appended to'} ${output.key}: now version ${output.version}, ${output.bytes} bytes.`
})
