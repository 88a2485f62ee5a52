import {
  PROTOCOL_VERSION_META_KEY,
  SUPPORTED_PROTOCOL_VERSIONS,
  classifyInboundRequest,
  type JSONRPCNotification,
  type JSONRPCRequest
} from '@modelcontextprotocol/server'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { maxBodyBytes } from '../schema/config.js'
import { AppError, errorCatalogue, type ErrorCode } from '../schema/errors.js'
import { authInfoFor, printableToken, type CallRecord, type CallerInfo } from '../plugins/mcp.js'
import type { JsonRpcResponse } from '../plugins/mcp-multiplex-transport.js'

/** The first product token of User-Agent, as a hint of which client wrote a version (2025-era requests carry no client info). */
function clientHintOf (request: FastifyRequest): string | null {
  const agent = request.headers['user-agent']
  return agent === undefined ? null : printableToken(agent)
}

/** A JSON-RPC error refusing the request as bad input: it carries REQ_1101 like every other refusal. */
function jsonRpcError (id: string | number | null, code: number, message: string) {
  return { jsonrpc: '2.0', id, error: { code, message, data: { code: 'REQ_1101' } } }
}

// JSON-RPC's own codes for a malformed message, an unknown method and wrong params: bad input.
const BAD_INPUT_RPC_CODES = new Set([-32700, -32600, -32601, -32602])

/** An SDK error answer without a catalogue code gets REQ_1101 when its JSON-RPC code means bad input. */
function withCatalogueCode (answer: JsonRpcResponse): JsonRpcResponse {
  if (!('error' in answer)) return answer
  const error = answer.error as { code: number, message: string, data?: unknown }
  if (error.data !== undefined) return answer
  // The SDK answers params its own schemas refuse (initialize without protocolVersion, say) as an
  // internal error whose message is the list of issues: bad input, not a server fault.
  if (error.code === -32603 && error.message.trimStart().startsWith('[')) {
    return { ...answer, error: { code: -32602, message: `Invalid params: ${error.message}`, data: { code: 'REQ_1101' } } } as JsonRpcResponse
  }
  if (!BAD_INPUT_RPC_CODES.has(error.code)) return answer
  return { ...answer, error: { ...answer.error, data: { code: 'REQ_1101' } } } as JsonRpcResponse
}

// Far deeper than any valid message (a tool's arguments nest a few levels); without a bound, a
// deeply nested body overflowed the stack in the SDK's validation and was answered 500.
export const MAX_BODY_DEPTH = 64

/** Whether a parsed JSON body nests arrays/objects deeper than `limit` (iterative: no recursion to overflow). */
function nestedDeeperThan (value: unknown, limit: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 1]]
  while (stack.length > 0) {
    const [current, depth] = stack.pop()!
    if (typeof current !== 'object' || current === null) continue
    if (depth > limit) return true
    for (const child of Array.isArray(current) ? current : Object.values(current)) {
      if (typeof child === 'object' && child !== null) stack.push([child, depth + 1])
    }
  }
  return false
}

/** A JSON-RPC error that carries a catalogue code for a dependency failure is also an HTTP failure. */
function httpStatusOf (answer: JsonRpcResponse): number {
  if (!('error' in answer)) return 200
  const code = (answer.error as { data?: { code?: unknown } }).data?.code
  if (typeof code !== 'string' || !(code in errorCatalogue)) return 200
  const status = errorCatalogue[code as ErrorCode].status
  return status >= 500 ? status : 200
}

// Protocol versions that the SDK's classifier serves as 2025-era traffic when named in MCP-Protocol-Version.
const LEGACY_HEADER_VERSIONS = new Set(SUPPORTED_PROTOCOL_VERSIONS.filter((version) =>
  classifyInboundRequest({ httpMethod: 'POST', protocolVersionHeader: version, body: { jsonrpc: '2.0', id: 1, method: 'ping' } }).kind === 'legacy'))

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/**
 * The common case, checked cheaply: a 2025-era JSON-RPC request with a supported (or no) version
 * header and no 2026-07-28 envelope claim in params._meta — which the SDK's classifier would route
 * as legacy "no-claim" traffic. Anything else goes through classifyInboundRequest; measured, the
 * full classification cost about 30 µs of CPU per request under load.
 */
