import http from 'node:http'
import https from 'node:https'
import { urlToHttpOptions } from 'node:url'
import { ProtocolError, type CallToolResult } from '@modelcontextprotocol/client'
import { createParser } from 'eventsource-parser'
import { UpstreamMalformed } from './resilience.js'
import { inputRequiredFault } from './policy.js'

/**
 * The lean tools/call of the gateway: one JSON-RPC message POSTed over node:http (a keep-alive
 * agent of the upstream's own), its answer read as JSON or as an SSE stream parsed as it comes.
 * Profiled, the SDK client's machinery per call (zod parsing of every message, a web stream for
 * the answer, a Request and signals per fetch) was most of the gateway's CPU per federated call.
 *
 * It speaks the protocol line the upstream's control connection negotiated: 2026-07-28 (each
 * request carries the `io.modelcontextprotocol/*` envelope and the Mcp-Method / Mcp-Name
 * headers; no session), or the 2025 line (a session of its own, opened with initialize, shared
 * by the calls: ids are unique within it). What the upstream sends during a call goes where the
 * SDK client sent it: progress to `onprogress`, notifications/message to the binding, its
 * requests (2025: elicitation/sampling in the stream, answered with a POST; 2026-07-28:
 * `input_required` results, fulfilled and retried with the responses and the request state, as
 * the SDK's driver does) to the binding's `request`. Cancelling (the signal aborts) tells the
 * upstream with notifications/cancelled and closes the request.
 *
 * Its failures look like the SDK's to classifyFailure: `TypeError('fetch failed')` with the
 * socket's error as cause, `data.status` for HTTP errors, ProtocolError (a numeric code) for
 * JSON-RPC errors; an answer that is no JSON-RPC answer is UpstreamMalformed.
 */

export const ENVELOPE_PROTOCOL = '2026-07-28'
/** As the SDK driver: rounds of input_required before giving up, and the pause before a requestState-only round. */
const INPUT_REQUIRED_MAX_ROUNDS = 10
const REQUEST_STATE_ONLY_PACING_MS = 250
/** An HTTP error's body kept for the error message (it is the upstream's text). */
const ERROR_BODY_CHARS = 300

export interface LeanBinding {
  notify: (method: string, params: Record<string, unknown> | undefined) => void
  request: (method: string, params: Record<string, unknown> | undefined) => Promise<Record<string, unknown>>
}

export interface LeanCallOptions {
  signal: AbortSignal
  /** Extra headers of this call (the signed principal JWT). */
  headers?: Record<string, string>
  onprogress?: (progress: { progress: number, total?: number, message?: string }) => void
  binding?: LeanBinding
  /**
   * A relayed round (gateway/interactions.ts relay, 2026-07-28): the client's answers and the
   * upstream's own state go with the call, and an input_required answer is returned as it is,
   * for the client to fulfil, instead of being fulfilled here.
   */
  relay?: { inputResponses?: Record<string, unknown>, requestState?: string }
}

export interface LeanClientOptions {
  url: string
  /** The upstream's configured headers (sent with every request). */
  headers: Record<string, string>
  clientInfo: { name: string, version: string }
  capabilities: Record<string, unknown>
  /** For initialize on the 2025 line. */
  connectTimeoutMs: number
}

/** An HTTP status other than 2xx: classified like the SDK's SdkHttpError (data.status). */
export class UpstreamHttpError extends Error {
  readonly data: { status: number, text: string }
  constructor (status: number, text: string) {
    super(`HTTP ${status}${text === '' ? '' : `: ${text}`}`)
    this.name = 'UpstreamHttpError'
    this.data = { status, text }
  }
}

interface Answer {
  status: number
  headers: http.IncomingHttpHeaders
  /** The JSON-RPC answer to the request sent. */
  message: Record<string, unknown> | undefined
}

interface Session {
  protocolVersion: string
  sessionId: string | undefined
}

type JsonObject = Record<string, unknown>

