import { AsyncLocalStorage } from 'node:async_hooks'
import type { ServerResponse } from 'node:http'
import { classifyInboundRequest, type ServerEvent, type ServerEventBus } from '@modelcontextprotocol/server'
import { Type } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge } from 'prom-client'
import { startChangeListener, type ChangeListener } from '../db/change-listener.js'
import type { FeedChange } from '../db/change-feed.js'
import { comparePositions, type FeedPosition } from '../db/change-feed.js'
import { createHub, eventIdOf, positionOfEventId, type ChangeBatch } from '../live/hub.js'
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
  /** Releases what prepareListen joined, once the stream's own sinks are in place. */
  prepared?: () => void
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
      sessionGate: (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void) => void
      /** GET /mcp: the session's SSE stream. */
      serveStream: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
      /** DELETE /mcp: ends the session. */
      endSession: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
      /** The change-event bus of the SDK's subscriptions/listen streams (2026-07-28). */
      bus: ServerEventBus
      modernContext: AsyncLocalStorage<ModernRequestContext>
      /**
       * Before the SDK serves a subscriptions/listen request: refuses it past the principal's stream
       * limit or the subscription limit, and otherwise has its namespaces' feeds settled, so that
       * whatever commits after the SDK's acknowledgement is delivered. Call `release` when the SDK's
       * handling of the request has ended.
       */
      prepareListen: (principal: Principal, body: unknown) => Promise<ListenPreparation>
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
const LIST_CHANGED = { jsonrpc: '2.0', method: 'notifications/resources/list_changed' }
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

/** Notifications a listen stream may have queued while its client reads nothing; past it, the stream is cut. */
const MAX_LISTEN_BACKLOG = 1000
/** How often the hub reads every followed namespace while the LISTEN connection is down. */
const UNLISTENED_POLL_MS = 1000

export type ListenPreparation =
  | { refusal: { code: 'REQ_1101', message: string } }
  | { refusal?: undefined, release: () => void }

const UNKNOWN_SESSION = 'Session not found (it ended, expired, or belongs to another server instance): send initialize again without Mcp-Session-Id.'

