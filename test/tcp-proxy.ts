import { createServer, connect, type Server, type Socket } from 'node:net'

/**
 * A TCP proxy a test puts between the app and a dependency (PostgreSQL, Redis, a JWKS endpoint) to
 * inject faults mid-run: `cut` (connections dropped, new ones refused), `stall` (connections
 * accepted and kept open, nothing forwarded either way: a dependency that hangs rather than
 * fails), and `restore`.
 */
export class TcpProxy {
  port = 0
  /** Faults injected so far (cuts and stalls), for reports. */
  faults = 0
  /** Bytes forwarded from clients to the target so far. */
  forwarded = 0
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  private frozen = false

  constructor (private readonly targetHost: string, private readonly targetPort: number) {}

  async start (): Promise<void> {
    const server = createServer((client) => {
      this.track(client)
      // While stalled, a new connection is accepted and never answered.
      if (this.frozen) return
      const upstream = connect(this.targetPort, this.targetHost)
      this.track(upstream)
      for (const socket of [client, upstream]) socket.on('error', () => { client.destroy(); upstream.destroy() })
      client.on('data', (chunk: Buffer) => {
        if (this.frozen) return
        this.forwarded += chunk.length
        upstream.write(chunk)
      })
      upstream.on('data', (chunk) => { if (!this.frozen) client.write(chunk) })
      client.on('end', () => upstream.end())
      upstream.on('end', () => client.end())
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.port, '127.0.0.1', resolve)
    })
    const address = server.address()
    if (typeof address === 'object' && address !== null) this.port = address.port
    this.server = server
  }

  private track (socket: Socket): void {
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
    socket.on('error', () => socket.destroy())
  }

  /** Drops every open connection and refuses new ones. */
  async cut (): Promise<void> {
    this.faults++
    await this.close()
  }

  private async close (): Promise<void> {
    this.dropConnections()
    const server = this.server
    this.server = undefined
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  private dropConnections (): void {
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
  }

  /**
   * Keeps every connection open but lets nothing through, in either direction, and accepts new
   * connections without answering them. Whatever is sent meanwhile is lost, so `restore` drops
   * the connections that were open.
   */
  stall (): void {
    this.faults++
    this.frozen = true
  }

  /** The same as stall (the older name). */
  freeze (): void {
    this.stall()
  }

  get state (): 'up' | 'cut' | 'stalled' {
    if (this.server === undefined) return 'cut'
    return this.frozen ? 'stalled' : 'up'
  }

  /** Forwards again, on the same port. Connections that lived through a stall are dropped. */
  async restore (): Promise<void> {
    if (this.frozen) this.dropConnections()
    this.frozen = false
    if (this.server === undefined) await this.start()
  }

  async stop (): Promise<void> {
    this.frozen = false
    await this.close()
  }
}

/** The same URL with host and port replaced by the proxy's. */
export function viaProxy (url: string, proxy: TcpProxy): string {
  const parsed = new URL(url)
  parsed.hostname = '127.0.0.1'
  parsed.port = String(proxy.port)
  return parsed.toString()
}
