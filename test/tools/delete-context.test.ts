import { test } from 'tap'
import { build, callTool } from '../helper.js'
import { fails, historyOf, namesField, ok, okResult } from './helpers.js'

interface WriteOutput { version: number, action: string }
interface ReadOutput { content: string, version: number }
interface ListOutput { items: Array<{ key: string }> }

test('delete_context', async (t) => {
  const app = await build(t)

  t.test('deletes the entry and reports the deleted version; history keeps a delete row', async (t) => {
    await ok(t, app, 'write_context', { key: 'd/one', content: 'v1' })
    await ok(t, app, 'write_context', { key: 'd/one', content: 'v2', tags: ['x'] })
    const result = await callTool(app, 'delete_context', { key: 'd/one' })
    t.strictSame(okResult(t, result), { key: 'd/one', deleted_version: 2 })
    t.match(result.content[0]?.text, /Deleted d\/one/)
    await fails(t, app, 'read_context', { key: 'd/one' }, 'CTX_2001')
    const list = await ok<ListOutput>(t, app, 'list_context', { prefix: 'd/' })
    t.notOk(list.items.some((item) => item.key === 'd/one'), 'no longer listed')
    const history = await historyOf(t, app, 'd/one')
    t.same(history.map((v) => [v.version, v.action, v.actor]), [[3, 'delete', 'static-token'], [2, 'update', 'static-token'], [1, 'create', 'static-token']])
    t.equal(history[0]?.bytes, null, 'a delete has no size')
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'd/one', version: 2 })).content, 'v2', 'old versions stay readable')
    await fails(t, app, 'read_context', { key: 'd/one', version: 3 }, 'CTX_2001')
  })

  t.test('deleting a missing or already deleted key is CTX_2001 and logs nothing', async (t) => {
    const error = await fails(t, app, 'delete_context', { key: 'd/never' }, 'CTX_2001')
    t.match(error.message, 'd/never')
    await fails(t, app, 'context_history', { key: 'd/never' }, 'CTX_2001')
    await fails(t, app, 'delete_context', { key: 'd/one' }, 'CTX_2001')
    t.equal((await historyOf(t, app, 'd/one')).length, 3, 'no second delete row')
    await fails(t, app, 'delete_context', { key: 'd/never', expected_version: 1 }, 'CTX_2001')
  })

  t.test('expected_version: stale is CTX_2002 and the entry stays', async (t) => {
    await ok(t, app, 'write_context', { key: 'd/cas', content: 'v1' })
    await ok(t, app, 'write_context', { key: 'd/cas', content: 'v2' })
    const error = await fails(t, app, 'delete_context', { key: 'd/cas', expected_version: 1 }, 'CTX_2002')
    t.equal(error.current_version, 2)
    t.match(error.message, /version 2/)
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'd/cas' })
    t.equal(read.version, 2, 'still present')
    t.equal(read.content, 'v2')
    t.equal((await historyOf(t, app, 'd/cas')).length, 2, 'nothing logged')
    t.strictSame(await ok(t, app, 'delete_context', { key: 'd/cas', expected_version: 2 }), { key: 'd/cas', deleted_version: 2 })
    await fails(t, app, 'read_context', { key: 'd/cas' }, 'CTX_2001')
  })

  t.test('expected_version must be a positive integer', async (t) => {
    for (const expected of [0, '2', 1.5]) {
      const error = await fails(t, app, 'delete_context', { key: 'd/one', expected_version: expected }, 'REQ_1101')
      t.match(error.message, namesField('expected_version'))
    }
  })

  t.test('writing a deleted key again continues the version numbers', async (t) => {
    const written = await ok<WriteOutput>(t, app, 'write_context', { key: 'd/one', content: 'reborn' })
    t.equal(written.action, 'created')
    t.equal(written.version, 4, 'after v1, v2 and the delete (v3) comes v4')
    t.same((await historyOf(t, app, 'd/one')).map((v) => [v.version, v.action]), [[4, 'create'], [3, 'delete'], [2, 'update'], [1, 'create']])
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'd/one', version: 2 })).content, 'v2', 'the old v2 is still the old v2')
    t.strictSame(await ok(t, app, 'delete_context', { key: 'd/one' }), { key: 'd/one', deleted_version: 4 })
    const appended = await ok<WriteOutput>(t, app, 'append_context', { key: 'd/one', content: 'via append' })
    t.equal(appended.action, 'created')
    t.equal(appended.version, 6, 'append also continues after the second delete (v5)')
    const history = await historyOf(t, app, 'd/one')
    t.strictSame(history.map((v) => v.version), [6, 5, 4, 3, 2, 1], 'versions are unique and never reused')
  })
})
