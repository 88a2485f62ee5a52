import Fastify from 'fastify'
import postgres from 'postgres'
import { FLOOR_POOL, READ_SQL, WRITE_SQL, readParams, writeParams } from './floor-sql.js'

// The floor (b): Fastify, JSON.parse and postgres.js running the same SQL text as the store
// (floor-sql.ts), and nothing of the project's code: no store, no tool handlers, no plugins. A cost
// the project's code carries on every call therefore shows in a/b and n/b instead of being paid by
// both sides. It answers the same JSON-RPC result shape (text block + structuredContent) so that
// the benchmark's validator checks it like the others; no auth, no MCP SDK, no input validation
// beyond what it needs to route the call.

const NAMESPACE = 'default'
const PRINCIPAL = 'bench-floor'

interface RpcCall {
  id: string | number
  method: string
  params?: { name?: unknown, arguments?: { key?: unknown, content?: unknown } }
}

interface EntryRow {
  key: string
  content: string
  version: number
  tags: string[]
  updated_at: Date
  updated_by: string
  client: string | null
  expires_at: Date | null
}

interface WrittenRow { version: number | null, updated_at: Date | null, created: boolean | null }

const url = process.env.DATABASE_URL
if (url === undefined) throw new Error('DATABASE_URL is required')
// The pool settings that change the work per query, as the server's (FLOOR_POOL), and int8
// (version) parsed as a number.
const sql = postgres(url, {
  ...FLOOR_POOL,
  max: Number(process.env.DB_POOL_MAX ?? 10),
  onnotice: () => {},
  types: { int8AsNumber: { to: 20, from: [20], serialize: (value: number) => String(value), parse: (value: string) => Number(value) } }
})

function rpcError (id: string | number | null, code: number, message: string) {
  return { jsonrpc: '2.0', id, error: { code, message } }
}

function toolError (text: string) {
  return { isError: true, content: [{ type: 'text', text }] }
}

async function read (key: string) {
  const [row] = await sql.unsafe<EntryRow[]>(READ_SQL, readParams(NAMESPACE, key), { prepare: true })
  if (row === undefined) return toolError(`No entry under key "${key}".`)
  const output = {
    key: row.key,
    content: row.content,
    version: row.version,
    tags: row.tags,
    updated_at: row.updated_at.toISOString(),
    updated_by: row.updated_by,
    client: row.client,
    expires_at: row.expires_at?.toISOString() ?? null
  }
  const text = `${output.key} (version ${output.version}, by ${output.updated_by} at ${output.updated_at}):\n${output.content}`
  return { content: [{ type: 'text', text }], structuredContent: output }
}

async function write (key: string, content: string) {
  const [row] = await sql.unsafe<WrittenRow[]>(WRITE_SQL, writeParams(NAMESPACE, key, content, PRINCIPAL, null), { prepare: true })
  // The keys are seeded before the run, so a write never races a create; anything else is reported, not retried.
  if (row?.version == null || row.updated_at === null) return toolError(`write of "${key}" changed nothing`)
  const output = { key, version: row.version, action: row.created === true ? 'created' : 'updated', updated_at: row.updated_at.toISOString() }
  return { content: [{ type: 'text', text: `${output.action === 'created' ? 'Created' : 'Updated'} ${key}: now version ${output.version}.` }], structuredContent: output }
}

const app = Fastify({ logger: false })
// Plain JSON.parse (Fastify's default parser adds prototype-poisoning checks on top).
app.removeContentTypeParser('application/json')
app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
  try {
    done(null, JSON.parse(body as string))
  } catch (error) {
    done(error as Error, undefined)
  }
})

app.post('/mcp', async (request, reply) => {
  const call = request.body as RpcCall
  const args = call.params?.arguments
  if (call.method !== 'tools/call' || typeof args?.key !== 'string') {
    return reply.code(400).send(rpcError(call.id ?? null, -32600, 'only tools/call with a key'))
  }
  if (call.params?.name === 'read_context') return { jsonrpc: '2.0', id: call.id, result: await read(args.key) }
  if (call.params?.name === 'write_context' && typeof args.content === 'string') {
    return { jsonrpc: '2.0', id: call.id, result: await write(args.key, args.content) }
  }
  return reply.code(400).send(rpcError(call.id, -32602, 'unknown tool or bad arguments'))
})

app.addHook('onClose', async () => { await sql.end({ timeout: 5 }) })
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
