import { Type } from '@sinclair/typebox'
import { AppError } from '../schema/errors.js'
import { Key, MAX_VERSION, NamespaceArg } from '../schema/key.js'
import { Content, Tags, Timestamp } from '../schema/content.js'
import { assertContentFits, assertWellFormed } from './limits.js'
import { defineTool } from './registry.js'

export const writeContext = defineTool({
  name: 'write_context',
  title: 'Write context',
  description: 'Store text under a key so that other conversations and agents can read it later; replaces the current content ' +
    'and creates a new version (history is kept). To update safely when others may write the same key, pass the version you ' +
    'last read as expected_version: if someone changed it since, nothing is written and you get error CTX_2002 with the ' +
    'current version — read it again, merge, and retry. expected_version 0 means "only create, never overwrite". ' +
    'Use append_context to add to an entry instead of replacing it. ttl_seconds makes the entry expire, which deletes it, so ' +
    'a write with ttl_seconds (setting, shortening or lengthening an expiry) also needs the context:delete scope; without it ' +
    'the write fails with AUTH_1004 and nothing is written. A write without ttl_seconds removes any expiry.',
  scope: 'context:write',
  // Any ttl_seconds counts, lengthening included: telling a lengthening from a shortening would need the current expiry, read inside the write.
  extraScope: (input) => input.ttl_seconds === undefined ? undefined : { scope: 'context:delete', reason: 'with ttl_seconds (an expiry deletes the entry)' },
  annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  inputSchema: Type.Object({
    key: Key,
    content: Content,
    expected_version: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_VERSION, description: 'Write only if the entry is at this version (0: only if it does not exist).' })),
    tags: Type.Optional(Tags),
    ttl_seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 31536000, description: 'Let the entry expire (be deleted) after this many seconds, at most a year; needs the context:delete scope. Omit to keep the entry with no expiry.' })),
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    key: Type.String(),
    version: Type.Integer(),
    action: Type.Union([Type.Literal('created'), Type.Literal('updated')]),
    updated_at: Timestamp
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    assertWellFormed(input.content, 'content')
    assertContentFits(input.content, ctx.maxContentBytes)
    const result = await ctx.store.write(ctx.namespace, input.key, input.content, {
      ...(input.expected_version !== undefined && { expectedVersion: input.expected_version }),
      ...(input.tags !== undefined && { tags: input.tags }),
      ...(input.ttl_seconds !== undefined && { ttlSeconds: input.ttl_seconds })
    }, ctx.actor)
    if (result.status === 'conflict') {
      const current = result.currentVersion
      throw new AppError('CTX_2002', current === null
        ? `Key "${input.key}" does not exist, but expected_version ${input.expected_version} was given. Nothing was written; use expected_version 0 (or omit it) to create the entry.`
        : `Key "${input.key}" is at version ${current}, not ${input.expected_version}: someone else changed it. Nothing was written; read it again, merge your change, and retry with expected_version ${current}.`,
      { current_version: current })
    }
    return { key: input.key, version: result.version, action: result.status, updated_at: result.updatedAt }
  },
  summarize: (output) => `${output.action === 'created' ? 'Created' : 'Updated'} ${output.key}: now version ${output.version}.`
})
