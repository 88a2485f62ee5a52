import { AsyncLocalStorage } from 'node:async_hooks'
import {
  Client,
  StreamableHTTPClientTransport,
  type CallToolResult,
  type Prompt,
  type ReadResourceResult,
  type Resource,
  type ResourceTemplateType,
  type Tool
} from '@modelcontextprotocol/client'
import type { UpstreamConfig } from './config.js'
import { CircuitBreaker, ConcurrencyLimit, UpstreamClosed, UpstreamTimeout, classifyFailure, type BreakerState } from './resilience.js'
import { LeanUpstreamClient, relayedParams } from './upstream-call.js'
import { createUpstreamFetch } from './upstream-fetch.js'

/** What an upstream call can reach on the client's side while it runs: notifications and requests, passed on. */
export interface CallBinding {
  /** A notification from the upstream during the call (notifications/message). */
  notify: (method: string, params: Record<string, unknown> | undefined) => void
  /** A request from the upstream during the call (elicitation/create, sampling/createMessage): the client's answer. */
  request: (method: string, params: Record<string, unknown> | undefined) => Promise<Record<string, unknown>>
}

export interface UpstreamCallOptions {
  signal: AbortSignal
  onprogress?: (progress: { progress: number, total?: number, message?: string }) => void
  binding?: CallBinding
  /** Extra headers for this call's HTTP requests (the signed principal JWT). */
  headers?: Record<string, string>
  /**
   * A relayed round (2026-07-28 upstreams): the upstream's input-required is returned, not
   * fulfilled; the client's answers and the upstream's state, if given, go with the call.
   */
  input?: { inputResponses?: Record<string, unknown>, requestState?: string }
}

export type UpstreamStatus = 'ok' | 'down'

export interface UpstreamCatalog {
  tools: Tool[]
  prompts: Prompt[]
  resources: Resource[]
  resourceTemplates: ResourceTemplateType[]
}

/** At most this many resources (and as many templates) of one upstream are federated; the rest are not listed. */
export const MAX_RESOURCES = 1000
const MAX_LIST_PAGES = 50

export interface UpstreamEvents {
  /** The tool, prompt or resource list changed: after a list_changed notification, a periodic re-list, or a reconnect. */
  catalogChanged: (upstream: Upstream, changed: Array<'tools' | 'prompts' | 'resources'>) => void
  breakerChanged: (upstream: Upstream, state: BreakerState) => void
  log: (level: 'debug' | 'info' | 'warn', data: Record<string, unknown>, message: string) => void
}

interface Pooled {
  client: Client
  binding: CallBinding | undefined
}

const CLIENT_INFO = { name: 'shared-context-mcp-gateway', version: '1' }
const CLIENT_CAPABILITIES = { elicitation: { form: {} }, sampling: {} }

/** A client request handler's answer when no call of ours is running on that connection. */
class NoCallInProgress extends Error {
  constructor (method: string) {
    super(`${method} outside a tools/call: this gateway passes such requests on only during a call`)
  }
}

/**
 * One upstream MCP server: SDK v2 clients on whichever protocol line it speaks (negotiated with
 * `server/discover`, falling back to initialize), its tool and prompt lists, its breaker and its
 * concurrency limit. A control connection lists and hears list_changed. Tool calls go through the
 * lean client (gateway/upstream-call.ts) on the line the control connection negotiated: what the
 * upstream sends during a call — progress, logging, elicitation, sampling — comes in that call's
 * own answer stream, so it belongs to exactly one call. Before the control connection negotiated,
 * and for prompts/get and resources/read, a call leases an SDK connection of its own from a small
 * pool (at most `concurrency` of them).
 */