function isObject (value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

export class LeanUpstreamClient {
  /** The upstream's URL as http.request options, made once: given a URL, http.request converts it on every call. */
  private readonly target: http.RequestOptions
  private readonly secure: boolean
  private readonly agent: http.Agent
  private nextId = 0
  private session: Promise<Session> | undefined

  constructor (private readonly options: LeanClientOptions) {
    this.target = urlToHttpOptions(new URL(options.url))
    this.secure = this.target.protocol === 'https:'
    this.agent = this.secure ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true })
  }

  /** Ends the shared 2025 session, if the upstream gave it an id (a DELETE, as the spec asks), then closes the sockets. */
  async close (): Promise<void> {
    const opening = this.session
    this.session = undefined
    const session = opening === undefined ? undefined : await opening.catch(() => undefined)
    if (session?.sessionId !== undefined) await this.endSession(session.protocolVersion, session.sessionId)
    this.agent.destroy()
  }

  /** DELETE of a session: whatever the upstream answers (405: it keeps sessions until they expire), or fails, it is over. */
  private endSession (protocolVersion: string, sessionId: string): Promise<void> {
    const headers = { ...this.options.headers, 'mcp-protocol-version': protocolVersion, 'mcp-session-id': sessionId }
    return new Promise<void>((resolve) => {
      const request = (this.secure ? https : http).request({ ...this.target, method: 'DELETE', headers, agent: this.agent, timeout: this.options.connectTimeoutMs })
      request.once('response', (response) => {
        response.once('close', () => resolve())
        response.resume()
      })
      request.once('timeout', () => request.destroy())
      request.once('error', () => resolve())
      request.end()
    })
  }

  /** Forgets the 2025 session (the upstream answered 404: it forgot it, or restarted). */
  private dropSession (session: Session): void {
    const current = this.session
    if (current === undefined) return
    current.then((open) => { if (open === session && this.session === current) this.session = undefined }, () => {})
  }

  /** tools/call on the line `protocol` (the control connection's negotiated version). */
  async callTool (protocol: string, name: string, args: JsonObject, options: LeanCallOptions): Promise<CallToolResult> {
    if (protocol === ENVELOPE_PROTOCOL) return await this.callEnvelope(name, args, options)
    const session = await this.openSession(protocol)
    try {
      const result = await this.roundTrip(session, { name, arguments: args }, options)
      return resultOf(result)
    } catch (error) {
      if (error instanceof UpstreamHttpError && error.data.status === 404) this.dropSession(session)
      throw error
    }
  }

  private async callEnvelope (name: string, args: JsonObject, options: LeanCallOptions): Promise<CallToolResult> {
    const session: Session = { protocolVersion: ENVELOPE_PROTOCOL, sessionId: undefined }
    const original: JsonObject = { name, arguments: args }
    const relay = options.relay
    let params: JsonObject = { ...original, ...relayedParams(relay) }
    for (let round = 0; ; round++) {
      const result = await this.roundTrip(session, params, options)
      if (result.resultType !== 'input_required') return resultOf(result)
      if (relay !== undefined) return result as unknown as CallToolResult
      if (round >= INPUT_REQUIRED_MAX_ROUNDS) throw new UpstreamMalformed(`the upstream still required input after ${INPUT_REQUIRED_MAX_ROUNDS} rounds`)
      const fault = inputRequiredFault(result)
      if (fault !== undefined) throw new UpstreamMalformed(fault)
      const inputRequests = (result.inputRequests ?? {}) as Record<string, { method: string, params?: unknown }>
      const requestState = typeof result.requestState === 'string' ? result.requestState : undefined
      options.onprogress?.({ progress: round + 1, message: `Fulfilling input required by 'tools/call' (round ${round + 1})` })
      const entries = Object.entries(inputRequests)
      let responses: JsonObject | undefined
      if (entries.length > 0) {
        const binding = options.binding
        if (binding === undefined) throw new UpstreamMalformed('the upstream asked the client for input outside a call')
        responses = Object.fromEntries(await Promise.all(entries.map(async ([key, entry]) =>
          [key, await binding.request(entry.method, isObject(entry.params) ? entry.params : undefined)] as const)))
      } else {
        await pause(REQUEST_STATE_ONLY_PACING_MS, options.signal)
      }
      params = {
        ...original,
        ...(responses !== undefined && Object.keys(responses).length > 0 && { inputResponses: responses }),
        ...(requestState !== undefined && { requestState })
      }
    }
  }

  private openSession (protocol: string): Promise<Session> {
    if (this.session === undefined) {
      // Shared by the calls of every principal: opened without this call's own headers (the principal's JWT).
      const opening = this.initialize(protocol)
      this.session = opening
      opening.catch(() => { if (this.session === opening) this.session = undefined })
    }
    return this.session
  }

  private async initialize (protocol: string): Promise<Session> {
    const controller = new AbortController()
    const timer = setTimeout(() => controller.abort(new Error(`initialize unanswered within ${this.options.connectTimeoutMs} ms`)), this.options.connectTimeoutMs)
    try {
      const id = `init-${++this.nextId}`
      const answer = await this.post({ jsonrpc: '2.0', id, method: 'initialize', params: { protocolVersion: protocol, capabilities: this.options.capabilities, clientInfo: this.options.clientInfo } }, id, { protocolVersion: protocol, sessionId: undefined }, { signal: controller.signal }, undefined)
      const result = answerResult(answer)
      if (typeof result.protocolVersion !== 'string') throw new UpstreamMalformed('initialize answered without a protocolVersion')
      const sessionHeader = answer.headers['mcp-session-id']
      const session: Session = { protocolVersion: result.protocolVersion, sessionId: typeof sessionHeader === 'string' && sessionHeader !== '' ? sessionHeader : undefined }
      await this.post({ jsonrpc: '2.0', method: 'notifications/initialized' }, undefined, session, { signal: controller.signal }, undefined)
      return session
    } finally {
      clearTimeout(timer)
    }
  }

  /** One tools/call request and its answer's result (a JSON-RPC error is thrown as ProtocolError). */
  private async roundTrip (session: Session, params: JsonObject, options: LeanCallOptions): Promise<JsonObject> {
    const id = ++this.nextId
    const envelope = session.protocolVersion === ENVELOPE_PROTOCOL
    // A progress token always: progress restarts the call's timeout, whether or not the client asked for it.
    const meta: JsonObject = { ...(envelope && this.envelopeMeta()), progressToken: id }
    const message = { jsonrpc: '2.0', id, method: 'tools/call', params: { ...params, _meta: meta } }
    const onAbort = (): void => {
      // Tell the upstream (its handler's signal aborts); post closes the request itself.
      this.post({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: id, reason: String((options.signal.reason as Error | undefined)?.message ?? 'cancelled'), ...(envelope && { _meta: this.envelopeMeta() }) } }, undefined, session, { signal: AbortSignal.timeout(this.options.connectTimeoutMs), ...(options.headers !== undefined && { headers: options.headers }) }, undefined).catch(() => {})
    }
    if (options.signal.aborted) throw options.signal.reason
    // One listener on the signal for both (an EventTarget listener added and removed costs a few µs).
    return answerResult(await this.post(message, id, session, options, typeof params.name === 'string' ? params.name : undefined, onAbort))
  }

  private envelopeMeta (): JsonObject {
    return {
      'io.modelcontextprotocol/protocolVersion': ENVELOPE_PROTOCOL,
      'io.modelcontextprotocol/clientInfo': this.options.clientInfo,
      'io.modelcontextprotocol/clientCapabilities': this.options.capabilities
    }
  }

  private headersFor (session: Session, method: string | undefined, name: string | undefined, extra: Record<string, string> | undefined): Record<string, string> {
    const headers: Record<string, string> = {
      ...this.options.headers,
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': session.protocolVersion
    }
    if (session.sessionId !== undefined) headers['mcp-session-id'] = session.sessionId
    if (session.protocolVersion === ENVELOPE_PROTOCOL && method !== undefined) {
      headers['mcp-method'] = method
      if (name !== undefined) headers['mcp-name'] = name
    }
    if (extra !== undefined) Object.assign(headers, extra)
    return headers
  }

  /**
   * POSTs one message. For a request (`id` given) resolves with its answer, read from a JSON body
   * or from the SSE stream (whose notifications and requests are handled on the way); for a
   * notification or a response, once the upstream accepted it. `onAbort` runs first when the
   * signal aborts the request.
   */
  private post (message: JsonObject, id: string | number | undefined, session: Session, options: LeanCallOptions, name: string | undefined, onAbort?: () => void): Promise<Answer> {
    const body = JSON.stringify(message)
    const method = typeof message.method === 'string' ? message.method : undefined
    const headers = this.headersFor(session, method, name, options.headers)
    headers['content-length'] = String(Buffer.byteLength(body))
    const { signal } = options
    return new Promise<Answer>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason)
        return
      }
      let settled = false
      // The signal closes the request (http.request's own signal option costs more per request).
      const abort = (): void => {
        onAbort?.()
        fail(signal.reason)
      }
      const fail = (error: unknown, destroy = true): void => {
        if (settled) return
        settled = true
        signal.removeEventListener('abort', abort)
        if (destroy) request.destroy()
        reject(error)
      }
      const succeed = (answer: Answer): void => {
        if (settled) return
        settled = true
        signal.removeEventListener('abort', abort)
        resolve(answer)
      }
      const request = (this.secure ? https : http).request({ ...this.target, method: 'POST', headers, agent: this.agent })
      signal.addEventListener('abort', abort, { once: true })
      request.on('error', (error) => {
        fail(options.signal.aborted ? options.signal.reason : error.name === 'AbortError' ? error : new TypeError('fetch failed', { cause: error }))
      })
      request.once('response', (response) => {
        const status = response.statusCode ?? 500
        const type = response.headers['content-type'] ?? ''
        response.setEncoding('utf8')
        response.on('error', (error) => fail(options.signal.aborted ? options.signal.reason : new TypeError('terminated', { cause: error })))
        if (status < 200 || status >= 300) {
          let text = ''
          response.on('data', (chunk: string) => { if (text.length < ERROR_BODY_CHARS) text += chunk })
          response.once('end', () => fail(new UpstreamHttpError(status, text.replace(/\s+/g, ' ').trim().slice(0, ERROR_BODY_CHARS)), false))
          return
        }
        if (id === undefined) {
          // A notification or a response: 202 Accepted (or any 2xx); the body, if any, is not read.
          response.resume()
          succeed({ status, headers: response.headers, message: undefined })
          return
        }
        if (/^application\/json\s*(;|$)/i.test(type)) {
          let text = ''
          response.on('data', (chunk: string) => { text += chunk })
          response.once('end', () => {
            let parsed: unknown
            try {
              parsed = JSON.parse(text)
            } catch {
              fail(new UpstreamMalformed('the upstream answered with JSON that does not parse'), false)
              return
            }
            if (!isAnswerTo(parsed, id)) {
              fail(new UpstreamMalformed('the upstream answered with no JSON-RPC answer to the call'), false)
              return
            }
            succeed({ status, headers: response.headers, message: parsed })
          })
          response.once('close', () => { if (!response.complete) fail(new TypeError('terminated')) })
          return
        }
        if (!/^text\/event-stream\s*(;|$)/i.test(type)) {
          response.resume()
          fail(new UpstreamMalformed(`the upstream answered with content type "${type.slice(0, 100)}"`))
          return
        }
        const parser = createParser({
          onEvent: (event) => {
            if (settled || (event.event !== undefined && event.event !== 'message') || event.data === '') return
            let parsed: unknown
            try {
              parsed = JSON.parse(event.data)
            } catch {
              fail(new UpstreamMalformed('the upstream sent an SSE event that does not parse'))
              return
            }
            if (!isObject(parsed)) {
              fail(new UpstreamMalformed('the upstream sent an SSE event that is no JSON-RPC message'))
              return
            }
            if (isAnswerTo(parsed, id)) {
              // The stream ends after the answer; what remains is read (and dropped) so the socket can be reused.
              succeed({ status, headers: response.headers, message: parsed })
              return
            }
            this.onStreamMessage(parsed, id, session, options)
          }
        })
        response.on('data', (chunk: string) => parser.feed(chunk))
        response.once('end', () => fail(new TypeError('SSE stream disconnected before the answer')))
        response.once('close', () => fail(options.signal.aborted ? options.signal.reason : new TypeError('SSE stream disconnected before the answer')))
      })
      request.end(body)
    })
  }

  /** A message of the upstream's SSE stream other than the answer: progress, a log line, or a request of the upstream's. */
  private onStreamMessage (message: JsonObject, callId: string | number, session: Session, options: LeanCallOptions): void {
    const method = message.method
    if (typeof method !== 'string') return
    const params = isObject(message.params) ? message.params : undefined
    if (message.id === undefined) {
      if (method === 'notifications/progress') {
        if (params?.progressToken !== callId || typeof params.progress !== 'number') return
        options.onprogress?.({
          progress: params.progress,
          ...(typeof params.total === 'number' && { total: params.total }),
          ...(typeof params.message === 'string' && { message: params.message })
        })
      } else if (method === 'notifications/message') {
        options.binding?.notify(method, params)
      }
      return
    }
    const requestId = message.id
    if (typeof requestId !== 'string' && typeof requestId !== 'number') return
    const answer = async (): Promise<JsonObject> => {
      try {
        if (options.binding === undefined || (method !== 'elicitation/create' && method !== 'sampling/createMessage')) {
          return { jsonrpc: '2.0', id: requestId, error: { code: -32601, message: `Method not found: ${method}` } }
        }
        return { jsonrpc: '2.0', id: requestId, result: await options.binding.request(method, params) }
      } catch (error) {
        return { jsonrpc: '2.0', id: requestId, error: { code: -32603, message: error instanceof Error ? error.message : String(error) } }
      }
    }
    answer().then((response) => this.post(response, undefined, session, { signal: options.signal, ...(options.headers !== undefined && { headers: options.headers }) }, undefined)).catch(() => {})
  }
}

