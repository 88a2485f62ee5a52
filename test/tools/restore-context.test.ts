import { test } from 'tap'
import { build, callTool } from '../helper.js'
import { fails, historyOf, namesField, ok, okResult } from './helpers.js'

interface ReadOutput { content: string, version: number, tags: string[], updated_by: string, expires_at: string | null }
interface ListOutput { items: Array<{ key: string, version: number }> }

test('restore_context', async (t) => {
  const app = await build(t)
  await ok(t, app, 'write_context', { key: 'r/doc', content: 'alpha', tags: ['a'] })
  await ok(t, app, 'write_context', { key: 'r/doc', content: 'beta', tags: ['b'], ttl_seconds: 3600 })

  t.test('restores an old version as a new version', async (t) => {
    const result = await callTool(app, 'restore_context', { key: 'r/doc', version: 1 })
    t.strictSame(okResult(t, result), { key: 'r/doc', version: 3, restored_from: 1 })
    t.match(result.content[0]?.text, /Restored r\/doc from version 1: now version 3/)
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'r/doc' })
    t.equal(read.content, 'alpha', 'the old content')
    t.strictSame(read.tags, ['a'], 'the old tags')
    t.equal(read.version, 3)
    t.equal(read.updated_by, 'static-token')
    t.equal(read.expires_at, null, 'a restored version does not expire')
    const history = await historyOf(t, app, 'r/doc')
    t.same(history.map((v) => [v.version, v.action, v.actor]), [[3, 'restore', 'static-token'], [2, 'update', 'static-token'], [1, 'create', 'static-token']])
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'r/doc', version: 2 })).content, 'beta', 'v2 is untouched')
  })

  t.test('restores after a delete', async (t) => {
    t.strictSame(await ok(t, app, 'delete_context', { key: 'r/doc' }), { key: 'r/doc', deleted_version: 3 })
    t.strictSame(await ok(t, app, 'restore_context', { key: 'r/doc', version: 2 }), { key: 'r/doc', version: 5, restored_from: 2 })
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'r/doc' })
    t.equal(read.content, 'beta')
    t.strictSame(read.tags, ['b'])
    t.equal(read.version, 5)
    const list = await ok<ListOutput>(t, app, 'list_context', { prefix: 'r/' })
    t.strictSame(list.items.map((item) => [item.key, item.version]), [['r/doc', 5]], 'listed again')
    t.same((await historyOf(t, app, 'r/doc')).map((v) => v.action), ['restore', 'delete', 'restore', 'update', 'create'])
  })

  t.test('restoring the current version still makes a new version', async (t) => {
    t.strictSame(await ok(t, app, 'restore_context', { key: 'r/doc', version: 5 }), { key: 'r/doc', version: 6, restored_from: 5 })
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'r/doc' })).content, 'beta')
  })

  t.test('an unknown version, or a delete row, is CTX_2001 and changes nothing', async (t) => {
    const before = await historyOf(t, app, 'r/doc')
    const unknown = await fails(t, app, 'restore_context', { key: 'r/doc', version: 99 }, 'CTX_2001')
    t.match(unknown.message, /version 99/)
    t.match(unknown.message, 'context_history')
    await fails(t, app, 'restore_context', { key: 'r/doc', version: 4 }, 'CTX_2001') // v4 is the delete
    t.strictSame(await historyOf(t, app, 'r/doc'), before, 'history unchanged')
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'r/doc' })).version, 6)
  })

  t.test('a never-written key is CTX_2001 and is not created', async (t) => {
    const error = await fails(t, app, 'restore_context', { key: 'r/never', version: 1 }, 'CTX_2001')
    t.match(error.message, /never written/)
    await fails(t, app, 'read_context', { key: 'r/never' }, 'CTX_2001')
    await fails(t, app, 'context_history', { key: 'r/never' }, 'CTX_2001')
  })

  t.test('version is required and positive', async (t) => {
    for (const args of [{ key: 'r/doc' }, { key: 'r/doc', version: 0 }, { key: 'r/doc', version: '1' }]) {
      const error = await fails(t, app, 'restore_context', args, 'REQ_1101')
      t.match(error.message, namesField('version'))
    }
  })
})