export class Upstream {
  readonly breaker: CircuitBreaker
  readonly limit: ConcurrencyLimit
  status: UpstreamStatus = 'down'
  /** The protocol version the control connection negotiated (undefined until connected). */
  protocol: string | undefined
  catalog: UpstreamCatalog = { tools: [], prompts: [], resources: [], resourceTemplates: [] }
  lastError: string | undefined
  private control: Client | undefined
  private connecting: Promise<void> | undefined
  private readonly idle: Pooled[] = []
  private readonly leased = new Set<Pooled>()
  private refreshTimer: NodeJS.Timeout | undefined
  private healthTimer: NodeJS.Timeout | undefined
  private retryTimer: NodeJS.Timeout | undefined
  private closed = false
  /** Draining (shutdown began): no new call or connection; the calls in flight may finish. */
  private draining = false
  /** The calls in flight, so that a drain cut short can abort them. */
  private readonly calls = new Set<AbortController>()
  private readonly callHeaders = new AsyncLocalStorage<Record<string, string>>()
  private readonly http = createUpstreamFetch()
  /** tools/call without the SDK client (gateway/upstream-call.ts), once the control connection knows the protocol line. */
  private readonly lean: LeanUpstreamClient
  private leanCalls = 0

  constructor (readonly config: UpstreamConfig, private readonly events: UpstreamEvents) {
    this.breaker = new CircuitBreaker(config.breaker, (state) => events.breakerChanged(this, state))
    this.limit = new ConcurrencyLimit(config.concurrency)
    this.lean = new LeanUpstreamClient({ url: config.url, headers: config.headers ?? {}, clientInfo: CLIENT_INFO, capabilities: CLIENT_CAPABILITIES, connectTimeoutMs: config.connectTimeoutMs })
  }

  get name (): string {
    return this.config.name
  }

  /** Connects the control client and lists; never throws (a failure marks the upstream down and retries). */
  async start (): Promise<void> {
    await this.ensureControl()
    if (this.config.refreshSeconds > 0) {
      this.refreshTimer = setInterval(() => { this.refresh().catch(() => {}) }, this.config.refreshSeconds * 1000)
      this.refreshTimer.unref()
    }
    if (this.config.healthCheckSeconds > 0) {
      this.healthTimer = setInterval(() => { this.check().catch(() => {}) }, this.config.healthCheckSeconds * 1000)
      this.healthTimer.unref()
    }
  }

  /** The periodic health check: a ping on the control connection (or a reconnect while down). */
  async check (): Promise<void> {
    const client = this.control
    if (this.closed) return
    if (client === undefined || this.status === 'down') return await this.refresh()
    try {
      await client.ping({ timeout: this.config.connectTimeoutMs })
      this.markUp()
    } catch (error) {
      this.markDown(error)
      await this.ensureControl()
    }
  }

  private ensureControl (): Promise<void> {
    this.connecting ??= this.connectControl().finally(() => { this.connecting = undefined })
    return this.connecting
  }

  private async connectControl (): Promise<void> {
    if (this.closed) return
    try {
      const client = await this.newClient(true)
      if (this.closed) {
        await client.close().catch(() => {})
        return
      }
      const old = this.control
      this.control = client
      if (old !== undefined) old.close().catch(() => {})
      this.protocol = client.getNegotiatedProtocolVersion()
      await this.relist(client)
      this.markUp()
    } catch (error) {
      this.markDown(error)
    }
  }

  /** Re-lists tools, prompts and resources (list_changed, the periodic timer, tests). */
  async refresh (): Promise<void> {
    if (this.closed) return
    const client = this.control
    if (client === undefined) return await this.ensureControl()
    try {
      await this.relist(client)
      this.markUp()
    } catch (error) {
      this.markDown(error)
      // The session may be gone (the upstream restarted): reconnect.
      await this.ensureControl()
    }
  }