function isAnswerTo (message: unknown, id: string | number): message is JsonObject {
  return isObject(message) && message.id === id && message.method === undefined && (isObject(message.result) || isObject(message.error))
}

/** The result of a JSON-RPC answer, or its error thrown as the SDK throws it. */
function answerResult (answer: Answer): JsonObject {
  const message = answer.message
  if (message === undefined) throw new UpstreamMalformed('the upstream did not answer')
  if (isObject(message.error)) {
    const { code, message: text, data } = message.error
    if (typeof code !== 'number' || !Number.isInteger(code)) throw new UpstreamMalformed('the upstream answered with an error that has no code')
    throw ProtocolError.fromError(code, typeof text === 'string' ? text : '', data)
  }
  return message.result as JsonObject
}

/** A tools/call result as the SDK client returns it: content defaults to [], the 2026-07-28 resultType dropped. */
/** A relayed round's tools/call params: the client's answers and the upstream's own state (2026-07-28). */
export function relayedParams (relay: LeanCallOptions['relay']): JsonObject {
  if (relay === undefined) return {}
  return {
    ...(relay.inputResponses !== undefined && { inputResponses: relay.inputResponses }),
    ...(relay.requestState !== undefined && { requestState: relay.requestState })
  }
}

function resultOf (result: JsonObject): CallToolResult {
  const { resultType: _type, ...rest } = result
  if (rest.content === undefined) rest.content = []
  if (!Array.isArray(rest.content) || !rest.content.every(isObject)) throw new UpstreamMalformed('the upstream answered tools/call with content that is no list of blocks')
  if (rest.isError !== undefined && typeof rest.isError !== 'boolean') throw new UpstreamMalformed('the upstream answered tools/call with an isError that is no boolean')
  if (rest.structuredContent !== undefined && !isObject(rest.structuredContent)) throw new UpstreamMalformed('the upstream answered tools/call with structuredContent that is no object')
  if (rest._meta !== undefined && !isObject(rest._meta)) throw new UpstreamMalformed('the upstream answered tools/call with _meta that is no object')
  return rest as CallToolResult
}

function pause (ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason)
      return
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', stop)
      resolve()
    }, ms)
    const stop = (): void => {
      clearTimeout(timer)
      reject(signal.reason)
    }
    signal.addEventListener('abort', stop, { once: true })
  })
}