function isPlainLegacyRequest (body: unknown, versionHeader: string | string[] | undefined): body is JSONRPCRequest {
  if (versionHeader !== undefined && (typeof versionHeader !== 'string' || !LEGACY_HEADER_VERSIONS.has(versionHeader))) return false
  if (!isPlainObject(body) || body.jsonrpc !== '2.0' || typeof body.method !== 'string') return false
  if (typeof body.id !== 'string' && !Number.isSafeInteger(body.id)) return false
  const params = body.params
  if (params === undefined) return true
  if (!isPlainObject(params)) return false
  const meta = params._meta
  return meta === undefined || (isPlainObject(meta) && !(PROTOCOL_VERSION_META_KEY in meta))
}

/**
 * Whether the body has the shape of one JSON-RPC message (request, notification or response).
 * Checked here rather than left to the SDK so that the refusal carries REQ_1101.
 */
function isJsonRpcMessage (body: unknown): boolean {
  if (!isPlainObject(body) || body.jsonrpc !== '2.0') return false
  const id = body.id
  const validId = typeof id === 'string' || Number.isSafeInteger(id)
  if (typeof body.method === 'string') return (id === undefined || validId) && (body.params === undefined || isPlainObject(body.params))
  return ('result' in body || 'error' in body) && (validId || id === null)
}

function isJsonRpcRequest (body: unknown): body is JSONRPCRequest {
  return typeof body === 'object' && body !== null && 'method' in body && 'id' in body
}

/**
 * Streamable HTTP at /mcp. Stateless: every POST carries one JSON-RPC message and gets its answer
 * as one JSON body. 2025-era messages (what Claude.ai and Claude Code send today) are served by the
 * long-lived server; 2026-07-28 messages by the SDK's per-request handler. A 2025-era initialize
 * also gets an Mcp-Session-Id, used only for live updates (GET stream, resources/subscribe): a
 * POST without one stays stateless.
 */