/** A listen stream of the 2026-07-28 line, as our bus sees it. */
interface ListenStream {
  principal: Principal
  token: string
  response: ServerResponse
  following: Map<string, () => void>
  closed: boolean
  /** Notifications handed to the SDK while the response could not take more (writableNeedDrain). */
  backlog: number
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
      if (unlistenedPoll !== undefined) clearInterval(unlistenedPoll)
      unlistenedPoll = undefined
      if (reconnected) {
        reconnectsCounter.inc()
        log.info('LISTEN re-established; catching up from the history')
      }
      hub.catchUp()
    },
    onLost: (error) => {
      log.warn({ err: error }, 'LISTEN connection lost; reconnecting, and reading the history every second meanwhile')
      unlistenedPoll ??= setInterval(() => hub.catchUp(), UNLISTENED_POLL_MS)
    },
    probeMs: config.SSE_HEARTBEAT_MS
  })
  // Without notifications, streams are served by reading every followed namespace's feed on a timer.
  let unlistenedPoll: NodeJS.Timeout | undefined

  // ---- 2025-era sessions and their streams

  /**
   * Writes a batch's notifications to this stream of the session. The event id is the least of the
   * positions the session's followed feeds have delivered up to, so that a client resuming from it
   * misses nothing in any namespace (it may be told of some changes twice).
   */
  function deliver (session: Session, stream: SseStream, batch: ChangeBatch, eventId: string | undefined = sessionEventId(session, batch)): void {
    if (!stream.isOpen || session.stream !== stream) return
    const messages: unknown[] = []
    let listChanged = false
    const readable = mayUse(session.principal, batch.namespace, 'context:read')
    for (const change of batch.changes) {
      const uri = contextUri(batch.namespace, change.key)
      if (readable && session.subscriptions.has(uri)) messages.push(updatedNotification(uri, change))
      if (!listChanged && batch.namespace === session.principal.namespace && LIST_ACTIONS.has(change.action)) listChanged = true
    }
    if (listChanged) messages.push(LIST_CHANGED)
    messages.forEach((message, index) => stream.message(message, index === messages.length - 1 ? eventId : undefined))
    notificationsSent.inc(messages.length)
  }

  function sessionEventId (session: Session, batch: ChangeBatch): string {
    let least: FeedPosition = batch.changes.at(-1)?.position ?? { txid: '0', id: 0 }
    for (const namespace of session.following.keys()) {
      if (namespace === batch.namespace) continue
      const position = hub.positionOf(namespace)
      if (position !== undefined && comparePositions(position, least) < 0) least = position
    }
    return least === batch.changes.at(-1)?.position ? batch.eventId : eventIdOf(least)
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
    session.streamToken = null
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
    // Until the Last-Event-ID replay is done, live batches wait; then each namespace's live batches
    // go out without the changes the replay delivered already (positions up to where it ended).
    let pending: ChangeBatch[] | null = []
    const replayedUpTo = new Map<string, FeedPosition>()
    const notReplayed = (batch: ChangeBatch): ChangeBatch => {
      const upTo = replayedUpTo.get(batch.namespace)
      return upTo === undefined ? batch : { ...batch, changes: batch.changes.filter((change) => comparePositions(change.position, upTo) > 0) }
    }
    const opening: { stream?: SseStream } = {}
    const toStream = (batch: ChangeBatch): void => {
      const fresh = notReplayed(batch)
      if (opening.stream !== undefined && fresh.changes.length > 0) deliver(session, opening.stream, fresh)
    }
    const sink = (batch: ChangeBatch): void => {
      if (pending !== null) pending.push(batch)
      else toStream(batch)
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
      if (request.raw.destroyed) return reply.hijack()
      if (sessions.get(session.id) !== session) return reply.code(404).send(rpcError(null, -32001, UNKNOWN_SESSION, 'REQ_1101'))
      return reply.code(409).send(rpcError(null, -32000, 'Another stream was opened for this session meanwhile.', 'REQ_1101'))
    }

    reply.hijack()
    const headers: Record<string, string> = { [SESSION_HEADER]: session.id }
    for (const [name, value] of Object.entries(reply.getHeaders())) if (typeof value === 'string') headers[name] = value
    for (const [namespace, leave] of following) session.following.set(namespace, leave)
    openStreams++
    const opened = new SseStream(reply.raw, headers, config.SSE_RETRY_MS, () => { if (session.stream === opened) closeStream(session) })
    opening.stream = opened
    session.stream = opened
    session.streamToken = bearerTokenOf(request.headers.authorization) ?? session.token

    if (resumeFrom !== undefined) {
      const isCurrent = (): boolean => opened.isOpen && session.stream === opened
      try {
        for (const namespace of [...session.following.keys()]) {
          // Replayed events carry no id: a client cut off now resumes from its Last-Event-ID again.
          const ended = await hub.replay(namespace, resumeFrom, (batch) => deliver(session, opened, batch, undefined), isCurrent)
          if (ended.status === 'abandoned') return
          if (ended.status === 'too_far_behind') {
            tellToReadAgain(session, opened)
            break
          }
          replayedUpTo.set(namespace, ended.position)
        }
      } catch (error) {
        if (error instanceof AppError && error.code === 'REQ_1101') {
          // Not a position of this database (restored elsewhere, or another deployment's): the
          // stream goes on live, and the client is told to read everything again.
          tellToReadAgain(session, opened)
        } else {
          log.warn({ err: error }, 'could not replay the history after Last-Event-ID')
          opened.end('error', { message: 'The history could not be read; reconnect in a moment.' })
          return
        }
      }
    }
    const buffered: ChangeBatch[] = pending
    pending = null
    for (const batch of buffered) toStream(batch)
  }

  /** After a gap that cannot be replayed: the list, and every subscribed resource, may have changed. */
  function tellToReadAgain (session: Session, stream: SseStream): void {
    stream.message(LIST_CHANGED)
    let sent = 1
    for (const uri of session.subscriptions) {
      const parsed = parseResourceUri(uri)
      if (parsed === null || !mayUse(session.principal, parsed.namespace, 'context:read')) continue
      stream.message({ jsonrpc: '2.0', method: 'notifications/resources/updated', params: { uri } })
      sent++
    }
    notificationsSent.inc(sent)
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

  async function answerSubscription (session: Session, body: JsonRpcBody): Promise<unknown> {
    const id = rpcId(body)
    if (!Value.Check(SubscribeParams, body.params)) return rpcError(id, -32602, 'Invalid params: { uri } is required, a context:// resource URI.', 'REQ_1101')
    const parsed = parseResourceUri(body.params.uri)
    const uri = parsed === null ? body.params.uri : contextUri(parsed.namespace, parsed.key) // either part may come percent-encoded
    if (parsed === null) return rpcError(id, -32602, `Invalid params: ${JSON.stringify(uri.slice(0, 100))} is not a context://{namespace}/{key} URI.`, 'REQ_1101')
    if (!mayUse(session.principal, parsed.namespace, 'context:read')) return rpcError(id, -32602, 'Resource not found.', 'CTX_2001')
    if (body.method === UNSUBSCRIBE) {
      session.subscriptions.delete(uri)
      if (!namespacesOf(session).has(parsed.namespace)) {
        session.following.get(parsed.namespace)?.()
        session.following.delete(parsed.namespace)
      }
      return { jsonrpc: '2.0', id, result: {} }
    }
    if (!session.subscriptions.has(uri)) {
      if (session.subscriptions.size >= config.MCP_SUBSCRIPTIONS_PER_SESSION) {
        return rpcError(id, -32602, `This session already has ${config.MCP_SUBSCRIPTIONS_PER_SESSION} subscriptions (MCP_SUBSCRIPTIONS_PER_SESSION): unsubscribe from some first.`, 'REQ_1101')
      }
      session.subscriptions.add(uri)
    }
    const stream = session.stream
    if (stream !== null && !session.following.has(parsed.namespace)) {
      // Answered once the namespace's feed is settled: a change the client makes after the answer is delivered.
      try {
        const leave = await hub.join(parsed.namespace, (batch) => deliver(session, stream, batch))
        if (session.stream === stream && !session.following.has(parsed.namespace)) session.following.set(parsed.namespace, leave)
        else leave()
      } catch (error) {
        log.warn({ err: error }, 'could not follow a namespace')
        session.subscriptions.delete(uri)
        return rpcError(id, -32603, 'The change feed could not be read; subscribe again in a moment.', 'DEP_3001')
      }
    }
    return { jsonrpc: '2.0', id, result: {} }
  }

  /** The session checks of a POST; true when it answered the request itself. */
  function gate (request: FastifyRequest, reply: FastifyReply): boolean {
    const id = request.headers[SESSION_HEADER]
    const body = bodyOf(request)
    const method = body?.method
    // 2026-07-28 has no resources/subscribe (subscriptions/listen replaced it): the SDK answers
    // those requests itself (404, method not found).
    if ((method === SUBSCRIBE || method === UNSUBSCRIBE) && isModern(request)) return false
    if (method === 'initialize') {
      const token = bearerTokenOf(request.headers.authorization)
      const session = token === undefined ? null : sessions.create(request.principal!, token)
      if (session !== null) reply.header(SESSION_HEADER, session.id)
      return false
    }
    if (id === undefined) {
      if (method === SUBSCRIBE || method === UNSUBSCRIBE) {
        reply.send(rpcError(rpcId(body), -32600, `${method} needs a session: send initialize (without Mcp-Session-Id), then pass the Mcp-Session-Id it answers with.`, 'REQ_1101'))
        return true
      }
      return false
    }
    const session = typeof id === 'string' ? sessions.get(id) : undefined
    if (session === undefined || session.principal.id !== request.principal!.id) {
      // Another instance's session (no sticky routing in front): its tool calls need no session here.
      if (typeof id === 'string' && !sessions.isOurs(id) && method !== SUBSCRIBE && method !== UNSUBSCRIBE) return false
      if (session === undefined && replayedToOwner(id, reply)) return true
      reply.code(404).send(rpcError(rpcId(body), -32001, UNKNOWN_SESSION, 'REQ_1101'))
      return true
    }
    session.lastActive = Date.now()
    session.principal = request.principal!
    session.token = bearerTokenOf(request.headers.authorization) ?? session.token
    if (body === undefined || (method !== SUBSCRIBE && method !== UNSUBSCRIBE)) return false
    answerSubscription(session, body).then((answer) => reply.send(answer), (error: unknown) => reply.send(error))
    return true
  }

  // preHandler, callback style: an async hook costs a promise per request.
  function sessionGate (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void {
    let answered: boolean
    try {
      answered = gate(request, reply)
    } catch (error) {
      done(error as Error)
      return
    }
    if (!answered) done()
  }

  function isModern (request: FastifyRequest): boolean {
    const versionHeader = request.headers['mcp-protocol-version']
    return classifyInboundRequest({ httpMethod: 'POST', protocolVersionHeader: typeof versionHeader === 'string' ? versionHeader : undefined, body: request.body }).kind !== 'legacy'
  }

  // ---- 2026-07-28 subscriptions/listen: the SDK serves the stream; this bus feeds it

  const modernContext = new AsyncLocalStorage<ModernRequestContext>()
  /** Each open listen stream's notify: what is published in process (the gateway's upstream list changes) reaches them all; the SDK filters. */
  const published = new Set<(event: ServerEvent) => void>()
  const bus: ServerEventBus = {
    // Changes of the context come from the history (the hub below); only the gateway publishes here.
    publish: (event) => {
      for (const notify of published) {
        try {
          notify(event)
        } catch (error) {
          // One stream's failure must not keep the event from the others, nor reach the publisher.
          fastify.log.warn({ err: error }, 'a listen stream could not take an event')
        }
      }
    },
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
      const stream: ListenStream = { principal, token: context.token, response: context.response, following: new Map(), closed: false, backlog: 0 }
      listenStreams.add(stream)
      // The SDK queues what the response cannot take yet: a client that reads nothing is cut off
      // before that queue grows without bound.
      const notify = (event: Parameters<typeof listener>[0]): void => {
        if (stream.response.writableNeedDrain) stream.backlog++
        else stream.backlog = 0
        if (stream.backlog > MAX_LISTEN_BACKLOG) {
          stream.response.destroy()
          return
        }
        listener(event)
        notificationsSent.inc()
      }
      published.add(notify)
      const sink = (batch: ChangeBatch): void => {
        if (stream.closed) return
        let listChanged = false
        for (const change of batch.changes) {
          for (const uri of uris.get(contextUri(batch.namespace, change.key)) ?? []) notify({ kind: 'resource_updated', uri, params: { _meta: metaOf(change) } })
          if (batch.namespace === principal.namespace && filter.resourcesListChanged === true && LIST_ACTIONS.has(change.action)) listChanged = true
        }
        if (listChanged) notify({ kind: 'resources_list_changed' })
      }
      for (const namespace of namespaces) {
        hub.join(namespace, sink).then((leave) => {
          if (stream.closed) leave()
          else stream.following.set(namespace, leave)
        }, (error: unknown) => log.warn({ err: error }, 'could not follow a namespace'))
      }
      context.prepared?.() // the sinks are in (hub.join adds them at once): the feeds prepareListen settled stay
      return () => {
        if (stream.closed) return
        stream.closed = true
        published.delete(notify)
        for (const leave of stream.following.values()) leave()
        stream.following.clear()
        listenStreams.delete(stream)
      }
    }
  }

  async function prepareListen (principal: Principal, body: unknown): Promise<ListenPreparation> {
    const filter = (body as { params?: { notifications?: unknown } } | undefined)?.params?.notifications
    let open = 0
    for (const stream of listenStreams) if (stream.principal.id === principal.id) open++
    if (open >= config.MCP_SESSIONS_PER_PRINCIPAL) {
      return { refusal: { code: 'REQ_1101', message: `This principal has ${open} subscriptions/listen streams open here, the most MCP_SESSIONS_PER_PRINCIPAL allows: close one first.` } }
    }
    if (!Value.Check(ListenFilter, filter)) return { release: () => {} } // the SDK answers a malformed filter itself
    const subscriptions = new Set(filter.resourceSubscriptions ?? [])
    if (subscriptions.size > config.MCP_SUBSCRIPTIONS_PER_SESSION) {
      return { refusal: { code: 'REQ_1101', message: `notifications.resourceSubscriptions names ${subscriptions.size} resources; at most ${config.MCP_SUBSCRIPTIONS_PER_SESSION} (MCP_SUBSCRIPTIONS_PER_SESSION) per stream.` } }
    }
    const namespaces = new Set<string>()
    if (filter.resourcesListChanged === true) namespaces.add(principal.namespace)
    for (const uri of subscriptions) {
      const parsed = parseResourceUri(uri)
      if (parsed !== null && mayUse(principal, parsed.namespace, 'context:read')) namespaces.add(parsed.namespace)
    }
    // The feeds are joined (and so settled) before the SDK acknowledges; the stream's own sinks join them then.
    const leaves: Array<() => void> = []
    const release = (): void => { for (const leave of leaves.splice(0)) leave() }
    try {
      for (const namespace of namespaces) leaves.push(await hub.join(namespace, () => {}))
    } catch (error) {
      release()
      throw error
    }
    return { release }
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
    for (const session of sessions.all()) if (session.streamToken !== null) tokens.add(session.streamToken)
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
        if (session.streamToken !== token) continue
        // The stream ends; so does the session, unless the client has used a newer token since (a refresh).
        if (session.token === token) endSessionNow(session, 'unauthorized', `${refusal.code}: ${refusal.message}`)
        else {
          session.stream?.end('unauthorized', { message: `${refusal.code}: ${refusal.message}` })
          closeStream(session)
        }
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
    if (unlistenedPoll !== undefined) clearInterval(unlistenedPoll)
    hub.close()
    await listener.close()
  })

  fastify.decorate('live', {
    sessionGate,
    serveStream,
    endSession,
    bus,
    modernContext,
    prepareListen,
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
