import { test } from 'tap'
import { encodePosition } from '../../db/change-feed.js'
import { generateToken, hashToken } from '../../plugins/auth.js'
import { createSessions } from '../../live/sessions.js'
import { singleNamespacePrincipal } from '../../schema/principal.js'
import { ON_PGLITE } from '../db-helper.js'
import { eventually } from '../eventually.js'
import { callTool, TEST_TOKEN } from '../helper.js'
import { initializeSession, instances, openRawStream, sessionRpc, uriOf, v2Client, type Instance } from './live-helper.js'

test('sessions are bounded: per principal (the longest idle is replaced), in total (then none is given), and by idle time', async (t) => {
  const { app, url } = await one(t, {
    MCP_SESSIONS_PER_PRINCIPAL: '2',
    MCP_SESSIONS_MAX: '3',
    RATE_LIMITS: 'admin=20000/h 1200/m; writer=10000/h 600/m; reader=1000/h 3/m; default=1000/h 60/m; ip=300/m'
  })
  const first = await initializeSession(url)
  const second = await initializeSession(url)
  t.ok(first !== null && second !== null && first !== second, 'initialize answers with a new Mcp-Session-Id')
  const third = await initializeSession(url)
  t.ok(third !== null, 'a third for the same principal replaces its longest-idle one')
  t.equal(app.live.counts().sessions, 2)

  const replaced = await sessionRpc(url, first ?? '', 'resources/subscribe', { uri: uriOf('x') })
  t.equal(replaced.status, 404, 'the replaced session is unknown: 404, so the client initializes again')
  const stream = await openRawStream(url, first ?? '')
  t.equal(stream.status, 404, 'GET with it: 404 too')
  await stream.ended
  t.equal((await sessionRpc(url, second ?? '', 'ping', {})).status, 200, 'the others still work')

  const other = generateToken()
  await app.db.tokens.insertApiToken({ name: 'other', hash: hashToken(other).toString('hex'), namespace: 'team-b', scopes: ['context:read', 'context:write'] })
  t.type(await initializeSession(url, other), 'string', 'another principal gets the last place')
  t.equal(await initializeSession(url, other), null, 'past MCP_SESSIONS_MAX initialize works, without a session')
  t.equal(app.live.counts().sessions, 3)

  const foreign = await sessionRpc(url, 'elsewhere.abc', 'tools/call', { name: 'read_context', arguments: { key: 'nothing' } })
  t.equal(foreign.status, 200, "another instance's session id: tool calls are served without it")
  t.equal((await sessionRpc(url, 'elsewhere.abc', 'resources/subscribe', { uri: uriOf('x') })).status, 404, 'but subscribing needs a session of this instance')
  const ours = `${(second ?? '').split('.')[0]}.forgotten`
  t.equal((await sessionRpc(url, ours, 'tools/list', {})).status, 404, 'an id of this instance that it does not know: 404')
  t.equal((await sessionRpc(url, second ?? '', 'ping', {}, other)).status, 404, "another principal's session: 404")

  const deleted = await app.inject({ method: 'DELETE', url: '/mcp', headers: { authorization: `Bearer ${TEST_TOKEN}`, 'mcp-session-id': second ?? '' } })
  t.equal(deleted.statusCode, 204, 'DELETE ends a session')
  t.equal((await sessionRpc(url, second ?? '', 'ping', {})).status, 404, 'and it is gone')

  // Streams and subscriptions are requests of their principal: they count against its rate limits.
  const reader = generateToken()
  await app.db.tokens.insertApiToken({ name: 'reader', hash: hashToken(reader).toString('hex'), namespace: 'default', scopes: ['context:read'] })
  const readerSession = await initializeSession(url, reader)
  if (readerSession === null) throw new Error('no session for the reader')
  t.same((await sessionRpc(url, readerSession, 'resources/subscribe', { uri: uriOf('x') }, reader)).body.result, {}, 'subscribed')
  const allowed = await openRawStream(url, readerSession, { token: reader })
  t.equal(allowed.status, 200, 'the third request of the minute: a stream')
  const limited = await openRawStream(url, readerSession, { token: reader })
  t.equal(limited.status, 429, 'the fourth: rate limited')
  allowed.abort()
  await Promise.all([allowed.ended, limited.ended])

  const noSession = await app.inject({ method: 'GET', url: '/mcp', headers: { authorization: `Bearer ${TEST_TOKEN}` } })
  t.equal(noSession.statusCode, 405, 'GET without a session: 405, as for a stateless server')
  const subscribeWithout = await callSubscribeWithoutSession(app)
  t.match(subscribeWithout, { error: { code: -32600, message: /needs a session/ } }, 'subscribe without a session is refused in-band')

  // Idle time, on the registry itself (MCP_SESSION_IDLE_SECONDS is at least 10 s).
  const registry = createSessions({ maxTotal: 10, maxPerPrincipal: 10, idleMs: 1000 })
  const principal = singleNamespacePrincipal('p', 'default', ['context:read'])
  const kept = registry.create(principal, 'token')
  const dropped = registry.create(principal, 'token')
  if (kept === null || dropped === null) throw new Error('no session')
  kept.lastActive = Date.now() + 5000
  registry.sweep(Date.now() + 2000)
  t.equal(registry.get(dropped.id), undefined, 'a session idle past idleMs is forgotten')
  t.equal(registry.get(kept.id), kept, 'an active one stays')
})

