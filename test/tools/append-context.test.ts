import { test } from 'tap'
import { build, callTool } from '../helper.js'
import { assume, fails, historyOf, namesField, ok, okResult } from './helpers.js'

const MAX_CONTENT_BYTES = 2048

interface AppendOutput { key: string, version: number, action: string, bytes: number }
interface ReadOutput { content: string, version: number, tags: string[], expires_at: string | null }

test('append_context', async (t) => {
  const app = await build(t, { MAX_CONTENT_BYTES: String(MAX_CONTENT_BYTES) })

  t.test('creates the entry when absent, then appends with the default newline', async (t) => {
    const created = await callTool(app, 'append_context', { key: 'log/a', content: 'one' })
    t.strictSame(okResult(t, created), { key: 'log/a', version: 1, action: 'created', bytes: 3 })
    t.match(created.content[0]?.text, /Created log\/a/)
    const appended = await ok<AppendOutput>(t, app, 'append_context', { key: 'log/a', content: 'twö' })
    t.strictSame(appended, { key: 'log/a', version: 2, action: 'appended', bytes: Buffer.byteLength('one\ntwö') })
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'log/a' })
    t.equal(read.content, 'one\ntwö')
    t.equal(read.version, 2)
    t.same((await historyOf(t, app, 'log/a')).map((v) => [v.version, v.action]), [[2, 'append'], [1, 'create']])
  })

  t.test('custom separators, including the empty one', async (t) => {
    await ok(t, app, 'append_context', { key: 'log/sep', content: 'a' })
    await ok(t, app, 'append_context', { key: 'log/sep', content: 'b', separator: ' | ' })
    await ok(t, app, 'append_context', { key: 'log/sep', content: 'c', separator: '' })
    await ok(t, app, 'append_context', { key: 'log/sep', content: 'd', separator: '\n---\n' })
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'log/sep' })).content, 'a | bc\n---\nd')
    const created = await ok<AppendOutput>(t, app, 'append_context', { key: 'log/sep-new', content: 'first', separator: ' | ' })
    t.equal(created.action, 'created')
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'log/sep-new' })).content, 'first', 'no separator before the first fragment')
  })

  t.test('invalid separators are REQ_1101 naming separator', async (t) => {
    for (const separator of ['a\u0000b', 'x'.repeat(17), 5]) {
      const error = await fails(t, app, 'append_context', { key: 'log/sep', content: 'z', separator }, 'REQ_1101')
      t.match(error.message, namesField('separator'))
    }
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'log/sep' })).version, 4, 'nothing appended')
  })

  t.test('content or separator that is not valid Unicode (a lone surrogate) is refused, not silently altered', async (t) => {
    // Regression: lone surrogates were stored as U+FFFD, so the entry differed from what was sent.
    const content = await fails(t, app, 'append_context', { key: 'log/surrogate', content: 'x\udc00' }, 'REQ_1101')
    t.match(content.message, namesField('content'))
    await fails(t, app, 'read_context', { key: 'log/surrogate' }, 'CTX_2001')
    const separator = await fails(t, app, 'append_context', { key: 'log/sep', content: 'z', separator: '\ud800' }, 'REQ_1101')
    t.match(separator.message, namesField('separator'))
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'log/sep' })).content, 'a | bc\n---\nd', 'nothing appended')
  })

  t.test('appending keeps tags and expiry of the entry', async (t) => {
    await ok(t, app, 'write_context', { key: 'log/tagged', content: 'start', tags: ['keep'], ttl_seconds: 3600 })
    const before = await ok<ReadOutput>(t, app, 'read_context', { key: 'log/tagged' })
    await ok(t, app, 'append_context', { key: 'log/tagged', content: 'more' })
    const after = await ok<ReadOutput>(t, app, 'read_context', { key: 'log/tagged' })
    t.equal(after.content, 'start\nmore')
    t.strictSame(after.tags, ['keep'])
    t.equal(after.expires_at, before.expires_at)
  })

  t.test('20 parallel appends: every fragment lands exactly once', async (t) => {
    const key = 'log/race'
    const fragments = Array.from({ length: 20 }, (_, i) => `fragment-${String(i).padStart(2, '0')}`)
    const results = await Promise.all(fragments.map((content) => callTool(app, 'append_context', { key, content })))
    const outputs = results.map((result) => okResult<AppendOutput>(t, result))
    t.equal(outputs.filter((o) => o.action === 'created').length, 1, 'one append created the key')
    t.equal(outputs.filter((o) => o.action === 'appended').length, 19, 'the others appended')
    t.strictSame(outputs.map((o) => o.version).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1), 'each append got its own version')
    const read = await ok<ReadOutput>(t, app, 'read_context', { key })
    t.equal(read.version, 20)
    const parts = read.content.split('\n')
    t.equal(parts.length, 20, 'twenty fragments')
    t.strictSame([...parts].sort(), fragments, 'each fragment present exactly once')
    const history = await historyOf(t, app, key)
    t.strictSame(history.map((v) => v.version), Array.from({ length: 20 }, (_, i) => 20 - i))
    t.equal(history.filter((v) => v.action === 'create').length, 1)
    t.equal(history.filter((v) => v.action === 'append').length, 19)
    const last = outputs.find((o) => o.version === 20)
    t.equal(last?.bytes, Buffer.byteLength(read.content), 'the last append reports the final size')
  })

  t.test('appending past MAX_CONTENT_BYTES is CTX_2003 and leaves the entry unchanged', async (t) => {
    const key = 'log/full'
    const base = 'a'.repeat(MAX_CONTENT_BYTES - 100)
    await ok(t, app, 'write_context', { key, content: base })
    // base + '\n' + 99 bytes = MAX + 0 fits; + 100 bytes is one over.
    const over = 'é'.repeat(50)
    assume(Buffer.byteLength(base) + 1 + Buffer.byteLength(over) === MAX_CONTENT_BYTES + 1, 'one byte over')
    const error = await fails(t, app, 'append_context', { key, content: over }, 'CTX_2003')
    t.equal(error.bytes, MAX_CONTENT_BYTES + 1, 'reports the size the entry would have')
    t.equal(error.max_bytes, MAX_CONTENT_BYTES)
    t.match(error.message, key)
    let read = await ok<ReadOutput>(t, app, 'read_context', { key })
    t.equal(read.content, base, 'content unchanged')
    t.equal(read.version, 1, 'version unchanged')
    t.equal((await historyOf(t, app, key)).length, 1, 'no history row')

    const fits = 'é'.repeat(49) + 'b'
    const appended = await ok<AppendOutput>(t, app, 'append_context', { key, content: fits })
    t.equal(appended.bytes, MAX_CONTENT_BYTES, 'exactly MAX_CONTENT_BYTES is accepted')
    read = await ok<ReadOutput>(t, app, 'read_context', { key })
    t.equal(read.content, `${base}\n${fits}`)
    await fails(t, app, 'append_context', { key, content: 'x', separator: '' }, 'CTX_2003')
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key })).version, 2, 'a full entry takes no more')
  })

  t.test('a first fragment over MAX_CONTENT_BYTES is CTX_2003 and creates nothing', async (t) => {
    const error = await fails(t, app, 'append_context', { key: 'log/huge', content: 'x'.repeat(MAX_CONTENT_BYTES + 1) }, 'CTX_2003')
    t.equal(error.bytes, MAX_CONTENT_BYTES + 1)
    await fails(t, app, 'read_context', { key: 'log/huge' }, 'CTX_2001')
    await fails(t, app, 'context_history', { key: 'log/huge' }, 'CTX_2001')
  })
})
