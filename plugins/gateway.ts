import { randomUUID } from 'node:crypto'
import { ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/client'
import { ProtocolError as ServerProtocolError, ProtocolErrorCode as ServerProtocolErrorCode, type JSONRPCRequest, type ReadResourceResult } from '@modelcontextprotocol/server'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram } from 'prom-client'
import { createGatewayStore } from '../db/gateway-store.js'
import { argumentsDigest, CONTEXT_TOOLS_UPSTREAM, createApprovalGate, createCallAudit, GET_APPROVAL_TOOL, registerApprovalMetrics, type GatewayApprovals } from '../gateway/approvals.js'
import { createCallPath, interactionOf, type DownstreamChannel } from '../gateway/call.js'
import { Federation, type FederatedTool } from '../gateway/federation.js'
import { createInteractions } from '../gateway/interactions.js'
import type { CallOutcome, GatedCall, InputRequiredAnswer } from '../gateway/policy.js'
import { createIdentitySigner } from '../gateway/signed-identity.js'
import { Upstream } from '../gateway/upstream.js'
import { classifyFailure, type BreakerState } from '../gateway/resilience.js'
import { LEGACY_RESOURCE_NOT_FOUND, type FederatedResources } from '../live/resources.js'
import { isLoopbackHost, type Config } from '../schema/config.js'
import { SHUTDOWN_RESERVE_MS, drainDeadline } from './shutdown-deadline.js'
import type { Principal } from '../schema/principal.js'
import { toolError, type ToolCallResult } from '../tools/registry.js'
import type { CallerInfo } from './mcp.js'

export interface UpstreamHealth {
  name: string
  status: 'ok' | 'down'
  breaker: BreakerState
  critical: boolean
}

export interface Gateway {
  federation: Federation
  upstreams: readonly Upstream[]
  /** The federated tool of that name if the principal may call it (undefined for unknown and hidden alike). */
  resolve: (name: string, principal: Principal) => FederatedTool | undefined
  /** The extra tools/list entries of this principal: its upstream tools, and get_approval beside them. */
  list: (principal: Principal) => Array<Record<string, unknown>>
  /** Runs a tools/call the gateway owns (a federated tool or get_approval); undefined when it owns none of that name. */
  call: (name: string, args: Record<string, unknown>, principal: Principal, client: string | null, channel: DownstreamChannel) => Promise<ToolCallResult | InputRequiredAnswer> | undefined
  /** A 2025-era tools/call of a tool the gateway owns, answered as JSON or, once something must reach the client mid-call, as an SSE stream. */
  serveLegacyCall: (request: FastifyRequest, reply: FastifyReply, body: JSONRPCRequest, caller: CallerInfo) => Promise<FastifyReply> | undefined
  /**
   * A 2025-era notifications/cancelled: cancels the caller's gateway call of that request id (in
   * the same session, if any). SDK clients send it when their call's signal aborts.
   */
  cancelClientCall: (requestId: unknown, principal: Principal, sessionId: string | undefined) => void
  /**
   * A 2025-era request answered by the route (resources/read): its signal aborts when the client
   * disconnects or cancels it (notifications/cancelled of its id), as a gateway tools/call's does,
   * so a federated read is cancelled upstream. `end` once answered.
   */
  watchLegacyRequest: (request: FastifyRequest, reply: FastifyReply, requestId: unknown) => { signal: AbortSignal, end: () => void }
  /** A 2025-era initialize that opened a session: its client's capabilities, so later calls in that session know whether it can be asked (elicitation). */
  noteSession: (sessionId: string, capabilities: unknown) => void
  /** A client's answer (POSTed JSON-RPC response) to a request the gateway sent it mid-call; false when it is not one. */
  deliverClientResponse: (message: unknown, principal: Principal) => boolean
  /** Whether a context tool is under the approval rule (APPROVE_CONTEXT_TOOLS). */
  gatesContextTool: (name: string) => boolean
  /** A gated context tool's call: the gate decides, then `run` runs it (now, or later through get_approval). */
  callContextTool: (name: string, args: Record<string, unknown>, principal: Principal, client: string | null, channel: DownstreamChannel) => Promise<ToolCallResult | InputRequiredAnswer>
  /** How an approved context tool call runs (the MCP plugin's registry). */
  setContextRunner: (runner: ContextRunner) => void
  health: () => UpstreamHealth[]
  /** The upstreams' resources, for resources/list, resources/templates/list and resources/read. */
  resources: FederatedResources
  /** Listeners told which lists (tools, prompts, resources) some principal sees may have changed. */
  onListsChanged: (listener: (changed: ListKind[]) => void) => void
}

