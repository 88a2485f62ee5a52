import { Type } from '@sinclair/typebox'
import { AppError } from '../schema/errors.js'
import { Key, NamespaceArg, Version } from '../schema/key.js'
import { Tags, Timestamp } from '../schema/content.js'
import { defineTool } from './registry.js'

export const readContext = defineTool({
  name: 'read_context',
  title: 'Read context',
  description: 'Read the shared context stored under a key: its content, current version, tags, and who last wrote it. ' +
    'Pass `version` to read an older version (see context_history). Keep the returned version if you intend to update ' +
    'the entry: pass it as expected_version to write_context so that you do not overwrite someone else\'s change.',
  scope: 'context:read',
  annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  inputSchema: Type.Object({
    key: Key,
    version: Type.Optional(Version),
    namespace: Type.Optional(NamespaceArg)
  }, { additionalProperties: false }),
  outputSchema: Type.Object({
    key: Type.String(),
    content: Type.String(),
    version: Type.Integer(),
    tags: Tags,
    updated_at: Timestamp,
    updated_by: Type.String({ description: 'The principal that wrote this version.' }),
    client: Type.Union([Type.String(), Type.Null()], { description: 'The MCP client that wrote this version, when known.' }),
    expires_at: Type.Union([Timestamp, Type.Null()])
  }, { additionalProperties: false }),
  async handler (ctx, input) {
    const entry = await ctx.store.read(ctx.namespace, input.key, input.version)
    if (entry === null) {
      throw input.version === undefined
        ? new AppError('CTX_2001', `No entry under key "${input.key}". Use list_context to see which keys exist.`)
        : new AppError('CTX_2001', `Key "${input.key}" has no version ${input.version}. Use context_history to see its versions.`)
    }
    return {
      key: entry.key,
      content: entry.content,
      version: entry.version,
      tags: entry.tags,
      updated_at: entry.updatedAt,
      updated_by: entry.updatedBy,
      client: entry.client,
      expires_at: entry.expiresAt
    }
  },
  summarize: (output) => `${output.key} (version ${output.version}, by ${output.updated_by} at ${output.updated_at}):\n${output.content}`
})
