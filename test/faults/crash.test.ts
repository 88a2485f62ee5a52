import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { ON_PGLITE, testDatabase } from '../db-helper.js'
import { TEST_TOKEN } from '../helper.js'
import { servingUrl, startServer, waitFor, type RunningServer } from '../process-helper.js'

// kill -9 during a write burst, repeated: every write the server acknowledged is there after the
// restart, and the data folder opens cleanly. On the embedded database (this pass's PGlite, in a
// data folder) and on PostgreSQL (the server pass). CRASH_ROUNDS sets the number of kills (CI: 1; npm run torture repeats it).

const ROUNDS = Number(process.env.CRASH_ROUNDS ?? 1)
const WRITERS = 8
const ACKS_BEFORE_KILL = 60

interface Ack { key: string, content: string, version: number }

async function call (url: string, name: string, args: Record<string, unknown>): Promise<{ structuredContent?: Record<string, unknown>, isError?: boolean } | undefined> {
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: args } }),
      signal: AbortSignal.timeout(20_000)
    })
    const body = await response.json() as { result?: { structuredContent?: Record<string, unknown>, isError?: boolean } }
    return response.status === 200 ? body.result : undefined
  } catch {
    return undefined // killed mid-call: not acknowledged
  }
}

test(`kill -9 during a write burst, ${ROUNDS} times (${ON_PGLITE ? 'embedded PGlite data folder' : 'PostgreSQL'}): every acknowledged write survives`, async (t) => {
  t.setTimeout(170_000)
  const env: Record<string, string> = { PORT: '0', AUTH_TOKEN: TEST_TOKEN, LOG_LEVEL: 'warn', RATE_LIMITS: 'off' }
  if (ON_PGLITE) {
    const dataDir = await mkdtemp(join(tmpdir(), 'scm-crash-'))
    t.teardown(() => rm(dataDir, { recursive: true, force: true }))
    env.DATA_DIR = dataDir
  } else {
    env.DATABASE_URL = (await testDatabase(t)).url
  }
  const running: RunningServer[] = []
  t.teardown(() => { for (const server of running) server.child.kill('SIGKILL') })
  const start = async () => {
    const server = startServer(env)
    running.push(server)
    await waitFor(server, (output) => output.includes('serving MCP at'), 90_000)
    return server
  }

  const acked: Ack[] = []
  const appended: string[] = []
  for (let round = 0; round < ROUNDS; round++) {
    const server = await start()
    const url = servingUrl(server)
    let count = 0
    let killed = false
    const crashed = new Promise<void>((resolve) => {
      const writer = async (w: number) => {
        for (let n = 0; !killed; n++) {
          const key = `r${round}/w${w}/${n % 5}`
          const content = `round ${round} writer ${w} write ${n}`
          const append = n % 3 === 0
          const result = append
            ? await call(url, 'append_context', { key: 'log', content: `${round}.${w}.${n}`, separator: ' ' })
            : await call(url, 'write_context', { key, content })
          if (result === undefined || result.isError === true) continue
          if (append) appended.push(`${round}.${w}.${n}`)
          else acked.push({ key, content, version: Number(result.structuredContent?.version) })
          if (++count === ACKS_BEFORE_KILL) {
            // Mid-burst: the other writers have calls in flight.
            killed = true
            server.child.kill('SIGKILL')
            resolve()
          }
        }
      }
      for (let w = 0; w < WRITERS; w++) writer(w).catch(() => {})
    })
    await crashed
    t.equal(await server.exited, null, `round ${round}: killed by the signal after ${count} acknowledged writes`)
  }

  const server = await start()
  const url = servingUrl(server)
  const ready = await fetch(new URL('/ready', url))
  t.equal(ready.status, 200, 'the data folder opens cleanly: ready after the last kill')
  // The last acknowledged write of each key must be what it holds (a later one may have landed unacknowledged).
  const latest = new Map<string, Ack>()
  for (const ack of acked) if ((latest.get(ack.key)?.version ?? 0) < ack.version) latest.set(ack.key, ack)
  const lost: string[] = []
  for (const ack of latest.values()) {
    const read = await call(url, 'read_context', { key: ack.key })
    const version = Number(read?.structuredContent?.version)
    if (read?.isError === true || version < ack.version) lost.push(`${ack.key} v${ack.version}`)
    else if (version === ack.version && read?.structuredContent?.content !== ack.content) lost.push(`${ack.key} v${ack.version} content`)
  }
  const log = String((await call(url, 'read_context', { key: 'log' }))?.structuredContent?.content ?? '').split(' ')
  for (const piece of appended) if (!log.includes(piece)) lost.push(`log ${piece}`)
  t.comment(`${acked.length + appended.length} acknowledged writes over ${ROUNDS} kills, ${lost.length} lost`)
  t.same(lost, [], 'no acknowledged write lost')
  server.child.kill('SIGTERM')
  t.equal(await server.exited, 0, 'and it shuts down cleanly')
})
