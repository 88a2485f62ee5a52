import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { buildApp } from '../app.js'
import { createContextStore } from '../db/context-store.js'
import { loadConfig } from '../schema/config.js'
import { holdEntryLock, ON_PGLITE, testDatabase } from './db-helper.js'
import { TEST_TOKEN } from './helper.js'
import { servingUrl, startServer, waitFor } from './process-helper.js'

interface RawResponse {
  status: number
  headers: Record<string, string>
  body: string
}

/**
 * One HTTP/1.1 connection driven by hand, so that a test can leave a request half-sent and put the
 * next request on the same connection (a kept-alive client's next call) at a moment it chooses.
 */
class RawConnection {
  private received = Buffer.alloc(0)
  readonly ended: Promise<void>

  private constructor (private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => { this.received = Buffer.concat([this.received, chunk]) })
    this.ended = once(socket, 'close').then(() => {})
  }

  static async open (t: Test, port: number): Promise<RawConnection> {
    const socket = connect(port, '127.0.0.1')
    t.teardown(() => { socket.destroy() })
    await once(socket, 'connect')
    return new RawConnection(socket)
  }

  write (text: string): void {
    this.socket.write(text)
  }

  /** Every complete response the server sent, once it has closed the connection. */
  async responses (): Promise<RawResponse[]> {
    await this.ended
    const responses: RawResponse[] = []
    let rest = this.received
    while (rest.length > 0) {
      const headEnd = rest.indexOf('\r\n\r\n')
      if (headEnd === -1) throw new Error(`incomplete response: ${rest.toString('latin1').slice(0, 200)}`)
      const [statusLine, ...headerLines] = rest.subarray(0, headEnd).toString('latin1').split('\r\n')
      const headers = Object.fromEntries(headerLines.map((line) => {
        const colon = line.indexOf(':')
        return [line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim()]
      }))
      const length = Number(headers['content-length'] ?? 0)
      const bodyStart = headEnd + 4
      responses.push({ status: Number(statusLine?.split(' ')[1]), headers, body: rest.subarray(bodyStart, bodyStart + length).toString('utf8') })
      rest = rest.subarray(bodyStart + length)
    }
    return responses
  }
}

function mcpPost (host: string, body: unknown): { head: string, body: string } {
  const text = JSON.stringify(body)
  return {
    head: `POST /mcp HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${TEST_TOKEN}\r\n` +
      `Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n`,
    body: text
  }
}

const writeCall = (id: number, key: string, content: string) =>
  ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'write_context', arguments: { key, content } } })

