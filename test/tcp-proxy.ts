import { createServer, connect, type Server, type Socket } from 'node:net'

/** A TCP proxy a test can cut and restore, to make a dependency unreachable mid-run. */
export class TcpProxy {
  port = 0
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  private frozen = false

  constructor (private readonly targetHost: string, private readonly targetPort: number) {}

  async start (): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.targetPort, this.targetHost)
      for (const socket of [client, upstream]) {
        this.sockets.add(socket)
        socket.on('close', () => this.sockets.delete(socket))
        socket.on('error', () => { client.destroy(); upstream.destroy() })
      }
      client.on('data', (chunk) => { if (!this.frozen) upstream.write(chunk) })
      upstream.on('data', (chunk) => { if (!this.frozen) client.write(chunk) })
      client.on('end', () => upstream.end())
      upstream.on('end', () => client.end())
    })
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve))
    const address = server.address()
    if (typeof address === 'object' && address !== null) this.port = address.port
    this.server = server
  }

  /** Drops every open connection and refuses new ones. */
  async cut (): Promise<void> {
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
    const server = this.server
    this.server = undefined
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  /**
   * Keeps every connection open but lets nothing through, in either direction: a dependency that
   * hangs rather than fails. Whatever is sent meanwhile is lost, so connections are useless after.
   */
  freeze (): void {
    this.frozen = true
  }

  /** Accepts connections again on the same port. */
  restore (): Promise<void> {
    this.frozen = false
    return this.start()
  }

  async stop (): Promise<void> {
    await this.cut()
  }
}

/** The same URL with host and port replaced by the proxy's. */
export function viaProxy (url: string, proxy: TcpProxy): string {
  const parsed = new URL(url)
  parsed.hostname = '127.0.0.1'
  parsed.port = String(proxy.port)
  return parsed.toString()
}
