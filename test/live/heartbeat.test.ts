import { createServer, connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { eventually } from '../eventually.js'
import { callTool } from '../helper.js'
import { instances, streamsOpen, uriOf, v1Client } from './live-helper.js'

const PROXY_IDLE_MS = 5000

/** A TCP proxy that drops a connection after PROXY_IDLE_MS without traffic in either direction, as load balancers do. */
async function idleTimeoutProxy (targetPort: number): Promise<{ port: number, idleDrops: () => number, streamDrops: () => number, close: () => Promise<void> }> {
  let drops = 0
  let streamDrops = 0
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1')
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
      socket.on('error', () => { client.destroy(); upstream.destroy() })
    }
    let carriesStream = false
    client.once('data', (chunk: Buffer) => { carriesStream = chunk.toString('latin1').startsWith('GET ') })
    client.pipe(upstream)
    upstream.pipe(client)
    // Socket timeouts count reads and writes: traffic either way keeps the connection.
    client.setTimeout(PROXY_IDLE_MS, () => {
      drops++
      if (carriesStream) streamDrops++
      client.destroy()
      upstream.destroy()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  if (typeof address !== 'object' || address === null) throw new Error('no proxy address')
  return {
    port: address.port,
    idleDrops: () => drops,
    streamDrops: () => streamDrops,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

test('a 2 s heartbeat keeps a stream open 20 s through a proxy that drops connections idle for 5 s', async (t) => {
  const { instances: [app] } = await instances(t, 1, { SSE_HEARTBEAT_MS: '2000' })
  if (app === undefined) throw new Error('instance missing')
  const proxy = await idleTimeoutProxy(Number(new URL(app.url).port))
  t.teardown(() => proxy.close())

  // The proxy does drop idle connections: one that sends nothing is gone after its timeout.
  const idle = connect(proxy.port, '127.0.0.1')
  const idleClosed = new Promise((resolve) => idle.once('close', resolve))

  const { client, notified } = await v1Client(t, `http://127.0.0.1:${proxy.port}/mcp`)
  await client.subscribeResource({ uri: uriOf('long/lived') })
  await streamsOpen(app.app, 1)
  await sleep(20_000) // the scenario itself: four proxy timeouts long, with nothing to notify
  await idleClosed
  t.ok(proxy.idleDrops() >= 1, 'a silent connection was dropped by the proxy')
  // (The client's idle keep-alive connections for its POSTs may well be dropped meanwhile.)
  t.equal(proxy.streamDrops(), 0, 'the stream was never idle for 5 s')
  await callTool(app.app, 'write_context', { key: 'long/lived', content: 'after 20 s' })
  await eventually(() => notified.some((n) => n.uri === uriOf('long/lived')), { what: 'the notification after 20 s' })
  t.equal(app.app.live.counts().streams, 1, 'still the one stream')
})
