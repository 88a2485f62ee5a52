import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { test, type Test } from 'tap'
import { build, callTool, rpc, TEST_TOKEN, toolErrorOf } from './helper.js'
import { assume, fails, namesField, ok } from './tools/helpers.js'

// The bad-input matrix: every malformed request is refused with the right status and catalogue
// code, names the offending field, and leaves the database exactly as it was.

const MAX_CONTENT_BYTES = 2048
const MAX_BODY_BYTES = MAX_CONTENT_BYTES * 6 + 64 * 1024 // schema/config.ts maxBodyBytes

const BAD_KEYS: Array<[string, unknown]> = [
  ['empty', ''],
  ['256 characters', 'k'.repeat(256)],
  ['a NUL', 'a\u0000b'],
  ['a space', 'a b'],
  ['a star', 'a*'],
  ['a non-ASCII letter', 'café'],
  ['LIKE and path tricks', '..%'],
  ['a newline', 'a\nb'],
  ['a backslash', 'a\\b']
]

/** Each tool with otherwise-valid arguments for a key. */
const KEYED_TOOLS: Array<[string, Record<string, unknown>]> = [
  ['write_context', { content: 'x' }],
  ['append_context', { content: 'x' }],
  ['read_context', {}],
  ['delete_context', {}],
  ['context_history', {}],
  ['restore_context', { version: 1 }]
]

interface Snapshot { entries: string[], history: number, lastHistoryId: number | null }

async function snapshot (app: FastifyInstance): Promise<Snapshot> {
  // Every column as JSON text: exact, and safe for values JS dates cannot hold (e.g. -infinity).
  const entries = await app.db.sql<Array<{ row: string }>>`select to_jsonb(e)::text as row from context_entries e order by namespace, key`
  const [counts] = await app.db.sql<Array<{ n: number, last: number | null }>>`select count(*)::int as n, max(id) as last from context_history`
  return { entries: entries.map((entry) => entry.row), history: counts?.n ?? -1, lastHistoryId: counts?.last ?? null }
}

function post (app: FastifyInstance, payload: string | object, headers: Record<string, string | undefined> = {}): Promise<LightMyRequestResponse> {
  const all: Record<string, string> = {
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    authorization: `Bearer ${TEST_TOKEN}`
  }
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) delete all[name]
    else all[name] = value
  }
  return app.inject({ method: 'POST', url: '/mcp', headers: all, payload })
}

const toolCall = (name: string, args: Record<string, unknown>) => ({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: args } })

/** An HTTP-level failure: status and the catalogue body { error: { code, message } }. */
function httpError (t: Test, response: LightMyRequestResponse, status: number, code: string): string {
  t.equal(response.statusCode, status, `HTTP ${status}: ${response.body.slice(0, 200)}`)
  let body: { error?: { code?: unknown, message?: unknown } } = {}
  try {
    body = response.json()
  } catch {
    t.fail(`the body is JSON: ${response.body.slice(0, 200)}`)
  }
  t.equal(body.error?.code, code, `error.code is ${code}`)
  t.type(body.error?.message, 'string', 'error.message is a string')
  t.match(response.headers['content-type'], /^application\/json/)
  return String(body.error?.message)
}

