import { connect, type Socket } from 'node:net'
import { test } from 'tap'
import { HEADERS_TIMEOUT_MS, MAX_CONNECTIONS, REQUEST_TIMEOUT_MS } from '../../app.js'
import { build, TEST_TOKEN } from '../helper.js'

// Resource exhaustion, CI's short version (npm run torture runs the long one, with the memory
// check over 20k requests): 500 concurrent connections, clients trickling headers and bodies,
// oversized bodies — while they are all open, other clients are still answered.

const CONCURRENT = 500
const TRICKLERS = 40
const OVERSIZED = 10

const PING = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' })
const head = (length: number) => `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TEST_TOKEN}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: ${length}\r\n\r\n`

/** One raw connection; resolves with the status of its first answer (0 if it closed without one). */
function rawRequest (port: number, send: (socket: Socket) => void): { socket: Socket, status: Promise<number> } {
  const socket = connect(port, '127.0.0.1')
  const status = new Promise<number>((resolve) => {
    let received = ''
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1')
      const match = /^HTTP\/1\.1 (\d{3})/.exec(received)
      if (match !== null) resolve(Number(match[1]))
    })
    socket.on('error', () => resolve(0))
    socket.on('close', () => resolve(0))
  })
  socket.on('connect', () => send(socket))
  return { socket, status }
}

test('under 500 concurrent connections, trickling clients and oversized bodies, other clients are still answered', async (t) => {
  const app = await build(t, { RATE_LIMITS: 'off', MAX_CONTENT_BYTES: '1024' })
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  const port = Number(new URL(base).port)
  t.equal(app.server.headersTimeout, HEADERS_TIMEOUT_MS, 'headers must arrive in time')
  t.equal(app.server.requestTimeout, REQUEST_TIMEOUT_MS, 'the whole request too')
  t.equal(app.server.maxConnections, MAX_CONNECTIONS, 'connections are limited')
  if (MAX_CONNECTIONS <= CONCURRENT + TRICKLERS + OVERSIZED) throw new Error('the connection limit leaves no room for this test: lower its connection counts')

  const open: Socket[] = []
  t.teardown(() => { for (const socket of open) socket.destroy() })
  // Slow clients: half send their headers a byte at a time, half their body; none finishes.
  const trickle = setInterval(() => {
    for (const socket of open) if (!socket.destroyed && (socket as Socket & { trickle?: () => void }).trickle !== undefined) (socket as Socket & { trickle: () => void }).trickle()
  }, 200)
  t.teardown(() => clearInterval(trickle))
  for (let i = 0; i < TRICKLERS; i++) {
    const { socket } = rawRequest(port, (socket) => {
      const text = i % 2 === 0 ? head(PING.length) : head(1000)
      let at = i % 2 === 0 ? 0 : text.length
      if (at > 0) socket.write(text)
      Object.assign(socket, { trickle: () => { socket.write(at < text.length ? text[at++] as string : ' ') } })
    })
    open.push(socket)
  }
  // Oversized bodies: a Content-Length far over the limit, streamed.
  const oversized = Array.from({ length: OVERSIZED }, () => {
    const request = rawRequest(port, (socket) => {
      socket.write(head(50 * 1024 * 1024))
      socket.write('{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + 'x'.repeat(64 * 1024))
    })
    open.push(request.socket)
    return request.status
  })
  // 500 connections at once, each with a complete request.
  const concurrent = Array.from({ length: CONCURRENT }, () => {
    const request = rawRequest(port, (socket) => socket.write(head(PING.length) + PING))
    open.push(request.socket)
    return request.status
  })
  const statuses = await Promise.all(concurrent)
  t.same(new Set(statuses), new Set([200]), `all ${CONCURRENT} concurrent requests answered 200`)
  t.same(new Set(await Promise.all(oversized)), new Set([413]), 'oversized bodies refused with 413')

  // With the slow clients still open, an ordinary client is answered.
  const response = await fetch(`${base}/mcp`, { method: 'POST', headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: PING })
  t.equal(response.status, 200, 'another client is answered while the slow ones trickle')
  t.ok(open.slice(0, TRICKLERS).every((socket) => !socket.destroyed), 'the slow clients were all still connected meanwhile')
})
