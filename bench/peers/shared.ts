import type { Static } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'
import { createSql } from '../../db/connect.js'
import { createContextStore, type ContextStore } from '../../db/context-store.js'
import { readContext } from '../../tools/read-context.js'
import { toolError, type ToolCallResult } from '../../tools/registry.js'
import { writeContext } from '../../tools/write-context.js'

// What the two peer servers share: the project's own store on the bench database, and the same
// results the real read_context / write_context tools give (same output fields, same text).

export const NAMESPACE = 'default'
const ACTOR = { principal: 'bench-peer', client: null }

export function storeFromEnv (): { store: ContextStore, close: () => Promise<void> } {
  const url = process.env.DATABASE_URL
  if (url === undefined) throw new Error('DATABASE_URL is required')
  const sql = createSql(url, { max: Number(process.env.DB_POOL_MAX ?? 10), connectTimeoutMs: 10_000 })
  return {
    store: createContextStore(sql, { maxContentBytes: 102400 }),
    close: async () => { await sql.end({ timeout: 5 }) }
  }
}

export async function readResult (store: ContextStore, key: string): Promise<ToolCallResult> {
  const entry = await store.read(NAMESPACE, key)
  if (entry === null) return toolError('CTX_2001', `No entry under key "${key}".`)
  const output: Static<typeof readContext.outputSchema> = {
    key: entry.key,
    content: entry.content,
    version: entry.version,
    tags: entry.tags,
    updated_at: entry.updatedAt,
    updated_by: entry.updatedBy,
    client: entry.client,
    expires_at: entry.expiresAt
  }
  return { content: [{ type: 'text', text: readContext.summarize(output) }], structuredContent: output }
}

export async function writeResult (store: ContextStore, key: string, content: string): Promise<ToolCallResult> {
  const written = await store.write(NAMESPACE, key, content, {}, ACTOR)
  if (written.status === 'conflict') return toolError('CTX_2002', `Key "${key}" changed concurrently.`)
  const output: Static<typeof writeContext.outputSchema> = {
    key, version: written.version, action: written.status, updated_at: written.updatedAt
  }
  return { content: [{ type: 'text', text: writeContext.summarize(output) }], structuredContent: output }
}

/** Listens on 127.0.0.1:PORT and closes the app (and with it the pool) on SIGTERM / SIGINT. */
export async function listenFromEnv (app: FastifyInstance, close: () => Promise<void>): Promise<void> {
  app.addHook('onClose', close)
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
  }
  await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
}
