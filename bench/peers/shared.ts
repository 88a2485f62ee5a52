import type { FastifyInstance } from 'fastify'
import { createSql } from '../../db/connect.js'
import { createContextStore, type ContextStore } from '../../db/context-store.js'
import { readContext } from '../../tools/read-context.js'
import { toolError, type ToolCallResult, type ToolContext } from '../../tools/registry.js'
import { AppError } from '../../schema/errors.js'
import { writeContext } from '../../tools/write-context.js'

// What the two peer servers share: the project's own store on the bench database, and the same
// results the real read_context / write_context tools give (same output fields, same text).

export const NAMESPACE = 'default'
const ACTOR = { principal: 'bench-peer', client: null }
const MAX_CONTENT_BYTES = 102400

export function storeFromEnv (): { store: ContextStore, close: () => Promise<void> } {
  const url = process.env.DATABASE_URL
  if (url === undefined) throw new Error('DATABASE_URL is required')
  const sql = createSql(url, { max: Number(process.env.DB_POOL_MAX ?? 10), connectTimeoutMs: 10_000 })
  return {
    store: createContextStore(sql, { maxContentBytes: MAX_CONTENT_BYTES }),
    close: async () => { await sql.end({ timeout: 5 }) }
  }
}

/** The tools' own handlers and text: the peers run exactly the tools' SQL and build the same results. */
async function runTool<I, O extends Record<string, unknown>> (tool: { handler: (ctx: ToolContext, input: I) => Promise<O>, summarize: (output: O) => string }, store: ContextStore, input: I): Promise<ToolCallResult> {
  try {
    const output = await tool.handler({ store, namespace: NAMESPACE, actor: ACTOR, maxContentBytes: MAX_CONTENT_BYTES }, input)
    return { content: [{ type: 'text', text: tool.summarize(output) }], structuredContent: output }
  } catch (error) {
    if (error instanceof AppError) return toolError(error.code, error.message, error.details)
    throw error
  }
}

export async function readResult (store: ContextStore, key: string): Promise<ToolCallResult> {
  return await runTool(readContext, store, { key })
}

export async function writeResult (store: ContextStore, key: string, content: string): Promise<ToolCallResult> {
  return await runTool(writeContext, store, { key, content })
}

/** Listens on 127.0.0.1:PORT and closes the app (and with it the pool) on SIGTERM / SIGINT. */
export async function listenFromEnv (app: FastifyInstance, close: () => Promise<void>): Promise<void> {
  app.addHook('onClose', close)
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
  }
  await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
}
