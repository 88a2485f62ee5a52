import { AsyncLocalStorage } from 'node:async_hooks'
import type { ServerResponse } from 'node:http'
import { classifyInboundRequest, type ServerEventBus } from '@modelcontextprotocol/server'
import { Type } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge } from 'prom-client'
import { startChangeListener, type ChangeListener } from '../db/change-listener.js'
import type { FeedChange } from '../db/change-feed.js'
import { createHub, positionOfEventId, type ChangeBatch } from '../live/hub.js'
import { createSessions, type Session } from '../live/sessions.js'
import { SseStream } from '../live/sse.js'
import { parseResourceUri, resourceUri as contextUri } from '../live/resources.js'
import { AppError } from '../schema/errors.js'
import { mayUse, type Principal } from '../schema/principal.js'
import { bearerTokenOf } from './auth.js'

/** What plugins/mcp.ts hands the 2026-07-28 serving path, so that a subscriptions/listen stream knows whose it is. */
export interface ModernRequestContext {
  principal: Principal
  token: string
  response: ServerResponse
  body: unknown
}

export interface LiveCounts {
  sessions: number
  /** Open 2025-era GET streams. */
  streams: number
  /** Open 2026-07-28 subscriptions/listen streams. */
  listenStreams: number
  subscriptions: number
  /** The hub's followed namespaces, sinks and retry timers. */
  namespaces: number
  sinks: number
  timers: number
}

declare module 'fastify' {
  interface FastifyInstance {
    live: {
      /** POST /mcp preHandler: sessions (created at initialize), resources/subscribe and unsubscribe. */
      sessionGate: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
      /** GET /mcp: the session's SSE stream. */
      serveStream: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
      /** DELETE /mcp: ends the session. */
      endSession: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
      /** The change-event bus of the SDK's subscriptions/listen streams (2026-07-28). */
      bus: ServerEventBus
      modernContext: AsyncLocalStorage<ModernRequestContext>
      listener: ChangeListener
      counts: () => LiveCounts
      /** Writes a notification (e.g. notifications/tools/list_changed) to every open 2025-era session stream. */
      notifySessions: (message: Record<string, unknown>) => void
    }
  }
}

const SESSION_HEADER = 'mcp-session-id'
const SUBSCRIBE = 'resources/subscribe'
const UNSUBSCRIBE = 'resources/unsubscribe'
/** Actions after which the namespace's resource list differs (a restore may bring back a deleted key). */
const LIST_ACTIONS: ReadonlySet<string> = new Set(['create', 'delete', 'restore'])
const SubscribeParams = Type.Object({ uri: Type.String({ minLength: 1, maxLength: 1024 }) })
const ListenFilter = Type.Object({
  resourcesListChanged: Type.Optional(Type.Boolean()),
  resourceSubscriptions: Type.Optional(Type.Array(Type.String({ maxLength: 1024 }), { maxItems: 10000 }))
})

interface JsonRpcBody { jsonrpc?: unknown, id?: unknown, method?: unknown, params?: unknown }

function bodyOf (request: FastifyRequest): JsonRpcBody | undefined {
  const body = request.body
  return typeof body === 'object' && body !== null && !Array.isArray(body) ? body as JsonRpcBody : undefined
}

function rpcId (body: JsonRpcBody | undefined): string | number | null {
  const id = body?.id
  return typeof id === 'string' || typeof id === 'number' ? id : null
}

function rpcError (id: string | number | null, code: number, message: string, appCode?: string) {
  return { jsonrpc: '2.0', id, error: { code, message, ...(appCode !== undefined && { data: { code: appCode } }) } }
}

const UNKNOWN_SESSION = 'Session not found (it ended, expired, or belongs to another server instance): send initialize again without Mcp-Session-Id.'

/** A listen stream of the 2026-07-28 line, as our bus sees it. */
interface ListenStream {
  principal: Principal
  token: string
  response: ServerResponse
  following: Map<string, () => void>
  closed: boolean
}

/**
 * Live updates (design §3 "live"): the instance's one LISTEN connection, the hub that turns its
 * notifications into reads of the history, the 2025-era sessions and their GET streams, and the
 * bus the SDK's 2026-07-28 subscriptions/listen streams are fed from.
 */
