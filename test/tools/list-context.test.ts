import { test, type Test } from 'tap'
import { build, callTool, rpc, toolErrorOf } from '../helper.js'
import { encodeCursor } from '../../schema/cursor.js'
import { previewOf, previewOfHead } from '../../db/context-store.js'
import { fails, isIsoTimestamp, namesField, ok, okResult } from './helpers.js'

interface ListItem { key: string, version: number, bytes: number, tags: string[], updated_at: string, updated_by: string, preview: string }
interface ListOutput { items: ListItem[], next_cursor: string | null }

// 104 numbered keys plus 8 whose order depends on byte ("C") collation: 112 = 7 * 16 = 2 * 56.
const PAGE_KEYS = [
  ...Array.from({ length: 104 }, (_, i) => `page/${String(i).padStart(3, '0')}`),
  'page/A', 'page/a', 'page/Z', 'page/_x', 'page/-x', 'page/.x', 'page/:x', 'page/z/1'
]
const SORTED_PAGE_KEYS = [...PAGE_KEYS].sort() // UTF-16 order equals byte order for ASCII

const keysOf = (page: ListOutput) => page.items.map((item) => item.key)

test('list_context', async (t) => {
  const app = await build(t)
  for (let i = 0; i < PAGE_KEYS.length; i += 16) {
    await Promise.all(PAGE_KEYS.slice(i, i + 16).map((key) => ok(t, app, 'write_context', { key, content: `content of ${key}` })))
  }
  for (const key of ['a_b', 'axb', 'a_bc', 'ab', 'a/b', 'A_b']) {
    await ok(t, app, 'write_context', { key, content: key })
  }
  await ok(t, app, 'write_context', { key: 'tagged/1', content: 'red and blue', tags: ['red', 'blue'] })
  await ok(t, app, 'write_context', { key: 'tagged/2', content: 'blue', tags: ['blue'] })
  await ok(t, app, 'write_context', { key: 'tagged/3', content: 'none' })
  await ok(t, app, 'write_context', { key: 'tagged/2', content: 'still blue' })

  const walk = async (t: Test, args: Record<string, unknown>) => {
    const pages: ListOutput[] = []
    let cursor: string | null = null
    do {
      const page: ListOutput = await ok<ListOutput>(t, app, 'list_context', { ...args, ...(cursor !== null && { cursor }) })
      pages.push(page)
      cursor = page.next_cursor
    } while (cursor !== null && pages.length < 100)
    return pages
  }

  t.test('the default page is 50, in key order, with a cursor', async (t) => {
    const page = await ok<ListOutput>(t, app, 'list_context', { prefix: 'page/' })
    t.equal(page.items.length, 50)
    t.strictSame(keysOf(page), SORTED_PAGE_KEYS.slice(0, 50), 'byte order of keys')
    t.type(page.next_cursor, 'string')
  })

  t.test('limit is 1-100', async (t) => {
    const page = await ok<ListOutput>(t, app, 'list_context', { prefix: 'page/', limit: 100 })
    t.equal(page.items.length, 100)
    t.strictSame(keysOf(page), SORTED_PAGE_KEYS.slice(0, 100))
    const one = await ok<ListOutput>(t, app, 'list_context', { prefix: 'page/', limit: 1 })
    t.strictSame(keysOf(one), SORTED_PAGE_KEYS.slice(0, 1))
    for (const limit of [101, 0, -1, 2.5, '10']) {
      const error = await fails(t, app, 'list_context', { limit }, 'REQ_1101')
      t.match(error.message, namesField('limit'), `limit ${JSON.stringify(limit)} is named`)
    }
  })

  t.test('paging visits every key exactly once, in order; the last page has next_cursor null', async (t) => {
    for (const limit of [7, 10, 56]) {
      const pages = await walk(t, { prefix: 'page/', limit })
      t.strictSame(pages.flatMap(keysOf), SORTED_PAGE_KEYS, `limit ${limit}: all keys once, in order`)
      t.equal(pages.length, Math.ceil(PAGE_KEYS.length / limit), `limit ${limit}: no empty trailing page`)
      t.ok(pages.slice(0, -1).every((page) => page.items.length === limit && page.next_cursor !== null), `limit ${limit}: full pages carry a cursor`)
      t.equal(pages.at(-1)?.next_cursor, null, `limit ${limit}: the last page's next_cursor is null`)
    }
    const all = await walk(t, { limit: 100 })
    const keys = all.flatMap(keysOf)
    t.equal(new Set(keys).size, keys.length, 'no key twice without a prefix either')
    t.strictSame(keys, [...keys].sort(), 'in key order')
    t.equal(keys.length, PAGE_KEYS.length + 6 + 3)
  })

  t.test('prefix is matched literally: _ is not a wildcard', async (t) => {
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { prefix: 'a_' })), ['a_b', 'a_bc'])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { prefix: 'a_b' })), ['a_b', 'a_bc'])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { prefix: 'ax' })), ['axb'])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { prefix: 'a' })), ['a/b', 'a_b', 'a_bc', 'ab', 'axb'], 'case-sensitive, byte order')
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { prefix: 'A' })), ['A_b'])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { prefix: 'page/z/' })), ['page/z/1'])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { prefix: 'nothing/' })), [])
    const empty = await ok<ListOutput>(t, app, 'list_context', { prefix: '', limit: 100 })
    const none = await ok<ListOutput>(t, app, 'list_context', { limit: 100 })
    t.strictSame(keysOf(empty), keysOf(none), 'an empty prefix lists everything')
  })

  t.test('LIKE wildcards and other characters no key can hold are literal: they match nothing', async (t) => {
    for (const prefix of ['%', 'a%', '%b', 'a\\', 'a\\_', 'a b', '*', 'é']) {
      t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { prefix })), [], `prefix ${JSON.stringify(prefix)} matches nothing`)
    }
    for (const prefix of ['a\u0000', 'x'.repeat(256)]) {
      const error = await fails(t, app, 'list_context', { prefix }, 'REQ_1101')
      t.match(error.message, namesField('prefix'), `prefix ${JSON.stringify(prefix.slice(0, 8))} is refused and named`)
    }
  })

  t.test('tag filter', async (t) => {
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { tag: 'blue' })), ['tagged/1', 'tagged/2'])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { tag: 'red' })), ['tagged/1'])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { tag: 'green' })), [])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { tag: 'blue', prefix: 'tagged/2' })), ['tagged/2'])
    t.strictSame(keysOf(await ok<ListOutput>(t, app, 'list_context', { tag: 'blue', limit: 1 })), ['tagged/1'])
    const error = await fails(t, app, 'list_context', { tag: 'bl ue' }, 'REQ_1101')
    t.match(error.message, namesField('tag'))
  })

  t.test('previews of text with long runs of whitespace, wherever they fall', async (t) => {
    const contents: Record<string, string> = {
      'ws/leading': ' '.repeat(300) + '\n'.repeat(200) + 'word '.repeat(100),
      'ws/straddling': 'a'.repeat(470) + ' \n\t'.repeat(10) + 'b'.repeat(300),
      'ws/ends-in-space': 'x '.repeat(80),
      'ws/ends-in-spaces': 'xy\n\n'.repeat(53) + 'z' + ' '.repeat(500) + 'tail',
      'ws/just-over': 'a'.repeat(161) + '   b',
      'ws/sparse': 'w' + '\n'.repeat(1000) + 'x' + ' '.repeat(1000) + 'y ' + 'long text '.repeat(50),
      // Whitespace beyond ASCII (JavaScript's \s: the preview is the same whatever the database's locale).
      'ws/nbsp': '\u00a0'.repeat(400) + 'a '.repeat(100),
      'ws/unicode-spaces': '\u3000\u1680\u202f\ufeff'.repeat(100) + 'word '.repeat(60),
      // Characters, not UTF-16 code units: an astral character is never cut in half.
      'ws/astral': '😀'.repeat(300),
      'ws/astral-at-the-cut': 'a'.repeat(159) + '😀😀 tail',
      // Around the 480 characters the database sends first: whole, one more, multi-byte and astral heads.
      'ws/exactly-480': ' '.repeat(400) + 'b'.repeat(80),
      'ws/481': ' '.repeat(400) + 'b'.repeat(80) + 'c',
      'ws/multibyte-head': 'é'.repeat(100) + ' '.repeat(380) + 'tail',
      'ws/astral-head': '😀'.repeat(100) + ' '.repeat(380) + 'b',
      'ws/multibyte-whole': 'é '.repeat(100),
      // The first 480 collapse to 159 letters and the space of a run that goes on past them: not enough.
      'ws/space-at-the-cut': ' '.repeat(320) + 'b'.repeat(159) + ' '.repeat(10) + 'tail'
    }
    for (const [key, content] of Object.entries(contents)) await ok(t, app, 'write_context', { key, content, tags: ['ws'] })
    for (const filter of [{ prefix: 'ws/' }, { tag: 'ws' }]) {
      const page = await ok<ListOutput>(t, app, 'list_context', filter)
      for (const item of page.items) t.equal(item.preview, referencePreview(contents[item.key] ?? ''), `${JSON.stringify(filter)}: ${item.key}`)
      t.equal(page.items.length, Object.keys(contents).length)
    }
  })

  t.test('items carry version, bytes, tags, author and a short preview', async (t) => {
    const content = '  Line one\n\n\tline   two  \n' + 'é'.repeat(300)
    await ok(t, app, 'write_context', { key: 'preview/long', content, tags: ['p'] })
    await ok(t, app, 'write_context', { key: 'preview/short', content: 'tiny' })
    const page = await ok<ListOutput>(t, app, 'list_context', { prefix: 'preview/' })
    const [long, short] = page.items
    const expected = content.replace(/\s+/g, ' ').trim().slice(0, 160)
    t.equal(long?.preview, expected, 'whitespace collapsed, first 160 characters')
    t.equal(long?.preview.length, 160, 'the preview is short (characters, not bytes)')
    t.equal(long?.bytes, Buffer.byteLength(content), 'bytes is the UTF-8 size')
    t.equal(long?.version, 1)
    t.strictSame(long?.tags, ['p'])
    t.equal(long?.updated_by, 'static-token')
    t.ok(isIsoTimestamp(long?.updated_at), 'updated_at is ISO 8601')
    t.equal(short?.preview, 'tiny')
    t.strictSame(Object.keys(long ?? {}).sort(), ['bytes', 'key', 'preview', 'tags', 'updated_at', 'updated_by', 'version'])
    const tagged = await ok<ListOutput>(t, app, 'list_context', { prefix: 'tagged/2' })
    t.equal(tagged.items[0]?.version, 2, 'the current version')
    t.equal(tagged.items[0]?.preview, 'still blue', 'the current content')
  })

  t.test('the text block lists the items and says how to continue', async (t) => {
    const result = await callTool(app, 'list_context', { prefix: 'page/', limit: 2 })
    const page = okResult<ListOutput>(t, result)
    const text = result.content[0]?.text ?? ''
    t.match(text, SORTED_PAGE_KEYS[0] ?? '')
    t.match(text, SORTED_PAGE_KEYS[1] ?? '')
    t.match(text, page.next_cursor ?? 'no cursor')
    const empty = await callTool(app, 'list_context', { prefix: 'nothing/' })
    t.match(empty.content[0]?.text, /No entries/)
  })

  t.test('a forged list cursor whose position holds a NUL is REQ_1101, not a server error', async (t) => {
    // Regression: a forged cursor position reached PostgreSQL and failed with HTTP 500 SRV_9001.
    const response = await rpc(app, 'tools/call', { name: 'list_context', arguments: { cursor: encodeCursor('list', 'page/\u0000') } })
    t.equal(response.statusCode, 200, 'not an HTTP error')
    const result = response.json().result
    t.equal(result?.isError, true)
    t.equal(toolErrorOf(result)?.code, 'REQ_1101')
  })

  t.test('a cursor that is not a list cursor is REQ_1101', async (t) => {
    for (const cursor of ['garbage', '!!!', encodeCursor('history', 5), '']) {
      const error = await fails(t, app, 'list_context', { cursor }, 'REQ_1101')
      t.match(error.message, /cursor/, `cursor ${JSON.stringify(cursor)} is named`)
    }
  })
})

