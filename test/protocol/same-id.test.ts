import type { FastifyInstance } from 'fastify'
import { test } from 'tap'
import { build, TEST_TOKEN } from '../helper.js'
import { addToken } from '../tools/helpers.js'

// Clients number their requests from 1, so concurrent requests from different principals share
// JSON-RPC ids all the time. On the 2025 path one long-lived server answers everyone through
// plugins/mcp-multiplex-transport.ts, which remaps ids; on the 2026-07-28 path the SDK builds a
// server per request. Either way each answer must be its own principal's.

const ID = 7
const TOTAL = 2000
const BATCH = 100

interface Principal {
  token: string
  namespace: string
  tools: string[]
}

const MODERN_META = {
  'io.modelcontextprotocol/protocolVersion': '2026-07-28',
  'io.modelcontextprotocol/clientInfo': { name: 'same-id', version: '1' },
  'io.modelcontextprotocol/clientCapabilities': {}
}

function post (app: FastifyInstance, token: string, modern: boolean, method: string, params: Record<string, unknown>) {
  const toolName = typeof params.name === 'string' ? params.name : undefined
  return app.inject({
    method: 'POST',
    url: '/mcp',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${token}`,
      ...(modern && { 'mcp-protocol-version': '2026-07-28', 'mcp-method': method, ...(toolName !== undefined && { 'mcp-name': toolName }) })
    },
    payload: { jsonrpc: '2.0', id: ID, method, params: modern ? { ...params, _meta: MODERN_META } : params }
  })
}

test(`${TOTAL} concurrent requests with the same id from principals with different scopes each get their own answer, on both protocol lines`, async (t) => {
  const app = await build(t, { RATE_LIMITS: 'off' })
  const principals: Principal[] = [
    { token: TEST_TOKEN, namespace: 'default', tools: ['read_context', 'write_context', 'append_context', 'list_context', 'search_context', 'delete_context', 'context_history', 'restore_context', 'changes_since'] },
    { token: await addToken(app, 'same-id-reader', 'team-a', ['context:read']), namespace: 'team-a', tools: ['read_context', 'list_context', 'search_context', 'context_history', 'changes_since'] },
    { token: await addToken(app, 'same-id-writer', 'team-b', ['context:read', 'context:write']), namespace: 'team-b', tools: ['read_context', 'write_context', 'append_context', 'list_context', 'search_context', 'context_history', 'restore_context', 'changes_since'] }
  ]
  for (const { namespace } of principals) {
    await app.db.store.write(namespace, 'whoami', `namespace ${namespace}`, {}, { principal: 'test', client: null })
  }

  let wrong = 0
  let firstWrong = ''
  const served = { legacy: 0, modern: 0 }
  for (let start = 0; start < TOTAL; start += BATCH) {
    await Promise.all(Array.from({ length: BATCH }, async (_, offset) => {
      const i = start + offset
      const modern = i % 2 === 1
      const principal = principals[Math.floor(i / 2) % principals.length]!
      const listing = Math.floor(i / 6) % 2 === 0
      const response = listing
        ? await post(app, principal.token, modern, 'tools/list', {})
        : await post(app, principal.token, modern, 'tools/call', { name: 'read_context', arguments: { key: 'whoami' } })
      const body = response.json() as { id?: unknown, result?: { tools?: Array<{ name: string }>, structuredContent?: { content?: string }, _meta?: Record<string, unknown> } }
      const answer = listing ? body.result?.tools?.map((tool) => tool.name).join(',') : body.result?.structuredContent?.content
      const expected = listing ? principal.tools.join(',') : `namespace ${principal.namespace}`
      if (response.statusCode !== 200 || body.id !== ID || answer !== expected) {
        wrong++
        firstWrong ||= `request ${i} (${modern ? '2026-07-28' : '2025'}, ${principal.namespace}, ${listing ? 'tools/list' : 'tools/call'}): HTTP ${response.statusCode} ${response.body.slice(0, 200)}`
      }
      // Only the 2026-07-28 path (the SDK's per-request server) puts the server's info in every result's _meta.
      if (body.result?._meta?.['io.modelcontextprotocol/serverInfo'] === undefined) served.legacy++
      else served.modern++
    }))
  }
  t.equal(wrong, 0, `every answer is its own principal's${firstWrong === '' ? '' : `; first wrong: ${firstWrong}`}`)
  t.strictSame(served, { legacy: TOTAL / 2, modern: TOTAL / 2 }, 'half were served on each protocol line')
})
