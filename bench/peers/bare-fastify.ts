import Fastify from 'fastify'
import { readResult, storeFromEnv, listenFromEnv, writeResult } from './shared.js'

// The floor: a bare Fastify route that parses the JSON-RPC tools/call, runs the same SQL through
// the project's store, and answers the same result shape. No auth, no MCP SDK, no validation
// beyond what it needs to route the call.

interface RpcCall {
  id: string | number
  method: string
  params?: { name?: unknown, arguments?: { key?: unknown, content?: unknown } }
}

function rpcError (id: string | number | null, code: number, message: string) {
  return { jsonrpc: '2.0', id, error: { code, message } }
}

const { store, close } = storeFromEnv()
const app = Fastify({ logger: false })

app.post('/mcp', async (request, reply) => {
  const call = request.body as RpcCall
  const args = call.params?.arguments
  if (call.method !== 'tools/call' || typeof args?.key !== 'string') {
    return reply.code(400).send(rpcError(call.id ?? null, -32600, 'only tools/call with a key'))
  }
  if (call.params?.name === 'read_context') {
    return { jsonrpc: '2.0', id: call.id, result: await readResult(store, args.key) }
  }
  if (call.params?.name === 'write_context' && typeof args.content === 'string') {
    return { jsonrpc: '2.0', id: call.id, result: await writeResult(store, args.key, args.content) }
  }
  return reply.code(400).send(rpcError(call.id, -32602, 'unknown tool or bad arguments'))
})

await listenFromEnv(app, close)