/** The preview as defined: the first 4,096 characters, runs of whitespace one space, trimmed, the first 160 characters. */
function referencePreview (content: string): string {
  return [...[...content].slice(0, 4096).join('').replace(/\s+/g, ' ').trim()].slice(0, 160).join('')
}

test('previews from the first 480 characters, or from 4,096 when those are not enough, are the defined preview', async (t) => {
  const pieces = ['a', 'word ', ' ', '   ', '\n', '\t', 'é', '😀', '\u00a0', '\u3000', '\ufeff']
  let seed = 7
  const random = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
  const wrong: string[] = []
  for (let i = 0; i < 3000; i++) {
    const length = [0, 1, 150, 161, 162, 163, 320, 479, 480, 481, 600, 4095, 4096, 4100][random(14)]! + random(3)
    const characters: string[] = random(3) === 0 ? [' '.repeat(random(600))] : []
    for (let count = 0; count < length;) {
      const piece = pieces[random(pieces.length)]!
      characters.push(piece)
      count += [...piece].length
    }
    const content = characters.join('')
    const head = [...content].slice(0, 480).join('')
    const preview = previewOfHead(head) ?? previewOf([...content].slice(0, 4096).join(''))
    if (preview !== referencePreview(content)) wrong.push(JSON.stringify(content.slice(0, 60)))
  }
  t.strictSame(wrong.slice(0, 5), [], 'every random content')
})
