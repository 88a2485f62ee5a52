import type { JSONRPCMessage, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse, MessageExtraInfo, Transport } from '@modelcontextprotocol/server'

type RequestId = string | number
export type JsonRpcResponse = JSONRPCResponse

interface PendingExchange {
  originalId: RequestId
  resolve: (response: JsonRpcResponse | undefined) => void
}

/**
 * One long-lived SDK server serves every stateless 2025-era POST through this transport, so the hot
 * path builds no server, transport, web Request/Response or AbortSignal per request (see
 * shared/perf-notes.md). Requests from different clients may share JSON-RPC ids, so each inbound
 * request gets a transport-unique id and its answer is matched back by that id and re-labelled
 * with the client's own. Notifications the server emits mid-call (progress, logging) are dropped:
 * every tool here answers in one short transaction, so each answer is a single JSON body.
 */
export class MultiplexTransport implements Transport {
  onclose?: () => void
  onerror?: (error: Error) => void
  onmessage?: <T extends JSONRPCMessage>(message: T, extra?: MessageExtraInfo) => void

  private nextId = 1
  private readonly pending = new Map<number, PendingExchange>()
  private closed = false

  async start (): Promise<void> {}

  /**
   * Hands one request to the server; resolves with its answer, or undefined when cancelled or closed.
   * `onAbortable` receives a function that cancels the exchange (call it when the client disconnects).
   */
  exchange (request: JSONRPCRequest, extra: MessageExtraInfo, onAbortable?: (abort: () => void) => void): Promise<JsonRpcResponse | undefined> {
    if (this.closed || this.onmessage === undefined) return Promise.resolve(undefined)
    const id = this.nextId++
    return new Promise((resolve) => {
      this.pending.set(id, { originalId: request.id, resolve })
      onAbortable?.(() => this.cancel(id))
      this.onmessage?.({ ...request, id }, extra)
    })
  }

  /** Delivers a client notification (e.g. notifications/initialized); nothing answers it. */
  deliver (notification: JSONRPCNotification, extra: MessageExtraInfo): void {
    if (this.closed) return
    if (notification.method === 'notifications/cancelled') return // ids are per transport; clients cancel by disconnecting
    this.onmessage?.(notification, extra)
  }

  /** Tells the server the client went away: its handler's signal aborts and the answer is dropped. */
  private cancel (id: number): void {
    const exchange = this.pending.get(id)
    if (exchange === undefined) return
    this.pending.delete(id)
    exchange.resolve(undefined)
    this.onmessage?.({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: id, reason: 'client disconnected' } })
  }

  async send (message: JSONRPCMessage): Promise<void> {
    if (!('id' in message) || !('result' in message || 'error' in message)) return
    const id = message.id
    if (typeof id !== 'number') return
    const exchange = this.pending.get(id)
    if (exchange === undefined) return
    this.pending.delete(id)
    exchange.resolve({ ...message, id: exchange.originalId } as JsonRpcResponse)
  }

  get inFlight (): number {
    return this.pending.size
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (const exchange of this.pending.values()) exchange.resolve(undefined)
    this.pending.clear()
    this.onclose?.()
  }
}
