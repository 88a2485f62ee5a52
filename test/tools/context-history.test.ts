import { test } from 'tap'
import { build, callTool } from '../helper.js'
import { encodeCursor } from '../../schema/cursor.js'
import { fails, isIsoTimestamp, namesField, ok, okResult, type HistoryOutput } from './helpers.js'

test('context_history', async (t) => {
  const app = await build(t)
  const agent = { headers: { 'user-agent': 'history-agent/3' } }
  const v1 = 'created'
  const v2 = 'updated content'
  await ok(t, app, 'write_context', { key: 'h/key', content: v1 }, agent)
  await ok(t, app, 'write_context', { key: 'h/key', content: v2 }, agent)
  await ok(t, app, 'append_context', { key: 'h/key', content: 'appended' }, agent)
  await ok(t, app, 'delete_context', { key: 'h/key' }, agent)
  await ok(t, app, 'restore_context', { key: 'h/key', version: 2 }, agent)

  t.test('newest first, every action, with actor, client, time and size', async (t) => {
    const result = await callTool(app, 'context_history', { key: 'h/key' })
    const page = okResult<HistoryOutput>(t, result)
    t.equal(page.key, 'h/key')
    t.equal(page.next_cursor, null)
    t.strictSame(page.versions.map((v) => [v.version, v.action, v.actor, v.client, v.bytes]), [
      [5, 'restore', 'static-token', 'history-agent/3', Buffer.byteLength(v2)],
      [4, 'delete', 'static-token', 'history-agent/3', null],
      [3, 'append', 'static-token', 'history-agent/3', Buffer.byteLength(`${v2}\nappended`)],
      [2, 'update', 'static-token', 'history-agent/3', Buffer.byteLength(v2)],
      [1, 'create', 'static-token', 'history-agent/3', Buffer.byteLength(v1)]
    ])
    t.ok(page.versions.every((v) => isIsoTimestamp(v.at)), 'times are ISO 8601')
    const times = page.versions.map((v) => Date.parse(v.at))
    t.ok(times.every((time, i) => i === 0 || time <= (times[i - 1] ?? 0)), 'newer versions are not older')
    t.strictSame(Object.keys(page.versions[0] ?? {}).sort(), ['action', 'actor', 'at', 'bytes', 'client', 'version'])
    const text = result.content[0]?.text ?? ''
    t.match(text, /History of h\/key/)
    t.match(text, /v5 restore by static-token/)
    t.match(text, /v1 create/)
  })

  t.test('pages with limit and cursor', async (t) => {
    const seen: number[][] = []
    let cursor: string | null = null
    do {
      const page: HistoryOutput = await ok<HistoryOutput>(t, app, 'context_history', { key: 'h/key', limit: 2, ...(cursor !== null && { cursor }) })
      seen.push(page.versions.map((v) => v.version))
      cursor = page.next_cursor
    } while (cursor !== null && seen.length < 10)
    t.strictSame(seen, [[5, 4], [3, 2], [1]], 'every version once, newest first')
    const exact = await ok<HistoryOutput>(t, app, 'context_history', { key: 'h/key', limit: 5 })
    t.equal(exact.versions.length, 5)
    t.equal(exact.next_cursor, null, 'no cursor when the page holds the rest exactly')
    const first = await ok<HistoryOutput>(t, app, 'context_history', { key: 'h/key', limit: 4 })
    t.type(first.next_cursor, 'string')
    const text = (await callTool(app, 'context_history', { key: 'h/key', limit: 4 })).content[0]?.text ?? ''
    t.match(text, first.next_cursor ?? 'no cursor', 'the text block gives the cursor')
  })

  t.test('the default page is 20', async (t) => {
    for (let i = 0; i < 25; i++) await ok(t, app, 'append_context', { key: 'h/long', content: `line ${i}` })
    const page = await ok<HistoryOutput>(t, app, 'context_history', { key: 'h/long' })
    t.strictSame(page.versions.map((v) => v.version), Array.from({ length: 20 }, (_, i) => 25 - i))
    const rest = await ok<HistoryOutput>(t, app, 'context_history', { key: 'h/long', cursor: page.next_cursor })
    t.strictSame(rest.versions.map((v) => v.version), [5, 4, 3, 2, 1])
    t.equal(rest.next_cursor, null)
  })

  t.test('a never-written key is CTX_2001', async (t) => {
    const error = await fails(t, app, 'context_history', { key: 'h/never' }, 'CTX_2001')
    t.match(error.message, 'h/never')
  })

  t.test('bad limit and cursors are REQ_1101', async (t) => {
    for (const limit of [0, 101, 'ten']) {
      const error = await fails(t, app, 'context_history', { key: 'h/key', limit }, 'REQ_1101')
      t.match(error.message, namesField('limit'))
    }
    for (const cursor of ['garbage', encodeCursor('list', 'h/key'), encodeCursor('history', 0), encodeCursor('history', 'x'), encodeCursor('history', '1.5')]) {
      const error = await fails(t, app, 'context_history', { key: 'h/key', cursor }, 'REQ_1101')
      t.match(error.message, /cursor/)
    }
  })
})
