import { createServer } from 'node:http'
import { toNodeHandler } from '@modelcontextprotocol/node'
import { McpServer, createMcpHandler, fromJsonSchema } from '@modelcontextprotocol/server'

// The upstream of the gateway mix: an MCP server written the SDK v2 way (createMcpHandler, a server
// per request, 2025-era requests served statelessly), with one read-only tool that answers from
// memory, so that what is measured is the MCP hop and not a database.

const EMPLOYEES = Array.from({ length: 100 }, (_, index) => ({ id: `e${index}`, name: `Employee ${index}`, department: index % 2 === 0 ? 'engineering' : 'research' }))
const lookupInput = fromJsonSchema<{ id: string }>({ type: 'object', properties: { id: { type: 'string', maxLength: 16 } }, required: ['id'] })

function buildServer (): McpServer {
  const server = new McpServer({ name: 'bench-upstream', version: '1.0.0' })
  server.registerTool('lookup_employee', {
    title: 'Look up an employee',
    description: 'One employee by id.',
    inputSchema: lookupInput,
    annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false }
  }, async ({ id }) => {
    const employee = EMPLOYEES.find((candidate) => candidate.id === id) ?? null
    return { content: [{ type: 'text', text: JSON.stringify(employee) }], structuredContent: { employee } }
  })
  return server
}

const handle = toNodeHandler(createMcpHandler(() => buildServer(), { legacy: 'stateless' }))
const server = createServer((request, response) => {
  handle(request, response).catch(() => {
    if (!response.headersSent) response.writeHead(500)
    response.end()
  })
})
server.keepAliveTimeout = 72_000
server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log(`bench upstream listening on ${process.env.PORT}`))
process.once('SIGTERM', () => server.close(() => process.exit(0)))