/** A session subscribed to `key` whose stream saw version 1 and then went away: its last event id. */
async function streamUntilFirstVersion (app: Instance['app'], url: string, key: string): Promise<{ session: string, lastId: string | undefined }> {
  const session = await initializeSession(url)
  if (session === null) throw new Error('no session')
  await sessionRpc(url, session, 'resources/subscribe', { uri: uriOf(key) })
  const first = await openRawStream(url, session)
  await eventually(() => app.live.counts().streams === 1, { what: 'the stream' })
  await callTool(app, 'write_context', { key, content: 'one' })
  await eventually(() => /"shared-context-mcp\/version":1/.test(first.text()), { what: 'version 1' })
  const lastId = [...first.text().matchAll(/^id: (\S+)$/gm)].at(-1)?.[1]
  first.abort()
  await eventually(() => app.live.counts().streams === 0, { what: 'the aborted stream to be released' })
  return { session, lastId }
}

async function one (t: Parameters<typeof instances>[0], env: Record<string, string> = {}): Promise<Instance> {
  const [found] = (await instances(t, 1, env)).instances
  if (found === undefined) throw new Error('instance missing')
  return found
}

async function callSubscribeWithoutSession (app: import('fastify').FastifyInstance): Promise<unknown> {
  const response = await app.inject({
    method: 'POST',
    url: '/mcp',
    headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    payload: { jsonrpc: '2.0', id: 9, method: 'resources/subscribe', params: { uri: uriOf('x') } }
  })
  return response.json()
}