test('bad input is refused and changes nothing', async (t) => {
  const app = await build(t, { MAX_CONTENT_BYTES: String(MAX_CONTENT_BYTES) })
  await ok(t, app, 'write_context', { key: 'seed/doc', content: 'original', tags: ['t'] })
  await ok(t, app, 'write_context', { key: 'seed/doc', content: 'original v2' })
  await ok(t, app, 'append_context', { key: 'seed/log', content: 'line 1' })
  await ok(t, app, 'write_context', { key: 'seed/gone', content: 'deleted' })
  await ok(t, app, 'delete_context', { key: 'seed/gone' })
  const before = await snapshot(app)
  t.ok(before.entries.length >= 2 && before.history === 5, 'seeded')

  t.test('keys outside the allowed set are REQ_1101 naming key, for every tool', async (t) => {
    for (const [tool, rest] of KEYED_TOOLS) {
      for (const [label, key] of BAD_KEYS) {
        const error = await fails(t, app, tool, { ...rest, key }, 'REQ_1101')
        t.match(error.message, namesField('key'), `${tool}, key with ${label}: the message names key`)
        t.match(error.message, tool, `${tool}, key with ${label}: the message names the tool`)
      }
    }
  })

  t.test('a 255-character key is valid (boundary), so reading it is merely CTX_2001', async (t) => {
    await fails(t, app, 'read_context', { key: 'k'.repeat(255) }, 'CTX_2001')
  })

  t.test('content with NUL is REQ_1101 naming content', async (t) => {
    for (const tool of ['write_context', 'append_context']) {
      for (const content of ['a\u0000b', '\u0000']) {
        const error = await fails(t, app, tool, { key: 'seed/doc', content }, 'REQ_1101')
        t.match(error.message, namesField('content'))
      }
    }
  })

  t.test('content over MAX_CONTENT_BYTES is CTX_2003 naming content', async (t) => {
    for (const tool of ['write_context', 'append_context']) {
      for (const content of ['x'.repeat(MAX_CONTENT_BYTES + 1), 'é'.repeat(MAX_CONTENT_BYTES / 2 + 1)]) {
        const error = await fails(t, app, tool, { key: 'seed/doc', content }, 'CTX_2003')
        t.match(error.message, /content/)
        t.match(error.message, String(MAX_CONTENT_BYTES), 'states the limit')
        t.equal(error.max_bytes, MAX_CONTENT_BYTES)
      }
    }
  })

  t.test('wrong types are REQ_1101 naming the field', async (t) => {
    const cases: Array<[string, Record<string, unknown>, string]> = [
      ['write_context', { key: 5, content: 'x' }, 'key'],
      ['write_context', { key: ['seed/doc'], content: 'x' }, 'key'],
      ['write_context', { key: null, content: 'x' }, 'key'],
      ['write_context', { key: 'seed/doc', content: {} }, 'content'],
      ['write_context', { key: 'seed/doc', content: 42 }, 'content'],
      ['append_context', { key: 'seed/log', content: ['x'] }, 'content'],
      ['write_context', { key: 'seed/doc', content: 'x', expected_version: '1' }, 'expected_version'],
      ['write_context', { key: 'seed/doc', content: 'x', expected_version: -1 }, 'expected_version'],
      ['write_context', { key: 'seed/doc', content: 'x', expected_version: 1.5 }, 'expected_version'],
      ['delete_context', { key: 'seed/doc', expected_version: '2' }, 'expected_version'],
      ['write_context', { key: 'seed/doc', content: 'x', tags: 'x' }, 'tags'],
      ['write_context', { key: 'seed/doc', content: 'x', tags: ['a b'] }, 'tags'],
      ['write_context', { key: 'seed/doc', content: 'x', tags: [1] }, 'tags'],
      ['write_context', { key: 'seed/doc', content: 'x', tags: Array.from({ length: 21 }, (_, i) => `t${i}`) }, 'tags'],
      ['write_context', { key: 'seed/doc', content: 'x', ttl_seconds: 0 }, 'ttl_seconds'],
      ['write_context', { key: 'seed/doc', content: 'x', ttl_seconds: '60' }, 'ttl_seconds'],
      ['write_context', { key: 'seed/doc', content: 'x', ttl_seconds: 31536001 }, 'ttl_seconds'],
      ['list_context', { limit: 0 }, 'limit'],
      ['list_context', { limit: 'ten' }, 'limit'],
      ['list_context', { limit: 101 }, 'limit'],
      ['list_context', { prefix: 5 }, 'prefix'],
      ['list_context', { tag: '' }, 'tag'],
      ['list_context', { cursor: '' }, 'cursor'],
      ['context_history', { key: 'seed/doc', limit: 0 }, 'limit'],
      ['context_history', { key: 'seed/doc', limit: 'ten' }, 'limit'],
      ['read_context', { key: 'seed/doc', version: '1' }, 'version'],
      ['restore_context', { key: 'seed/doc', version: 0 }, 'version'],
      ['append_context', { key: 'seed/log', content: 'x', separator: 1 }, 'separator']
    ]
    for (const [tool, args, field] of cases) {
      const error = await fails(t, app, tool, args, 'REQ_1101')
      t.match(error.message, namesField(field), `${tool} ${JSON.stringify(args).slice(0, 60)}: names ${field}`)
      t.match(error.message, /Nothing was changed/, 'says nothing was changed')
    }
  })

  t.test('integers beyond the database range are REQ_1101 naming the field, not a server error', async (t) => {
    // Regression: versions without a maximum let 1e20 through to PostgreSQL's bigint (HTTP 500 SRV_9001).
    const cases: Array<[string, Record<string, unknown>, string]> = [
      ['read_context', { key: 'seed/doc', version: 1e20 }, 'version'],
      ['restore_context', { key: 'seed/doc', version: 1e20 }, 'version'],
      ['write_context', { key: 'seed/doc', content: 'x', expected_version: 1e20 }, 'expected_version'],
      ['delete_context', { key: 'seed/doc', expected_version: 1e20 }, 'expected_version']
    ]
    for (const [tool, args, field] of cases) {
      const response = await rpc(app, 'tools/call', { name: tool, arguments: args })
      t.equal(response.statusCode, 200, `${tool} ${field}=1e20: not an HTTP error`)
      const error = toolErrorOf(response.json().result)
      t.equal(error?.code, 'REQ_1101', `${tool} ${field}=1e20: REQ_1101`)
      t.match(error?.message ?? '', namesField(field), `${tool}: names ${field}`)
    }
  })

  t.test('missing required fields are REQ_1101 naming the field', async (t) => {
    const cases: Array<[string, Record<string, unknown>, string]> = [
      ['write_context', { content: 'x' }, 'key'],
      ['write_context', { key: 'seed/doc' }, 'content'],
      ['write_context', {}, 'key'],
      ['append_context', { key: 'seed/log' }, 'content'],
      ['append_context', { content: 'x' }, 'key'],
      ['read_context', {}, 'key'],
      ['delete_context', {}, 'key'],
      ['context_history', {}, 'key'],
      ['restore_context', { key: 'seed/doc' }, 'version'],
      ['restore_context', { version: 1 }, 'key']
    ]
    for (const [tool, args, field] of cases) {
      const error = await fails(t, app, tool, args, 'REQ_1101')
      t.match(error.message, `${field} is required`, `${tool} ${JSON.stringify(args)}: ${field} is required`)
    }
    // No `arguments` at all is the same as {}.
    const response = await rpc(app, 'tools/call', { name: 'write_context' })
    const result = response.json().result
    t.equal(result?.isError, true)
    t.equal(toolErrorOf(result)?.code, 'REQ_1101')
    t.match(toolErrorOf(result)?.message, 'key is required')
  })

  t.test('unknown extra fields are REQ_1101 naming the field', async (t) => {
    const cases: Array<[string, Record<string, unknown>]> = [
      ['write_context', { key: 'seed/doc', content: 'x', extra: true }],
      ['write_context', { key: 'seed/doc', content: 'x', expectedVersion: 2 }],
      ['append_context', { key: 'seed/log', content: 'x', extra: 1 }],
      ['read_context', { key: 'seed/doc', extra: 'x' }],
      ['list_context', { extra: null }],
      ['delete_context', { key: 'seed/doc', extra: 1 }],
      ['context_history', { key: 'seed/doc', extra: 1 }],
      ['restore_context', { key: 'seed/doc', version: 1, extra: 1 }]
    ]
    for (const [tool, args] of cases) {
      const field = Object.keys(args).find((name) => ['extra', 'expectedVersion'].includes(name)) ?? ''
      const error = await fails(t, app, tool, args, 'REQ_1101')
      t.match(error.message, namesField(field), `${tool}: names ${field}`)
    }
  })

  t.test('an unknown tool is a JSON-RPC invalid-params error carrying REQ_1101', async (t) => {
    const response = await rpc(app, 'tools/call', { name: 'drop_everything', arguments: { key: 'seed/doc' } })
    t.equal(response.statusCode, 200, 'a protocol error travels in a 200 JSON-RPC response')
    const body = response.json()
    t.equal(body.result, undefined, 'no result')
    t.equal(body.error?.code, -32602)
    t.equal(body.error?.data?.code, 'REQ_1101')
    t.match(body.error?.message, 'drop_everything', 'names the tool')
    t.match(body.error?.message, 'write_context', 'lists the tools that exist')
  })

  t.test('tools/call params of the wrong shape are JSON-RPC invalid-params errors', async (t) => {
    for (const [params, field] of [
      [{ name: 'write_context', arguments: [] }, 'arguments'],
      [{ name: 'write_context', arguments: 'key=seed/doc' }, 'arguments'],
      [{ name: 5, arguments: {} }, 'name'],
      [{ arguments: { key: 'seed/doc', content: 'x' } }, 'name']
    ] as const) {
      const response = await rpc(app, 'tools/call', params)
      t.equal(response.statusCode, 200)
      const body = response.json()
      t.equal(body.error?.code, -32602, `${JSON.stringify(params)}: invalid params`)
      t.match(body.error?.message, field, `names ${field}`)
    }
  })

  t.test('malformed JSON is HTTP 400 REQ_1101', async (t) => {
    for (const payload of ['{"jsonrpc": ', '{jsonrpc: "2.0"}', '{"jsonrpc":"2.0","id":1,"method":"tools/list"}}']) {
      const message = httpError(t, await post(app, payload), 400, 'REQ_1101')
      t.match(message, /JSON/, 'says the body is not JSON')
    }
  })

  t.test('a body with a __proto__ or constructor key, spelt plainly or escaped, is HTTP 400 REQ_1101', async (t) => {
    const write = (args: string) => `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_context","arguments":${args}}}`
    const poisoned = [
      write('{"key":"proto/new","content":"x","__proto__":{"polluted":true}}'),
      write('{"key":"proto/new","content":"x","\\u005f_proto__":{"polluted":true}}'),
      write('{"key":"proto/new","content":"x","constructor":{"prototype":{"polluted":true}}}'),
      write('{"key":"proto/new","content":"x","\\u0063onstructor":{"prototype":{"polluted":true}}}')
    ]
    for (const payload of poisoned) httpError(t, await post(app, payload), 400, 'REQ_1101')
    t.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype was touched')
    await fails(t, app, 'read_context', { key: 'proto/new' }, 'CTX_2001')
    // The words inside a value, and escapes elsewhere, are fine: only keys can poison.
    const call = (name: string, args: string) => `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"${name}","arguments":${args}}}`
    const escaped = await post(app, call('read_context', '{"key":"seed/do\\u0063"}'))
    t.equal(escaped.json().result?.structuredContent?.content, 'original v2', 'an escaped key is decoded and read')
    const words = await post(app, call('search_context', '{"query":"constructor __proto__"}'))
    t.equal(words.statusCode, 200)
    t.not(words.json().result?.isError, true, 'the words in a value are only words')
  })

  t.test('a wrong Content-Type is HTTP 415 REQ_1101', async (t) => {
    const message = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_context","arguments":{"key":"ct/new","content":"x"}}}'
    t.match(httpError(t, await post(app, message, { 'content-type': 'application/xml' }), 415, 'REQ_1101'), /Content-Type/)
    t.match(httpError(t, await post(app, message, { 'content-type': undefined }), 415, 'REQ_1101'), /Content-Type/)
    // Regression: Fastify's built-in text/plain parser let such bodies reach the SDK (415 without a catalogue code).
    t.match(httpError(t, await post(app, message, { 'content-type': 'text/plain' }), 415, 'REQ_1101'), /Content-Type/)
    await fails(t, app, 'read_context', { key: 'ct/new' }, 'CTX_2001')
  })

  t.test('a body over the limit is HTTP 413 REQ_1102; the escaped worst case still fits', async (t) => {
    const huge = JSON.stringify(toolCall('write_context', { key: 'big/new', content: 'x'.repeat(MAX_BODY_BYTES) }))
    assume(Buffer.byteLength(huge) > MAX_BODY_BYTES, 'over the body limit')
    const message = httpError(t, await post(app, huge), 413, 'REQ_1102')
    t.match(message, 'MAX_CONTENT_BYTES', 'says what limits the size')
    // MAX_CONTENT_BYTES of control characters, each JSON-escaped to six bytes, is within the body
    // limit: the request reaches the tool (which refuses it only for the stale expected_version).
    const escaped = JSON.stringify(toolCall('write_context', { key: 'seed/doc', content: '\u0001'.repeat(MAX_CONTENT_BYTES), expected_version: 99 }))
    assume(Buffer.byteLength(escaped) > MAX_CONTENT_BYTES * 6, 'the escaped worst case')
    const response = await post(app, escaped)
    t.equal(response.statusCode, 200)
    t.equal(toolErrorOf(response.json().result)?.code, 'CTX_2002')
  })

  t.test('an empty body is HTTP 400 REQ_1101', async (t) => {
    t.match(httpError(t, await post(app, ''), 400, 'REQ_1101'), /empty/)
  })

  t.test('a JSON-RPC batch is HTTP 400 and nothing in it runs', async (t) => {
    const response = await post(app, [toolCall('write_context', { key: 'batch/new', content: 'x' }), { jsonrpc: '2.0', id: 2, method: 'tools/list' }])
    t.equal(response.statusCode, 400)
    const body = response.json()
    t.equal(body.error?.code, -32600, 'JSON-RPC invalid request')
    t.match(body.error?.message, /batch/)
    await fails(t, app, 'read_context', { key: 'batch/new' }, 'CTX_2001')
  })

  t.test('a JSON body that is not a JSON-RPC message is HTTP 400', async (t) => {
    for (const payload of ['42', '"tools/list"', 'null', '{}']) {
      const response = await post(app, payload)
      t.equal(response.statusCode, 400, `${payload}: 400`)
      t.ok(response.json().error !== undefined, `${payload}: an error body`)
    }
  })

  t.test('missing Authorization is 401 AUTH_1001 with a Bearer challenge', async (t) => {
    const write = toolCall('write_context', { key: 'auth/new', content: 'x' })
    const response = await post(app, write, { authorization: undefined })
    const message = httpError(t, response, 401, 'AUTH_1001')
    t.match(message, 'Authorization')
    t.match(response.headers['www-authenticate'], /^Bearer /, 'www-authenticate starts with Bearer')
    for (const authorization of ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer ', TEST_TOKEN]) {
      const refused = await post(app, write, { authorization })
      httpError(t, refused, 401, 'AUTH_1001')
      t.match(refused.headers['www-authenticate'], /^Bearer /)
    }
    await fails(t, app, 'read_context', { key: 'auth/new' }, 'CTX_2001')
  })

  t.test('a wrong token is 401 AUTH_1002', async (t) => {
    const write = toolCall('write_context', { key: 'auth/new', content: 'x' })
    for (const token of ['wr0ng-t0ken', `${TEST_TOKEN}x`, TEST_TOKEN.slice(0, -1), TEST_TOKEN.toUpperCase()]) {
      const response = await post(app, write, { authorization: `Bearer ${token}` })
      httpError(t, response, 401, 'AUTH_1002')
      t.match(response.headers['www-authenticate'], /^Bearer .*invalid_token/)
      t.notMatch(response.body, token, 'the token is not echoed')
    }
    await fails(t, app, 'read_context', { key: 'auth/new' }, 'CTX_2001')
  })

  t.test('the database is unchanged by the whole matrix', async (t) => {
    const after = await snapshot(app)
    t.strictSame(after, before, 'context_entries rows and context_history count are identical')
    const read = await callTool(app, 'read_context', { key: 'seed/doc' })
    t.equal(read.structuredContent.content, 'original v2')
    t.equal(read.structuredContent.version, 2)
  })
})
