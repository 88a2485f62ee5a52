import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { decodePosition, encodePosition } from '../../db/change-feed.js'
import { encodeCursor } from '../../schema/cursor.js'
import { eventually } from '../eventually.js'
import { build, callTool, type RpcOptions } from '../helper.js'
import { addToken, fails, feedSettled, isIsoTimestamp, ok, okResult } from './helpers.js'

interface Change { key: string, version: number, action: string, actor: string, client: string | null, at: string, bytes: number | null }
interface FeedOutput { changes: Change[], next_cursor: string, more: boolean }

const brief = (changes: Change[]) => changes.map((c) => `${c.key}@${c.version}:${c.action}`)

/**
 * Pages through the feed from `cursor` until `until` holds for everything read (rows commit below
 * the horizon as soon as every older transaction on the database server has ended: on a shared
 * server that can take a moment). Returns the changes and the last cursor.
 */
async function drain (t: Test, app: FastifyInstance, args: Record<string, unknown>, until: (changes: Change[]) => boolean, options: RpcOptions = {}): Promise<{ changes: Change[], cursor: string }> {
  const changes: Change[] = []
  let cursor = args.cursor as string | undefined
  const rest = { ...args }
  delete rest.cursor
  await eventually(async () => {
    for (;;) {
      const page = await ok<FeedOutput>(t, app, 'changes_since', { ...rest, ...(cursor !== undefined && { cursor }) }, options)
      changes.push(...page.changes)
      cursor = page.next_cursor
      if (!page.more) return until(changes)
    }
  }, { what: 'the feed to serve the expected changes' })
  return { changes, cursor: cursor as string }
}

