import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { test, type Test } from 'tap'
import { eventually } from '../eventually.js'
import { classifyFailure } from '../../gateway/resilience.js'
import { LeanUpstreamClient, type LeanCallOptions } from '../../gateway/upstream-call.js'
import { errorCodeOf, postMcp, startGateway } from './gateway-helper.js'
import { startFinance } from './upstreams/finance.js'
import { startHr } from './upstreams/hr.js'

// The gateway's lean tools/call (gateway/upstream-call.ts) against scripted upstreams: JSON and
// SSE answers (split anywhere), the 2025 session and its server-to-client requests, the
// 2026-07-28 envelope and input_required rounds, cancellation, and answers that are no answers.

type Message = Record<string, unknown> & { id?: unknown, method?: string, params?: Record<string, unknown> }
interface Seen { httpMethod: string | undefined, headers: IncomingMessage['headers'], message: Message }
type Script = (message: Message, response: ServerResponse, request: IncomingMessage) => void

async function scripted (t: Test, script: Script): Promise<{ url: string, seen: Seen[] }> {
  const seen: Seen[] = []
  const server: Server = createServer((request, response) => {
    let body = ''
    request.setEncoding('utf8')
    request.on('data', (chunk: string) => { body += chunk })
    request.on('end', () => {
      // A GET (the SDK's stream) or a DELETE has no body.
      const message = (body === '' ? {} : JSON.parse(body)) as Message
      seen.push({ httpMethod: request.method, headers: request.headers, message })
      script(message, response, request)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`, seen }
}

function client (t: Test, url: string): LeanUpstreamClient {
  const lean = new LeanUpstreamClient({ url, headers: { authorization: 'Bearer upstream-secret' }, clientInfo: { name: 'test-gateway', version: '1' }, capabilities: { elicitation: { form: {} } }, connectTimeoutMs: 2000 })
  t.teardown(() => lean.close())
  return lean
}

const json = (response: ServerResponse, message: unknown, status = 200): void => {
  response.writeHead(status, { 'content-type': 'application/json' })
  response.end(JSON.stringify(message))
}
const event = (message: unknown): string => `event: message\ndata: ${JSON.stringify(message)}\n\n`
const options = (extra: Partial<LeanCallOptions> = {}): LeanCallOptions => ({ signal: new AbortController().signal, ...extra })
const TEXT = { content: [{ type: 'text', text: 'ok' }] }

test('2026-07-28, JSON answer: the envelope and headers go out; the result comes back without resultType', async (t) => {
  const upstream = await scripted(t, (message, response) => json(response, { jsonrpc: '2.0', id: message.id, result: { ...TEXT, resultType: 'complete', structuredContent: { n: 1 } } }))
  const result = await client(t, upstream.url).callTool('2026-07-28', 'lookup', { id: 'e1' }, options({ headers: { 'x-gateway-principal': 'jwt' } }))
  t.same(result, { ...TEXT, structuredContent: { n: 1 } })
  const [call] = upstream.seen
  t.equal(call?.message.method, 'tools/call')
  t.same(call?.message.params?.arguments, { id: 'e1' })
  t.match(call?.headers, { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': 'lookup', authorization: 'Bearer upstream-secret', 'x-gateway-principal': 'jwt', accept: 'application/json, text/event-stream' })
  t.match(call?.message.params?._meta, { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientInfo': { name: 'test-gateway' }, 'io.modelcontextprotocol/clientCapabilities': { elicitation: { form: {} } } })
  t.equal(upstream.seen.length, 1, 'no handshake on the 2026-07-28 line')
})

test('an SSE answer split across chunks (inside a UTF-8 character too): progress and log lines on the way, then the result', async (t) => {
  const upstream = await scripted(t, (message, response) => {
    const token = message.params?._meta?.['progressToken' as never]
    const stream = Buffer.from([
      ': comment\n\n',
      event({ jsonrpc: '2.0', method: 'notifications/progress', params: { progressToken: token, progress: 1, total: 2, message: 'half' } }),
      event({ jsonrpc: '2.0', method: 'notifications/progress', params: { progressToken: 'someone-else', progress: 9 } }),
      event({ jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: 'working' } }),
      event({ jsonrpc: '2.0', id: message.id, result: { content: [{ type: 'text', text: 'Zoë — ✓' }] } })
    ].join(''))
    response.writeHead(200, { 'content-type': 'text/event-stream' })
    // Three bytes at a time: lines, events and multi-byte characters all cut somewhere.
    let offset = 0
    const next = (): void => {
      if (offset >= stream.length) {
        response.end()
        return
      }
      response.write(stream.subarray(offset, offset + 3))
      offset += 3
      setImmediate(next)
    }
    next()
  })
  const progress: unknown[] = []
  const notes: unknown[] = []
  const result = await client(t, upstream.url).callTool('2026-07-28', 'report', {}, options({
    onprogress: (p) => progress.push(p),
    binding: { notify: (method, params) => notes.push([method, params]), request: async () => ({}) }
  }))
  t.same(result.content, [{ type: 'text', text: 'Zoë — ✓' }])
  t.same(progress, [{ progress: 1, total: 2, message: 'half' }], "only this call's progress")
  t.same(notes, [['notifications/message', { level: 'info', data: 'working' }]])
})

test('the 2025 line: initialize once (the session id kept), server-to-client requests answered with a POST, 404 opens a new session', async (t) => {
  let sessions = 0
  let forget = false
  const upstream = await scripted(t, (message, response, request) => {
    if (message.method === 'initialize') {
      sessions++
      response.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': `s${sessions}` })
      response.end(JSON.stringify({ jsonrpc: '2.0', id: message.id, result: { protocolVersion: '2025-06-18', capabilities: { tools: {} }, serverInfo: { name: 'x', version: '1' } } }))
      return
    }
    if (message.method === 'notifications/initialized' || (message.id !== undefined && message.method === undefined)) {
      response.writeHead(202).end()
      return
    }
    if (forget) {
      forget = false
      json(response, { jsonrpc: '2.0', id: null, error: { code: -32001, message: 'Session not found' } }, 404)
      return
    }
    if (message.params?.name === 'ask') {
      response.writeHead(200, { 'content-type': 'text/event-stream' })
      response.write(event({ jsonrpc: '2.0', id: 'elicit-1', method: 'elicitation/create', params: { mode: 'form', message: 'sure?', requestedSchema: { type: 'object', properties: {} } } }))
      // The answer goes out once the client's response came back (as its own POST).
      const waitForReply = setInterval(() => {
        const reply = upstream.seen.find((seen) => seen.message.id === 'elicit-1' && seen.message.method === undefined)
        if (reply === undefined) return
        clearInterval(waitForReply)
        response.end(event({ jsonrpc: '2.0', id: message.id, result: { content: [{ type: 'text', text: JSON.stringify(reply.message.result) }] } }))
      }, 5)
      response.once('close', () => clearInterval(waitForReply))
      return
    }
    json(response, { jsonrpc: '2.0', id: message.id, result: TEXT })
  })
  const lean = client(t, upstream.url)
  t.same((await lean.callTool('2025-06-18', 'plain', {}, options())).content, TEXT.content)
  t.same((await lean.callTool('2025-06-18', 'plain', {}, options())).content, TEXT.content)
  t.equal(sessions, 1, 'one session for both calls')
  const methods = upstream.seen.map((seen) => seen.message.method)
  t.same(methods, ['initialize', 'notifications/initialized', 'tools/call', 'tools/call'])
  t.same(upstream.seen[0]?.message.params, { protocolVersion: '2025-06-18', capabilities: { elicitation: { form: {} } }, clientInfo: { name: 'test-gateway', version: '1' } })
  t.equal(upstream.seen[2]?.headers['mcp-session-id'], 's1')
  t.equal(upstream.seen[2]?.headers['mcp-protocol-version'], '2025-06-18')
  t.equal(upstream.seen[2]?.headers['mcp-method'], undefined, 'no 2026-07-28 headers on the 2025 line')

  const asked: unknown[] = []
  const answered = await lean.callTool('2025-06-18', 'ask', {}, options({ binding: { notify: () => {}, request: async (method, params) => { asked.push([method, params?.message]); return { action: 'accept', content: {} } } } }))
  t.same(asked, [['elicitation/create', 'sure?']])
  t.same(JSON.parse((answered.content[0] as { text: string }).text), { action: 'accept', content: {} })
  const reply = upstream.seen.find((seen) => seen.message.id === 'elicit-1')
  t.equal(reply?.headers['mcp-session-id'], 's1', 'the response goes to the same session')

  forget = true
  const lost = await lean.callTool('2025-06-18', 'plain', {}, options()).catch((error: unknown) => error)
  t.match(classifyFailure(lost), { kind: 'upstream_error', transient: true, mayHaveReached: false, reason: 'http_404' })
  await lean.callTool('2025-06-18', 'plain', {}, options())
  t.equal(sessions, 2, 'a forgotten session is opened again')
  t.equal(upstream.seen.at(-1)?.headers['mcp-session-id'], 's2')
})

test('2026-07-28 input_required: the requests go to the binding, the call is sent again with the responses and the request state', async (t) => {
  const upstream = await scripted(t, (message, response) => {
    const params = message.params ?? {}
    if (params.inputResponses === undefined) {
      json(response, { jsonrpc: '2.0', id: message.id, result: { resultType: 'input_required', inputRequests: { confirm: { method: 'elicitation/create', params: { mode: 'form', message: 'go?', requestedSchema: { type: 'object', properties: {} } } } }, requestState: 'state-1' } })
      return
    }
    json(response, { jsonrpc: '2.0', id: message.id, result: { content: [{ type: 'text', text: JSON.stringify([params.inputResponses, params.requestState]) }] } })
  })
  const asked: string[] = []
  const result = await client(t, upstream.url).callTool('2026-07-28', 'approve', { n: 1 }, options({ binding: { notify: () => {}, request: async (method) => { asked.push(method); return { action: 'accept', content: { ok: true } } } } }))
  t.same(asked, ['elicitation/create'])
  t.same(JSON.parse((result.content[0] as { text: string }).text), [{ confirm: { action: 'accept', content: { ok: true } } }, 'state-1'])
  t.equal(upstream.seen.length, 2)
  t.not(upstream.seen[0]?.message.id, upstream.seen[1]?.message.id, 'a fresh id for the second round')
  t.same(upstream.seen[1]?.message.params?.arguments, { n: 1 })
})

test('cancelling a call tells the upstream (notifications/cancelled) and rejects with the reason', async (t) => {
  let held: ServerResponse | undefined
  const upstream = await scripted(t, (message, response) => {
    if (message.method === 'notifications/cancelled') {
      response.writeHead(202).end()
      return
    }
    response.writeHead(200, { 'content-type': 'text/event-stream' })
    response.flushHeaders()
    held = response
  })
  const controller = new AbortController()
  const call = client(t, upstream.url).callTool('2026-07-28', 'slow', {}, { signal: controller.signal }).catch((error: unknown) => error)
  await eventually(() => held !== undefined, { what: 'the call to reach the upstream' })
  const reason = new Error('client went away')
  controller.abort(reason)
  t.equal(await call, reason)
  await eventually(() => upstream.seen.some((seen) => seen.message.method === 'notifications/cancelled'), { what: 'the cancellation to reach the upstream' })
  const cancelled = upstream.seen.find((seen) => seen.message.method === 'notifications/cancelled')
  t.equal(cancelled?.message.params?.requestId, upstream.seen[0]?.message.id)
})

test('answers that are no answers: UpstreamMalformed (not repeated), a stream cut short: disconnected; a JSON-RPC error is the upstream answering', async (t) => {
  const cases: Record<string, (message: Message, response: ServerResponse) => void> = {
    'json-garbage': (_message, response) => {
      response.writeHead(200, { 'content-type': 'application/json' })
      response.end('{"jsonrpc":"2.0", nope')
    },
    'no-result': (message, response) => json(response, { jsonrpc: '2.0', id: message.id }),
    'other-id': (_message, response) => json(response, { jsonrpc: '2.0', id: 'not-mine', result: TEXT }),
    html: (_message, response) => {
      response.writeHead(200, { 'content-type': 'text/html' })
      response.end('<html>hello</html>')
    },
    'sse-garbage': (_message, response) => {
      response.writeHead(200, { 'content-type': 'text/event-stream' })
      response.end('data: {not json\n\n')
    },
    'content-no-list': (message, response) => json(response, { jsonrpc: '2.0', id: message.id, result: { content: 'text' } }),
    'sse-cut': (_message, response) => {
      response.writeHead(200, { 'content-type': 'text/event-stream' })
      response.end(': nothing more\n\n')
    },
    'rpc-error': (message, response) => json(response, { jsonrpc: '2.0', id: message.id, error: { code: -32602, message: 'Unknown tool: nope' } })
  }
  const upstream = await scripted(t, (message, response) => cases[String(message.params?.name)]?.(message, response))
  const lean = client(t, upstream.url)
  const failureOf = async (name: string) => classifyFailure(await lean.callTool('2026-07-28', name, {}, options()).then(() => undefined, (error: unknown) => error))
  for (const name of ['json-garbage', 'no-result', 'other-id', 'html', 'sse-garbage', 'content-no-list']) {
    t.same(await failureOf(name), { kind: 'upstream_error', transient: false, mayHaveReached: true, reason: 'malformed_answer' }, name)
  }
  t.match(await failureOf('sse-cut'), { kind: 'unreachable', transient: true, mayHaveReached: true, reason: 'disconnected' })
  const error = await lean.callTool('2026-07-28', 'rpc-error', {}, options()).catch((caught: unknown) => caught)
  t.match(error, { code: -32602, message: 'Unknown tool: nope' })
  t.match(classifyFailure(error), { kind: 'upstream_error', reason: 'error' })
})

test('through the gateway: an upstream (either line) answering with no JSON-RPC answer is MCP_2002, never a 500', async (t) => {
  const [hr, finance] = await Promise.all([startHr(), startFinance()])
  t.teardown(() => Promise.all([hr.close(), finance.close()]))
  // A proxy in front of each: everything passes, but calls of list_employees / list_invoices are answered with garbage.
  const proxies = await Promise.all([hr.url, finance.url].map((target) => scripted(t, (message, response, request) => {
    if (message.method === 'tools/call' && /^list_/.test(String(message.params?.name))) {
      response.writeHead(200, { 'content-type': 'application/json' })
      response.end('{"result": {"content": [')
      return
    }
    const forwarded = httpRequest(target, { method: request.method, headers: request.headers }, (answer) => {
      response.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(response)
    })
    forwarded.on('error', () => response.destroy())
    forwarded.end(request.method === 'POST' ? JSON.stringify(message) : undefined)
  })))
  const gateway = await startGateway(t, [
    { name: 'hr', url: proxies[0]?.url, allow: { 'hr:read': ['*'] }, retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 20 } },
    { name: 'finance', url: proxies[1]?.url, allow: { 'hr:read': ['*'] }, retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 20 } }
  ])
  await eventually(() => gateway.app.gateway?.upstreams.every((upstream) => upstream.status === 'ok'), { what: 'the upstreams connected' })
  t.same(gateway.app.gateway?.upstreams.map((upstream) => upstream.protocol), ['2025-11-25', '2026-07-28'])
  const token = await gateway.token(['hr-read'])
  for (const name of ['hr__list_employees', 'finance__list_invoices']) {
    const before = hr.callRequests + finance.callRequests
    const response = await postMcp(gateway.baseUrl, token, { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: {} } })
    t.equal(response.status, 200, name)
    const text = await response.text()
    const message = JSON.parse(text.trimStart().startsWith('{') ? text : text.split('\n').filter((line) => line.startsWith('data: ')).map((line) => line.slice(6)).pop() ?? '') as { result: { isError?: boolean, _meta?: Record<string, unknown> } }
    t.equal(errorCodeOf(message.result), 'MCP_2002', name)
    t.match(message.result._meta?.['shared-context-mcp/error'], { reason: 'malformed_answer', attempts: 1 }, `${name}: not repeated`)
    t.equal(hr.callRequests + finance.callRequests, before, 'the real upstreams never saw it (the proxy answered)')
  }
  // The same upstreams still answer their other tools.
  const fine = await postMcp(gateway.baseUrl, token, { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'hr__slow_report', arguments: { steps: 1, step_ms: 1 } } })
  t.match(await fine.text(), /\\"steps\\":1/)
})

test('at shutdown the shared 2025-line session is ended with a DELETE carrying its Mcp-Session-Id', async (t) => {
  let sessions = 0
  const upstream = await scripted(t, (message, response, request) => {
    if (request.method === 'GET') {
      response.writeHead(405).end()
      return
    }
    if (request.method === 'DELETE') {
      response.writeHead(200).end()
      return
    }
    // A 2025 server: no server/discover, so the clients fall back to initialize.
    if (message.method === 'server/discover' || request.headers['mcp-protocol-version'] === '2026-07-28') {
      json(response, { jsonrpc: '2.0', id: null, error: { code: -32600, message: 'Bad Request: No valid session ID provided' } }, 400)
      return
    }
    if (message.method === 'initialize') {
      sessions++
      response.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': `session-${sessions}` })
      response.end(JSON.stringify({ jsonrpc: '2.0', id: message.id, result: { protocolVersion: message.params?.protocolVersion, capabilities: { tools: {} }, serverInfo: { name: 'sessions', version: '1' } } }))
      return
    }
    if (message.id === undefined) {
      response.writeHead(202).end()
      return
    }
    const results: Record<string, unknown> = {
      'tools/list': { tools: [{ name: 'echo', inputSchema: { type: 'object' }, annotations: { readOnlyHint: true } }] },
      'tools/call': TEXT
    }
    json(response, { jsonrpc: '2.0', id: message.id, result: results[String(message.method)] ?? {} })
  })
  const gateway = await startGateway(t, [{ name: 'sessions', url: upstream.url, allow: { 'hr:read': ['*'] }, healthCheckSeconds: 0, refreshSeconds: 0 }])
  await eventually(() => gateway.app.gateway?.upstreams[0]?.protocol?.startsWith('2025-') === true, { what: 'the upstream connected on the 2025 line' })
  const answer = await postMcp(gateway.baseUrl, await gateway.token(['hr-read']), { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'sessions__echo', arguments: {} } })
  t.match(await answer.text(), /"text":"ok"/)
  const call = upstream.seen.find((seen) => seen.message.method === 'tools/call')
  const leanSession = call?.headers['mcp-session-id']
  t.match(leanSession, /^session-\d+$/, 'the call went in a session of its own')
  t.equal(upstream.seen.filter((seen) => seen.httpMethod === 'DELETE').length, 0, 'no DELETE while the server runs')
  await gateway.app.close()
  const deleted = upstream.seen.filter((seen) => seen.httpMethod === 'DELETE' && seen.headers['mcp-session-id'] === leanSession)
  t.equal(deleted.length, 1, 'one DELETE of that session once the server closed')
  t.equal(deleted[0]?.headers['mcp-protocol-version'], call?.headers['mcp-protocol-version'], 'on the session\'s protocol line')
})
