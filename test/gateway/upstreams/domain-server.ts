import { AsyncLocalStorage } from 'node:async_hooks'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { Socket } from 'node:net'
import { toNodeHandler } from '@modelcontextprotocol/node'
import { McpServer, ResourceTemplate, createMcpHandler, fromJsonSchema, type ServerContext, type ToolAnnotations } from '@modelcontextprotocol/server'
import type { TObject } from '@sinclair/typebox'

/**
 * A small upstream MCP server for the gateway tests, written with the SDK v2 server and served on
 * 127.0.0.1. `era` picks its protocol line: '2025' answers server/discover the way a 2025 server
 * does (so clients fall back to initialize), '2026-07-28' serves only the new line. Faults are
 * injected at the HTTP level, on tools/call requests only (listing keeps working unless killed).
 */

export interface ToolContext {
  signal: AbortSignal
  /** Sends a progress notification if the caller asked for progress. */
  progress: (progress: number, total?: number, message?: string) => Promise<void>
  /** Logs to the caller (notifications/message). */
  log: (data: string) => Promise<void>
  /** The request headers of this call, as the upstream received them. */
  headers: IncomingHttpHeaders
  server: ServerContext
}

export interface DomainTool {
  name: string
  title: string
  description: string
  inputSchema: TObject
  annotations: ToolAnnotations
  handler: (args: Record<string, unknown>, ctx: ToolContext) => Promise<Record<string, unknown>>
}

/** A static resource (`uri`) or a template of them (`uriTemplate`, read by `text` of the URI). */
export interface DomainResource {
  name: string
  uri?: string
  uriTemplate?: string
  text: (uri: string) => string
  /** A slow resource: its read answers only once its signal aborts (then it is recorded in readsCancelled). */
  hangs?: boolean
}

/** A prompt without arguments. */
export interface DomainPrompt {
  name: string
  description: string
  text: string
}

/**
 * Fault modes of tools/call: answer 502, 503 or 504 without running the tool, drop the connection
 * before running it (`reset`), run it and then drop the connection instead of answering
 * (`reset-after`), or accept the request and never answer (`stall`).
 */
export type Fault = 'http-502' | 'http-503' | 'http-504' | 'reset' | 'reset-after' | 'stall'

export interface DomainServer {
  url: string
  port: number
  /** Times each tool's handler started. */
  readonly runs: Map<string, number>
  /** Tool calls whose handler saw its signal abort (the gateway passed a cancellation on). */
  readonly cancelled: string[]
  /** Headers of every tools/call request that reached the server. */
  readonly callHeaders: IncomingHttpHeaders[]
  /** The next `count` tools/call requests fail this way (Infinity: until clearFaults). */
  fail: (fault: Fault, count?: number) => void
  clearFaults: () => void
  /** tools/call requests that reached the HTTP server, faulted or not. */
  readonly callRequests: number
  addTool: (tool: DomainTool) => void
  /** Adds a resource and tells clients (resources/list_changed). */
  addResource: (resource: DomainResource) => void
  /** resources/read requests that reached the server, by URI. */
  readonly reads: string[]
  /** Reads of hanging resources whose signal aborted (the gateway passed a cancellation on), by URI. */
  readonly readsCancelled: string[]
  /** Stops listening and drops every connection (the port then refuses); `start` listens again on the same port. */
  kill: () => Promise<void>
  start: () => Promise<void>
  close: () => Promise<void>
}