  private async relist (client: Client): Promise<void> {
    const capabilities = client.getServerCapabilities() ?? {}
    const tools = capabilities.tools === undefined ? [] : (await client.listTools(undefined, { timeout: this.config.connectTimeoutMs, cacheMode: 'refresh' })).tools
    const prompts = capabilities.prompts === undefined ? [] : (await client.listPrompts(undefined, { timeout: this.config.connectTimeoutMs, cacheMode: 'refresh' })).prompts
    const options = { timeout: this.config.connectTimeoutMs, cacheMode: 'refresh' as const }
    const resources = capabilities.resources === undefined ? [] : await allPages((cursor) => client.listResources(cursor === undefined ? undefined : { cursor }, options).then((page) => ({ items: page.resources, nextCursor: page.nextCursor })))
    const resourceTemplates = capabilities.resources === undefined ? [] : await allPages((cursor) => client.listResourceTemplates(cursor === undefined ? undefined : { cursor }, options).then((page) => ({ items: page.resourceTemplates, nextCursor: page.nextCursor })))
    const before = this.catalog
    const changed: Array<'tools' | 'prompts' | 'resources'> = []
    if (JSON.stringify(tools) !== JSON.stringify(before.tools)) changed.push('tools')
    if (JSON.stringify(prompts) !== JSON.stringify(before.prompts)) changed.push('prompts')
    if (JSON.stringify([resources, resourceTemplates]) !== JSON.stringify([before.resources, before.resourceTemplates])) changed.push('resources')
    this.catalog = { tools, prompts, resources, resourceTemplates }
    if (changed.length > 0) this.events.catalogChanged(this, changed)
  }

  markUp (): void {
    if (this.status !== 'ok') this.events.log('info', { upstream: this.name, protocol: this.protocol }, 'upstream connected')
    this.status = 'ok'
    this.lastError = undefined
    if (this.retryTimer !== undefined) {
      clearTimeout(this.retryTimer)
      this.retryTimer = undefined
    }
  }

