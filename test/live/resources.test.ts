import { Client as ClientV2, ResourceNotFoundError, StreamableHTTPClientTransport as TransportV2 } from '@modelcontextprotocol/client'
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport as TransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { test, type Test } from 'tap'
import { parseResourceUri, resourceUri, RESOURCE_URI_TEMPLATE } from '../../live/resources.js'
import { build, rpc, TEST_TOKEN } from '../helper.js'
import { addToken } from '../tools/helpers.js'

// Entries as resources, through the listening server, for SDK v1 (2025-11-25) and SDK v2 on both
// protocol lines. Every response body is captured, so that wire details the clients hide (the
// error code, the 2026-07-28 cache fields) are checked as sent.

interface Listed { uri: string, name: string, mimeType?: string, size?: number, _meta?: Record<string, unknown> }
interface ReadContent { uri: string, mimeType?: string, text?: string, _meta?: Record<string, unknown> }

interface Session {
  protocolVersion: string | undefined
  capabilities: () => Record<string, unknown> | undefined
  listResources: (cursor?: string) => Promise<{ resources: Listed[], nextCursor?: string }>
  listTemplates: () => Promise<Array<{ uriTemplate: string, mimeType?: string }>>
  read: (uri: string) => Promise<ReadContent[]>
  /** The JSON bodies of the responses so far, newest last. */
  bodies: Array<Record<string, unknown>>
}

type Connect = (t: Test, baseUrl: string, token: string) => Promise<Session>

/** A fetch that keeps a copy of each JSON response body. */
function recordingFetch (bodies: Array<Record<string, unknown>>): typeof fetch {
  return async (input, init) => {
    const response = await fetch(input, init)
    if ((response.headers.get('content-type') ?? '').includes('application/json')) {
      bodies.push(await response.clone().json() as Record<string, unknown>)
    }
    return response
  }
}

const clients: Array<[string, string, Connect]> = [
  ['SDK v1', '2025-11-25', async (t, baseUrl, token) => {
    const bodies: Array<Record<string, unknown>> = []
    const client = new ClientV1({ name: 'resources-v1', version: '1.0.0' })
    const transport = new TransportV1(new URL('/mcp', baseUrl), { requestInit: { headers: { authorization: `Bearer ${token}` } }, fetch: recordingFetch(bodies) })
    await client.connect(transport)
    t.teardown(() => client.close())
    return {
      protocolVersion: transport.protocolVersion,
      capabilities: () => client.getServerCapabilities() as Record<string, unknown> | undefined,
      listResources: async (cursor) => await client.listResources(cursor === undefined ? {} : { cursor }) as { resources: Listed[], nextCursor?: string },
      listTemplates: async () => (await client.listResourceTemplates()).resourceTemplates,
      read: async (uri) => (await client.readResource({ uri })).contents as ReadContent[],
      bodies
    }
  }],
  ...([['SDK v2', '2025-11-25', false], ['SDK v2 auto', '2026-07-28', true]] as const).map(([label, version, negotiate]): [string, string, Connect] =>
    [label, version, async (t, baseUrl, token) => {
      const bodies: Array<Record<string, unknown>> = []
      const client = new ClientV2({ name: 'resources-v2', version: '1.0.0' }, negotiate ? { versionNegotiation: { mode: 'auto' } } : {})
      await client.connect(new TransportV2(new URL('/mcp', baseUrl), { requestInit: { headers: { authorization: `Bearer ${token}` } }, fetch: recordingFetch(bodies) }))
      t.teardown(() => client.close())
      return {
        protocolVersion: client.getNegotiatedProtocolVersion(),
        capabilities: () => client.getServerCapabilities() as Record<string, unknown> | undefined,
        listResources: async (cursor) => await client.listResources(cursor === undefined ? {} : { cursor }) as { resources: Listed[], nextCursor?: string },
        listTemplates: async () => (await client.listResourceTemplates()).resourceTemplates,
        read: async (uri) => (await client.readResource({ uri })).contents as ReadContent[],
        bodies
      }
    }])
]

const ENTRIES = 230 // three pages of resources/list (100 each)

