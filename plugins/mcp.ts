import { existsSync, readFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { toNodeHandler, type FetchLikeMcpHandler, type NodeMcpRequestHandler } from '@modelcontextprotocol/node'
import {
  CLIENT_CAPABILITIES_META_KEY,
  CLIENT_INFO_META_KEY,
  ProtocolError,
  ProtocolErrorCode,
  Server,
  createMcpHandler,
  type AuthInfo,
  type JSONRPCRequest,
  type ServerContext,
  type StandardSchemaV1
} from '@modelcontextprotocol/server'
import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { FastifyBaseLogger } from 'fastify'
import fp from 'fastify-plugin'
import { toAppError } from '../db/errors.js'
import { RESOURCE_CACHE_HINTS, RESOURCE_CAPABILITIES, answerLegacyRead, registerResources, type ResourceDependencies } from '../live/resources.js'
import type { Principal } from '../schema/principal.js'
import { allTools } from '../tools/index.js'
import { UnknownToolError, createToolRegistry, toolErrorCode, type ToolCallResult } from '../tools/registry.js'
import type { DownstreamChannel } from '../gateway/call.js'
import { bearerTokenOf } from './auth.js'
import { MultiplexTransport, type JsonRpcResponse } from './mcp-multiplex-transport.js'
import { drainDeadline } from './shutdown-deadline.js'

declare module 'fastify' {
  interface FastifyInstance {
    mcp: {
      /** The long-lived server's transport for stateless 2025-era POSTs. */
      legacy: MultiplexTransport
      /** Answers a 2025-era tools/call (the hot path); see answerToolCall below. */
      answerToolCall: (request: JSONRPCRequest, caller: CallerInfo) => Promise<JsonRpcResponse>
      /** Answers a 2025-era resources/read (its not-found code differs from the 2026-07-28 one the SDK sends). */
      answerResourceRead: (request: JSONRPCRequest, caller: CallerInfo, signal?: AbortSignal) => Promise<JsonRpcResponse>
      /** Serves 2026-07-28 traffic (and its validation-ladder rejections) through the SDK's own handler. */
      serveModern: NodeMcpRequestHandler
    }
  }
  interface FastifyRequest {
    /** Set by the /mcp route when the request reaches a tool; read by the request log. */
    callRecord: CallRecord | null
  }
}

// plugins/ in source, dist/plugins/ when built: package.json is one or two levels up.
const packageJson = ['../package.json', '../../package.json'].map((path) => new URL(path, import.meta.url)).find((url) => existsSync(url))
const { version } = JSON.parse(readFileSync(packageJson ?? '', 'utf8')) as { version: string }

export const SERVER_INFO = { name: 'shared-context-mcp', title: 'Shared Context', version }

export const INSTRUCTIONS = [
  'A shared, versioned context store: what you write here other conversations, agents and devices can read later.',
  'Keys are paths such as "project/decisions/database" (A-Z a-z 0-9 _ . - / :); group related entries under a common prefix.',
  'Start with list_context (optionally with a prefix) to see what exists, then read_context what you need.',
  'Looking for something without knowing its key? search_context finds entries by the words in their key, tags and content (typos tolerated); read_context the results you use.',
  'Every write creates a new version and records who wrote it. To update an entry others may also change, read it, then',
  'write_context with expected_version set to the version you read; on CTX_2002 re-read, merge, and retry.',
  'Use append_context to add to logs or lists without reading first. delete_context keeps history; restore_context brings a version back.',
  'Lists and histories are paginated: pass next_cursor back as cursor.',
  'Coming back after a while? changes_since lists what others changed since your last call (keep its next_cursor for next time);',
  'every entry is also a resource context://{namespace}/{key}.'
].join(' ')

/** A client's self-reported name, cut to its first run of printable ASCII (it is stored and shown to models). */
export function printableToken (text: string): string | null {
  return /^[\x21-\x7e]{1,100}/.exec(text)?.[0] ?? null
}

/** 2026-07-28 cache hints of the lists the gateway extends: short, and never shared between principals. */
const GATEWAY_CACHE_HINTS = {
  'tools/list': { ttlMs: 30_000, cacheScope: 'private' as const },
  'prompts/list': { ttlMs: 30_000, cacheScope: 'private' as const },
  'resources/templates/list': { ttlMs: 30_000, cacheScope: 'private' as const }
}

/** What a request did, for its log line: the tool it called and how that ended ('ok' or a catalogue code). */
export interface CallRecord {
  tool: string | null
  outcome: string | null
}

/** What the HTTP route hands each request's server through AuthInfo.extra. */
export interface CallerInfo {
  principal: Principal
  client: string | null
  log: FastifyBaseLogger
  record: CallRecord
}

export function authInfoFor (caller: CallerInfo): AuthInfo {
  return { token: '', clientId: caller.principal.id, scopes: [...caller.principal.scopes], extra: { caller } }
}

function callerOf (ctx: ServerContext): CallerInfo {
  const caller = ctx.http?.authInfo?.extra?.caller as CallerInfo | undefined
  if (caller === undefined) throw new ProtocolError(ProtocolErrorCode.InternalError, 'SRV_9001: request reached the server without a principal')
  return caller
}

function clientNameOf (ctx: ServerContext, caller: CallerInfo): string | null {
  const envelope = ctx.mcpReq.envelope as Record<string, { name?: unknown } | undefined> | undefined
  const name = envelope?.[CLIENT_INFO_META_KEY]?.name
  return typeof name === 'string' ? printableToken(name) : caller.client
}

/**
 * The SDK's Server, except that tools/call is not validated a second and third time with the SDK's
 * zod schemas (request and result): its params are checked by `callToolParams`, its arguments by
 * the registry's compiled TypeBox validators, and its results are CallToolResults by construction
 * (test/tools/output-schemas.test.ts pins them). That zod work was the largest cost of the hot path.
 * Every other method keeps the SDK's own validation.
 */
class ContextServer extends Server {
  protected override _wrapHandler (method: string, handler: Parameters<Server['_wrapHandler']>[1]): ReturnType<Server['_wrapHandler']> {
    return method === 'tools/call' ? handler : super._wrapHandler(method, handler)
  }
}

const CallToolParamsSchema = Type.Object({
  name: Type.String({ maxLength: 256 }),
  arguments: Type.Optional(Type.Record(Type.String(), Type.Unknown()))
})
type CallToolParams = Static<typeof CallToolParamsSchema>
const checkCallToolParams = TypeCompiler.Compile(CallToolParamsSchema)

function callToolParamIssues (value: unknown): string[] {
  return [...checkCallToolParams.Errors(value)].slice(0, 3).map((error) => `${error.path || 'params'}: ${error.message}`)
}

/**
 * tools/call params as a Standard Schema that lets every value through: the handler checks them
 * (invalidCallToolParams), so that a refusal carries REQ_1101 like every other bad input. The
 * SDK's own refusal of a failed schema is an invalid-params error without a catalogue code.
 */
const callToolParams: StandardSchemaV1<unknown, unknown> = {
  '~standard': {
    version: 1,
    vendor: 'typebox',
    validate: (value) => ({ value })
  }
}

/** The invalid-params refusal of tools/call params of the wrong shape (REQ_1101), or undefined when they are fine. */
function invalidCallToolParams (params: unknown): ProtocolError | undefined {
  if (checkCallToolParams.Check(params)) return undefined
  return new ProtocolError(ProtocolErrorCode.InvalidParams, `Invalid params for tools/call: ${callToolParamIssues(params).join('; ')}`, { code: 'REQ_1101' })
}

/**
 * The 2026-07-28 handler's own refusals (its validation ladder: an unsupported or contradictory
 * MCP-Protocol-Version, a missing envelope, a body that is no JSON-RPC message) are JSON-RPC
 * errors without a catalogue code. Every refusal of this server carries one, in `error.data.code`:
 * REQ_1102 for a body too large, REQ_1101 for the rest. Answers below 400 pass untouched (streams
 * included).
 */
export function withCatalogueCodes (handler: FetchLikeMcpHandler): FetchLikeMcpHandler {
  return {
    fetch: async (request, options) => {
      const response = await handler.fetch(request, options)
      if (response.status < 400 || response.status >= 500 || !(response.headers.get('content-type') ?? '').includes('json')) return response
      const text = await response.text()
      const headers = new Headers(response.headers)
      headers.delete('content-length')
      let message: { error?: { data?: unknown } } | undefined
      try {
        message = JSON.parse(text) as typeof message
      } catch {
        return new Response(text, { status: response.status, headers })
      }
      const error = message?.error
      if (typeof error !== 'object' || error === null) return new Response(text, { status: response.status, headers })
      const data = error.data
      const code = response.status === 413 ? 'REQ_1102' : 'REQ_1101'
      if (typeof data === 'object' && data !== null && !Array.isArray(data)) {
        if (!('code' in data)) error.data = { ...data, code }
      } else {
        error.data = { code, ...(data !== undefined && { detail: data }) }
      }
      return new Response(JSON.stringify(message), { status: response.status, headers })
    }
  }
}

/**
 * The MCP surface: the tool registry and the SDK servers that serve it. One long-lived Server
 * answers 2025-era traffic through a multiplexing transport; 2026-07-28 traffic goes through the
 * SDK's createMcpHandler, which builds a server per request from the same factory.
 */
export default fp(async (fastify) => {
  const { store } = fastify.db
  const maxContentBytes = fastify.config.MAX_CONTENT_BYTES
  const registry = createToolRegistry(allTools)
  const { gateway } = fastify
  // A context tool call a person approved runs as any other, under the caller's principal and client.
  gateway?.setContextRunner((name, args, principal, client) => registry.call(name, args, principal, { store, actor: { principal: principal.id, client }, maxContentBytes }))

  /** The gateway's view of a 2026-07-28 request (2025-era gateway calls are served by the route; see Gateway.serveLegacyCall). */
  function channelOf (ctx: ServerContext | undefined, params: CallToolParams): DownstreamChannel {
    if (ctx === undefined) return { protocol: '2025', signal: new AbortController().signal }
    const progressToken = (params as { _meta?: { progressToken?: unknown } })._meta?.progressToken
    const capabilities = (ctx.mcpReq.envelope as Record<string, { elicitation?: unknown, sampling?: unknown } | undefined> | undefined)?.[CLIENT_CAPABILITIES_META_KEY]
    const requestState = ctx.mcpReq.requestState<unknown>()
    return {
      protocol: '2026-07-28',
      signal: ctx.mcpReq.signal,
      ...((typeof progressToken === 'string' || typeof progressToken === 'number') && { progressToken }),
      notify: (method, notificationParams) => { ctx.mcpReq.notify({ method, params: notificationParams } as never).catch(() => {}) },
      elicitationSupported: capabilities?.elicitation !== undefined,
      samplingSupported: capabilities?.sampling !== undefined,
      ...(ctx.mcpReq.inputResponses !== undefined && { inputResponses: ctx.mcpReq.inputResponses }),
      ...(typeof requestState === 'string' && { requestState })
    }
  }

  /** Runs one tools/call for a caller; failures that are not tool errors are thrown as ProtocolErrors. */
  async function callTool (params: CallToolParams, caller: CallerInfo, client: string | null, ctx?: ServerContext): Promise<ToolCallResult> {
    const { principal, record } = caller
    record.tool = params.name
    try {
      const federated = gateway === null
        ? undefined
        : gateway.gatesContextTool(params.name)
          ? registry.refusalOf(params.name, params.arguments, principal) ?? gateway.callContextTool(params.name, params.arguments ?? {}, principal, client, channelOf(ctx, params))
          : gateway.call(params.name, params.arguments ?? {}, principal, client, channelOf(ctx, params))
      if (federated !== undefined) {
        const result = await federated as ToolCallResult
        record.outcome = result.isError === true ? String(toolErrorCode(result)) : 'ok'
        return result
      }
      const result = await registry.call(params.name, params.arguments, principal, {
        store,
        actor: { principal: principal.id, client },
        maxContentBytes
      })
      record.outcome = result.isError === true ? String(toolErrorCode(result)) : 'ok'
      return result
    } catch (error) {
      if (error instanceof UnknownToolError) {
        record.outcome = 'REQ_1101'
        throw new ProtocolError(ProtocolErrorCode.InvalidParams, error.message, { code: 'REQ_1101' })
      }
      const appError = toAppError(error)
      record.outcome = appError.code
      if (appError.code === 'SRV_9001') caller.log.error({ err: error, tool: params.name }, 'tool call failed')
      else caller.log.warn({ err: error, tool: params.name, code: appError.code }, 'tool call failed')
      throw new ProtocolError(ProtocolErrorCode.InternalError, `${appError.code}: ${appError.message}`, { code: appError.code })
    }
  }

  const resourceDependencies: ResourceDependencies = {
    store,
    principalOf: (ctx) => callerOf(ctx).principal,
    logFailure: (error, method) => fastify.log.error({ err: error, method }, 'resource request failed'),
    ...(gateway !== null && { federated: gateway.resources })
  }

  function buildServer (): Server {
    const server = new ContextServer(SERVER_INFO, {
      capabilities: {
        tools: { listChanged: gateway !== null },
        resources: RESOURCE_CAPABILITIES,
        ...(gateway !== null && { prompts: { listChanged: true } })
      },
      instructions: INSTRUCTIONS,
      // The gateway's lists change with its upstreams: clients may keep them briefly, per principal.
      cacheHints: gateway === null ? RESOURCE_CACHE_HINTS : { ...RESOURCE_CACHE_HINTS, ...GATEWAY_CACHE_HINTS }
    })
    registerResources(server, resourceDependencies)
    if (gateway === null) {
      server.setRequestHandler('tools/list', (_request, ctx) => ({ tools: registry.list(callerOf(ctx).principal) }))
    } else {
      server.setRequestHandler('tools/list', (_request, ctx) => {
        const { principal } = callerOf(ctx)
        return { tools: [...registry.list(principal), ...gateway.list(principal)] as never }
      })
      server.setRequestHandler('prompts/list', (_request, ctx) => ({ prompts: gateway.federation.listPrompts(callerOf(ctx).principal) as never }))
      server.setRequestHandler('prompts/get', async (request, ctx) => {
        const prompt = gateway.federation.resolvePrompt(request.params.name, callerOf(ctx).principal)
        if (prompt === undefined) throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Unknown prompt "${request.params.name.slice(0, 100)}".`, { code: 'REQ_1101' })
        try {
          return await prompt.upstream.getPrompt(prompt.prompt, request.params.arguments, ctx.mcpReq.signal) as never
        } catch (error) {
          if (error instanceof ProtocolError) throw error
          throw new ProtocolError(ProtocolErrorCode.InternalError, `MCP_2002: the upstream server "${prompt.upstream.name}" failed or is unreachable; try again later.`, { code: 'MCP_2002' })
        }
      })
    }
    server.setRequestHandler('tools/call', { params: callToolParams }, (params, ctx) => {
      const invalid = invalidCallToolParams(params)
      if (invalid !== undefined) throw invalid
      const caller = callerOf(ctx)
      return callTool(params as CallToolParams, caller, clientNameOf(ctx, caller), ctx)
    })
    server.onerror = (error) => fastify.log.debug({ err: error }, 'mcp protocol error')
    return server
  }

  /**
   * tools/call of a 2025-era request, answered without the SDK's generic dispatch. Measured, that
   * dispatch (zod type guards on every message, a context with an AbortController per request)
   * was a third of the hot path's CPU; a 2025-era tools/call answer is one JSON-RPC response, and
   * it is produced by the same callTool, with the same params check, as the SDK's handler above.
   * Everything else — initialize, tools/list, ping, notifications, every 2026-07-28 message — is
   * served by the SDK.
   */
  async function answerToolCall (request: JSONRPCRequest, caller: CallerInfo): Promise<JsonRpcResponse> {
    const params = request.params
    try {
      const invalid = invalidCallToolParams(params)
      if (invalid !== undefined) throw invalid
      return { jsonrpc: '2.0', id: request.id, result: await callTool(params as CallToolParams, caller, caller.client) }
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error
      return { jsonrpc: '2.0', id: request.id, error: { code: error.code, message: error.message, ...(error.data !== undefined && { data: error.data }) } }
    }
  }

  const legacy = new MultiplexTransport()
  const legacyServer = buildServer()
  await legacyServer.connect(legacy)

  const { live } = fastify
  const modern = createMcpHandler(() => buildServer(), {
    legacy: 'reject',
    onerror: (error) => fastify.log.debug({ err: error }, 'mcp request rejected'),
    bus: live.bus,
    keepAliveMs: fastify.config.SSE_HEARTBEAT_MS,
    // Listen streams of the whole instance (the SDK's default is 1024); per principal, prepareListen limits them.
    maxSubscriptions: fastify.config.MCP_SESSIONS_MAX
  })
  const modernHandler = toNodeHandler(withCatalogueCodes(modern))
  // 2026-07-28 exchanges in flight other than subscriptions/listen streams: shutdown lets them finish.
  const inFlight = { modernCalls: 0, drained: null as (() => void) | null }
  const serveModern: NodeMcpRequestHandler = async (request, response, body) => {
    const caller = (request as { auth?: AuthInfo }).auth?.extra?.caller as CallerInfo | undefined
    const method = (body as { method?: unknown } | undefined)?.method
    if (caller === undefined || method !== 'subscriptions/listen') {
      inFlight.modernCalls++
      try {
        return await modernHandler(request, response, body)
      } finally {
        if (--inFlight.modernCalls === 0) inFlight.drained?.()
      }
    }
    const preparation = await live.prepareListen(caller.principal, body)
    if (preparation.refusal !== undefined) {
      const id = (body as { id?: unknown } | undefined)?.id
      ;(response as ServerResponse).writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
        jsonrpc: '2.0',
        id: typeof id === 'string' || typeof id === 'number' ? id : null,
        error: { code: -32602, message: preparation.refusal.message, data: { code: preparation.refusal.code } }
      }))
      return
    }
    const authorization = request.headers.authorization
    const token = typeof authorization === 'string' ? bearerTokenOf(authorization) ?? '' : ''
    try {
      return await live.modernContext.run({ principal: caller.principal, token, response: response as ServerResponse, body, prepared: preparation.release }, () => modernHandler(request, response, body))
    } finally {
      preparation.release()
    }
  }

  fastify.decorateRequest('callRecord', null)
  // An upstream read is bounded by its upstream's timeoutMs, and cancelled with `signal` (the route's, when a gateway runs).
  const neverAborted = new AbortController().signal
  const answerResourceRead = (request: JSONRPCRequest, caller: CallerInfo, signal: AbortSignal = neverAborted) => answerLegacyRead(request, caller.principal, resourceDependencies, signal)

  fastify.decorate('mcp', { legacy, answerToolCall, answerResourceRead, serveModern })

  // An upstream's lists changed: 2025-era sessions hear it on their streams, 2026-07-28 clients on subscriptions/listen.
  gateway?.onListsChanged((changed) => {
    for (const kind of changed) {
      live.bus.publish({ kind: `${kind}_list_changed` })
      live.notifySessions({ jsonrpc: '2.0', method: `notifications/${kind}/list_changed` })
    }
  })

  // subscriptions/listen streams end with their final result once the calls in flight are answered.
  // The wait leaves part of SHUTDOWN_TIMEOUT_MS for what closing does after it (the pool, the
  // embedded database): the process must exit within the budget, not be cut off at its end.
  fastify.addHook('preClose', async () => {
    if (inFlight.modernCalls > 0) {
      // Shared with the gateway's drain (which may have run first): one budget for both.
      const waitMs = Math.max(0, drainDeadline(fastify.config) - Date.now())
      let timer: NodeJS.Timeout | undefined
      await new Promise<void>((resolve) => {
        inFlight.drained = resolve
        timer = setTimeout(resolve, waitMs)
      })
      clearTimeout(timer)
      inFlight.drained = null
    }
    await modern.close()
  })
  fastify.addHook('onClose', async () => {
    await legacyServer.close()
    await modern.close()
  })
}, { name: 'mcp', dependencies: ['config', 'db', 'live', 'gateway'] })