export type ListKind = 'tools' | 'prompts' | 'resources'

export type ContextRunner = (name: string, args: Record<string, unknown>, principal: Principal, client: string | null) => Promise<ToolCallResult>

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * The gateway, or null when neither UPSTREAMS_FILE nor APPROVE_CONTEXT_TOOLS is set (then
     * nothing of it runs). With APPROVE_CONTEXT_TOOLS alone it has no upstreams, only the gate.
     */
    gateway: Gateway | null
  }
}

const LEGACY_PROTOCOL = '2025'
const BREAKER_VALUES: Record<BreakerState, number> = { closed: 0, half_open: 1, open: 2 }

interface PendingClientRequest {
  principal: string
  resolve: (result: Record<string, unknown>) => void
  reject: (error: Error) => void
}

/**
 * The gateway (issue 16): federates the upstream MCP servers of UPSTREAMS_FILE as
 * `<name>__<tool>` beside the context tools. Off — decorated null, no upstream connection, no
 * hook on the hot path but one null check — unless the file is configured.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  const contextTools = new Set(config.APPROVE_CONTEXT_TOOLS.split(',').filter((name) => name !== ''))
  if (config.upstreams === undefined && contextTools.size === 0) {
    fastify.decorate('gateway', null)
    return
  }
  const upstreamConfigs = config.upstreams ?? []
  const log = fastify.log.child({ component: 'gateway' })
  const registry = fastify.metrics.registry

  const calls = new Counter({ name: 'scm_gateway_calls_total', help: 'Calls of federated tools, by upstream, tool and outcome (ok, input_required, tool_error, timeout, upstream_error, unreachable, breaker_open, rate_limited, pending, rejected, expired, cancelled).', labelNames: ['upstream', 'tool', 'outcome'], registers: [registry] })
  const duration = new Histogram({ name: 'scm_gateway_call_duration_seconds', help: 'Time of a federated call, retries and backoff included, by upstream.', labelNames: ['upstream'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [registry] })
  const retries = new Counter({ name: 'scm_gateway_retries_total', help: 'Attempts of federated calls repeated after a transient failure, by upstream and reason.', labelNames: ['upstream', 'reason'], registers: [registry] })
  const breakerGauge = new Gauge({ name: 'scm_gateway_breaker_state', help: 'Circuit breaker of each upstream: 0 closed, 1 half-open, 2 open.', labelNames: ['upstream'], registers: [registry] })

  const listsChanged = new Set<(changed: ListKind[]) => void>()
  const holder: { federation?: Federation } = {}
  const upstreams = upstreamConfigs.map((upstreamConfig) => new Upstream(upstreamConfig, {
    catalogChanged: (_upstream, changed) => {
      holder.federation?.rebuild()
      for (const listener of listsChanged) listener(changed)
    },
    breakerChanged: (upstream, state) => {
      breakerGauge.set({ upstream: upstream.name }, BREAKER_VALUES[state])
      log.warn({ upstream: upstream.name, breaker: state }, 'upstream breaker changed')
    },
    log: (level, data, message) => log[level](data, message)
  }))
  const federated = new Federation(upstreams)
  holder.federation = federated
  for (const upstream of upstreams) {
    breakerGauge.set({ upstream: upstream.name }, 0)
    for (const outcome of ['ok', 'tool_error', 'timeout', 'upstream_error', 'unreachable', 'breaker_open'] as const) calls.inc({ upstream: upstream.name, tool: '', outcome }, 0)
  }
  registry.registerMetric(new Gauge({
    name: 'scm_gateway_upstream_up',
    help: 'Whether each upstream answered its last list or call (1) or is down (0).',
    labelNames: ['upstream'],
    registers: [],
    collect () {
      for (const upstream of upstreams) this.set({ upstream: upstream.name }, upstream.status === 'ok' ? 1 : 0)
    }
  }))

  // Approvals and the audit (G2: gateway/approvals.ts, db/gateway-store.ts).
  const store = createGatewayStore(fastify.db.sql)
  const approvalMetrics = registerApprovalMetrics(registry, store, log)
  const gate: GatewayApprovals = createApprovalGate({
    store,
    rules: {
      upstreams: new Map(upstreamConfigs.map((upstream) => [upstream.name, { ...(upstream.confirm !== undefined && { confirm: upstream.confirm }), ...(upstream.approval !== undefined && { approval: upstream.approval }) }])),
      defaultMode: config.APPROVAL_MODE ?? defaultApprovalMode(config),
      expiresInSeconds: config.APPROVAL_EXPIRES_SECONDS,
      contextTools
    },
    log
  })
  const audit = createCallAudit(store, log, approvalMetrics)

  // Per principal and upstream, attempts in the current minute (upstreams with callsPerMinute > 0).
  const attemptWindows = new Map<string, { minute: number, count: number }>()
  function countAttempt (principal: Principal, upstream: Upstream): boolean {
    const limit = upstream.config.callsPerMinute
    if (limit === 0) return true
    const minute = Math.floor(Date.now() / 60_000)
    const key = `${upstream.name}\u0000${principal.id}`
    let window = attemptWindows.get(key)
    if (window === undefined || window.minute !== minute) {
      if (attemptWindows.size > 100_000) attemptWindows.clear()
      window = { minute, count: 0 }
      attemptWindows.set(key, window)
    }
    if (window.count >= limit) return false
    window.count++
    return true
  }

  const pendingWrites = new Set<Promise<unknown>>()
  const signer = config.GATEWAY_IDENTITY_KEY === undefined ? undefined : createIdentitySigner(config.GATEWAY_IDENTITY_KEY, config.PUBLIC_URL?.replace(/\/+$/, '') ?? 'shared-context-mcp')
  const callFederated = createCallPath({
    gate,
    audit,
    signer,
    countAttempt,
    log,
    metrics: {
      call: (upstream, tool, outcome: CallOutcome, seconds) => {
        calls.inc({ upstream, tool, outcome })
        duration.observe({ upstream }, seconds)
      },
      retry: (upstream, reason) => retries.inc({ upstream, reason })
    },
    track: (work) => {
      pendingWrites.add(work)
      work.finally(() => pendingWrites.delete(work)).catch(() => {})
    }
  })

  let callsInFlight = 0
  const inFlight = (): number => callsInFlight
  async function counted<T> (work: () => Promise<T>): Promise<T> {
    callsInFlight++
    try {
      return await work()
    } finally {
      callsInFlight--
    }
  }

  let contextRunner: ContextRunner | undefined

  /** get_approval's runner: an approved call, from the breaker on (the gate already decided). */
  async function runApproved (call: GatedCall, approvalId: string, channel: DownstreamChannel): Promise<ToolCallResult> {
    if (call.upstream === CONTEXT_TOOLS_UPSTREAM) {
      if (contextRunner === undefined) throw new Error('no context tool runner registered')
      const result = await contextRunner(call.tool, call.arguments, call.principal, call.client)
      await gate.complete(approvalId, { result, ...(result.isError === true && { code: (result._meta?.['shared-context-mcp/error'] as { code?: never } | undefined)?.code }) })
      return result
    }
    const tool = federated.resolve(call.federatedName, call.principal)
    if (tool === undefined) {
      const result = toolError('MCP_2002', `${call.federatedName}: the upstream does not offer this tool to you now; the approved call (approval ${approvalId}) did not run.`, { reason: 'tool_gone' })
      if (!await gate.release(approvalId)) await gate.complete(approvalId, { result, code: 'MCP_2002' })
      return result
    }
    return await callFederated(tool, call.arguments, call.principal, call.client, channel, { approvalId }) as ToolCallResult
  }

  const getApprovalListed = {
    name: GET_APPROVAL_TOOL.name,
    title: GET_APPROVAL_TOOL.title,
    description: GET_APPROVAL_TOOL.description,
    inputSchema: JSON.parse(JSON.stringify(GET_APPROVAL_TOOL.inputSchema)) as Record<string, unknown>,
    annotations: { title: GET_APPROVAL_TOOL.title, ...GET_APPROVAL_TOOL.annotations }
  }
  /** get_approval is offered to whoever may call a tool that can wait for approval: a federated one, or a gated context tool. */
  function offersGetApproval (principal: Principal): boolean {
    return federated.list(principal).length > 0 || (contextTools.size > 0 && (principal.scopes.has('context:write') || principal.scopes.has('context:delete') || principal.scopes.has('context:admin')))
  }

  const listCache = new WeakMap<object, Array<Record<string, unknown>>>()
  const onlyGetApproval: Array<Record<string, unknown>> = []
  function list (principal: Principal): Array<Record<string, unknown>> {
    const tools = federated.list(principal)
    if (!offersGetApproval(principal)) return tools
    if (tools.length === 0) {
      if (onlyGetApproval.length === 0) onlyGetApproval.push(getApprovalListed)
      return onlyGetApproval
    }
    let withApproval = listCache.get(tools)
    if (withApproval === undefined) {
      withApproval = [...tools, getApprovalListed]
      listCache.set(tools, withApproval)
    }
    return withApproval
  }

  function gatesContextTool (name: string): boolean {
    return contextTools.has(name) && gate.requires(CONTEXT_TOOLS_UPSTREAM, name, {})
  }

  async function callContextTool (name: string, args: Record<string, unknown>, principal: Principal, client: string | null, channel: DownstreamChannel): Promise<ToolCallResult | InputRequiredAnswer> {
    if (contextRunner === undefined) throw new Error('no context tool runner registered')
    const decision = await gate.decide({
      principal,
      client,
      upstream: CONTEXT_TOOLS_UPSTREAM,
      tool: name,
      federatedName: name,
      arguments: args,
      argumentsDigest: argumentsDigest(args),
      annotations: { readOnlyHint: false, destructiveHint: true }
    }, interactionOf(channel))
    if (decision.kind !== 'run') return decision.result
    const result = await contextRunner(name, args, principal, client)
    if (decision.approvalId !== undefined) await gate.complete(decision.approvalId, { result })
    return result
  }

  // 2026-07-28 calls whose upstream asks the client something mid-call (gateway/interactions.ts).
  const interactions = createInteractions({ stateKey: () => store.stateKey(), useState: store.useState, releaseState: store.releaseState, holdMs: config.GATEWAY_INPUT_WAIT_SECONDS * 1000, log })

  /** A 2026-07-28 call (it cannot be sent requests mid-call): through the interactions, which answer input-required when the upstream asks. */
  function multiRound (name: string, args: Record<string, unknown>, principal: Principal, channel: DownstreamChannel, work: (channel: DownstreamChannel) => Promise<ToolCallResult | InputRequiredAnswer>): Promise<ToolCallResult | InputRequiredAnswer> {
    const binding = { principal, tool: name, argumentsDigest: argumentsDigest(args) }
    if (interactions.owns(channel.requestState)) return counted(() => interactions.resume(binding, channel))
    return counted(() => interactions.start(binding, channel, work))
  }

  /**
   * A 2026-07-28 upstream's input-required reaches a 2026-07-28 client as it is, under a signed
   * state any instance can verify (gateway/interactions.ts, relay), for its tools that need no
   * approval (a gated tool's approval question has a state of its own, which refuses a relayed one).
   */
  function relayable (tool: FederatedTool, channel: DownstreamChannel): boolean {
    if (gate.requires(tool.upstream.name, tool.tool, tool.annotations)) return false
    return tool.upstream.protocol === '2026-07-28' || interactions.relays(channel.requestState)
  }

  function relayRound (tool: FederatedTool, args: Record<string, unknown>, principal: Principal, client: string | null, channel: DownstreamChannel): Promise<ToolCallResult | InputRequiredAnswer> {
    const binding = { principal, upstream: tool.upstream.name, tool: tool.federatedName, argumentsDigest: argumentsDigest(args) }
    const { inputResponses: _answers, requestState: _state, ...rest } = channel
    return interactions.relay(binding, channel, (upstreamInput, releaseState) => callFederated(tool, args, principal, client, { ...rest, upstreamInput, ...(releaseState !== undefined && { releaseState }) }))
  }

  function call (name: string, args: Record<string, unknown>, principal: Principal, client: string | null, channel: DownstreamChannel): Promise<ToolCallResult | InputRequiredAnswer> | undefined {
    const rounds = channel.protocol === '2026-07-28' && channel.request === undefined
    const tool = federated.resolve(name, principal)
    if (tool !== undefined) {
      if (rounds && relayable(tool, channel)) return counted(() => relayRound(tool, args, principal, client, channel))
      if (rounds) return multiRound(name, args, principal, channel, (held) => callFederated(tool, args, principal, client, held))
      return counted(() => callFederated(tool, args, principal, client, channel))
    }
    if (name === GET_APPROVAL_TOOL.name && offersGetApproval(principal)) {
      if (rounds) return multiRound(name, args, principal, channel, (held) => gate.resume(principal, args, (gated, approvalId) => runApproved(gated, approvalId, held)))
      return counted(() => gate.resume(principal, args, (gated, approvalId) => runApproved(gated, approvalId, channel)))
    }
    return undefined
  }

  // ---- 2025-era calls: JSON, or SSE once the call sends the client something mid-call

  const pendingClientRequests = new Map<string, PendingClientRequest>()
  // 2025-era gateway calls in flight, by principal, session and the client's request id.
  const legacyCalls = new Map<string, AbortController>()
  const legacyCallKey = (principal: Principal, sessionId: unknown, requestId: unknown): string => JSON.stringify([principal.id, typeof sessionId === 'string' ? sessionId : '', requestId])
  function cancelClientCall (requestId: unknown, principal: Principal, sessionId: string | undefined): void {
    if (typeof requestId !== 'string' && typeof requestId !== 'number') return
    legacyCalls.get(legacyCallKey(principal, sessionId, requestId))?.abort(new Error('cancelled by the client'))
  }
  /** A 2025-era request's cancellation: aborts when its client disconnects, or cancels it (notifications/cancelled of its id). */
  function watchLegacy (request: FastifyRequest, reply: FastifyReply, principal: Principal, requestId: unknown): { signal: AbortSignal, end: () => void } {
    const controller = new AbortController()
    const raw = reply.raw
    const onClose = (): void => { if (!raw.writableFinished) controller.abort(new Error('client disconnected')) }
    raw.once('close', onClose)
    const key = legacyCallKey(principal, request.headers['mcp-session-id'], requestId)
    legacyCalls.set(key, controller)
    return {
      signal: controller.signal,
      end: () => {
        raw.removeListener('close', onClose)
        if (legacyCalls.get(key) === controller) legacyCalls.delete(key)
      }
    }
  }
  function watchLegacyRequest (request: FastifyRequest, reply: FastifyReply, requestId: unknown): { signal: AbortSignal, end: () => void } {
    return watchLegacy(request, reply, request.principal!, requestId)
  }
  // Session id -> whether its client declared form elicitation (bounded: sessions are bounded too, and idle ones forgotten).
  const sessionElicitation = new Map<string, boolean>()
  function noteSession (sessionId: string, capabilities: unknown): void {
    const elicitation = (capabilities as { elicitation?: { form?: unknown, url?: unknown } } | undefined)?.elicitation
    // An empty elicitation capability means form (the 2025-06-18 shape); a url-only one does not.
    const form = elicitation !== undefined && elicitation !== null && (elicitation.form !== undefined || elicitation.url === undefined)
    if (sessionElicitation.size >= Math.max(1000, config.MCP_SESSIONS_MAX)) sessionElicitation.delete(sessionElicitation.keys().next().value as string)
    sessionElicitation.set(sessionId, form)
  }

  function deliverClientResponse (message: unknown, principal: Principal): boolean {
    if (typeof message !== 'object' || message === null) return false
    const { id, result, error } = message as { id?: unknown, result?: unknown, error?: { message?: unknown } }
    if (typeof id !== 'string') return false
    const pending = pendingClientRequests.get(id)
    if (pending === undefined || pending.principal !== principal.id) return false
    pendingClientRequests.delete(id)
    if (typeof result === 'object' && result !== null) pending.resolve(result as Record<string, unknown>)
    else pending.reject(new Error(typeof error?.message === 'string' ? error.message.slice(0, 300) : 'the client refused the request'))
    return true
  }

  function serveLegacyCall (request: FastifyRequest, reply: FastifyReply, body: JSONRPCRequest, caller: CallerInfo): Promise<FastifyReply> | undefined {
    const params = body.params as { name?: unknown, arguments?: unknown, _meta?: { progressToken?: unknown } } | undefined
    if (typeof params?.name !== 'string') return undefined
    const name = params.name
    const owned = federated.resolve(name, caller.principal) !== undefined || (name === GET_APPROVAL_TOOL.name && offersGetApproval(caller.principal))
    if (!owned) return undefined
    // Arguments that are no object go the common way, whose params check refuses them (REQ_1101): never to the upstream.
    if (params.arguments !== undefined && (typeof params.arguments !== 'object' || params.arguments === null || Array.isArray(params.arguments))) return undefined
    const args = (params.arguments ?? {}) as Record<string, unknown>
    return answerLegacy(request, reply, body, caller, name, args, params._meta?.progressToken)
  }

  async function answerLegacy (request: FastifyRequest, reply: FastifyReply, body: JSONRPCRequest, caller: CallerInfo, name: string, args: Record<string, unknown>, progressToken: unknown): Promise<FastifyReply> {
    caller.record.tool = name
    const watched = watchLegacy(request, reply, caller.principal, body.id)
    const { signal } = watched
    const raw = reply.raw
    const accept = request.headers.accept ?? ''
    const canStream = accept.includes('text/event-stream')
    let streaming = false
    let heartbeat: NodeJS.Timeout | undefined
    const openedRequests = new Set<string>()

    const startStream = (): void => {
      if (streaming) return
      streaming = true
      reply.hijack()
      for (const [header, value] of Object.entries(reply.getHeaders())) if (value !== undefined) raw.setHeader(header, value)
      raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' })
      raw.flushHeaders()
      heartbeat = setInterval(() => { if (!raw.destroyed) raw.write(': heartbeat\n\n') }, config.SSE_HEARTBEAT_MS)
      heartbeat.unref()
    }
    const send = (message: Record<string, unknown>): void => {
      startStream()
      if (!raw.destroyed) raw.write(`event: message\ndata: ${JSON.stringify(message)}\n\n`)
    }
    const validToken = typeof progressToken === 'string' || (typeof progressToken === 'number' && Number.isFinite(progressToken))
    // A client that asked for progress gets the stream at once, so heartbeats keep a long call open.
    if (canStream && validToken) startStream()

    const channel: DownstreamChannel = {
      protocol: LEGACY_PROTOCOL,
      signal,
      ...(validToken && { progressToken: progressToken as string | number }),
      ...(canStream && {
        notify: (method: string, notificationParams: Record<string, unknown>) => send({ jsonrpc: '2.0', method, params: notificationParams }),
        request: (method: string, requestParams: Record<string, unknown> | undefined) => new Promise<Record<string, unknown>>((resolve, reject) => {
          const id = `gw-${randomUUID()}`
          openedRequests.add(id)
          pendingClientRequests.set(id, { principal: caller.principal.id, resolve, reject })
          signal.addEventListener('abort', () => {
            if (pendingClientRequests.delete(id)) reject(new Error('the call was cancelled'))
          }, { once: true })
          send({ jsonrpc: '2.0', id, method, ...(requestParams !== undefined && { params: requestParams }) })
        }),
        // A stateless POST does not say what its client declared at initialize; a session's does.
        elicitationSupported: sessionElicitation.get(String(request.headers['mcp-session-id'])) === true
      })
    }
    let answer: Record<string, unknown>
    try {
      const result = await (call(name, args, caller.principal, caller.client, channel) ?? Promise.resolve(undefined))
      if (result === undefined) throw new Error('unreachable: the gateway resolved the tool a moment ago')
      caller.record.outcome = (result as ToolCallResult).isError === true ? String(((result as ToolCallResult)._meta?.['shared-context-mcp/error'] as { code?: string } | undefined)?.code) : 'ok'
      answer = { jsonrpc: '2.0', id: body.id, result }
    } catch (error) {
      caller.record.outcome = 'SRV_9001'
      request.log.error({ err: error, tool: name }, 'gateway call failed')
      answer = { jsonrpc: '2.0', id: body.id, error: { code: -32603, message: 'SRV_9001: the gateway failed to run this call; try again.', data: { code: 'SRV_9001' } } }
    } finally {
      watched.end()
      clearInterval(heartbeat)
      for (const id of openedRequests) pendingClientRequests.delete(id)
    }
    if (!streaming) return reply.code(200).send(answer)
    if (!raw.destroyed) raw.end(`event: message\ndata: ${JSON.stringify(answer)}\n\n`)
    return reply
  }

  /**
   * An upstream's resources/read. Its "not found" answers as ours does (null), so that a resource
   * gone from the upstream looks like any unknown one; any other failure is MCP_2002.
   */
  async function readUpstreamResource (upstream: Upstream, uri: string, signal: AbortSignal): Promise<ReadResourceResult | null> {
    try {
      return await upstream.readResource(uri, signal)
    } catch (error) {
      if (error instanceof ProtocolError && (error.code === LEGACY_RESOURCE_NOT_FOUND || error.code === ProtocolErrorCode.InvalidParams)) return null
      if (signal.aborted) throw new ServerProtocolError(ServerProtocolErrorCode.InternalError, `MCP_2002: the read of ${upstream.name}'s resource was cancelled by the client.`, { code: 'MCP_2002', reason: 'cancelled' })
      log.warn({ upstream: upstream.name, reason: classifyFailure(error).reason }, 'upstream resources/read failed')
      throw new ServerProtocolError(ServerProtocolErrorCode.InternalError, `MCP_2002: the upstream server "${upstream.name}" failed or is unreachable; try again later.`, { code: 'MCP_2002' })
    }
  }

  function health (): UpstreamHealth[] {
    return upstreams.map((upstream) => ({
      name: upstream.name,
      status: upstream.status === 'ok' && upstream.breaker.state !== 'open' ? 'ok' as const : 'down' as const,
      breaker: upstream.breaker.state,
      critical: upstream.config.critical
    }))
  }

  fastify.decorate('gateway', {
    federation: federated,
    upstreams,
    resolve: (name: string, principal: Principal) => federated.resolve(name, principal),
    list,
    call,
    serveLegacyCall,
    noteSession,
    cancelClientCall,
    watchLegacyRequest,
    deliverClientResponse,
    gatesContextTool,
    callContextTool,
    setContextRunner: (runner: ContextRunner) => { contextRunner = runner },
    health,
    resources: {
      list: (principal: Principal) => federated.listResources(principal),
      templates: (principal: Principal) => federated.listResourceTemplates(principal),
      read: (principal: Principal, uri: string, signal: AbortSignal) => {
        const upstream = federated.resolveResource(uri, principal)
        return upstream === undefined ? undefined : readUpstreamResource(upstream, uri, signal)
      }
    },
    onListsChanged: (listener: (changed: ListKind[]) => void) => { listsChanged.add(listener) }
  })

  // Connected in the background: an upstream that is down at start does not keep the server from serving.
  const starting = Promise.all(upstreams.map((upstream) => upstream.start()))
  if (upstreams.length > 0) {
    fastify.addHook('onReady', async () => {
    // Give the upstreams a moment so that the first tools/list usually has them; no longer.
      let timer: NodeJS.Timeout | undefined
      await Promise.race([starting, new Promise((resolve) => { timer = setTimeout(resolve, Math.max(...upstreamConfigs.map((upstream) => upstream.connectTimeoutMs))) })])
      clearTimeout(timer)
    })
  }

  // SIGTERM: the /mcp route refuses new calls, and the upstreams new connections; the calls in
  // flight upstream may finish until the drain deadline (shared with the MCP plugin's, within
  // SHUTDOWN_TIMEOUT_MS), then those still running are cancelled upstream and answered; then
  // their audit rows are written.
  fastify.addHook('preClose', async () => {
    // Calls held for a client's answer cannot get one now (new requests are refused): cancelled upstream.
    interactions.close()
    for (const upstream of upstreams) upstream.drain()
    const deadline = drainDeadline(config)
    while (inFlight() > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    if (inFlight() > 0) {
      log.warn({ calls: inFlight() }, 'shutdown: upstream calls still running at the drain deadline are cancelled')
      for (const upstream of upstreams) upstream.abortCalls()
      // Cancelled, they end at once (answered MCP_2002, audited); the reserve bounds this wait.
      const cutOff = Date.now() + SHUTDOWN_RESERVE_MS / 2
      while (inFlight() > 0 && Date.now() < cutOff) await new Promise((resolve) => setTimeout(resolve, 20))
    }
    await Promise.allSettled([...pendingWrites])
  })
  fastify.addHook('onClose', async () => {
    await Promise.allSettled(upstreams.map((upstream) => upstream.close()))
  })
}, { name: 'gateway', dependencies: ['config', 'db', 'metrics'] })

/**
 * In-band approval (the client asks, and answers) only where the server is this machine's alone:
 * no PUBLIC_URL, or a loopback one, on a loopback HOST. A server behind a proxy on 127.0.0.1 with a
 * public PUBLIC_URL is a remote deploy: its approvals are out-of-band, by a person.
 */
export function defaultApprovalMode (config: Config): 'in-band' | 'out-of-band' {
  if (!isLoopbackHost(config.HOST)) return 'out-of-band'
  if (config.PUBLIC_URL === undefined) return 'in-band'
  const host = URL.parse(config.PUBLIC_URL)?.hostname.replace(/^\[|\]$/g, '')
  return host !== undefined && isLoopbackHost(host) ? 'in-band' : 'out-of-band'
}
