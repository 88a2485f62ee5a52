import { connect, type Socket } from 'node:net'

// Frontend message types that the server answers with a ReadyForQuery ('Z'): Sync and Query.
const SYNC = 0x53
const QUERY = 0x51
// Flush asks for the answers so far (postgres.js sends Parse/Describe/Flush to learn a statement's
// types); the Describe's answer ends with RowDescription, NoData or an ErrorResponse.
const FLUSH = 0x48
const READY_FOR_QUERY = 0x5a
const FLUSH_ANSWERS = new Set([0x54, 0x6e, 0x45]) // T, n, E
const SSL_REQUEST_CODE = 80877103
const CANCEL_REQUEST_CODE = 80877102

export class DatabaseStalledError extends Error {
  override readonly name = 'DatabaseStalledError'
  readonly code = 'ETIMEDOUT'
}

/**
 * Follows a byte stream of PostgreSQL protocol messages (type byte, int32 length, body) and reports
 * each message's type as soon as its header is in. `untyped` messages come first (the start-up
 * message has no type byte); for those the body's first int32 (the request code) is reported. Only
 * headers are kept: a body is counted past, never copied (a 16 MiB row arrives in many chunks).
 */
class MessageReader {
  private readonly header = Buffer.alloc(8)
  private headerBytes = 0
  private bodyBytesLeft = 0
  constructor (private untyped: number, private readonly onMessage: (type: number, code: number) => void) {}

  push (chunk: Buffer): void {
    let offset = 0
    while (offset < chunk.length) {
      if (this.bodyBytesLeft > 0) {
        const skipped = Math.min(this.bodyBytesLeft, chunk.length - offset)
        this.bodyBytesLeft -= skipped
        offset += skipped
        continue
      }
      // Typed: type and length (5 bytes). Untyped: length and request code (8 bytes).
      const headerLength = this.untyped > 0 ? 8 : 5
      let source = chunk
      let at = offset
      if (this.headerBytes === 0 && offset + headerLength <= chunk.length) {
        // The whole header is in this chunk (nearly always): read it where it is.
        offset += headerLength
      } else {
        const copied = chunk.copy(this.header, this.headerBytes, offset, offset + headerLength - this.headerBytes)
        this.headerBytes += copied
        offset += copied
        if (this.headerBytes < headerLength) return
        this.headerBytes = 0
        source = this.header
        at = 0
      }
      if (this.untyped > 0) {
        this.untyped--
        this.bodyBytesLeft = Math.max(0, source.readInt32BE(at) - 8)
        this.onMessage(-1, source.readInt32BE(at + 4))
      } else {
        this.bodyBytesLeft = Math.max(0, source.readInt32BE(at + 1) - 4)
        this.onMessage(source[at] as number, 0)
      }
    }
  }
}

/**
 * Watches one database connection: while the server owes an answer (a Sync, Query or Flush sent
 * and not yet answered, or the start-up) and sends nothing for `deadlineMs`, the socket is
 * destroyed with a DatabaseStalledError. postgres.js's own timeouts do not cover this: its
 * connect timeout ends at start-up, its idle timeout only counts idle connections, and a statement
 * timeout is enforced by the server, which a stalled network path never lets speak. Without this a
 * stalled query holds its pool connection until TCP gives up, which can be many minutes.
 *
 * Plain (non-TLS) connections only: a TLS connection's bytes cannot be read here.
 */
export function guardSocket (socket: Socket, deadlineMs: number): Socket {
  let owedReadies = 1 // the start-up ends with the first ReadyForQuery
  let flushPending = false
  let armed = false
  let off = false

  const owed = () => !off && (owedReadies > 0 || flushPending)
  // One timer per connection, restarted with refresh(): a new timer at every query and every
  // chunk of its answer was the guard's main cost on the hot path. Disarming only drops the flag;
  // a timer that fires while disarmed or owed nothing does nothing.
  const timer = setTimeout(() => {
    if (armed && owed() && !socket.destroyed) socket.destroy(new DatabaseStalledError(`the database sent nothing for ${deadlineMs} ms while a statement was waiting for its answer`))
  }, deadlineMs)
  timer.unref()
  const disarm = () => {
    armed = false
  }
  const arm = () => {
    armed = true
    timer.refresh()
  }
  const stop = () => {
    off = true
    armed = false
    clearTimeout(timer)
  }

  const outgoing = new MessageReader(1, (type, code) => {
    if (type === -1) {
      // TLS follows an SSLRequest (unreadable here); a CancelRequest gets no answer but a close.
      if (code === SSL_REQUEST_CODE || code === CANCEL_REQUEST_CODE) stop()
      return
    }
    if (type === SYNC || type === QUERY) owedReadies++
    else if (type === FLUSH) flushPending = true
  })
  const incoming = new MessageReader(0, (type) => {
    if (type === READY_FOR_QUERY) owedReadies = Math.max(0, owedReadies - 1)
    else if (FLUSH_ANSWERS.has(type)) flushPending = false
  })

  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean
  socket.write = ((chunk: unknown, ...rest: unknown[]) => {
    if (!off && (Buffer.isBuffer(chunk) || chunk instanceof Uint8Array)) {
      outgoing.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))
      if (owed() && !armed) arm()
    }
    return write(chunk, ...rest)
  }) as Socket['write']
  socket.on('data', (chunk: Buffer) => {
    if (off) return
    incoming.push(chunk)
    if (owed()) arm()
    else disarm()
  })
  socket.on('close', stop)
  return socket
}

export interface SocketTarget {
  host: string
  port: number
  /** A Unix socket path instead of host and port. */
  path?: string
}

/** A connected socket to `target`, guarded by guardSocket. */
export function guardedSocket (target: SocketTarget, deadlineMs: number): Socket {
  const socket = target.path !== undefined ? connect(target.path) : connect(target.port, target.host)
  return guardSocket(socket, deadlineMs)
}