export default async function mcpRoutes (fastify: FastifyInstance) {
  const { config, mcp } = fastify

  const { authenticateHook } = fastify.auth
  const { limitPrincipal } = fastify.rateLimits
  const { sessionGate } = fastify.live

  // Host and Origin were checked for every route before this (plugins/host-check.ts).
  // One hook for what every /mcp request passes before its body is read: refused while shutting
  // down, then authenticated (an address that keeps failing authentication is refused before its
  // token is looked up). Callback style: an async hook costs a promise per request; and each
  // hook Fastify runs costs its own step, so the steps share one.
  fastify.addHook('onRequest', (request, reply, done) => {
    if (fastify.lifecycle.closing) {
      reply.header('retry-after', '5')
      done(new AppError('SRV_9002', 'The server is shutting down; retry in a few seconds.'))
      return
    }
    authenticateHook(request, reply, done)
  })

  /** POST /mcp's preHandler: the principal's rate limits, then the live-session gate (which may answer itself). */
  function admitCall (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void {
    limitPrincipal(request, reply, (error) => {
      if (error !== undefined) {
        done(error)
        return
      }
      sessionGate(request, reply, done)
    })
  }

  fastify.post('/mcp', {
    bodyLimit: maxBodyBytes(config),
    preHandler: admitCall
  }, async (request, reply) => {
    const body = request.body
    if (nestedDeeperThan(body, MAX_BODY_DEPTH)) {
      return reply.code(400).send(jsonRpcError(null, -32600, `The request body nests deeper than ${MAX_BODY_DEPTH} levels; no valid message does.`))
    }
    if (Array.isArray(body)) return reply.code(400).send(jsonRpcError(null, -32600, 'JSON-RPC batches are not supported: send one message per POST.'))
    if (!isJsonRpcMessage(body)) {
      const id = isPlainObject(body) && (typeof body.id === 'string' || Number.isSafeInteger(body.id)) ? body.id as string | number : null
      return reply.code(400).send(jsonRpcError(id, -32600, 'Bad Request: the request body is not a valid JSON-RPC message'))
    }
    const versionHeader = request.headers['mcp-protocol-version']
    if (isPlainLegacyRequest(body, versionHeader)) return serveLegacy(request, reply, body)

    const outcome = classifyInboundRequest({
      httpMethod: 'POST',
      protocolVersionHeader: versionHeader as string | undefined,
      mcpMethodHeader: request.headers['mcp-method'] as string | undefined,
      mcpNameHeader: request.headers['mcp-name'] as string | undefined,
      body
    })
    if (outcome.kind !== 'legacy') return serveModern(request, reply)
    if (typeof versionHeader === 'string' && !SUPPORTED_PROTOCOL_VERSIONS.includes(versionHeader.trim())) {
      return reply.code(400).send(jsonRpcError(null, -32600, `Unsupported MCP-Protocol-Version ${versionHeader.slice(0, 40)}; supported: ${SUPPORTED_PROTOCOL_VERSIONS.join(', ')}`))
    }
    if (outcome.reason === 'batch') {
      return reply.code(400).send(jsonRpcError(null, -32600, 'JSON-RPC batches are not supported: send one message per POST.'))
    }
    if (outcome.reason === 'response') {
      // A client's answer to what the gateway asked it mid-call (elicitation, sampling).
      fastify.gateway?.deliverClientResponse(body, request.principal!)
      return reply.code(202).send()
    }
    if (outcome.reason === 'http-method') return reply.code(202).send()
    if (isJsonRpcRequest(body)) return serveLegacy(request, reply, body)
    if (fastify.gateway !== null && (body as JSONRPCNotification).method === 'notifications/cancelled') {
      const sessionId = request.headers['mcp-session-id']
      fastify.gateway.cancelClientCall((body as JSONRPCNotification).params?.requestId, request.principal!, typeof sessionId === 'string' ? sessionId : undefined)
    }
    mcp.legacy.deliver(body as JSONRPCNotification, { authInfo: authInfoFor(callerOf(request)) })
    return reply.code(202).send()
  })

  function recordOf (request: FastifyRequest): CallRecord {
    request.callRecord ??= { tool: null, outcome: null }
    return request.callRecord
  }

  function callerOf (request: FastifyRequest): CallerInfo {
    return { principal: request.principal!, client: clientHintOf(request), log: request.log, record: recordOf(request) }
  }

  async function serveLegacy (request: FastifyRequest, reply: FastifyReply, body: JSONRPCRequest): Promise<FastifyReply> {
    const caller = callerOf(request)
    if (fastify.gateway !== null) {
      if (body.method === 'tools/call') {
        const federated = fastify.gateway.serveLegacyCall(request, reply, body, caller)
        if (federated !== undefined) return await federated
      } else if (body.method === 'initialize') {
        const sessionId = reply.getHeader('mcp-session-id')
        if (typeof sessionId === 'string') fastify.gateway.noteSession(sessionId, (body.params as { capabilities?: unknown } | undefined)?.capabilities)
      }
    }
    // tools/call and resources/read are answered directly (see plugins/mcp.ts); the rest by the SDK's server.
    const direct = body.method === 'tools/call' ? mcp.answerToolCall : body.method === 'resources/read' ? readWatched(request, reply) : undefined
    const answer = direct !== undefined
      ? await direct(body, caller)
      : await mcp.legacy.exchange(body, { authInfo: authInfoFor(caller) }, (abort) => {
        reply.raw.once('close', () => { if (!reply.raw.writableFinished) abort() })
      })
    if (answer === undefined) {
      if (reply.raw.destroyed) {
        request.log.debug('client disconnected before the answer')
        return reply.hijack()
      }
      throw new AppError('SRV_9002', 'The server is shutting down; retry in a few seconds.')
    }
    const status = httpStatusOf(answer)
    if (status === 503) reply.header('retry-after', '2')
    return reply.code(status).send(withCatalogueCode(answer))
  }

  /** resources/read; with a gateway, cancelled (upstream too) when the client disconnects or cancels it. */
  function readWatched (request: FastifyRequest, reply: FastifyReply): typeof mcp.answerResourceRead {
    const gateway = fastify.gateway
    if (gateway === null) return mcp.answerResourceRead
    return async (body, caller) => {
      const watch = gateway.watchLegacyRequest(request, reply, body.id)
      try {
        return await mcp.answerResourceRead(body, caller, watch.signal)
      } finally {
        watch.end()
      }
    }
  }

  async function serveModern (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const caller: CallerInfo = { principal: request.principal!, client: null, log: request.log, record: recordOf(request) }
    // The SDK writes the response itself; carry over headers already set (CORS) before handing over.
    reply.hijack()
    for (const [name, value] of Object.entries(reply.getHeaders())) {
      if (value !== undefined) reply.raw.setHeader(name, value)
    }
    const raw = Object.assign(request.raw, { auth: authInfoFor(caller) })
    await mcp.serveModern(raw, reply.raw, request.body)
  }

  // Live updates of 2025-era sessions (plugins/live.ts): the session's SSE stream, and ending a session.
  fastify.get('/mcp', { preHandler: limitPrincipal }, fastify.live.serveStream)
  fastify.delete('/mcp', fastify.live.endSession)
}
