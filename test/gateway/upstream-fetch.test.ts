import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { test, type Test } from 'tap'
import { classifyFailure } from '../../gateway/resilience.js'
import { createUpstreamFetch } from '../../gateway/upstream-fetch.js'
import { freePort } from '../../scripts/free-port.js'

async function listen (t: Test, server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`
}

test('upstream fetch: sends method, headers and body; a JSON answer is read whole, an SSE one streams', async (t) => {
  const seen: Array<{ method?: string, headers: Record<string, unknown>, body: string }> = []
  let releaseSecondEvent: (() => void) | undefined
  const server = createServer((request, response) => {
    let body = ''
    request.on('data', (chunk: Buffer) => { body += chunk.toString() })
    request.on('end', () => {
      seen.push({ method: request.method, headers: request.headers, body })
      if (request.headers.accept === 'text/event-stream') {
        response.writeHead(200, { 'content-type': 'text/event-stream' })
        response.write('data: one\n\n')
        releaseSecondEvent = () => response.end('data: two\n\n')
        return
      }
      response.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': 's1', 'set-cookie': ['a=1', 'b=2'] })
      response.end(JSON.stringify({ jsonrpc: '2.0', id: 1, result: {} }))
    })
  })
  const url = await listen(t, server)
  const { fetch: upstreamFetch, close } = createUpstreamFetch()
  t.teardown(close)

  const json = await upstreamFetch(new URL(url), { method: 'POST', headers: new Headers({ 'content-type': 'application/json', 'x-principal': 'jwt' }), body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' })
  t.equal(json.status, 200)
  t.equal(json.headers.get('mcp-session-id'), 's1')
  t.equal(json.headers.get('set-cookie'), 'a=1, b=2', 'repeated headers kept')
  t.same(await json.json(), { jsonrpc: '2.0', id: 1, result: {} })
  t.match(seen[0], { method: 'POST', headers: { 'content-type': 'application/json', 'x-principal': 'jwt' }, body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' })

  const sse = await upstreamFetch(url, { method: 'GET', headers: { accept: 'text/event-stream' } })
  const reader = sse.body!.getReader()
  const first = await reader.read()
  t.equal(Buffer.from(first.value!).toString(), 'data: one\n\n', 'the first event arrives before the answer ends')
  releaseSecondEvent?.()
  let rest = ''
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += Buffer.from(chunk.value).toString()
  t.equal(rest, 'data: two\n\n')
})

test('upstream fetch: failures are thrown as the global fetch throws them, and classified alike', async (t) => {
  const { fetch: upstreamFetch, close } = createUpstreamFetch()
  t.teardown(close)

  const refused = await upstreamFetch(`http://127.0.0.1:${await freePort()}/mcp`, { method: 'POST', body: '{}' }).catch((error: unknown) => error)
  t.match(refused, { name: 'TypeError', message: 'fetch failed', cause: { code: 'ECONNREFUSED' } })
  t.match(classifyFailure(refused), { kind: 'unreachable', mayHaveReached: false, reason: 'econnrefused' })

  // A JSON answer cut short: the socket closes before the declared length arrived.
  const server = createServer((_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' })
    response.write('{"jsonrpc":')
    setImmediate(() => response.socket?.destroy())
  })
  const url = await listen(t, server)
  const cut = await upstreamFetch(url, { method: 'POST', body: '{}' }).catch((error: unknown) => error)
  t.match(cut, { name: 'TypeError', message: 'terminated' })
  t.match(classifyFailure(cut), { kind: 'unreachable', transient: true, mayHaveReached: true, reason: 'econnreset' }, 'the connection was cut: it may have reached the upstream')

  const controller = new AbortController()
  const hanging = createServer(() => { controller.abort() })
  const hangingUrl = await listen(t, hanging)
  const aborted = await upstreamFetch(hangingUrl, { method: 'POST', body: '{}', signal: controller.signal }).catch((error: unknown) => error)
  t.match(aborted, { name: 'AbortError' }, 'an aborted request rejects with the abort')
})
