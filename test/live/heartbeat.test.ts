import { createServer, connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { ResourceUpdatedNotificationSchema } from '@modelcontextprotocol/sdk/types.js'
import { buildApp } from '../../app.js'
import { createSql } from '../../db/connect.js'
import { startEmbeddedPostgres } from '../../db/embedded.js'
import { migrate } from '../../db/migrate.js'
import { loadConfig } from '../../schema/config.js'
import { eventually } from '../eventually.js'
import { pgliteTemplate } from '../pglite-template.js'

// Nothing here depends on the database server, so CI runs this file once, on PGlite whichever pass
// (it imports no helper that follows the test backend's settings: scripts/embedded-pass-tests.ts).
const TOKEN = 'heartbeat-token-0123456789abcdef0123456789'
const URI = 'context://default/long/lived'

const PROXY_IDLE_MS = 5000

/** A TCP proxy that drops a connection after PROXY_IDLE_MS without traffic in either direction, as load balancers do. */
async function idleTimeoutProxy (targetPort: number): Promise<{ port: number, idleDrops: () => number, streamDrops: () => number, streamOpens: () => number, close: () => Promise<void> }> {
  let drops = 0
  let streamDrops = 0
  let streamOpens = 0
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1')
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
      socket.on('error', () => { client.destroy(); upstream.destroy() })
    }
    // A keep-alive connection may carry POSTs first and the stream's GET later: every chunk is looked at.
    let carriesStream = false
    client.on('data', (chunk: Buffer) => {
      const opens = chunk.toString('latin1').match(/(?:^|\r\n)GET \/mcp HTTP/g)?.length ?? 0
      if (opens > 0) carriesStream = true
      streamOpens += opens
    })
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
    streamOpens: () => streamOpens,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

test('a 2 s heartbeat keeps a stream open 20 s through a proxy that drops connections idle for 5 s', async (t) => {
  const database = await startEmbeddedPostgres({ loadDataDir: await pgliteTemplate() })
  t.teardown(() => database.close())
  const sql = createSql(database.url, { max: 1, connectTimeoutMs: 10_000 })
  await migrate(sql)
  await sql.end()
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TOKEN, DATABASE_URL: database.url, LOG_LEVEL: 'silent', SSE_HEARTBEAT_MS: '2000' }))
  t.teardown(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const proxy = await idleTimeoutProxy(Number(new URL(address).port))
  t.teardown(() => proxy.close())

  // The proxy does drop idle connections: one that sends nothing is gone after its timeout.
  const idle = connect(proxy.port, '127.0.0.1')
  const idleClosed = new Promise((resolve) => idle.once('close', resolve))

  const client = new Client({ name: 'heartbeat', version: '1.0.0' })
  const updated: string[] = []
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (notification) => { updated.push(notification.params.uri) })
  await client.connect(new StreamableHTTPClientTransport(new URL(`http://127.0.0.1:${proxy.port}/mcp`), { requestInit: { headers: { authorization: `Bearer ${TOKEN}` } } }))
  t.teardown(() => client.close())
  await client.subscribeResource({ uri: URI })
  await eventually(() => app.live.counts().streams === 1, { what: 'the stream to open' })
  await sleep(20_000) // the scenario itself: four proxy timeouts long, with nothing to notify
  await idleClosed
  t.ok(proxy.idleDrops() >= 1, 'a silent connection was dropped by the proxy')
  // (The client's idle keep-alive connections for its POSTs may well be dropped meanwhile.)
  t.equal(proxy.streamDrops(), 0, 'the stream was never idle for 5 s')
  const written = await app.inject({
    method: 'POST',
    url: '/mcp',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    payload: { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'write_context', arguments: { key: 'long/lived', content: 'after 20 s' } } }
  })
  t.equal(written.statusCode, 200)
  await eventually(() => updated.includes(URI), { what: 'the notification after 20 s' })
  t.equal(app.live.counts().streams, 1, 'still the one stream')
  t.equal(proxy.streamOpens(), 1, 'opened once: the client never had to reconnect it')
})