test('a subscription sees only what its principal may read; a revoked token\'s stream ends within AUTH_CACHE_SECONDS', async (t) => {
  const { app, url } = await one(t, { AUTH_CACHE_SECONDS: '1' })
  const token = generateToken()
  await app.db.tokens.insertApiToken({ name: 'team-b', hash: hashToken(token).toString('hex'), namespace: 'team-b', scopes: ['context:read', 'context:write'] })
  const session = await initializeSession(url, token)
  if (session === null) throw new Error('no session')
  const foreign = await sessionRpc(url, session, 'resources/subscribe', { uri: uriOf('secret') }, token)
  t.match(foreign.body, { error: { data: { code: 'CTX_2001' } } }, "another namespace's resource cannot be subscribed to")
  const own = await sessionRpc(url, session, 'resources/subscribe', { uri: uriOf('plan', 'team-b') }, token)
  t.same(own.body.result, {}, 'its own namespace can')
  const invalid = await sessionRpc(url, session, 'resources/subscribe', { uri: 'https://example.com/x' }, token)
  t.match(invalid.body, { error: { code: -32602, data: { code: 'REQ_1101' } } }, 'a URI that is no context:// URI is invalid params')

  const stream = await openRawStream(url, session, { token })
  t.equal(stream.status, 200)
  t.match(stream.text(), /^retry: \d+/, 'the stream starts with retry:')
  await callTool(app, 'write_context', { key: 'secret', content: 'default namespace' })
  await callTool(app, 'write_context', { key: 'plan', content: 'team b' }, { token })
  await eventually(() => stream.text().includes('notifications/resources/updated'), { what: 'the own namespace\'s update' })
  t.notMatch(stream.text(), /secret/, "nothing of the other namespace's keys reaches the stream")
  t.match(stream.text(), /\nid: \S+\nevent: message\ndata: \{"jsonrpc":"2.0"/, 'events carry ids')

  const { client } = await v2Client(t, url, token)
  const subscription = await client.listen({ resourceSubscriptions: [uriOf('plan', 'team-b')] })
  await eventually(() => app.live.counts().listenStreams === 1, { what: 'the subscriptions/listen stream' })

  await app.db.tokens.revokeApiToken('team-b')
  await stream.ended
  t.equal(await subscription.closed, 'remote', 'the subscriptions/listen stream of the revoked token is cut too')
  await eventually(() => app.live.counts().listenStreams === 0, { what: 'the cut listen stream to be released' })
  t.match(stream.text(), /event: unauthorized\ndata: .*AUTH_1003/, 'the stream ends with an unauthorized event')
  t.equal(app.live.counts().sessions, 0, 'and its session is gone')
})

test('Last-Event-ID: a stream opened again gets what it missed, from the history', async (t) => {
  const { app, url } = await one(t)
  const { session, lastId } = await streamUntilFirstVersion(app, url, 'resume/key')
  t.type(lastId, 'string', 'the event had an id')

  await callTool(app, 'append_context', { key: 'resume/key', content: 'two' })
  await callTool(app, 'append_context', { key: 'resume/key', content: 'three' })
  const resumed = await openRawStream(url, session, { lastEventId: lastId ?? '' })
  await eventually(() => /"shared-context-mcp\/version":3/.test(resumed.text()), { what: 'the missed versions' })
  await callTool(app, 'append_context', { key: 'resume/key', content: 'four' })
  await eventually(() => /"shared-context-mcp\/version":4/.test(resumed.text()), { what: 'the next live version' })
  const versions = [...resumed.text().matchAll(/"shared-context-mcp\/version":(\d+)/g)].map((match) => Number(match[1]))
  t.same(versions, [2, 3, 4], 'missed versions once, then live ones, none twice')
  resumed.abort()
})

// PGlite runs one transaction at a time: a transaction held open there holds every other one.
test('Last-Event-ID while a transaction elsewhere holds the horizon: the missed versions come once it ends, with no further write', { skip: ON_PGLITE ? 'PGlite has one backend' : false }, async (t) => {
  const { database, instances: [found] } = await instances(t, 1)
  if (found === undefined) throw new Error('instance missing')
  const { app, url } = found
  const { session, lastId } = await streamUntilFirstVersion(app, url, 'held/key')

  // A transaction with an id, left open: the feed serves nothing written after it began.
  const holder = await database.sql.reserve()
  t.teardown(() => holder.release())
  await holder`begin`
  await holder`select pg_current_xact_id()`
  await callTool(app, 'append_context', { key: 'held/key', content: 'two' })
  await callTool(app, 'append_context', { key: 'held/key', content: 'three' })
  const resumed = await openRawStream(url, session, { lastEventId: lastId ?? '' })
  await eventually(() => app.live.counts().streams === 1, { what: 'the resumed stream' })
  // The replay has run once it found rows held back: the hub then reads again on a timer.
  await eventually(() => app.live.counts().timers > 0, { what: 'the replay to find the held-back rows' })
  t.notMatch(resumed.text(), /"shared-context-mcp\/version":[23]/, 'held back while the transaction runs')
  await holder`commit`
  await eventually(() => /"shared-context-mcp\/version":3/.test(resumed.text()), { what: 'the missed versions after the horizon moved' })
  const versions = [...resumed.text().matchAll(/"shared-context-mcp\/version":(\d+)/g)].map((match) => Number(match[1]))
  t.same(versions, [2, 3], 'each missed version once')
  resumed.abort()
})

test('a Last-Event-ID that is no position of this database: the stream goes on live, and the client is told to read again', async (t) => {
  const { app, url } = await one(t)
  const session = await initializeSession(url)
  if (session === null) throw new Error('no session')
  await sessionRpc(url, session, 'resources/subscribe', { uri: uriOf('ahead/key') })
  const ahead = encodePosition({ txid: '900000000000000', id: 1 })
  const stream = await openRawStream(url, session, { lastEventId: ahead })
  t.equal(stream.status, 200, 'the stream opens')
  await eventually(() => stream.text().includes('notifications/resources/list_changed'), { what: 'list_changed' })
  t.match(stream.text(), /"method":"notifications\/resources\/updated","params":\{"uri":"context:\/\/default\/ahead\/key"\}/, 'and resources/updated for each subscription, without a version')
  await callTool(app, 'write_context', { key: 'ahead/key', content: 'one' })
  await eventually(() => /"shared-context-mcp\/version":1/.test(stream.text()), { what: 'the next live version' })
  stream.abort()
})

test('subscriptions/listen streams are bounded per principal (MCP_SESSIONS_PER_PRINCIPAL) and by MCP_SUBSCRIPTIONS_PER_SESSION', async (t) => {
  const { app, url } = await one(t, { MCP_SESSIONS_PER_PRINCIPAL: '1', MCP_SUBSCRIPTIONS_PER_SESSION: '2' })
  const { client } = await v2Client(t, url)
  const refusalOf = (listening: Promise<unknown>): Promise<unknown> => listening.then(() => 'not refused', (error: unknown) => error)
  t.match(await refusalOf(client.listen({ resourceSubscriptions: [uriOf('a'), uriOf('b'), uriOf('c')] })), { data: { code: 'REQ_1101' } }, 'three resources where two are allowed: REQ_1101')
  const first = await client.listen({ resourceSubscriptions: [uriOf('a')] })
  await eventually(() => app.live.counts().listenStreams === 1, { what: 'the first listen stream' })
  t.match(await refusalOf(client.listen({ resourcesListChanged: true })), { data: { code: 'REQ_1101' } }, 'a second stream of the same principal: REQ_1101')
  await first.close()
  await eventually(() => app.live.counts().listenStreams === 0, { what: 'the first stream to be released' })
  const second = await client.listen({ resourcesListChanged: true })
  t.ok(second, 'once it is closed, another may open')
  await second.close()
})

test("on Fly.io a session's stream and subscriptions that reach another machine are replayed to the machine that holds it", async (t) => {
  const { database, instances: [a] } = await instances(t, 1, { FLY_MACHINE_ID: '148e272b1c6589' })
  const { instances: [b] } = await instances(t, 1, { FLY_MACHINE_ID: '3d8d3e9c2e4218' }, database)
  if (a === undefined || b === undefined) throw new Error('instances missing')
  const session = await initializeSession(a.url)
  t.match(session, /^148e272b1c6589\.[A-Za-z0-9_-]{24}$/, 'the session id names its machine')
  const headers = { authorization: `Bearer ${TEST_TOKEN}`, 'mcp-session-id': session ?? '', 'content-type': 'application/json', accept: 'application/json, text/event-stream' }

  const stream = await b.app.inject({ method: 'GET', url: '/mcp', headers })
  t.equal(stream.headers['fly-replay'], 'instance=148e272b1c6589', "GET on another machine: Fly's proxy is told to replay it on the session's")
  const subscribe = await b.app.inject({ method: 'POST', url: '/mcp', headers, payload: { jsonrpc: '2.0', id: 1, method: 'resources/subscribe', params: { uri: uriOf('x') } } })
  t.equal(subscribe.headers['fly-replay'], 'instance=148e272b1c6589', 'resources/subscribe too')
  const { 'content-type': _bodyType, ...bodiless } = headers
  const ended = await b.app.inject({ method: 'DELETE', url: '/mcp', headers: bodiless })
  t.equal(ended.headers['fly-replay'], 'instance=148e272b1c6589', 'and DELETE')
  const call = await b.app.inject({ method: 'POST', url: '/mcp', headers, payload: { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'read_context', arguments: { key: 'nothing' } } } })
  t.equal(call.statusCode, 200, 'a tool call is served where it lands')
  t.equal(call.headers['fly-replay'], undefined, 'without a replay')
  t.equal((await sessionRpc(a.url, session ?? '', 'resources/subscribe', { uri: uriOf('x') })).status, 200, 'the session itself is untouched on its machine')

  const forgotten = await b.app.inject({ method: 'GET', url: '/mcp', headers: { ...headers, 'mcp-session-id': '3d8d3e9c2e4218.AAAAAAAAAAAAAAAAAAAAAAAA' } })
  t.equal(forgotten.statusCode, 404, 'a session of this machine that it does not know: 404, no replay')
  t.equal(forgotten.headers['fly-replay'], undefined)
})
