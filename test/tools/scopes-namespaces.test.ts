import { test } from 'tap'
import { build, callTool, rpc } from '../helper.js'
import { addToken, fails, historyOf, ok } from './helpers.js'

interface ReadOutput { content: string, version: number, updated_by: string }
interface ListOutput { items: Array<{ key: string, updated_by: string }>, next_cursor: string | null }
interface ListedTool { name: string, annotations: { readOnlyHint: boolean } }

const ALL_TOOLS = ['read_context', 'write_context', 'append_context', 'list_context', 'search_context', 'delete_context', 'context_history', 'restore_context', 'changes_since']

test('scopes and namespaces', async (t) => {
  const app = await build(t)
  const reader = await addToken(app, 'reader', 'default', ['context:read'])
  const writer = await addToken(app, 'writer', 'default', ['context:read', 'context:write'])
  const admin = await addToken(app, 'admin', 'default', ['context:admin'], { globalAdmin: true })
  const other = await addToken(app, 'other', 'other', ['context:read', 'context:write', 'context:delete'])
  const as = (token: string) => ({ token })
  const entryCount = async () => (await app.db.sql<[{ n: number }]>`select count(*)::int as n from context_entries`)[0].n
  const historyCount = async () => (await app.db.sql<[{ n: number }]>`select count(*)::int as n from context_history`)[0].n
  const toolNames = async (token: string) => {
    const response = await rpc(app, 'tools/list', {}, as(token))
    t.equal(response.statusCode, 200)
    return (response.json().result.tools as ListedTool[]).map((tool) => tool.name)
  }

  await ok(t, app, 'write_context', { key: 'shared/doc', content: 'from default' })

  t.test('a read-only token sees only the read tools', async (t) => {
    t.strictSame(await toolNames(reader), ['read_context', 'list_context', 'search_context', 'context_history', 'changes_since'])
    const tools = (await rpc(app, 'tools/list', {}, as(reader))).json().result.tools as ListedTool[]
    t.ok(tools.every((tool) => tool.annotations.readOnlyHint), 'all of them read-only')
    t.strictSame(await toolNames(writer), ['read_context', 'write_context', 'append_context', 'list_context', 'search_context', 'context_history', 'restore_context', 'changes_since'], 'no delete without context:delete')
    t.strictSame(await toolNames(admin), ALL_TOOLS, 'context:admin allows everything')
    t.strictSame(await toolNames(other), ALL_TOOLS)
  })

  t.test('a read-only token can read but every change is AUTH_1004 and writes nothing', async (t) => {
    const read = await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc' }, as(reader))
    t.equal(read.content, 'from default', 'same namespace as the static token')
    t.equal(read.updated_by, 'static-token')
    const entries = await entryCount()
    const history = await historyCount()
    const write = await fails(t, app, 'write_context', { key: 'ro/new', content: 'x' }, 'AUTH_1004', as(reader))
    t.match(write.message, 'context:write', 'names the missing scope')
    t.equal(write.required_scope, 'context:write')
    await fails(t, app, 'write_context', { key: 'shared/doc', content: 'overwritten' }, 'AUTH_1004', as(reader))
    await fails(t, app, 'append_context', { key: 'shared/doc', content: 'more' }, 'AUTH_1004', as(reader))
    await fails(t, app, 'restore_context', { key: 'shared/doc', version: 1 }, 'AUTH_1004', as(reader))
    const del = await fails(t, app, 'delete_context', { key: 'shared/doc' }, 'AUTH_1004', as(reader))
    t.equal(del.required_scope, 'context:delete')
    t.equal(await entryCount(), entries, 'no entry written')
    t.equal(await historyCount(), history, 'no history written')
    await fails(t, app, 'read_context', { key: 'ro/new' }, 'CTX_2001')
    const after = await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc' })
    t.equal(after.content, 'from default')
    t.equal(after.version, 1)
  })

  t.test('the scope check comes before validation', async (t) => {
    await fails(t, app, 'write_context', { key: 'bad key', content: 5 }, 'AUTH_1004', as(reader))
  })

  t.test('a token without context:delete cannot delete', async (t) => {
    await fails(t, app, 'delete_context', { key: 'shared/doc' }, 'AUTH_1004', as(writer))
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc' })).version, 1, 'still there')
  })

  t.test('every version records the writing principal', async (t) => {
    await ok(t, app, 'write_context', { key: 'shared/doc', content: 'by writer' }, as(writer))
    await ok(t, app, 'append_context', { key: 'shared/doc', content: 'by admin' }, as(admin))
    await ok(t, app, 'restore_context', { key: 'shared/doc', version: 2 }, as(writer))
    await ok(t, app, 'delete_context', { key: 'shared/doc' }, as(admin))
    await ok(t, app, 'restore_context', { key: 'shared/doc', version: 3 })
    const history = await historyOf(t, app, 'shared/doc')
    t.strictSame(history.map((v) => [v.version, v.action, v.actor]), [
      [6, 'restore', 'static-token'],
      [5, 'delete', 'token:admin'],
      [4, 'restore', 'token:writer'],
      [3, 'append', 'token:admin'],
      [2, 'update', 'token:writer'],
      [1, 'create', 'static-token']
    ])
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc', version: 2 })).updated_by, 'token:writer')
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc', version: 3 })).updated_by, 'token:admin')
    const list = await ok<ListOutput>(t, app, 'list_context', { prefix: 'shared/' }, as(reader))
    t.strictSame(list.items.map((item) => [item.key, item.updated_by]), [['shared/doc', 'static-token']])
  })

  t.test('another namespace cannot see the default namespace', async (t) => {
    await fails(t, app, 'read_context', { key: 'shared/doc' }, 'CTX_2001', as(other))
    await fails(t, app, 'read_context', { key: 'shared/doc', version: 1 }, 'CTX_2001', as(other))
    await fails(t, app, 'context_history', { key: 'shared/doc' }, 'CTX_2001', as(other))
    await fails(t, app, 'restore_context', { key: 'shared/doc', version: 1 }, 'CTX_2001', as(other))
    await fails(t, app, 'delete_context', { key: 'shared/doc' }, 'CTX_2001', as(other))
    const conflict = await fails(t, app, 'write_context', { key: 'shared/doc', content: 'x', expected_version: 6 }, 'CTX_2002', as(other))
    t.equal(conflict.current_version, null, 'the default namespace\'s version does not leak')
    t.strictSame(await ok<ListOutput>(t, app, 'list_context', {}, as(other)), { items: [], next_cursor: null }, 'lists nothing')
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc' })).content, 'by writer\nby admin', 'the default entry is intact')
  })

  t.test('writes in another namespace are invisible to the default one', async (t) => {
    const created = await ok<{ version: number, action: string }>(t, app, 'write_context', { key: 'shared/doc', content: 'from other' }, as(other))
    t.equal(created.action, 'created', 'the same key is new in the other namespace')
    t.equal(created.version, 1)
    await ok(t, app, 'append_context', { key: 'only-other/log', content: 'secret' }, as(other))
    const own = await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc' }, as(other))
    t.equal(own.content, 'from other')
    t.equal(own.updated_by, 'token:other')
    t.strictSame((await historyOf(t, app, 'shared/doc', as(other))).map((v) => [v.version, v.action, v.actor]), [[1, 'create', 'token:other']])
    t.strictSame((await ok<ListOutput>(t, app, 'list_context', {}, as(other))).items.map((item) => item.key), ['only-other/log', 'shared/doc'])

    const mine = await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc' })
    t.equal(mine.content, 'by writer\nby admin', 'the static token still sees its own entry')
    t.equal(mine.version, 6)
    await fails(t, app, 'read_context', { key: 'only-other/log' }, 'CTX_2001')
    await fails(t, app, 'context_history', { key: 'only-other/log' }, 'CTX_2001')
    t.strictSame((await ok<ListOutput>(t, app, 'list_context', { prefix: 'only-other/' })).items, [])
    t.strictSame((await ok<ListOutput>(t, app, 'list_context', { prefix: 'only-other/' }, as(reader))).items, [])
    t.equal((await historyOf(t, app, 'shared/doc')).length, 6, 'the default history is untouched')

    await ok(t, app, 'delete_context', { key: 'shared/doc' }, as(other))
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'shared/doc' })).content, 'by writer\nby admin', 'deleting in one namespace leaves the other')
    const rows = await app.db.sql<Array<{ namespace: string, key: string, updated_by: string }>>`
      select namespace, key, updated_by from context_entries
      where key in ('shared/doc', 'only-other/log') and (expires_at is null or expires_at > now())
      order by namespace, key`
    t.strictSame(rows.map((row) => [row.namespace, row.key, row.updated_by]), [['default', 'shared/doc', 'static-token'], ['other', 'only-other/log', 'token:other']], 'live rows per namespace')
  })

  t.test('the namespace argument: other namespaces need a grant or context:admin', async (t) => {
    await ok(t, app, 'write_context', { key: 'ns/arg', content: 'in other' }, as(other))
    const entries = await entryCount()
    const refused = await fails(t, app, 'read_context', { key: 'ns/arg', namespace: 'other' }, 'AUTH_1004', as(reader))
    t.match(refused.message, 'namespace "other"', 'names the namespace')
    await fails(t, app, 'write_context', { key: 'ns/arg', content: 'x', namespace: 'other' }, 'AUTH_1004')
    await fails(t, app, 'list_context', { namespace: 'default' }, 'AUTH_1004', as(other))
    t.equal(await entryCount(), entries, 'nothing written')

    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'ns/arg', namespace: 'other' }, as(admin))).content, 'in other', 'context:admin reads any namespace')
    await ok(t, app, 'append_context', { key: 'ns/arg', content: 'by admin', namespace: 'other' }, as(admin))
    const own = await ok<ReadOutput>(t, app, 'read_context', { key: 'ns/arg', namespace: 'other' }, as(other))
    t.equal(own.content, 'in other\nby admin', 'the admin wrote into the other namespace')
    t.equal(own.updated_by, 'token:admin')
    await fails(t, app, 'read_context', { key: 'ns/arg' }, 'CTX_2001', as(admin))
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'ns/arg', namespace: 'other' }, as(other))).version, 2, 'naming one\'s own namespace is allowed')
    await fails(t, app, 'read_context', { key: 'ns/arg', namespace: 'bad namespace' }, 'AUTH_1004', as(other))
    await fails(t, app, 'read_context', { key: 'ns/arg', namespace: 'bad namespace' }, 'REQ_1101', as(admin))
  })

  t.test('callTool with a principal is unaffected by another principal\'s calls', async (t) => {
    const results = await Promise.all([
      callTool(app, 'write_context', { key: 'mixed/k', content: 'default' }),
      callTool(app, 'write_context', { key: 'mixed/k', content: 'other' }, as(other))
    ])
    t.ok(results.every((result) => result.isError !== true))
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'mixed/k' })).content, 'default')
    t.equal((await ok<ReadOutput>(t, app, 'read_context', { key: 'mixed/k' }, as(other))).content, 'other')
  })
})