export async function startDomainServer (options: { name: string, era: '2025' | '2026-07-28', tools: DomainTool[], resources?: DomainResource[], prompts?: DomainPrompt[], port?: number }): Promise<DomainServer> {
  const tools = [...options.tools]
  const resources = [...options.resources ?? []]
  const reads: string[] = []
  const readsCancelled: string[] = []
  const runs = new Map<string, number>()
  const cancelled: string[] = []
  const callHeaders: IncomingHttpHeaders[] = []
  let faults: { fault: Fault, remaining: number } | null = null
  let callRequests = 0
  const requestHeaders = new AsyncLocalStorage<IncomingHttpHeaders>()

  function buildServer (): McpServer {
    const server = new McpServer({ name: options.name, version: '1.0.0' }, { capabilities: { tools: { listChanged: true }, resources: { listChanged: true }, prompts: { listChanged: true }, logging: {} } })
    for (const resource of resources) {
      const read = async (uri: URL, ...rest: unknown[]) => {
        reads.push(uri.href)
        if (resource.hangs === true) {
          const signal = (rest.at(-1) as ServerContext).mcpReq.signal
          await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))
          readsCancelled.push(uri.href)
        }
        return { contents: [{ uri: uri.href, mimeType: 'text/plain', text: resource.text(uri.href) }] }
      }
      if (resource.uriTemplate !== undefined) server.registerResource(resource.name, new ResourceTemplate(resource.uriTemplate, { list: undefined }), { mimeType: 'text/plain' }, read)
      else server.registerResource(resource.name, resource.uri ?? '', { mimeType: 'text/plain', description: `${resource.name} of ${options.name}` }, read)
    }
    for (const prompt of options.prompts ?? []) {
      server.registerPrompt(prompt.name, { description: prompt.description }, () => ({ messages: [{ role: 'user' as const, content: { type: 'text' as const, text: prompt.text } }] }))
    }
    for (const tool of tools) {
      server.registerTool(tool.name, {
        title: tool.title,
        description: tool.description,
        inputSchema: fromJsonSchema(JSON.parse(JSON.stringify(tool.inputSchema)) as never),
        annotations: tool.annotations
      }, async (args: unknown, ctx: ServerContext) => {
        runs.set(tool.name, (runs.get(tool.name) ?? 0) + 1)
        const signal = ctx.mcpReq.signal
        signal.addEventListener('abort', () => cancelled.push(tool.name), { once: true })
        const progressToken = ctx.mcpReq._meta?.progressToken
        const headers = requestHeaders.getStore() ?? {}
        const output = await tool.handler(args as Record<string, unknown>, {
          signal,
          headers,
          server: ctx,
          progress: async (progress, total, message) => {
            if (progressToken === undefined) return
            await ctx.mcpReq.notify({ method: 'notifications/progress', params: { progressToken, progress, ...(total !== undefined && { total }), ...(message !== undefined && { message }) } })
          },
          log: async (data) => { await ctx.mcpReq.log('info', data, options.name) }
        })
        // A 2026-07-28 multi-round-trip answer goes out as the tool returned it.
        if (output.resultType === 'input_required') return output as never
        return { content: [{ type: 'text' as const, text: JSON.stringify(output) }], structuredContent: output }
      })
    }
    return server
  }

  const mcp = createMcpHandler(() => buildServer(), { legacy: options.era === '2025' ? 'stateless' : 'reject' })
  const handle = toNodeHandler(mcp)
  const sockets = new Set<Socket>()

  const httpServer: Server = createServer((request, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      let body: { method?: unknown } | undefined
      try {
        body = chunks.length === 0 ? undefined : JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof body
      } catch {
        body = undefined
      }
      // A 2025 server knows nothing of server/discover nor of the 2026-07-28 envelope.
      if (options.era === '2025' && (body?.method === 'server/discover' || request.headers['mcp-protocol-version'] === '2026-07-28')) {
        response.writeHead(400, { 'content-type': 'application/json' })
        response.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32600, message: 'Bad Request: No valid session ID provided' } }))
        return
      }
      let target: Parameters<typeof handle>[1] = response
      if (body?.method === 'tools/call') {
        callRequests++
        const fault = faults
        if (fault !== null && fault.remaining > 0) {
          fault.remaining--
          if (fault.remaining === 0) faults = null
          switch (fault.fault) {
            case 'http-502':
            case 'http-503':
            case 'http-504':
              response.writeHead(Number(fault.fault.slice('http-'.length)), { 'content-type': 'text/plain' })
              response.end('upstream fault')
              return
            case 'reset':
              request.socket.destroy()
              return
            case 'stall':
              return
            case 'reset-after':
              // The tool runs; its answer is never delivered.
              target = { writeHead: () => target, write: () => true, end: () => { request.socket.destroy() }, on: (event: string, listener: (...args: unknown[]) => void) => response.on(event, listener) }
              break
          }
        }
        callHeaders.push(request.headers)
      }
      requestHeaders.run(request.headers, () => handle(Object.assign(request, { [Symbol.asyncIterator]: async function * () { yield Buffer.concat(chunks) } }), target, body)).catch(() => {
        if (!response.headersSent) response.writeHead(500).end()
      })
    })
  })
  httpServer.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })

  let port = options.port ?? 0
  async function start (): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      httpServer.once('error', reject)
      httpServer.listen(port, '127.0.0.1', () => {
        httpServer.removeListener('error', reject)
        resolve()
      })
    })
    const address = httpServer.address()
    if (address === null || typeof address === 'string') throw new Error('no TCP address')
    port = address.port
  }
  async function kill (): Promise<void> {
    const closed = new Promise<void>((resolve) => httpServer.close(() => resolve()))
    for (const socket of sockets) socket.destroy()
    await closed
  }
  await start()

  return {
    get url () { return `http://127.0.0.1:${port}/mcp` },
    get port () { return port },
    runs,
    cancelled,
    callHeaders,
    get callRequests () { return callRequests },
    fail: (fault, count = 1) => { faults = { fault, remaining: count } },
    clearFaults: () => { faults = null },
    addTool: (tool) => {
      tools.push(tool)
      mcp.notify.toolsChanged()
    },
    addResource: (resource) => {
      resources.push(resource)
      mcp.notify.resourcesChanged()
    },
    reads,
    readsCancelled,
    kill,
    start,
    close: async () => {
      if (httpServer.listening) await kill()
      await mcp.close()
    }
  }
}