test('entries as resources on both protocol lines: template, pages exactly once, read with version, not found, namespaces, scopes', async (t) => {
  const app = await build(t)
  const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' })
  const actor = { principal: 'static-token', client: 'seed' }
  const keys = Array.from({ length: ENTRIES }, (_, index) => `res/${String(index).padStart(3, '0')}`)
  for (let start = 0; start < keys.length; start += 25) {
    await Promise.all(keys.slice(start, start + 25).map((key) => app.db.store.write('default', key, `text of ${key}`, { tags: ['seed'] }, actor)))
  }
  await app.db.store.write('default', 'res/000', 'second version', {}, actor)
  await app.db.store.write('default', 'gone', 'soon deleted', {}, actor)
  await app.db.store.delete('default', 'gone', undefined, actor)
  const otherNamespace = 'team:other/x'
  await app.db.store.write(otherNamespace, 'secret', 'not for default readers', {}, actor)
  const otherReader = await addToken(app, 'other-reader', otherNamespace, ['context:read'])
  const writerOnly = await addToken(app, 'writer-only', 'default', ['context:write'])

  for (const [label, protocolVersion, connect] of clients) {
    await t.test(label, async (t) => {
      const session = await connect(t, baseUrl, TEST_TOKEN)
      t.equal(session.protocolVersion, protocolVersion, `negotiates ${protocolVersion}`)
      t.match(session.capabilities()?.resources, { subscribe: true, listChanged: true }, 'advertises resources, with subscriptions')
      const modern = protocolVersion === '2026-07-28'

      t.match(await session.listTemplates(), [{ uriTemplate: RESOURCE_URI_TEMPLATE, mimeType: 'text/plain' }], 'one template, context://{namespace}/{+key}')
      t.match(session.bodies.at(-1)?.result, modern ? { ttlMs: 3_600_000, cacheScope: 'private' } : {}, 'template list cache hints')
      if (!modern) t.notOk('ttlMs' in (session.bodies.at(-1)?.result as object), 'no cache fields on the 2025 line')

      // SDK v2 walks the pages itself when called without a cursor; v1 returns one page per call.
      const seen: string[] = []
      const bodiesBefore = session.bodies.length
      let cursor: string | undefined
      let calls = 0
      do {
        const page = await session.listResources(cursor)
        calls++
        seen.push(...page.resources.map((resource) => resource.uri))
        cursor = page.nextCursor
      } while (cursor !== undefined && calls < 10)
      const pages = session.bodies.slice(bodiesBefore).map((body) => body.result as Record<string, unknown> & { resources: Listed[] })
      t.strictSame(pages.map((page) => page.resources.length), [100, 100, 30], 'three pages of at most 100')
      if (modern) t.match(pages[0], { ttlMs: 5000, cacheScope: 'private' }, 'resources/list carries 2026-07-28 cache hints')
      else t.notOk('ttlMs' in (pages[0] ?? {}) || 'cacheScope' in (pages[0] ?? {}), 'no cache fields on the 2025 line')
      t.match(pages[0]?.resources[0], { uri: 'context://default/res/000', name: 'res/000', mimeType: 'text/plain', size: 'second version'.length, _meta: { version: 2, updated_by: 'static-token' } })
      t.strictSame(seen, keys.map((key) => `context://default/${key}`), 'every entry exactly once, in key order; deleted ones and other namespaces absent')

      const [content] = await session.read('context://default/res/000')
      t.match(content, { uri: 'context://default/res/000', mimeType: 'text/plain', text: 'second version', _meta: { version: 2, updated_by: 'static-token' } })
      t.ok(typeof content?._meta?.updated_at === 'string' && !Number.isNaN(Date.parse(content._meta.updated_at as string)), 'updated_at in _meta')
      if (modern) t.match(session.bodies.at(-1)?.result, { ttlMs: 0, cacheScope: 'private' }, 'resources/read cache hints')
      t.match(await session.read('context://default/res%2F001'), [{ text: 'text of res/001' }], 'a percent-encoded key (simple expansion) reads the same entry')

      const notFoundCode = modern ? -32602 : -32002
      for (const uri of ['context://default/res/missing', 'context://default/gone', `context://${encodeURIComponent(otherNamespace)}/secret`, 'context://default/bad key', 'https://example.com/x']) {
        const error = await session.read(uri).then(() => null, (caught: unknown) => caught)
        t.ok(error !== null, `${uri}: the read fails`)
        if (label !== 'SDK v1') t.ok(error instanceof ResourceNotFoundError, `${uri}: the v2 client recognises resource-not-found`)
        const wire = session.bodies.at(-1)?.error as { data?: Record<string, unknown> } | undefined
        t.match(wire, { code: notFoundCode, data: { uri } }, `${uri}: ${notFoundCode} with data.uri on the wire`)
        if (notFoundCode === -32002) t.equal(wire?.data?.code, 'CTX_2001', `${uri}: and the catalogue code in data (2025)`)
        else t.match(wire, { data: { uri }, message: /^CTX_2001: / }, `${uri}: data holds the uri alone (SEP-2164), the catalogue code leads the message`)
      }
      const badCursor = await session.listResources('garbled').then(() => null, (caught: unknown) => caught)
      t.match(badCursor, { code: -32602, message: /REQ_1101/ }, 'a garbled cursor is invalid params')

      await t.test('another namespace sees only its own entries', async (t) => {
        const other = await connect(t, baseUrl, otherReader)
        const listed = await other.listResources()
        t.strictSame(listed.resources.map((resource) => resource.uri), ['context://team%3Aother%2Fx/secret'])
        t.match(await other.read('context://team%3Aother%2Fx/secret'), [{ text: 'not for default readers' }])
        const error = await other.read('context://default/res/001').then(() => null, (caught: unknown) => caught)
        t.ok(error !== null, 'reading the default namespace fails')
        t.match(other.bodies.at(-1)?.error, { code: notFoundCode, data: { uri: 'context://default/res/001' } }, 'the same answer as an unknown key')
      })

      await t.test('without context:read nothing is listed and a read is refused', async (t) => {
        const writer = await connect(t, baseUrl, writerOnly)
        t.strictSame((await writer.listResources()).resources, [])
        t.strictSame(await writer.listTemplates(), [])
        const error = await writer.read('context://default/res/001').then(() => null, (caught: unknown) => caught)
        t.match(error, { message: /AUTH_1004/ }, 'AUTH_1004')
        t.match(writer.bodies.at(-1)?.error, { data: { code: 'AUTH_1004', required_scope: 'context:read' } })
      })
    })
  }
})

