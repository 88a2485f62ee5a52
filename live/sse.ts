import type { ServerResponse } from 'node:http'

/** Buffered but unsent bytes past which a client is too slow to keep: its stream is ended. */
const MAX_BUFFERED_BYTES = 1024 * 1024

/**
 * One open text/event-stream response. Frames are written whole; `retry:` goes first, so that a
 * client that loses the stream reconnects after `retryMs`. `onClose` runs exactly once, however
 * the stream ends (client gone, `end`, a failed write).
 */
export class SseStream {
  private closed = false
  private readonly onClose: () => void

  constructor (private readonly response: ServerResponse, headers: Record<string, string>, retryMs: number, onClose: () => void) {
    this.onClose = onClose
    response.writeHead(200, {
      ...headers,
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no'
    })
    response.flushHeaders()
    response.once('close', () => this.finish())
    response.once('error', () => this.finish())
    this.write(`retry: ${retryMs}\n\n`)
  }

  get isOpen (): boolean {
    return !this.closed
  }

  /** A JSON-RPC message as a `message` event; `id` becomes the client's Last-Event-ID. */
  message (payload: unknown, id?: string): void {
    this.write(`${id === undefined ? '' : `id: ${id}\n`}event: message\ndata: ${JSON.stringify(payload)}\n\n`)
  }

  heartbeat (): void {
    this.write(': heartbeat\n\n')
  }

  /** Ends the stream after a last event of this type (clients of the SDKs ignore events other than `message`). */
  end (event: string, data: unknown): void {
    if (this.closed) return
    this.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
    this.response.end()
    this.finish()
  }

  private write (frame: string): void {
    if (this.closed) return
    if (this.response.writableLength > MAX_BUFFERED_BYTES) {
      this.response.destroy()
      this.finish()
      return
    }
    this.response.write(frame)
  }

  private finish (): void {
    if (this.closed) return
    this.closed = true
    this.onClose()
  }
}
