import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { test } from 'tap'
import { eventually } from '../eventually.js'
import { TEST_TOKEN } from '../helper.js'
import { initializeSession, instances, openRawStream, sessionRpc, uriOf, v2Client, type RawStream } from './live-helper.js'

// The GC as `node --expose-gc` gives it (tap's node-arg applies to every file, so it is exposed here).
if (typeof globalThis.gc !== 'function') setFlagsFromString('--expose-gc')
const gc = (globalThis.gc ?? runInNewContext('gc')) as () => void

const SESSIONS = 50
const BATCH = SESSIONS // one stream per session at a time
const STREAMS = 1000
const LISTENS = 20
const MAX_GROWTH_BYTES = 5 * 1024 * 1024

function settledHeap (): number {
  for (let round = 0; round < 4; round++) gc()
  return process.memoryUsage().heapUsed
}

const timers = () => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length

test('1000 streams opened and aborted by the client: no session, stream, sink, timer or subscription left, heap growth < 5 MB', async (t) => {
  const [instance] = (await instances(t, 1, { MCP_SESSIONS_PER_PRINCIPAL: String(SESSIONS), RATE_LIMITS: 'off' })).instances
  if (instance === undefined) throw new Error('instance missing')
  const { app, url } = instance
  const sessions: string[] = []
  for (let index = 0; index < SESSIONS; index++) {
    const session = await initializeSession(url)
    if (session === null) throw new Error('no session')
    await sessionRpc(url, session, 'resources/subscribe', { uri: uriOf(`leak/${index}`) })
    sessions.push(session)
  }
  const cycle = async (count: number): Promise<void> => {
    for (let done = 0; done < count; done += BATCH) {
      const open: RawStream[] = await Promise.all(Array.from({ length: BATCH }, (_, index) => openRawStream(url, sessions[index] ?? '')))
      await eventually(() => app.live.counts().streams === BATCH, { what: 'the batch\'s streams to be open' })
      for (const stream of open) stream.abort()
      await Promise.all(open.map((stream) => stream.ended))
      await eventually(() => app.live.counts().streams === 0, { what: 'the aborted streams to be released' })
    }
  }
  const { client } = await v2Client(t, url)
  const listenCycle = async (count: number): Promise<void> => {
    for (let index = 0; index < count; index++) {
      const subscription = await client.listen({ resourceSubscriptions: [uriOf('leak/0')], resourcesListChanged: true })
      await subscription.close()
    }
    await eventually(() => app.live.counts().listenStreams === 0, { what: 'the closed listen streams to be released' })
  }
  // Warm-up: code paths compiled, schemas built, connection pools filled.
  await cycle(2 * BATCH)
  await listenCycle(5)
  const timersBefore = timers()
  const heapBefore = settledHeap()

  await cycle(STREAMS)
  await listenCycle(LISTENS)

  const counts = app.live.counts()
  t.same({ streams: counts.streams, listenStreams: counts.listenStreams, namespaces: counts.namespaces, sinks: counts.sinks, timers: counts.timers },
    { streams: 0, listenStreams: 0, namespaces: 0, sinks: 0, timers: 0 }, 'no stream, followed namespace, sink or retry timer left')
  t.equal(counts.sessions, SESSIONS, 'the sessions outlive their streams (until idle or deleted)')
  await eventually(() => timers() <= timersBefore, { what: `the timers to go back to ${timersBefore} (now ${timers()})` })
  t.ok(app.live.listener.listening && app.live.listener.reconnects === 0, 'still the one LISTEN connection')
  const growth = settledHeap() - heapBefore
  t.ok(growth < MAX_GROWTH_BYTES, `heap growth after ${STREAMS} streams and ${LISTENS} listens: ${(growth / 1024 / 1024).toFixed(2)} MB < 5 MB`)

  for (const session of sessions) {
    const deleted = await app.inject({ method: 'DELETE', url: '/mcp', headers: { authorization: `Bearer ${TEST_TOKEN}`, 'mcp-session-id': session } })
    if (deleted.statusCode !== 204) throw new Error(`DELETE: ${deleted.statusCode}`)
  }
  await client.close()
  t.same(app.live.counts(), { sessions: 0, streams: 0, listenStreams: 0, subscriptions: 0, namespaces: 0, sinks: 0, timers: 0 }, 'nothing left once the sessions end')
})
