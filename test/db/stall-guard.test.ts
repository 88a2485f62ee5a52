import { once } from 'node:events'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { test } from 'tap'
import { DatabaseStalledError, guardedSocket } from '../../db/stall-guard.js'
import { eventually } from '../eventually.js'

// The guard reads message headers from a byte stream; a stand-in server here sends the answers in
// chunks that cut headers and bodies anywhere, as a real network may.

const DEADLINE_MS = 300

function message (type: string, body: Buffer): Buffer {
  const header = Buffer.alloc(5)
  header.write(type, 0, 'latin1')
  header.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([header, body])
}

function startupMessage (): Buffer {
  const body = Buffer.from('user\0postgres\0\0')
  const header = Buffer.alloc(8)
  header.writeInt32BE(body.length + 8, 0)
  header.writeInt32BE(196608, 4) // protocol 3.0
  return Buffer.concat([header, body])
}

const readyForQuery = message('Z', Buffer.from('I'))

/** Writes `bytes` in pieces of `size` bytes, one write per tick. */
async function writeInPieces (socket: Socket, bytes: Buffer, size: number): Promise<void> {
  for (let offset = 0; offset < bytes.length; offset += size) {
    socket.write(bytes.subarray(offset, offset + size))
    await new Promise((resolve) => setImmediate(resolve))
  }
}

async function standInServer (t: { teardown: (cleanup: () => void) => void }) {
  const connections: Socket[] = []
  const server = createServer((socket) => connections.push(socket))
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    for (const socket of connections) socket.destroy()
    server.close()
  })
  const { port } = server.address() as AddressInfo
  const client = guardedSocket({ host: '127.0.0.1', port }, DEADLINE_MS)
  const errors: Error[] = []
  client.on('error', (error) => errors.push(error))
  await once(client, 'connect')
  const peer: Socket = await eventually(() => connections[0], { what: 'the connection to reach the stand-in server' }) as Socket
  return { client, peer, errors }
}

test('an answer split anywhere, a 4 MiB row included, is read to its ReadyForQuery: a quiet connection that owes nothing is kept', async (t) => {
  const { client, peer, errors } = await standInServer(t)
  client.write(startupMessage())
  await writeInPieces(peer, Buffer.concat([message('R', Buffer.alloc(4)), readyForQuery]), 3)
  client.write(message('Q', Buffer.from('select big\0')))
  const row = message('D', Buffer.alloc(4 * 1024 * 1024, 0x61))
  await writeInPieces(peer, Buffer.concat([row, message('C', Buffer.from('SELECT 1\0')), readyForQuery]), 64 * 1024 + 7)
  // Silent for twice the deadline after the answer: nothing is owed, so nothing is cut.
  await new Promise((resolve) => setTimeout(resolve, DEADLINE_MS * 2))
  t.equal(client.destroyed, false, 'the connection is kept')
  t.same(errors, [])
})

test('a row whose ReadyForQuery never comes: the connection is cut once the server is silent for the deadline', async (t) => {
  const { client, peer, errors } = await standInServer(t)
  client.write(startupMessage())
  await writeInPieces(peer, Buffer.concat([message('R', Buffer.alloc(4)), readyForQuery]), 1)
  client.write(message('Q', Buffer.from('select big\0')))
  await writeInPieces(peer, message('D', Buffer.alloc(256 * 1024, 0x61)), 10_000)
  await eventually(() => client.destroyed, { what: 'the stalled connection to be cut' })
  t.equal(errors.length, 1)
  t.ok(errors[0] instanceof DatabaseStalledError, 'with a DatabaseStalledError')
})

test('small answers whose headers fall whole inside a chunk or across two, piece after piece: every ReadyForQuery is counted', async (t) => {
  const { client, peer, errors } = await standInServer(t)
  client.write(startupMessage())
  await writeInPieces(peer, Buffer.concat([message('R', Buffer.alloc(4)), readyForQuery]), 64)
  const answer = Buffer.concat([message('2', Buffer.alloc(0)), message('D', Buffer.from('row')), message('C', Buffer.from('SELECT 1\0')), readyForQuery])
  for (const size of [1, 2, 4, 5, 6, 7, 9, 13, answer.length - 1, answer.length, answer.length * 3]) {
    // Several queries' answers in one stream, so that a piece holds the end of one and the start of the next.
    client.write(Buffer.concat([message('Q', Buffer.from('select 1\0')), message('Q', Buffer.from('select 1\0')), message('Q', Buffer.from('select 1\0'))]))
    await writeInPieces(peer, Buffer.concat([answer, answer, answer]), size)
  }
  // A header misread would leave a ReadyForQuery owed, and the guard would cut the connection
  // once the deadline passed: twice the deadline of silence, nothing owed, nothing cut.
  await new Promise((resolve) => setTimeout(resolve, DEADLINE_MS * 2))
  t.equal(client.destroyed, false, 'the connection is kept')
  t.same(errors, [])
  // And the guard is still watching (a reader that lost its place would also cut nothing): a query
  // left unanswered now is cut.
  client.write(message('Q', Buffer.from('select 1\0')))
  await eventually(() => client.destroyed, { what: 'the unanswered query\'s connection to be cut' })
  t.ok(errors[0] instanceof DatabaseStalledError, 'with a DatabaseStalledError')
})