test('a 2025-era resources/read with bad params is invalid params; unknown resources are -32002', async (t) => {
  const app = await build(t)
  for (const params of [{}, { uri: 5 }, { uri: 'x'.repeat(3000) }]) {
    const response = await rpc(app, 'resources/read', params)
    t.equal(response.statusCode, 200)
    t.equal(response.json().error?.code, -32602, JSON.stringify(params).slice(0, 40))
  }
  const missing = await rpc(app, 'resources/read', { uri: 'context://default/nothing' })
  t.match(missing.json(), { error: { code: -32002, message: /Resource not found: context:\/\/default\/nothing/, data: { uri: 'context://default/nothing', code: 'CTX_2001' } } })
})

test('resource URIs: namespaces percent-encoded, keys as they are, anything else names no entry', async (t) => {
  t.equal(resourceUri('team:a/b', 'x/y:z'), 'context://team%3Aa%2Fb/x/y:z')
  t.strictSame(parseResourceUri('context://team%3Aa%2Fb/x/y:z'), { namespace: 'team:a/b', key: 'x/y:z' })
  t.strictSame(parseResourceUri('context://default/a%2Fb'), { namespace: 'default', key: 'a/b' }, 'a key filled in by simple expansion')
  for (const uri of ['context://', 'context:///key', 'context://default', 'context://default/', 'context://default/a b', 'context://de fault/a',
    'context://default/%E0%A4%A', 'context://default/' + 'k'.repeat(256), 'Context://default/a', 'file://default/a']) {
    t.equal(parseResourceUri(uri), null, uri.slice(0, 40))
  }
})