test('changes_since', async (t) => {
  const app = await build(t)
  const agent = { headers: { 'user-agent': 'feed-agent/1' } }
  await ok(t, app, 'write_context', { key: 'f/a', content: 'one', tags: ['red'] }, agent)
  await ok(t, app, 'write_context', { key: 'f/a', content: 'two' }, agent)
  await ok(t, app, 'append_context', { key: 'f/b', content: 'log' }, agent)
  await ok(t, app, 'delete_context', { key: 'f/a' }, agent)
  await ok(t, app, 'restore_context', { key: 'f/a', version: 2 }, agent)
  await ok(t, app, 'write_context', { key: 'g/c', content: 'elsewhere', tags: ['blue'], ttl_seconds: 3600 }, agent)
  await feedSettled(app)
  const all = ['f/a@1:create', 'f/a@2:update', 'f/b@1:create', 'f/a@3:delete', 'f/a@4:restore', 'g/c@1:create']

  let caughtUp = ''
  await t.test('from the start: every change once, oldest first, no content', async (t) => {
    const result = await callTool(app, 'changes_since', {})
    const page = okResult<FeedOutput>(t, result)
    t.strictSame(brief(page.changes), all)
    t.equal(page.more, false)
    t.strictSame(Object.keys(page.changes[0] ?? {}).sort(), ['action', 'actor', 'at', 'bytes', 'client', 'key', 'version'], 'no content')
    t.match(page.changes[0], { actor: 'static-token', client: 'feed-agent/1', bytes: 3 })
    t.equal(page.changes[3]?.bytes, null, 'a delete has no size')
    t.ok(page.changes.every((c) => isIsoTimestamp(c.at)), 'ISO times')
    t.match(result.content[0]?.text, /f\/a v1 create by static-token \(feed-agent\/1\)/)
    t.match(result.content[0]?.text, /Up to date\. Next time pass cursor/)
    caughtUp = page.next_cursor
    const again = await ok<FeedOutput>(t, app, 'changes_since', { cursor: caughtUp })
    t.strictSame(again.changes, [], 'nothing new after catching up')
    t.equal(again.more, false)
  })

  await t.test('pages: limit, more, and each change once across pages', async (t) => {
    const seen: Change[] = []
    let cursor: string | undefined
    const mores: boolean[] = []
    for (let i = 0; i < 10; i++) {
      const page: FeedOutput = await ok(t, app, 'changes_since', { limit: 4, ...(cursor !== undefined && { cursor }) })
      seen.push(...page.changes)
      mores.push(page.more)
      cursor = page.next_cursor
      if (!page.more) break
    }
    t.strictSame(mores, [true, false])
    t.strictSame(brief(seen), all)
    const text = (await callTool(app, 'changes_since', { limit: 1 })).content[0]?.text
    t.match(text, /More changes are waiting: call again with cursor/)
  })

  await t.test('filters: prefix, tag (a delete counts when what it deleted had the tag)', async (t) => {
    t.strictSame(brief((await ok<FeedOutput>(t, app, 'changes_since', { prefix: 'g/' })).changes), ['g/c@1:create'])
    t.strictSame(brief((await ok<FeedOutput>(t, app, 'changes_since', { prefix: 'f/a' })).changes), ['f/a@1:create', 'f/a@2:update', 'f/a@3:delete', 'f/a@4:restore'])
    t.strictSame(brief((await ok<FeedOutput>(t, app, 'changes_since', { prefix: 'f_' })).changes), [], 'the prefix is literal')
    t.strictSame(brief((await ok<FeedOutput>(t, app, 'changes_since', { tag: 'red' })).changes), ['f/a@1:create', 'f/a@2:update', 'f/a@3:delete', 'f/a@4:restore'], 'tags are kept by updates and restores; the delete of a red version counts')
    t.strictSame(brief((await ok<FeedOutput>(t, app, 'changes_since', { tag: 'blue', prefix: 'g/' })).changes), ['g/c@1:create'])
    const filtered = await ok<FeedOutput>(t, app, 'changes_since', { prefix: 'g/' })
    await ok(t, app, 'write_context', { key: 'f/new', content: 'x' })
    await feedSettled(app)
    const { changes } = await drain(t, app, { cursor: filtered.next_cursor, prefix: 'g/' }, () => true)
    t.strictSame(changes, [], 'a filtered cursor skips changes outside the filter')
  })

  await t.test('a cursor resumes after the last change it saw', async (t) => {
    await ok(t, app, 'write_context', { key: 'f/b', content: 'more' })
    const { changes, cursor } = await drain(t, app, { cursor: caughtUp }, (changes) => changes.some((c) => c.key === 'f/b'))
    t.strictSame(brief(changes), ['f/new@1:create', 'f/b@2:update'])
    caughtUp = cursor
  })

  await t.test('from: "now" starts at the present', async (t) => {
    const now = await ok<FeedOutput>(t, app, 'changes_since', { from: 'now' })
    t.strictSame(now.changes, [])
    t.equal(now.more, false)
    await ok(t, app, 'write_context', { key: 'f/later', content: 'x' })
    const { changes } = await drain(t, app, { cursor: now.next_cursor }, (changes) => changes.length > 0)
    t.strictSame(brief(changes), ['f/later@1:create'])
    t.strictSame(brief((await ok<FeedOutput>(t, app, 'changes_since', { from: 'start', limit: 1 })).changes), ['f/a@1:create'], 'from: "start" is the default')
  })

  await t.test('bad cursors and arguments are REQ_1101', async (t) => {
    await fails(t, app, 'changes_since', { cursor: 'garbled' }, 'REQ_1101')
    await fails(t, app, 'changes_since', { cursor: encodeCursor('list', 'f/a') }, 'REQ_1101')
    await fails(t, app, 'changes_since', { cursor: encodeCursor('changes', '1.x') }, 'REQ_1101')
    await fails(t, app, 'changes_since', { cursor: encodeCursor('changes', '18446744073709551616.1') }, 'REQ_1101')
    await fails(t, app, 'changes_since', { cursor: encodeCursor('changes', '01.1') }, 'REQ_1101')
    const ahead = await fails(t, app, 'changes_since', { cursor: encodePosition({ txid: '9000000000000000000', id: 1 }) }, 'REQ_1101')
    t.match(ahead.message, /another server or a restored copy/, 'a well-formed cursor from elsewhere is refused, not followed')
    await fails(t, app, 'changes_since', { cursor: caughtUp, from: 'now' }, 'REQ_1101')
    await fails(t, app, 'changes_since', { from: 'yesterday' }, 'REQ_1101')
    await fails(t, app, 'changes_since', { limit: 101 }, 'REQ_1101')
    await fails(t, app, 'changes_since', { limit: 0 }, 'REQ_1101')
    t.strictSame(decodePosition(encodePosition({ txid: '18446744073709551615', id: 9007199254740991 })), { txid: '18446744073709551615', id: 9007199254740991 }, 'the largest positions survive a round trip')
  })

  await t.test('namespaces: a principal sees only its own changes', async (t) => {
    const other = { token: await addToken(app, 'feed-other', 'other-team', ['context:read', 'context:write']) }
    await ok(t, app, 'write_context', { key: 'theirs', content: 'x' }, other)
    const { changes } = await drain(t, app, {}, (changes) => changes.length > 0, other)
    t.strictSame(brief(changes), ['theirs@1:create'])
    const mine = await drain(t, app, { cursor: caughtUp }, () => true)
    t.notOk(mine.changes.some((c) => c.key === 'theirs'), 'not in the default namespace\'s feed')
    await fails(t, app, 'changes_since', { namespace: 'default' }, 'AUTH_1004', other)
    const writerOnly = { token: await addToken(app, 'feed-writer', 'default', ['context:write']) }
    await fails(t, app, 'changes_since', {}, 'AUTH_1004', writerOnly)
  })

  await t.test('rows written before migration 006 (no txid) come first, by id', async (t) => {
    const [{ missing }] = await app.db.sql<[{ missing: number }]>`select count(*)::int as missing from context_history where txid is null`
    t.equal(missing, 0, 'every row written since has a transaction id')
    await app.db.sql`update context_history set txid = null where namespace = 'default' and key = 'f/later'`
    await feedSettled(app)
    const page = await ok<FeedOutput>(t, app, 'changes_since', { limit: 2 })
    t.strictSame(brief(page.changes), ['f/later@1:create', 'f/a@1:create'], 'the old row first, then the rest in order')
    const rest = await drain(t, app, { cursor: page.next_cursor }, () => true)
    t.equal(rest.changes.filter((c) => c.key === 'f/later').length, 0, 'and never again')
    t.equal(rest.changes.length + 2, (await app.db.sql`select 1 from context_history where namespace = 'default'`).length, 'every row once')
  })
})
