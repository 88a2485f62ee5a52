import type { TObject } from '@sinclair/typebox'
import { createMcpFastifyApp } from '@modelcontextprotocol/fastify'
import { NodeStreamableHTTPServerTransport } from '@modelcontextprotocol/node'
import { McpServer, fromJsonSchema, type JsonSchemaType } from '@modelcontextprotocol/server'
import { readContext } from '../../tools/read-context.js'
import { writeContext } from '../../tools/write-context.js'
import { readResult, storeFromEnv, listenFromEnv, writeResult } from './shared.js'

// The official v2 SDK's stateless pattern, as in @modelcontextprotocol/fastify's README: a new
// McpServer and a new NodeStreamableHTTPServerTransport per request, both closed when the response
// closes. The tools take the real tools' input schemas (the default JSON Schema validator checks
// them) and run the same SQL through the project's store. As in the example, everything the
// server needs — its tools, their schemas and so their validators — is built per request inside
// the factory; that per-request cost is what this peer measures.

function jsonSchemaOf (schema: TObject): JsonSchemaType {
  return JSON.parse(JSON.stringify(schema)) as JsonSchemaType
}

const { store, close } = storeFromEnv()

function buildServer (): McpServer {
  const readInput = fromJsonSchema<{ key: string }>(jsonSchemaOf(readContext.inputSchema))
  const writeInput = fromJsonSchema<{ key: string, content: string }>(jsonSchemaOf(writeContext.inputSchema))
  const server = new McpServer({ name: 'sdk-example', version: '1.0.0' })
  server.registerTool('read_context', {
    title: readContext.title,
    description: readContext.description,
    inputSchema: readInput,
    annotations: readContext.annotations
  }, async ({ key }) => await readResult(store, key))
  server.registerTool('write_context', {
    title: writeContext.title,
    description: writeContext.description,
    inputSchema: writeInput,
    annotations: writeContext.annotations
  }, async ({ key, content }) => await writeResult(store, key, content))
  return server
}

const app = createMcpFastifyApp()

app.post('/mcp', async (request, reply) => {
  const mcpServer = buildServer()
  const transport = new NodeStreamableHTTPServerTransport({ sessionIdGenerator: undefined })
  await mcpServer.connect(transport)
  reply.raw.on('close', () => {
    transport.close()
    mcpServer.close()
  })
  await transport.handleRequest(request.raw, reply.raw, request.body)
})

await listenFromEnv(app, close)
