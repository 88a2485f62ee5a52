import { test } from 'tap'
import { build, rpc, TEST_TOKEN } from '../helper.js'

// What the fuzzing (test/faults/fuzz.test.ts) found, pinned one by one.

const post = (app: Awaited<ReturnType<typeof build>>, payload: string) => app.inject({
  method: 'POST',
  url: '/mcp',
  headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${TEST_TOKEN}` },
  payload
})

test('refusals the fuzzing found without a catalogue code, or as a 500', async (t) => {
  const app = await build(t)

  t.test('tools/call with arguments that are not an object: invalid params carrying REQ_1101', async (t) => {
    for (const args of [5, null, 'key=a', [], true]) {
      const response = await rpc(app, 'tools/call', { name: 'read_context', arguments: args })
      const body = response.json()
      t.equal(response.statusCode, 200, `${JSON.stringify(args)}: a JSON-RPC answer`)
      t.equal(body.error?.code, -32602)
      t.equal(body.error?.data?.code, 'REQ_1101', `${JSON.stringify(args)}: REQ_1101`)
      t.match(body.error?.message, 'arguments')
    }
    const unnamed = (await rpc(app, 'tools/call', { name: 5, arguments: {} })).json()
    t.equal(unnamed.error?.data?.code, 'REQ_1101', 'a name that is not a string too')
  })

  t.test('a deeply nested body is 400 REQ_1101, not a 500 from a stack overflow', async (t) => {
    for (const depth of [65, 10_000, 100_000]) {
      const response = await post(app, '['.repeat(depth) + ']'.repeat(depth))
      t.equal(response.statusCode, 400, `depth ${depth}`)
      t.equal(response.json().error?.data?.code, 'REQ_1101')
    }
    const deepParams = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'write_context', arguments: { key: 'a', content: 'x', tags: JSON.parse('['.repeat(100) + ']'.repeat(100)) } } })
    t.equal((await post(app, deepParams)).json().error?.data?.code, 'REQ_1101', 'deep inside a valid envelope too')
  })

  t.test('a body that is not one JSON-RPC message, and an unknown method, carry REQ_1101', async (t) => {
    for (const payload of ['[]', '[{"jsonrpc":"2.0","id":1,"method":"ping"}, 5]', '5', 'null', '{"jsonrpc":"2.0","id":{},"method":"ping"}', '{"jsonrpc":"2.0","id":1.5,"method":"ping"}', '{"jsonrpc":"2.0","id":1e308,"method":"ping"}', '{"jsonrpc":"2.0","id":1,"method":"ping","params":7}']) {
      const response = await post(app, payload)
      t.equal(response.statusCode, 400, payload)
      t.equal(response.json().error?.data?.code, 'REQ_1101', `${payload}: REQ_1101`)
    }
    for (const params of [undefined, {}, { protocolVersion: 5 }]) {
      const response = await post(app, JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', ...(params !== undefined && { params }) }))
      t.equal(response.json().error?.code, -32602, `initialize with params ${JSON.stringify(params)}: invalid params, not an internal error`)
      t.equal(response.json().error?.data?.code, 'REQ_1101')
    }
    for (const method of ['GET', 'DELETE'] as const) {
      const response = await app.inject({ method, url: '/mcp', headers: { authorization: `Bearer ${TEST_TOKEN}`, accept: 'application/json, text/event-stream' } })
      t.equal(response.statusCode, 405, `${method} /mcp without a session`)
      t.equal(response.json().error?.data?.code, 'REQ_1101', `${method} /mcp without a session: REQ_1101`)
    }
    const unknown = (await rpc(app, 'resources/nope', {})).json()
    t.equal(unknown.error?.code, -32601)
    t.equal(unknown.error?.data?.code, 'REQ_1101', 'method not found')
  })
})