  markDown (error: unknown): void {
    const reason = classifyFailure(error).reason
    if (this.status !== 'down' || this.lastError === undefined) this.events.log('warn', { upstream: this.name, reason }, 'upstream unavailable')
    this.status = 'down'
    this.lastError = reason
    if (this.closed || this.retryTimer !== undefined) return
    // Down: try again soon, whatever the periodic refresh says.
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      this.refresh().catch(() => {})
    }, Math.min(5000, this.config.breaker.openMs))
    this.retryTimer.unref()
  }

  private async newClient (control: boolean): Promise<Client> {
    const client = new Client(CLIENT_INFO, {
      capabilities: CLIENT_CAPABILITIES,
      versionNegotiation: { mode: 'auto', probe: { timeoutMs: this.config.connectTimeoutMs } },
      ...(control && {
        listChanged: {
          tools: { autoRefresh: false, debounceMs: 50, onChanged: () => { this.refresh().catch(() => {}) } },
          prompts: { autoRefresh: false, debounceMs: 50, onChanged: () => { this.refresh().catch(() => {}) } },
          resources: { autoRefresh: false, debounceMs: 50, onChanged: () => { this.refresh().catch(() => {}) } }
        }
      })
    })
    client.onerror = () => {}
    const headers = this.config.headers
    const callHeaders = this.callHeaders
    const upstreamFetch = this.http.fetch
    const transport = new StreamableHTTPClientTransport(new URL(this.config.url), {
      requestInit: { headers },
      // Per-call headers (the signed principal JWT) ride on the call's async context.
      fetch: (url, init) => {
        const extra = callHeaders.getStore()
        if (extra === undefined) return upstreamFetch(url, init)
        const merged = new Headers(init?.headers)
        for (const [name, value] of Object.entries(extra)) merged.set(name, value)
        return upstreamFetch(url, { ...init, headers: merged })
      },
      reconnectionOptions: { maxRetries: 0, initialReconnectionDelay: 1000, maxReconnectionDelay: 1000, reconnectionDelayGrowFactor: 1 }
    })
    await client.connect(transport, { timeout: this.config.connectTimeoutMs })
    return client
  }

  /** A pooled call connection with this call's binding installed. */
  private async lease (binding: CallBinding | undefined): Promise<Pooled> {
    if (this.closed || this.draining) throw new UpstreamClosed()
    let pooled = this.idle.pop()
    if (pooled === undefined) {
      const client = await this.newClient(false)
      if (this.closed) {
        await client.close().catch(() => {})
        throw new UpstreamClosed()
      }
      const entry: Pooled = { client, binding: undefined }
      const forward = (method: string) => async (request: { params?: Record<string, unknown> }) => {
        if (entry.binding === undefined) throw new NoCallInProgress(method)
        return await entry.binding.request(method, request.params) as never
      }
      client.setRequestHandler('elicitation/create', forward('elicitation/create'))
      client.setRequestHandler('sampling/createMessage', forward('sampling/createMessage'))
      client.setNotificationHandler('notifications/message', (notification) => {
        entry.binding?.notify('notifications/message', notification.params as Record<string, unknown>)
      })
      pooled = entry
    }
    pooled.binding = binding
    this.leased.add(pooled)
    return pooled
  }

  private giveBack (pooled: Pooled, healthy: boolean): void {
    pooled.binding = undefined
    this.leased.delete(pooled)
    if (healthy && !this.closed) this.idle.push(pooled)
    else pooled.client.close().catch(() => {})
  }

  /**
   * One attempt of tools/call on a pooled connection. Throws UpstreamTimeout when the upstream
   * stays silent for timeoutMs (progress restarts the clock; a request of the upstream waiting for
   * the client — an elicitation, say — stops it), the SDK's errors otherwise; the caller classifies
   * them. Aborting `options.signal` cancels the call upstream (notifications/cancelled).
   */
  async callTool (name: string, args: Record<string, unknown>, options: UpstreamCallOptions): Promise<CallToolResult> {
    const controller = new AbortController()
    const stop = (): void => controller.abort(options.signal.reason)
    options.signal.addEventListener('abort', stop, { once: true })
    let timer: NodeJS.Timeout | undefined
    let timedOut = false
    let waitingForClient = 0
    const arm = (): void => {
      clearTimeout(timer)
      if (waitingForClient > 0) return
      timer = setTimeout(() => {
        timedOut = true
        controller.abort(new UpstreamTimeout(this.config.timeoutMs))
      }, this.config.timeoutMs)
    }
    const outer = options.binding
    const binding: CallBinding | undefined = outer === undefined
      ? undefined
      : {
          notify: (method, params) => {
            arm()
            outer.notify(method, params)
          },
          request: async (method, params) => {
            waitingForClient++
            clearTimeout(timer)
            try {
              return await outer.request(method, params)
            } finally {
              waitingForClient--
              arm()
            }
          }
        }
    const protocol = this.protocol
    if (protocol !== undefined) return await this.callLean(protocol, name, args, options, controller, stop, binding, arm, () => timedOut, () => clearTimeout(timer))
    let pooled: Pooled
    try {
      pooled = await this.lease(binding)
    } catch (error) {
      options.signal.removeEventListener('abort', stop)
      throw error
    }
    this.calls.add(controller)
    let healthy = true
    try {
      arm()
      const run = () => pooled.client.callTool({ name, arguments: args, ...relayedParams(options.input) }, {
        ...(options.input !== undefined && { allowInputRequired: true }),
        signal: controller.signal,
        // The SDK's own timeout cannot pause while the client is asked something; ours (above) can.
        timeout: 2_147_483_647,
        onprogress: (progress) => {
          arm()
          options.onprogress?.(progress)
        }
      })
      const result = options.headers === undefined ? await run() : await this.callHeaders.run(options.headers, run)
      return result as CallToolResult
    } catch (error) {
      if (timedOut) {
        healthy = false
        throw new UpstreamTimeout(this.config.timeoutMs)
      }
      if (controller.signal.reason instanceof UpstreamClosed) throw controller.signal.reason
      const failure = classifyFailure(error)
      // A connection whose transport failed (or whose session the upstream forgot) is not reused.
      healthy = failure.kind === 'upstream_error' && !failure.transient
      throw error
    } finally {
      clearTimeout(timer)
      options.signal.removeEventListener('abort', stop)
      this.calls.delete(controller)
      this.giveBack(pooled, healthy && !controller.signal.aborted)
    }
  }

  /**
   * The call on the lean client (the usual way once the control connection negotiated a
   * protocol line): the same timeout, binding and cancellation as on a pooled SDK connection.
   */
  private async callLean (protocol: string, name: string, args: Record<string, unknown>, options: UpstreamCallOptions, controller: AbortController, stop: () => void, binding: CallBinding | undefined, arm: () => void, timedOut: () => boolean, disarm: () => void): Promise<CallToolResult> {
    if (this.closed || this.draining) {
      options.signal.removeEventListener('abort', stop)
      throw new UpstreamClosed()
    }
    this.calls.add(controller)
    this.leanCalls++
    try {
      arm()
      return await this.lean.callTool(protocol, name, args, {
        signal: controller.signal,
        ...(options.headers !== undefined && { headers: options.headers }),
        ...(binding !== undefined && { binding }),
        ...(options.input !== undefined && { relay: options.input }),
        onprogress: (progress) => {
          arm()
          options.onprogress?.(progress)
        }
      })
    } catch (error) {
      if (timedOut()) throw new UpstreamTimeout(this.config.timeoutMs)
      if (controller.signal.reason instanceof UpstreamClosed) throw controller.signal.reason
      throw error
    } finally {
      disarm()
      this.leanCalls--
      options.signal.removeEventListener('abort', stop)
      this.calls.delete(controller)
    }
  }

  /** prompts/get on a pooled connection. */
  async getPrompt (name: string, args: Record<string, string> | undefined, signal: AbortSignal): Promise<Record<string, unknown>> {
    const pooled = await this.lease(undefined)
    let healthy = false
    try {
      const result = await pooled.client.getPrompt({ name, ...(args !== undefined && { arguments: args }) }, { signal, timeout: this.config.timeoutMs })
      healthy = true
      return result as Record<string, unknown>
    } finally {
      this.giveBack(pooled, healthy)
    }
  }

  /** resources/read on a pooled connection. */
  async readResource (uri: string, signal: AbortSignal): Promise<ReadResourceResult> {
    const pooled = await this.lease(undefined)
    let healthy = false
    try {
      const result = await pooled.client.readResource({ uri }, { signal, timeout: this.config.timeoutMs })
      healthy = true
      return result
    } finally {
      this.giveBack(pooled, healthy)
    }
  }

  /** Calls whose connections are leased right now. */
  get inFlight (): number {
    return this.leased.size + this.leanCalls
  }

  /** Shutdown began: refuse new calls and connections from now on. */
  drain (): void {
    this.draining = true
  }

  /** The drain's deadline came: cancel the calls still in flight (the upstream is told, notifications/cancelled). */
  abortCalls (): void {
    for (const controller of this.calls) controller.abort(new UpstreamClosed())
  }

  async close (): Promise<void> {
    this.closed = true
    clearInterval(this.refreshTimer)
    clearInterval(this.healthTimer)
    clearTimeout(this.retryTimer)
    const clients = [...this.idle, ...this.leased].map((pooled) => pooled.client)
    if (this.control !== undefined) clients.push(this.control)
    this.idle.length = 0
    await Promise.all(clients.map((client) => client.close().catch(() => {})))
    this.http.close()
    await this.lean.close()
  }
}

/** Every page of a paginated list, up to MAX_RESOURCES items. */
async function allPages<T> (page: (cursor: string | undefined) => Promise<{ items: T[], nextCursor?: string | undefined }>): Promise<T[]> {
  const items: T[] = []
  let cursor: string | undefined
  for (let pages = 0; pages < MAX_LIST_PAGES && items.length < MAX_RESOURCES; pages++) {
    const next = await page(cursor)
    items.push(...next.items)
    if (next.nextCursor === undefined || next.nextCursor === cursor) break
    cursor = next.nextCursor
  }
  return items.slice(0, MAX_RESOURCES)
}