async function until (condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** /mcp requests past their onRequest hooks (the closing check) and not yet answered. */
async function openStreams (app: FastifyInstance): Promise<number> {
  const metric = await app.metrics.registry.getSingleMetric('scm_mcp_open_streams')?.get()
  return metric?.values[0]?.value ?? 0
}

test('after close begins: the calls in flight complete; a new request on their connection gets 503 SRV_9002 with Retry-After, /ready 503', async (t) => {
  const { url, sql } = await testDatabase(t)
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no TCP address')
  const host = `127.0.0.1:${address.port}`

  // Two calls whose bodies are still arriving: in flight (their requests began), not yet run.
  const first = mcpPost(host, writeCall(1, 'in-flight/a', 'a'))
  const second = mcpPost(host, writeCall(2, 'in-flight/b', 'b'))
  const [refusedHere, readyHere] = [await RawConnection.open(t, address.port), await RawConnection.open(t, address.port)]
  refusedHere.write(first.head + first.body.slice(0, -1))
  readyHere.write(second.head + second.body.slice(0, -1))
  await until(async () => await openStreams(app) === 2, 'both calls are in flight')

  const closed = app.close()
  await until(() => app.lifecycle.closing, 'shutdown began')
  const late = mcpPost(host, writeCall(3, 'after-close', 'too late'))
  refusedHere.write(first.body.slice(-1) + late.head + late.body)
  readyHere.write(`${second.body.slice(-1)}GET /ready HTTP/1.1\r\nHost: ${host}\r\n\r\n`)

  const [callA, refusal] = await refusedHere.responses()
  const [callB, ready] = await readyHere.responses()
  await closed

  for (const [name, call] of [['a', callA], ['b', callB]] as const) {
    t.equal(call?.status, 200, `in-flight call ${name}: answered`)
    t.match(JSON.parse(call?.body ?? '{}'), { result: { structuredContent: { version: 1 } } }, `in-flight call ${name}: written`)
  }
  t.equal(refusal?.status, 503, 'the request sent after close began is refused')
  t.match(JSON.parse(refusal?.body ?? '{}'), { error: { code: 'SRV_9002', message: /shutting down/ } })
  t.equal(refusal?.headers['retry-after'], '5', 'with Retry-After')
  t.equal(refusal?.headers.connection, 'close', 'and the connection is closed after it')
  t.equal(ready?.status, 503, '/ready answers 503 while closing')
  t.match(JSON.parse(ready?.body ?? '{}'), { status: 'unavailable', database: 'ok' }, 'because of the shutdown, not the database')

  const rows = await sql<Array<{ key: string, content: string }>>`select key, content from context_entries order by key`
  t.strictSame(rows.map((row) => ({ ...row })), [{ key: 'in-flight/a', content: 'a' }, { key: 'in-flight/b', content: 'b' }], 'the in-flight writes committed; the refused one left nothing')
})

test('a call still waiting at SHUTDOWN_TIMEOUT_MS is cut off: exit 1, the client sees the connection end, and the store is never half-written', async (t) => {
  const { url, sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: 102400 })
  await store.write('default', 'busy', 'v1', {}, { principal: 'test', client: null })
  const server = startServer({ DATABASE_URL: url, AUTH_TOKEN: TEST_TOKEN, PORT: '0', SHUTDOWN_TIMEOUT_MS: '1000' })
  t.teardown(() => server.child.kill('SIGKILL'))
  await waitFor(server, (output) => output.includes('serving MCP at'))
  const mcpUrl = servingUrl(server)
  const metricsUrl = new URL('/metrics', mcpUrl)

  // Hold the row past the deadline, so that the server's write is still waiting for it then.
  const rowLock = await holdEntryLock(sql, 'default', 'busy')

  const call = fetch(mcpUrl, {
    method: 'POST',
    headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify(writeCall(7, 'busy', 'v2'))
  }).then((response) => `HTTP ${response.status}`, (error: unknown) => error)
  await until(async () => {
    const text = await (await fetch(metricsUrl)).text()
    return /^scm_db_operations_in_flight [1-9]/m.test(text)
  }, 'the write waits for the row')

  server.child.kill('SIGTERM')
  t.equal(await server.exited, 1, 'the process exits 1 at the deadline')
  t.match(server.stdout() + server.stderr(), /killed by timeout \(1000ms\)/, 'and says why')
  const outcome = await call
  t.type(outcome, TypeError, 'the client sees the connection end, not an answer')

  await rowLock.release()
  // The write is one statement. PostgreSQL does not notice the client is gone while the statement
  // waits for a lock, so it still commits once the row is free; PGlite drops the queued messages
  // of a closed connection. Either way a cut-off client cannot know, and must read before retrying.
  await until(async () => (await sql<[{ count: number }]>`
    select count(*)::int as count from pg_stat_activity
    where datname = current_database() and pid <> pg_backend_pid() and state = 'active'`)[0].count === 0, 'no statement of the server is left')
  const [entry] = await sql<[{ version: number, content: string }]>`select version, content from context_entries where namespace = 'default' and key = 'busy'`
  const history = await sql<Array<{ version: number, content: string }>>`select version, content from context_history where namespace = 'default' and key = 'busy' order by version`
  t.strictSame(history.map((row) => row.version), Array.from({ length: entry.version }, (_, index) => index + 1), 'history holds every version up to the entry\'s, once')
  t.equal(history.at(-1)?.content, entry.content, 'and its last version is the entry\'s content')
  t.strictSame({ ...entry }, ON_PGLITE ? { version: 1, content: 'v1' } : { version: 2, content: 'v2' },
    ON_PGLITE ? 'PGlite: the cut-off write never ran' : 'PostgreSQL: the cut-off write committed whole after the process was gone')
})