export default fp(async (fastify) => {
  const { config, db, auth, metrics } = fastify
  const log = fastify.log.child({ component: 'live' })
  const sessions = createSessions({
    maxTotal: config.MCP_SESSIONS_MAX,
    maxPerPrincipal: config.MCP_SESSIONS_PER_PRINCIPAL,
    idleMs: config.MCP_SESSION_IDLE_SECONDS * 1000,
    ...(config.FLY_MACHINE_ID !== undefined && { instanceId: config.FLY_MACHINE_ID })
  })

  /**
   * On Fly.io, a request for another machine's session is handed back to Fly's proxy to replay on
   * that machine (fly-replay; bodies up to 1 MB), so streams and subscriptions work without sticky
   * routing. True when it was; the proxy discards this answer's status and body.
   */
  function replayedToOwner (id: string | string[] | undefined, reply: FastifyReply): boolean {
    if (config.FLY_MACHINE_ID === undefined || typeof id !== 'string' || sessions.isOurs(id)) return false
    const owner = sessions.instanceOf(id)
    if (owner === null || !/^[a-z0-9]{1,64}$/.test(owner)) return false
    reply.code(409).header('fly-replay', `instance=${owner}`).send(rpcError(null, -32001, `Session ${JSON.stringify(id.slice(0, 100))} lives on machine ${owner}: replaying there.`))
    return true
  }
  const listenStreams = new Set<ListenStream>()
  let openStreams = 0

  const notificationsSent = new Counter({ name: 'scm_live_notifications_sent_total', help: 'Change notifications written to open streams (resources/updated and resources/list_changed, both protocol lines).', registers: [metrics.registry] })
  const reconnectsCounter = new Counter({ name: 'scm_live_listen_reconnects_total', help: 'Times the LISTEN connection was re-established after it dropped (each followed by a catch-up read of the history).', registers: [metrics.registry] })
  metrics.registry.registerMetric(new Gauge({
    name: 'scm_live_open_streams',
    help: 'Open live-update streams: 2025-era GET /mcp streams and 2026-07-28 subscriptions/listen streams.',
    registers: [],
    collect () { this.set(openStreams + listenStreams.size) }
  }))
  metrics.registry.registerMetric(new Gauge({
    name: 'scm_live_sessions',
    help: 'MCP sessions this instance holds (2025-era clients, for live updates).',
    registers: [],
    collect () { this.set(sessions.size) }
  }))

  const hub = createHub(db.sql, { onError: (error, namespace) => log.warn({ err: error, namespace }, 'could not read the change feed; retrying') })
  const listener = startChangeListener(db.connectListener, {
    onChange: (notice) => hub.changed(notice),
    onListening: (reconnected) => {
      if (reconnected) {
        reconnectsCounter.inc()
        log.info('LISTEN re-established; catching up from the history')
      }
      hub.catchUp()
    },
    onLost: (error) => log.warn({ err: error }, 'LISTEN connection lost; reconnecting')
  })

  // ---- 2025-era sessions and their streams

  function deliver (session: Session, batch: ChangeBatch, seen?: Set<string>): void {
    const stream = session.stream
    if (stream === null || !stream.isOpen) return
    const messages: unknown[] = []
    let listChanged = false
    for (const change of batch.changes) {
      const uri = contextUri(batch.namespace, change.key)
      seen?.add(`${uri}@${change.version}`)
      if (session.subscriptions.has(uri)) messages.push(updatedNotification(uri, change))
      if (!listChanged && batch.namespace === session.principal.namespace && LIST_ACTIONS.has(change.action)) listChanged = true
    }
    if (listChanged) messages.push({ jsonrpc: '2.0', method: 'notifications/resources/list_changed' })
    messages.forEach((message, index) => stream.message(message, index === messages.length - 1 ? batch.eventId : undefined))
    notificationsSent.inc(messages.length)
  }

  function namespacesOf (session: Session): Set<string> {
    const namespaces = new Set([session.principal.namespace])
    for (const uri of session.subscriptions) {
      const parsed = parseResourceUri(uri)
      if (parsed !== null) namespaces.add(parsed.namespace)
    }
    return namespaces
  }

  function closeStream (session: Session): void {
    for (const leave of session.following.values()) leave()
    session.following.clear()
    if (session.stream !== null) openStreams--
    session.stream = null
    session.lastActive = Date.now()
  }

  function endSessionNow (session: Session, event: string, message: string): void {
    session.stream?.end(event, { message })
    closeStream(session)
    session.subscriptions.clear()
    sessions.remove(session)
  }

  async function serveStream (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const id = request.headers[SESSION_HEADER]
    if (id === undefined) {
      return reply.code(405).header('allow', 'POST').send(rpcError(null, -32000, 'GET /mcp opens the live-update stream of a session: send initialize first and pass its Mcp-Session-Id. 2026-07-28 clients use subscriptions/listen.', 'REQ_1101'))
    }
    const session = typeof id === 'string' ? sessions.get(id) : undefined
    const principal = request.principal!
    if (session === undefined && replayedToOwner(id, reply)) return
    if (session === undefined || session.principal.id !== principal.id) return reply.code(404).send(rpcError(null, -32001, UNKNOWN_SESSION, 'REQ_1101'))
    if (!mayUse(principal, principal.namespace, 'context:read')) throw new AppError('AUTH_1004', 'Live updates need the context:read scope.')
    session.principal = principal
    const lastEventId = request.headers['last-event-id']
    const resumeFrom = typeof lastEventId === 'string' ? positionOfEventId(lastEventId) : undefined

    // A client that reconnects before this instance noticed its old stream end replaces it.
    if (session.stream !== null) {
      session.stream.end('replaced', { message: 'Another stream was opened for this session.' })
      closeStream(session)
    }
    let pending: ChangeBatch[] | null = []
    // What the Last-Event-ID replay delivered: the live feed, which starts where it joined, may
    // serve some of it again, buffered or later.
    const seen = new Set<string>()
    const unseenOf = (batch: ChangeBatch): ChangeBatch => seen.size === 0
      ? batch
      : { ...batch, changes: batch.changes.filter((change) => !seen.has(`${contextUri(batch.namespace, change.key)}@${change.version}`)) }
    const sink = (batch: ChangeBatch): void => {
      if (pending !== null) pending.push(batch)
      else {
        const unseen = unseenOf(batch)
        if (unseen.changes.length > 0) deliver(session, unseen)
      }
    }
    const following = new Map<string, () => void>()
    try {
      for (const namespace of namespacesOf(session)) following.set(namespace, await hub.join(namespace, sink))
    } catch (error) {
      for (const leave of following.values()) leave()
      throw error
    }
    if (request.raw.destroyed || session.stream !== null || sessions.get(session.id) !== session) {
      for (const leave of following.values()) leave()
      if (!request.raw.destroyed) return reply.code(409).send(rpcError(null, -32000, 'Another stream was opened for this session meanwhile.', 'REQ_1101'))
      return reply.hijack()
    }

    reply.hijack()
    const headers: Record<string, string> = { [SESSION_HEADER]: session.id }
    for (const [name, value] of Object.entries(reply.getHeaders())) if (typeof value === 'string') headers[name] = value
    for (const [namespace, leave] of following) session.following.set(namespace, leave)
    openStreams++
    const stream = new SseStream(reply.raw, headers, config.SSE_RETRY_MS, () => { if (session.stream === stream) closeStream(session) })
    session.stream = stream

    if (resumeFrom !== undefined) {
      try {
        for (const namespace of session.following.keys()) await hub.replay(namespace, resumeFrom, (batch) => deliver(session, batch, seen))
      } catch (error) {
        log.warn({ err: error }, 'could not replay the history after Last-Event-ID')
        stream.end('error', { message: 'The history could not be read; reconnect in a moment.' })
        return
      }
    }
    const buffered: ChangeBatch[] = pending
    pending = null
    for (const batch of buffered) {
      const unseen = unseenOf(batch)
      if (unseen.changes.length > 0) deliver(session, unseen)
    }
  }

  async function endSession (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const id = request.headers[SESSION_HEADER]
    if (id === undefined) return reply.code(405).header('allow', 'POST').send(rpcError(null, -32000, 'DELETE /mcp ends a session: pass its Mcp-Session-Id.', 'REQ_1101'))
    const session = typeof id === 'string' ? sessions.get(id) : undefined
    if (session === undefined && replayedToOwner(id, reply)) return
    if (session === undefined || session.principal.id !== request.principal!.id) return reply.code(404).send(rpcError(null, -32001, UNKNOWN_SESSION, 'REQ_1101'))
    endSessionNow(session, 'session-ended', 'The client ended the session.')
    return reply.code(204).send()
  }

  function answerSubscription (session: Session, body: JsonRpcBody): unknown {
    const id = rpcId(body)
    if (!Value.Check(SubscribeParams, body.params)) return rpcError(id, -32602, 'Invalid params: { uri } is required, a context:// resource URI.', 'REQ_1101')
    const parsed = parseResourceUri(body.params.uri)
    const uri = parsed === null ? body.params.uri : contextUri(parsed.namespace, parsed.key) // either part may come percent-encoded
    if (parsed === null) return rpcError(id, -32602, `Invalid params: ${JSON.stringify(uri.slice(0, 100))} is not a context://{namespace}/{key} URI.`, 'REQ_1101')
    if (!mayUse(session.principal, parsed.namespace, 'context:read')) return rpcError(id, -32602, 'Resource not found.', 'CTX_2001')
    if (body.method === UNSUBSCRIBE) {
      session.subscriptions.delete(uri)
      return { jsonrpc: '2.0', id, result: {} }
    }
    if (!session.subscriptions.has(uri)) {
      if (session.subscriptions.size >= config.MCP_SUBSCRIPTIONS_PER_SESSION) {
        return rpcError(id, -32602, `This session already has ${config.MCP_SUBSCRIPTIONS_PER_SESSION} subscriptions (MCP_SUBSCRIPTIONS_PER_SESSION): unsubscribe from some first.`, 'REQ_1103')
      }
      session.subscriptions.add(uri)
    }
    if (session.stream !== null && !session.following.has(parsed.namespace)) {
      const stream = session.stream
      hub.join(parsed.namespace, (batch) => deliver(session, batch)).then((leave) => {
        if (session.stream === stream && !session.following.has(parsed.namespace)) session.following.set(parsed.namespace, leave)
        else leave()
      }, (error: unknown) => log.warn({ err: error }, 'could not follow a namespace'))
    }
    return { jsonrpc: '2.0', id, result: {} }
  }

  async function sessionGate (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const id = request.headers[SESSION_HEADER]
    const body = bodyOf(request)
    const method = body?.method
    // 2026-07-28 has no resources/subscribe (subscriptions/listen replaced it): the SDK answers
    // those requests itself (404, method not found).
    if ((method === SUBSCRIBE || method === UNSUBSCRIBE) && isModern(request)) return
    if (method === 'initialize') {
      const token = bearerTokenOf(request.headers.authorization)
      const session = token === undefined ? null : sessions.create(request.principal!, token)
      if (session !== null) reply.header(SESSION_HEADER, session.id)
      return
    }
    if (id === undefined) {
      if (method === SUBSCRIBE || method === UNSUBSCRIBE) {
        return reply.send(rpcError(rpcId(body), -32600, `${method} needs a session: send initialize (without Mcp-Session-Id), then pass the Mcp-Session-Id it answers with.`, 'REQ_1101'))
      }
      return
    }
    const session = typeof id === 'string' ? sessions.get(id) : undefined
    if (session === undefined || session.principal.id !== request.principal!.id) {
      // Another instance's session (no sticky routing in front): its tool calls need no session here.
      if (typeof id === 'string' && !sessions.isOurs(id) && method !== SUBSCRIBE && method !== UNSUBSCRIBE) return
      if (session === undefined && replayedToOwner(id, reply)) return
      return reply.code(404).send(rpcError(rpcId(body), -32001, UNKNOWN_SESSION, 'REQ_1101'))
    }
    session.lastActive = Date.now()
    session.principal = request.principal!
    if (body !== undefined && (method === SUBSCRIBE || method === UNSUBSCRIBE)) return reply.send(answerSubscription(session, body))
  }

  function isModern (request: FastifyRequest): boolean {
    const versionHeader = request.headers['mcp-protocol-version']
    return classifyInboundRequest({ httpMethod: 'POST', protocolVersionHeader: typeof versionHeader === 'string' ? versionHeader : undefined, body: request.body }).kind !== 'legacy'
  }

  // ---- 2026-07-28 subscriptions/listen: the SDK serves the stream; this bus feeds it

  const modernContext = new AsyncLocalStorage<ModernRequestContext>()
  const bus: ServerEventBus = {
    publish: () => {}, // changes come from the history, never from in-process publishers
    subscribe: (listener) => {
      const context = modernContext.getStore()
      const params = (context?.body as { params?: { notifications?: unknown } } | undefined)?.params
      const filter = params?.notifications
      if (context === undefined || !Value.Check(ListenFilter, filter)) return () => {}
      const { principal } = context
      // The SDK matches events against the URIs as the client wrote them: each canonical URI, and the spellings asked for.
      const uris = new Map<string, Set<string>>()
      const namespaces = new Set<string>()
      if (filter.resourcesListChanged === true && mayUse(principal, principal.namespace, 'context:read')) namespaces.add(principal.namespace)
      for (const uri of filter.resourceSubscriptions ?? []) {
        const parsed = parseResourceUri(uri)
        if (parsed === null || !mayUse(principal, parsed.namespace, 'context:read')) continue
        const canonical = contextUri(parsed.namespace, parsed.key)
        uris.set(canonical, (uris.get(canonical) ?? new Set()).add(uri))
        namespaces.add(parsed.namespace)
      }
      const stream: ListenStream = { principal, token: context.token, response: context.response, following: new Map(), closed: false }
      listenStreams.add(stream)
      const sink = (batch: ChangeBatch): void => {
        if (stream.closed) return
        let listChanged = false
        for (const change of batch.changes) {
          for (const uri of uris.get(contextUri(batch.namespace, change.key)) ?? []) {
            listener({ kind: 'resource_updated', uri, params: { _meta: metaOf(change) } })
            notificationsSent.inc()
          }
          if (batch.namespace === principal.namespace && filter.resourcesListChanged === true && LIST_ACTIONS.has(change.action)) listChanged = true
        }
        if (listChanged) {
          listener({ kind: 'resources_list_changed' })
          notificationsSent.inc()
        }
      }
      for (const namespace of namespaces) {
        hub.join(namespace, sink).then((leave) => {
          if (stream.closed) leave()
          else stream.following.set(namespace, leave)
        }, (error: unknown) => log.warn({ err: error }, 'could not follow a namespace'))
      }
      return () => {
        if (stream.closed) return
        stream.closed = true
        for (const leave of stream.following.values()) leave()
        stream.following.clear()
        listenStreams.delete(stream)
      }
    }
  }

  // ---- heartbeats, token re-checks, idle sessions

  const heartbeat = setInterval(() => {
    for (const session of sessions.all()) session.stream?.heartbeat()
  }, config.SSE_HEARTBEAT_MS)

  // Every AUTH_CACHE_SECONDS (at least 1 s) each open stream's token is looked up afresh: a revoked
  // or expired one ends its streams within that time.
  const recheckMs = Math.max(1, config.AUTH_CACHE_SECONDS) * 1000
  let rechecking = false
  const maintenance = setInterval(() => {
    sessions.sweep()
    if (rechecking) return
    rechecking = true
    recheckTokens().catch((error: unknown) => log.warn({ err: error }, 'could not re-check the tokens of open streams')).finally(() => { rechecking = false })
  }, recheckMs)

  async function recheckTokens (): Promise<void> {
    const tokens = new Set<string>()
    for (const session of sessions.all()) if (session.stream !== null) tokens.add(session.token)
    for (const stream of listenStreams) tokens.add(stream.token)
    for (const token of tokens) {
      let refusal: AppError | undefined
      try {
        await auth.verify(token)
      } catch (error) {
        if (error instanceof AppError && error.code.startsWith('AUTH_')) refusal = error
        else continue // the database is unreachable: keep the streams until it answers
      }
      if (refusal === undefined) continue
      for (const session of sessions.all()) {
        if (session.token === token) endSessionNow(session, 'unauthorized', `${refusal.code}: ${refusal.message}`)
      }
      for (const stream of listenStreams) if (stream.token === token) stream.response.destroy()
    }
  }

  fastify.addHook('preClose', async () => {
    clearInterval(heartbeat)
    clearInterval(maintenance)
    for (const session of [...sessions.all()]) endSessionNow(session, 'shutdown', 'The server is shutting down; reconnect in a moment.')
  })
  fastify.addHook('onClose', async () => {
    clearInterval(heartbeat)
    clearInterval(maintenance)
    hub.close()
    await listener.close()
  })

  fastify.decorate('live', {
    sessionGate,
    serveStream,
    endSession,
    bus,
    modernContext,
    listener,
    notifySessions: (message: Record<string, unknown>) => {
      for (const session of sessions.all()) {
        if (session.stream === null || !session.stream.isOpen) continue
        session.stream.message(message)
        notificationsSent.inc()
      }
    },
    counts: () => {
      let subscriptions = 0
      for (const session of sessions.all()) subscriptions += session.subscriptions.size
      return { sessions: sessions.size, streams: openStreams, listenStreams: listenStreams.size, subscriptions, ...hub.counts() }
    }
  })
}, { name: 'live', dependencies: ['config', 'db', 'auth', 'metrics'] })

function metaOf (change: FeedChange): Record<string, unknown> {
  return { 'shared-context-mcp/version': change.version, 'shared-context-mcp/action': change.action }
}

function updatedNotification (uri: string, change: FeedChange) {
  return { jsonrpc: '2.0', method: 'notifications/resources/updated', params: { uri, _meta: metaOf(change) } }
}
