import { test } from 'tap'
import { build, rpc, TEST_TOKEN } from '../helper.js'

test('Streamable HTTP details for a stateless server', async (t) => {
  const app = await build(t, { CORS_ORIGINS: 'https://app.example.com' })

  t.test('notifications are accepted with 202 and no body', async (t) => {
    const response = await app.inject({
      method: 'POST',
      url: '/mcp',
      headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
      payload: { jsonrpc: '2.0', method: 'notifications/initialized' }
    })
    t.equal(response.statusCode, 202)
    t.equal(response.body, '')
  })

  t.test('GET and DELETE answer 405 with Allow: POST', async (t) => {
    for (const method of ['GET', 'DELETE'] as const) {
      const response = await app.inject({ method, url: '/mcp', headers: { authorization: `Bearer ${TEST_TOKEN}` } })
      t.equal(response.statusCode, 405, method)
      t.equal(response.headers.allow, 'POST')
      t.equal(response.json().error.code, -32000)
    }
  })

  t.test('a foreign Host is refused (DNS rebinding)', async (t) => {
    const response = await rpc(app, 'tools/list', {}, { headers: { host: 'evil.example.net' } })
    t.equal(response.statusCode, 403)
    t.equal(response.json().error.code, 'AUTH_1005')
  })

  t.test('a foreign Origin is refused; an allowed one gets CORS headers', async (t) => {
    const foreign = await rpc(app, 'tools/list', {}, { headers: { origin: 'https://evil.example.net' } })
    t.equal(foreign.statusCode, 403)
    t.equal(foreign.json().error.code, 'AUTH_1005')
    const allowed = await rpc(app, 'tools/list', {}, { headers: { origin: 'https://app.example.com' } })
    t.equal(allowed.statusCode, 200)
    t.equal(allowed.headers['access-control-allow-origin'], 'https://app.example.com')
  })

  t.test('CORS preflight for POST /mcp with Authorization and MCP headers', async (t) => {
    const response = await app.inject({
      method: 'OPTIONS',
      url: '/mcp',
      headers: {
        origin: 'https://app.example.com',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type, mcp-protocol-version'
      }
    })
    t.equal(response.statusCode, 204)
    t.equal(response.headers['access-control-allow-origin'], 'https://app.example.com')
    t.match(String(response.headers['access-control-allow-headers']).toLowerCase(), /authorization.*mcp-protocol-version/)
  })

  t.test('an unsupported MCP-Protocol-Version header is a 400', async (t) => {
    const response = await rpc(app, 'tools/list', {}, { headers: { 'mcp-protocol-version': '1999-01-01' } })
    t.equal(response.statusCode, 400)
    t.equal(response.json().error.data?.code, 'REQ_1101', 'with a catalogue code, as every refusal')
  })

  t.test('a 2026-07-28 request without the standard headers is rejected by the SDK ladder, not served', async (t) => {
    const response = await rpc(app, 'tools/list', {
      _meta: { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientInfo': { name: 'x', version: '1' }, 'io.modelcontextprotocol/clientCapabilities': {} }
    })
    t.equal(response.statusCode, 400)
    const { error } = response.json()
    t.ok(error, 'JSON-RPC error body')
    t.equal(error.data?.code, 'REQ_1101', "the SDK's own refusal carries a catalogue code too")
  })

  t.test('2026-07-28 has no resources/subscribe: 404, method not found (the 2025 sessions do not take it over)', async (t) => {
    for (const method of ['resources/subscribe', 'resources/unsubscribe']) {
      const response = await rpc(app, method, {
        uri: 'context://default/x',
        _meta: { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientInfo': { name: 'x', version: '1' }, 'io.modelcontextprotocol/clientCapabilities': {} }
      }, { headers: { 'mcp-protocol-version': '2026-07-28', 'mcp-method': method, 'mcp-name': 'context://default/x' } })
      t.equal(response.statusCode, 404, method)
      t.equal(response.json().error?.code, -32601, `${method}: method not found`)
    }
  })

  t.test('unknown methods are JSON-RPC method-not-found', async (t) => {
    const response = await rpc(app, 'no/such/method')
    t.equal(response.statusCode, 200)
    t.equal(response.json().error.code, -32601)
  })

  t.test('responses keep the client\'s own request id, also for string ids', async (t) => {
    const response = await app.inject({
      method: 'POST',
      url: '/mcp',
      headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
      payload: { jsonrpc: '2.0', id: 'abc-1', method: 'tools/list', params: {} }
    })
    t.equal(response.json().id, 'abc-1')
  })

  t.test('unknown routes answer 404 in the catalogue shape', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/nope' })
    t.equal(response.statusCode, 404)
    t.equal(response.json().error.code, 'REQ_1101')
  })
})
