import { test } from 'tap'
import { build, callTool } from '../helper.js'
import { fails, isIsoTimestamp, namesField, ok } from './helpers.js'

interface WriteOutput { key: string, version: number, action: string, updated_at: string }
interface ReadOutput {
  key: string
  content: string
  version: number
  tags: string[]
  updated_at: string
  updated_by: string
  client: string | null
  expires_at: string | null
}

test('read_context', async (t) => {
  const app = await build(t)
  const first = await ok<WriteOutput>(t, app, 'write_context', { key: 'notes/read', content: 'first version', tags: ['alpha', 'beta'] }, { headers: { 'user-agent': 'first-agent/2.1 (linux)' } })
  const second = await ok<WriteOutput>(t, app, 'write_context', { key: 'notes/read', content: 'second version\nwith two lines' }, { headers: { 'user-agent': 'second-agent/1.0' } })

  t.test('reads the current version with every output field', async (t) => {
    const result = await callTool(app, 'read_context', { key: 'notes/read' })
    t.not(result.isError, true)
    t.strictSame(result.structuredContent, {
      key: 'notes/read',
      content: 'second version\nwith two lines',
      version: 2,
      tags: ['alpha', 'beta'], // an update without tags keeps them
      updated_at: second.updated_at,
      updated_by: 'static-token',
      client: 'second-agent/1.0',
      expires_at: null
    })
    const read = result.structuredContent as unknown as ReadOutput
    t.ok(isIsoTimestamp(read.updated_at), `updated_at is ISO 8601: ${read.updated_at}`)
    t.ok(Date.parse(read.updated_at) >= Date.parse(first.updated_at), 'the second version is not older than the first')
    t.equal(result.content.length, 1, 'one text block')
    t.equal(result.content[0]?.type, 'text')
    const text = result.content[0]?.text ?? ''
    t.ok(text.includes('second version\nwith two lines'), 'the text block carries the content')
    t.match(text, /version 2/, 'the text block names the version')
    t.match(text, /static-token/, 'the text block names the author')
  })

  t.test('reads an old version', async (t) => {
    const old = await ok<ReadOutput>(t, app, 'read_context', { key: 'notes/read', version: 1 })
    t.strictSame(old, {
      key: 'notes/read',
      content: 'first version',
      version: 1,
      tags: ['alpha', 'beta'],
      updated_at: first.updated_at,
      updated_by: 'static-token',
      client: 'first-agent/2.1',
      expires_at: null
    })
    const current = await ok<ReadOutput>(t, app, 'read_context', { key: 'notes/read', version: 2 })
    t.equal(current.content, 'second version\nwith two lines', 'version 2 is the current content')
    t.equal(current.client, 'second-agent/1.0')
  })

  t.test('a missing key is CTX_2001 with a helpful message', async (t) => {
    const error = await fails(t, app, 'read_context', { key: 'notes/nope' }, 'CTX_2001')
    t.match(error.message, 'notes/nope', 'names the key')
    t.match(error.message, 'list_context', 'says how to find existing keys')
  })

  t.test('keys are exact: neither a prefix nor a different case matches', async (t) => {
    await fails(t, app, 'read_context', { key: 'notes/rea' }, 'CTX_2001')
    await fails(t, app, 'read_context', { key: 'notes/read/' }, 'CTX_2001')
    await fails(t, app, 'read_context', { key: 'NOTES/READ' }, 'CTX_2001')
  })

  t.test('a missing version is CTX_2001', async (t) => {
    const error = await fails(t, app, 'read_context', { key: 'notes/read', version: 3 }, 'CTX_2001')
    t.match(error.message, /version 3/, 'names the version')
    t.match(error.message, 'context_history', 'points to the history')
    await fails(t, app, 'read_context', { key: 'notes/nope', version: 1 }, 'CTX_2001')
  })

  t.test('version must be a positive integer', async (t) => {
    for (const version of [0, -1, 1.5, '1']) {
      const error = await fails(t, app, 'read_context', { key: 'notes/read', version }, 'REQ_1101')
      t.match(error.message, namesField('version'), `version ${JSON.stringify(version)} is named in the message`)
    }
  })

  t.test('expires_at reflects ttl_seconds', async (t) => {
    const before = Date.now()
    await ok(t, app, 'write_context', { key: 'notes/ttl', content: 'short-lived', ttl_seconds: 3600 })
    const after = Date.now()
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'notes/ttl' })
    t.ok(isIsoTimestamp(read.expires_at), `expires_at is ISO 8601: ${read.expires_at}`)
    const expires = Date.parse(read.expires_at ?? '')
    t.ok(expires >= before + 3600_000 - 5000 && expires <= after + 3600_000 + 5000, `expires_at ${read.expires_at} is about an hour from now`)
  })
})
