import { test } from 'tap'
import { testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'
import { TEST_TOKEN } from '../helper.js'
import { servingUrl, startServer, waitFor } from '../process-helper.js'
import { initializeSession, openRawStream, sessionRpc, uriOf, v2Client, type RawStream } from './live-helper.js'

const STREAMS = 100
const WRITERS = 4

test('SIGTERM with 100 open streams (and a subscriptions/listen one) and writers running: each stream gets a final event, no acknowledged write is lost, exit 0', async (t) => {
  const { url, sql } = await testDatabase(t)
  const server = startServer({ DATABASE_URL: url, AUTH_TOKEN: TEST_TOKEN, PORT: '0', SHUTDOWN_TIMEOUT_MS: '10000', MCP_SESSIONS_PER_PRINCIPAL: String(STREAMS), RATE_LIMITS: 'off' })
  t.teardown(() => server.child.kill('SIGKILL'))
  await waitFor(server, (output) => output.includes('serving MCP at'))
  const mcpUrl = servingUrl(server)

  const streams: RawStream[] = []
  for (let batch = 0; batch < STREAMS / 10; batch++) {
    streams.push(...await Promise.all(Array.from({ length: 10 }, async () => {
      const session = await initializeSession(mcpUrl)
      if (session === null) throw new Error('no session')
      await sessionRpc(mcpUrl, session, 'resources/subscribe', { uri: uriOf('writer/0') })
      const stream = await openRawStream(mcpUrl, session)
      if (stream.status !== 200) throw new Error(`stream: HTTP ${stream.status}`)
      return stream
    })))
  }
  // And one 2026-07-28 subscriptions/listen stream.
  const { client } = await v2Client(t, mcpUrl)
  const subscription = await client.listen({ resourceSubscriptions: [uriOf('writer/0')] })
  const metricsUrl = new URL('/metrics', mcpUrl)
  await eventually(async () => new RegExp(`^scm_live_open_streams ${STREAMS + 1}$`, 'm').test(await (await fetch(metricsUrl)).text()), { what: `${STREAMS + 1} open streams` })

  // Writers append until the server refuses (503 while draining) or is gone; they record each acknowledged version.
  const acknowledged: number[][] = Array.from({ length: WRITERS }, () => [])
  const writers = acknowledged.map(async (versions, writer) => {
    for (let n = 0; ; n++) {
      let body: { result?: { isError?: boolean, structuredContent?: { version?: number } } }
      try {
        const response = await fetch(mcpUrl, {
          method: 'POST',
          headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
          body: JSON.stringify({ jsonrpc: '2.0', id: n, method: 'tools/call', params: { name: 'append_context', arguments: { key: `writer/${writer}`, content: `line ${n}` } } })
        })
        if (response.status !== 200) return
        body = await response.json() as typeof body
      } catch {
        return
      }
      const version = body.result?.structuredContent?.version
      if (body.result?.isError !== true && version !== undefined) versions.push(version)
    }
  })
  await eventually(() => acknowledged.every((versions) => versions.length >= 5), { what: 'every writer to have written' })
  await eventually(() => streams.every((stream) => stream.text().includes('notifications/resources/updated')), { what: 'notifications on every stream' })

  server.child.kill('SIGTERM')
  await Promise.all(streams.map((stream) => stream.ended))
  await Promise.all(writers)
  t.equal(await server.exited, 0, 'exit 0 (close-with-grace exits 1 past SHUTDOWN_TIMEOUT_MS)')
  t.equal(streams.filter((stream) => /event: shutdown\ndata: /.test(stream.text())).length, STREAMS, 'every stream ended with the shutdown event')
  t.equal(await subscription.closed, 'graceful', 'the subscriptions/listen stream got its final result')

  for (const [writer, versions] of acknowledged.entries()) {
    const stored = new Set((await sql<Array<{ version: number }>>`select version from context_history where namespace = 'default' and key = ${`writer/${writer}`}`).map((row) => row.version))
    t.same(versions.filter((version) => !stored.has(version)), [], `writer ${writer}: every acknowledged version is in the history (${versions.length} acknowledged)`)
  }
})
