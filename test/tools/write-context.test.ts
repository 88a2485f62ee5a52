import { test } from 'tap'
import { eventually } from '../eventually.js'
import { build, callTool } from '../helper.js'
import { assume, fails, historyOf, isIsoTimestamp, namesField, ok, okResult, toolError } from './helpers.js'

const MAX_CONTENT_BYTES = 2048

interface WriteOutput { key: string, version: number, action: string, updated_at: string }
interface ReadOutput { key: string, content: string, version: number, tags: string[], updated_by: string, expires_at: string | null }

test('write_context', async (t) => {
  const app = await build(t, { MAX_CONTENT_BYTES: String(MAX_CONTENT_BYTES) })

  t.test('creates, then updates', async (t) => {
    const created = await callTool(app, 'write_context', { key: 'w/basic', content: 'one' })
    const createdOut = okResult<WriteOutput>(t, created)
    t.strictSame(createdOut, { key: 'w/basic', version: 1, action: 'created', updated_at: createdOut.updated_at })
    t.ok(isIsoTimestamp(createdOut.updated_at), 'updated_at is ISO 8601')
    t.match(created.content[0]?.text, /Created w\/basic.*version 1/)

    const updated = await ok<WriteOutput>(t, app, 'write_context', { key: 'w/basic', content: 'two' })
    t.equal(updated.action, 'updated')
    t.equal(updated.version, 2)
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'w/basic' })
    t.equal(read.content, 'two')
    t.equal(read.version, 2)
    t.same((await historyOf(t, app, 'w/basic')).map((v) => [v.version, v.action]), [[2, 'update'], [1, 'create']])
  })

  t.test('expected_version: a stale version is CTX_2002 with the current version, and nothing changes', async (t) => {
    await ok(t, app, 'write_context', { key: 'w/cas', content: 'v1' })
    await ok(t, app, 'write_context', { key: 'w/cas', content: 'v2' })
    const historyBefore = await historyOf(t, app, 'w/cas')
    t.equal(historyBefore.length, 2)

    const error = await fails(t, app, 'write_context', { key: 'w/cas', content: 'stale', expected_version: 1 }, 'CTX_2002')
    t.equal(error.current_version, 2, 'the conflict reports the current version')
    t.match(error.message, /version 2/, 'the message names the current version')
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'w/cas' })
    t.equal(read.content, 'v2', 'content unchanged')
    t.equal(read.version, 2, 'version unchanged')
    t.strictSame(await historyOf(t, app, 'w/cas'), historyBefore, 'history unchanged')

    const next = await ok<WriteOutput>(t, app, 'write_context', { key: 'w/cas', content: 'v3', expected_version: 2 })
    t.equal(next.version, 3, 'the current version as expected_version succeeds')
    t.equal(next.action, 'updated')
  })

  t.test('expected_version 0 means create only', async (t) => {
    const created = await ok<WriteOutput>(t, app, 'write_context', { key: 'w/create-only', content: 'first', expected_version: 0 })
    t.equal(created.action, 'created')
    t.equal(created.version, 1)
    const error = await fails(t, app, 'write_context', { key: 'w/create-only', content: 'second', expected_version: 0 }, 'CTX_2002')
    t.equal(error.current_version, 1)
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'w/create-only' })
    t.equal(read.content, 'first', 'not overwritten')
    t.equal((await historyOf(t, app, 'w/create-only')).length, 1)
  })

  t.test('expected_version on a missing key is CTX_2002 with current_version null, and creates nothing', async (t) => {
    const error = await fails(t, app, 'write_context', { key: 'w/absent', content: 'x', expected_version: 3 }, 'CTX_2002')
    t.ok(Object.hasOwn(error, 'current_version'), 'current_version is present')
    t.equal(error.current_version, null)
    t.match(error.message, /does not exist/)
    await fails(t, app, 'read_context', { key: 'w/absent' }, 'CTX_2001')
    await fails(t, app, 'context_history', { key: 'w/absent' }, 'CTX_2001')
  })

  t.test('tags are stored, kept when omitted, and cleared with []', async (t) => {
    await ok(t, app, 'write_context', { key: 'w/tags', content: 'a', tags: ['project', 'db:pg'] })
    t.strictSame((await ok<ReadOutput>(t, app, 'read_context', { key: 'w/tags' })).tags, ['project', 'db:pg'])
    await ok(t, app, 'write_context', { key: 'w/tags', content: 'b' })
    t.strictSame((await ok<ReadOutput>(t, app, 'read_context', { key: 'w/tags' })).tags, ['project', 'db:pg'], 'kept')
    await ok(t, app, 'write_context', { key: 'w/tags', content: 'c', tags: ['other'] })
    t.strictSame((await ok<ReadOutput>(t, app, 'read_context', { key: 'w/tags' })).tags, ['other'], 'replaced')
    await ok(t, app, 'write_context', { key: 'w/tags', content: 'd', tags: [] })
    t.strictSame((await ok<ReadOutput>(t, app, 'read_context', { key: 'w/tags' })).tags, [], 'cleared')
    const error = await fails(t, app, 'write_context', { key: 'w/tags', content: 'e', tags: ['dup', 'dup'] }, 'REQ_1101')
    t.match(error.message, /tags/)
  })

  t.test('ttl_seconds sets expires_at; a write without it clears the expiry', async (t) => {
    const before = Date.now()
    await ok(t, app, 'write_context', { key: 'w/ttl', content: 'temp', ttl_seconds: 600 })
    const after = Date.now()
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'w/ttl' })
    const expires = Date.parse(read.expires_at ?? '')
    t.ok(expires >= before + 600_000 - 5000 && expires <= after + 600_000 + 5000, `expires_at ${read.expires_at} is about now + 600 s`)
    await ok(t, app, 'write_context', { key: 'w/ttl', content: 'kept' })
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'w/ttl' })).expires_at, null)
  })

  t.test('an expired entry reads as absent and the next write creates it again with the next version', async (t) => {
    await ok(t, app, 'write_context', { key: 'w/expiring', content: 'gone soon', ttl_seconds: 1, tags: ['old'] })
    await eventually(async () => /^CTX_2001:/.test((await callTool(app, 'read_context', { key: 'w/expiring' })).content[0]?.text ?? ''), { what: 'the one-second TTL to pass' })
    await fails(t, app, 'read_context', { key: 'w/expiring' }, 'CTX_2001')
    const error = await fails(t, app, 'write_context', { key: 'w/expiring', content: 'x', expected_version: 1 }, 'CTX_2002')
    t.equal(error.current_version, null, 'an expired entry has no current version')
    const again = await ok<WriteOutput>(t, app, 'write_context', { key: 'w/expiring', content: 'back' })
    t.equal(again.action, 'created')
    t.equal(again.version, 2, 'versions never go backwards')
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'w/expiring' })
    t.equal(read.content, 'back')
    t.strictSame(read.tags, [], 'the expired entry\'s tags are not inherited')
    t.equal(read.expires_at, null)
  })

  t.test('20 parallel compare-and-set writers: exactly one wins', async (t) => {
    const key = 'w/race'
    await ok(t, app, 'write_context', { key, content: 'base' })
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      callTool(app, 'write_context', { key, content: `writer ${i}`, expected_version: 1 })))
    const winners = results.flatMap((result, i) => result.isError === true ? [] : [i])
    t.equal(winners.length, 1, 'exactly one writer succeeds')
    const losers = results.filter((result) => result.isError === true)
    t.equal(losers.length, 19, '19 writers fail')
    for (const loser of losers) {
      const error = toolError(t, loser, 'CTX_2002', 'losing writer')
      t.equal(error.current_version, 2, 'each loser learns the new version')
    }
    const winner = winners[0] ?? -1
    t.strictSame(results[winner]?.structuredContent, { key, version: 2, action: 'updated', updated_at: results[winner]?.structuredContent.updated_at })
    const read = await ok<ReadOutput>(t, app, 'read_context', { key })
    t.equal(read.content, `writer ${winner}`, 'the final content is the winner\'s')
    t.equal(read.version, 2)
    t.strictSame((await historyOf(t, app, key)).map((v) => v.version), [2, 1], 'history holds versions 1 and 2 only')
  })

  t.test('content that is not valid Unicode (a lone surrogate) is refused, not silently altered', async (t) => {
    // Regression: a lone surrogate was stored as U+FFFD, so the entry differed from what was sent.
    const error = await fails(t, app, 'write_context', { key: 'w/surrogate', content: 'a\ud800b' }, 'REQ_1101')
    t.match(error.message, namesField('content'))
    await fails(t, app, 'read_context', { key: 'w/surrogate' }, 'CTX_2001')
  })

  t.test('content is limited in UTF-8 bytes, not characters', async (t) => {
    const cases = [
      { name: '2-byte é', fits: 'é'.repeat(MAX_CONTENT_BYTES / 2), over: 'é'.repeat(MAX_CONTENT_BYTES / 2) + 'a' },
      { name: '3-byte €', fits: 'a'.repeat(MAX_CONTENT_BYTES - 3) + '€', over: 'a'.repeat(MAX_CONTENT_BYTES - 2) + '€' },
      { name: '4-byte emoji', fits: 'a'.repeat(MAX_CONTENT_BYTES - 4) + '😀', over: 'a'.repeat(MAX_CONTENT_BYTES - 3) + '😀' }
    ]
    for (const [i, c] of cases.entries()) {
      assume(Buffer.byteLength(c.fits) === MAX_CONTENT_BYTES && Buffer.byteLength(c.over) === MAX_CONTENT_BYTES + 1, c.name)
      const key = `w/size/${i}`
      const written = await ok<WriteOutput>(t, app, 'write_context', { key, content: c.fits })
      t.equal(written.version, 1, `${c.name}: exactly MAX_CONTENT_BYTES is accepted`)
      t.equal((await ok<ReadOutput>(t, app, 'read_context', { key })).content, c.fits, `${c.name}: stored intact`)
      const error = await fails(t, app, 'write_context', { key, content: c.over }, 'CTX_2003')
      t.equal(error.bytes, MAX_CONTENT_BYTES + 1, `${c.name}: reports the size in bytes`)
      t.equal(error.max_bytes, MAX_CONTENT_BYTES)
      t.match(error.message, /content/)
      const read = await ok<ReadOutput>(t, app, 'read_context', { key })
      t.equal(read.version, 1, `${c.name}: nothing written`)
      t.equal(read.content, c.fits)
      await fails(t, app, 'write_context', { key: `w/size/new-${i}`, content: c.over }, 'CTX_2003')
      await fails(t, app, 'read_context', { key: `w/size/new-${i}` }, 'CTX_2001')
    }
  })
})
