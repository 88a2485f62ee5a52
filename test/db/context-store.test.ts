import { test } from 'tap'
import { createContextStore, escapeLike, type Actor } from '../../db/context-store.js'
import { testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'

const MAX_CONTENT_BYTES = 1000
const alice: Actor = { principal: 'user:alice', client: 'claude-code' }
const bob: Actor = { principal: 'user:bob', client: null }

test('context store', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: MAX_CONTENT_BYTES })
  let namespaceCounter = 0
  const freshNamespace = () => `ns-${++namespaceCounter}`

  async function historyVersions (namespace: string, key: string) {
    const rows = await sql<{ version: number, action: string }[]>`
      select version, action from context_history where namespace = ${namespace} and key = ${key} order by version`
    return rows.map(row => `${row.version}:${row.action}`)
  }

  t.test('write creates, then updates; read returns the entry with number versions', async (t) => {
    const ns = freshNamespace()
    const created = await store.write(ns, 'notes/a', 'first', { tags: ['x'] }, alice)
    t.match(created, { status: 'created', version: 1 })
    if (created.status === 'conflict') throw new Error('unexpected conflict')
    t.ok(!Number.isNaN(Date.parse(created.updatedAt)))

    const updated = await store.write(ns, 'notes/a', 'second', {}, bob)
    t.match(updated, { status: 'updated', version: 2 })

    const entry = await store.read(ns, 'notes/a')
    t.ok(entry)
    t.equal(entry?.content, 'second')
    t.equal(entry?.version, 2)
    t.equal(typeof entry?.version, 'number')
    t.same(entry?.tags, ['x'], 'tags kept when the write does not give them')
    t.equal(entry?.updatedBy, 'user:bob')
    t.equal(entry?.client, null)
    t.equal(entry?.expiresAt, null)
    t.ok(Date.parse(entry?.createdAt ?? '') <= Date.parse(entry?.updatedAt ?? ''))

    t.equal(await store.read(ns, 'notes/missing'), null)
    t.equal(await store.read('other-namespace', 'notes/a'), null, 'namespaces are separate')

    await store.write(ns, 'notes/a', 'third', { tags: [] }, alice)
    t.same((await store.read(ns, 'notes/a'))?.tags, [], 'tags: [] clears them')
    t.same(await historyVersions(ns, 'notes/a'), ['1:create', '2:update', '3:update'])
  })

  t.test('compare-and-set', async (t) => {
    const ns = freshNamespace()
    t.match(await store.write(ns, 'k', 'v1', { expectedVersion: 0 }, alice), { status: 'created', version: 1 })
    t.same(await store.write(ns, 'k', 'again', { expectedVersion: 0 }, alice), { status: 'conflict', currentVersion: 1 },
      'expected 0 on an existing key conflicts')
    t.match(await store.write(ns, 'k', 'v2', { expectedVersion: 1 }, alice), { status: 'updated', version: 2 })

    const stale = await store.write(ns, 'k', 'stale', { expectedVersion: 1 }, bob)
    t.same(stale, { status: 'conflict', currentVersion: 2 })
    t.equal((await store.read(ns, 'k'))?.content, 'v2', 'a stale write changes nothing')
    t.same(await historyVersions(ns, 'k'), ['1:create', '2:update'], 'and adds no history row')

    t.same(await store.write(ns, 'absent', 'x', { expectedVersion: 3 }, alice), { status: 'conflict', currentVersion: null },
      'expecting a version of an absent key conflicts with null and does not create it')
    t.equal(await store.read(ns, 'absent'), null)
  })

  t.test('20 parallel compare-and-set writers: exactly one wins', async (t) => {
    const ns = freshNamespace()
    await store.write(ns, 'race', 'start', {}, alice)
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      store.write(ns, 'race', `writer ${i}`, { expectedVersion: 1 }, { principal: `writer-${i}`, client: null })))
    const winners = results.flatMap((result, i) => result.status === 'updated' ? [i] : [])
    t.equal(winners.length, 1, 'one winner')
    t.same(results.filter(result => result.status === 'conflict'), Array(19).fill({ status: 'conflict', currentVersion: 2 }))
    const entry = await store.read(ns, 'race')
    t.equal(entry?.content, `writer ${winners[0]}`)
    t.equal(entry?.version, 2)
    t.same(await historyVersions(ns, 'race'), ['1:create', '2:update'])
  })

  t.test('20 parallel appends all land', async (t) => {
    const ns = freshNamespace()
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      store.append(ns, 'log', `fragment-${i}`, '\n', alice)))
    t.equal(results.filter(result => result.status === 'created').length, 1, 'one append created the key')
    t.equal(results.filter(result => result.status === 'appended').length, 19)
    const entry = await store.read(ns, 'log')
    t.equal(entry?.version, 20)
    const lines = entry?.content.split('\n') ?? []
    t.equal(lines.length, 20)
    t.same([...lines].sort(), Array.from({ length: 20 }, (_, i) => `fragment-${i}`).sort())
    const versions = results.map(result => result.status === 'too_large' ? 0 : result.version).sort((a, b) => a - b)
    t.same(versions, Array.from({ length: 20 }, (_, i) => i + 1), 'every append got its own version')
    t.equal((await historyVersions(ns, 'log')).length, 20)
  })

  t.test('parallel writes, appends, deletes and restores on one key keep history consistent', async (t) => {
    const ns = freshNamespace()
    const operations = Array.from({ length: 60 }, (_, i) => {
      switch (i % 4) {
        case 0: return store.write(ns, 'hot', `w${i}`, {}, alice)
        case 1: return store.append(ns, 'hot', `a${i}`, ',', bob)
        case 2: return store.delete(ns, 'hot', undefined, alice)
        default: return store.restore(ns, 'hot', 1, bob)
      }
    })
    const results = await Promise.all(operations)
    const rows = await historyVersions(ns, 'hot')
    const historyAction: Record<string, string> = { created: 'create', updated: 'update', appended: 'append', restored: 'restore' }
    const reported = results.flatMap((result) => {
      if (result.status === 'deleted') return [`${result.deletedVersion + 1}:delete`]
      return 'version' in result ? [`${result.version}:${historyAction[result.status]}`] : []
    }).sort((a, b) => parseInt(a) - parseInt(b))
    t.same(reported, rows, 'every change an operation reported is one history row, and the history holds nothing else')
    const versions = rows.map(row => Number(row.split(':')[0]))
    t.same(versions, Array.from({ length: versions.length }, (_, i) => i + 1), 'history versions are 1..n without gaps or repeats')
    const actions = rows.map(row => row.split(':')[1])
    const mislabelled = actions.flatMap((action, i) => {
      const afterAbsent = i === 0 || actions[i - 1] === 'delete'
      const label = afterAbsent ? ['create', 'restore'] : ['update', 'append', 'delete', 'restore']
      return label.includes(action ?? '') ? [] : [`${i + 1}:${action} after ${actions[i - 1] ?? 'nothing'}`]
    })
    t.same(mislabelled, [], 'a change of an absent key is a create (or restore), of a present key never')
    const contents = await sql<{ action: string, content: string | null }[]>`
      select action, content from context_history where namespace = ${ns} and key = 'hot' order by version`
    const lostAppends = contents.flatMap((row, i) => {
      const before = contents[i - 1]
      if (row.action !== 'append' || before?.content == null) return []
      return row.content?.startsWith(`${before.content},a`) === true ? [] : [`version ${i + 1}`]
    })
    t.same(lostAppends, [], 'every append extends the version before it')
    const [last] = await sql<{ action: string, version: number }[]>`
      select action, version from context_history where namespace = ${ns} and key = 'hot' order by version desc limit 1`
    const entry = await store.read(ns, 'hot')
    if (last?.action === 'delete') t.equal(entry, null, 'deleted at the end')
    else t.equal(entry?.version, last?.version, 'the entry is the newest history row')
  })

  t.test('append reports sizes and refuses too large results', async (t) => {
    const ns = freshNamespace()
    t.same(await store.append(ns, 'a', 'é', '--', alice), { status: 'created', version: 1, bytes: 2 })
    t.same(await store.append(ns, 'a', 'b', '--', alice), { status: 'appended', version: 2, bytes: 5 })
    const tooLarge = await store.append(ns, 'a', 'x'.repeat(MAX_CONTENT_BYTES - 5), '--', alice)
    t.same(tooLarge, { status: 'too_large', bytes: MAX_CONTENT_BYTES + 2 })
    const entry = await store.read(ns, 'a')
    t.equal(entry?.content, 'é--b', 'nothing written')
    t.equal(entry?.version, 2)
    t.same(await historyVersions(ns, 'a'), ['1:create', '2:append'])

    t.same(await store.append(ns, 'fits', 'x'.repeat(MAX_CONTENT_BYTES), '', alice), { status: 'created', version: 1, bytes: MAX_CONTENT_BYTES },
      'exactly the limit is allowed')
    t.same(await store.append(ns, 'new', 'x'.repeat(MAX_CONTENT_BYTES + 1), '', alice), { status: 'too_large', bytes: MAX_CONTENT_BYTES + 1 })
    t.equal(await store.read(ns, 'new'), null)
    t.same(await historyVersions(ns, 'new'), [])
  })

  t.test('list: order, pagination, prefix taken literally, tag filter, previews', async (t) => {
    const ns = freshNamespace()
    const keys = ['a/1', 'a/2', 'a/3', 'a/4', 'a/5', 'b/1', 'a_b', 'axb', 'abc']
    for (const key of keys) await store.write(ns, key, `content of ${key}`, { tags: key.startsWith('a/') ? ['team'] : [] }, alice)
    await store.write('other', 'a/9', 'elsewhere', {}, alice)

    const first = await store.list(ns, { prefix: 'a/', limit: 2 })
    t.same(first.items.map(item => item.key), ['a/1', 'a/2'])
    t.equal(first.nextAfterKey, 'a/2')
    const second = await store.list(ns, { prefix: 'a/', limit: 2, afterKey: first.nextAfterKey ?? undefined })
    t.same(second.items.map(item => item.key), ['a/3', 'a/4'])
    const third = await store.list(ns, { prefix: 'a/', limit: 2, afterKey: second.nextAfterKey ?? undefined })
    t.same(third.items.map(item => item.key), ['a/5'])
    t.equal(third.nextAfterKey, null, 'no cursor at the end')
    const exact = await store.list(ns, { prefix: 'a/', limit: 5 })
    t.equal(exact.items.length, 5)
    t.equal(exact.nextAfterKey, null, 'no cursor when the page ends exactly at the last item')

    t.same((await store.list(ns, { prefix: 'a_', limit: 10 })).items.map(item => item.key), ['a_b'], '_ is literal')
    t.same((await store.list(ns, { prefix: 'a%', limit: 10 })).items, [], '% is literal (and no key contains it)')
    t.equal(escapeLike('a%b_c\\d'), 'a\\%b\\_c\\\\d')
    t.same((await store.list(ns, { prefix: 'a', limit: 20 })).items.map(item => item.key),
      ['a/1', 'a/2', 'a/3', 'a/4', 'a/5', 'a_b', 'abc', 'axb'], 'byte order of keys')
    t.same((await store.list(ns, { tag: 'team', limit: 20 })).items.map(item => item.key), ['a/1', 'a/2', 'a/3', 'a/4', 'a/5'])
    t.same((await store.list(ns, { tag: 'team', prefix: 'a/4', limit: 20 })).items.map(item => item.key), ['a/4'])

    const item = first.items[0]
    t.match(item, { key: 'a/1', version: 1, bytes: 'content of a/1'.length, tags: ['team'], updatedBy: 'user:alice', preview: 'content of a/1' })

    await store.write(ns, 'long', `  many\n\n\twords   here ${'y'.repeat(400)}`, {}, alice)
    const preview = (await store.list(ns, { prefix: 'long', limit: 1 })).items[0]?.preview ?? ''
    t.equal(preview.length, 160)
    t.ok(preview.startsWith('many words here yyy'), preview.slice(0, 30))
  })

  t.test('a prefix scan is served by the primary key in key order', async (t) => {
    const plan = await sql.begin(async (tx) => {
      await tx`set local enable_seqscan = off`
      return await tx<{ 'QUERY PLAN': string }[]>`
        explain select key from context_entries
        where namespace = ${'n'} and key >= ${'a/'} and key < ${'a/\u007f'} and key like ${'a/%'}
        order by key limit 11`
    })
    const text = plan.map(row => row['QUERY PLAN']).join('\n')
    t.match(text, /Index (Only )?Scan using context_entries_pkey/)
    t.notMatch(text, /Sort/, text)
  })

  t.test('delete, recreate, history', async (t) => {
    const ns = freshNamespace()
    await store.write(ns, 'k', 'v1', {}, alice)
    await store.write(ns, 'k', 'v2', {}, alice)
    t.same(await store.delete(ns, 'k', 1, bob), { status: 'conflict', currentVersion: 2 })
    t.equal((await store.read(ns, 'k'))?.version, 2, 'conflicting delete changed nothing')
    t.same(await store.delete(ns, 'k', 2, bob), { status: 'deleted', deletedVersion: 2 })
    t.equal(await store.read(ns, 'k'), null)
    t.same(await store.delete(ns, 'k', undefined, bob), { status: 'not_found' })
    t.same(await store.delete(ns, 'k', 2, bob), { status: 'not_found' })

    const recreated = await store.write(ns, 'k', 'v4', {}, alice)
    t.match(recreated, { status: 'created', version: 4 }, 'versions continue after the delete (3 is the delete)')
    t.same(await store.delete(ns, 'k', undefined, bob), { status: 'deleted', deletedVersion: 4 })
    t.match(await store.write(ns, 'k', 'v6', { expectedVersion: 0 }, alice), { status: 'created', version: 6 })
    t.same(await historyVersions(ns, 'k'), ['1:create', '2:update', '3:delete', '4:create', '5:delete', '6:create'])

    const page1 = await store.history(ns, 'k', { limit: 4 })
    t.same(page1.items.map(item => `${item.version}:${item.action}`), ['6:create', '5:delete', '4:create', '3:delete'], 'newest first')
    t.equal(page1.nextBeforeVersion, 3)
    const page2 = await store.history(ns, 'k', { limit: 4, beforeVersion: page1.nextBeforeVersion ?? undefined })
    t.same(page2.items.map(item => item.version), [2, 1])
    t.equal(page2.nextBeforeVersion, null)
    t.match(page1.items[0], { actor: 'user:alice', client: 'claude-code', bytes: 2 })
    t.match(page1.items[1], { actor: 'user:bob', client: null, bytes: null })
    t.ok(!Number.isNaN(Date.parse(page1.items[0]?.at ?? '')))
    t.same(await store.history(ns, 'never', { limit: 5 }), { items: [], nextBeforeVersion: null })
  })

  t.test('read an old version', async (t) => {
    const ns = freshNamespace()
    await store.write(ns, 'k', 'one', { tags: ['t1'] }, alice)
    await store.write(ns, 'k', 'two', { tags: ['t2'] }, bob)
    await store.delete(ns, 'k', undefined, alice)
    const old = await store.read(ns, 'k', 1)
    t.match(old, { key: 'k', content: 'one', version: 1, tags: ['t1'], updatedBy: 'user:alice', client: 'claude-code', expiresAt: null })
    t.match(await store.read(ns, 'k', 2), { content: 'two', version: 2, updatedBy: 'user:bob' })
    t.equal(await store.read(ns, 'k', 3), null, 'the delete row is no readable version')
    t.equal(await store.read(ns, 'k', 4), null)
  })

  t.test('restore', async (t) => {
    const ns = freshNamespace()
    await store.write(ns, 'k', 'one', { tags: ['first'] }, alice)
    await store.write(ns, 'k', 'two', { tags: ['second'], ttlSeconds: 3600 }, alice)
    t.same(await store.restore(ns, 'k', 1, bob), { status: 'restored', version: 3, restoredFrom: 1 })
    const restored = await store.read(ns, 'k')
    t.match(restored, { content: 'one', version: 3, tags: ['first'], updatedBy: 'user:bob', expiresAt: null })

    await store.delete(ns, 'k', undefined, alice)
    t.same(await store.restore(ns, 'k', 4, bob), { status: 'version_not_found' }, 'a delete row cannot be restored')
    t.same(await store.restore(ns, 'k', 99, bob), { status: 'version_not_found' })
    t.same(await store.restore(ns, 'nothing', 1, bob), { status: 'not_found' })
    t.same(await store.restore(ns, 'k', 2, bob), { status: 'restored', version: 5, restoredFrom: 2 }, 'works on a deleted key')
    t.match(await store.read(ns, 'k'), { content: 'two', version: 5, tags: ['second'] })
    t.same(await historyVersions(ns, 'k'), ['1:create', '2:update', '3:restore', '4:delete', '5:restore'])
  })

  t.test('expired entries are invisible and count as absent', async (t) => {
    const ns = freshNamespace()
    const ttl = await store.write(ns, 'temp', 'short-lived', { ttlSeconds: 3600, tags: ['old'] }, alice)
    t.match(ttl, { status: 'created', version: 1 })
    const live = await store.read(ns, 'temp')
    const expiresIn = Date.parse(live?.expiresAt ?? '') - Date.parse(live?.updatedAt ?? '')
    t.ok(expiresIn > 3590_000 && expiresIn <= 3600_000, `expires in ${expiresIn} ms`)
    await store.write(ns, 'other', 'stays', {}, alice)

    await sql`update context_entries set expires_at = now() - interval '1 second' where namespace = ${ns} and key = 'temp'`
    t.equal(await store.read(ns, 'temp'), null)
    t.same((await store.list(ns, { limit: 10 })).items.map(item => item.key), ['other'])
    t.same(await store.delete(ns, 'temp', 1, alice), { status: 'not_found' })
    t.same(await store.write(ns, 'temp', 'x', { expectedVersion: 1 }, alice), { status: 'conflict', currentVersion: null })

    const recreated = await store.write(ns, 'temp', 'new life', { expectedVersion: 0 }, bob)
    t.match(recreated, { status: 'created', version: 2 }, 'expected 0 succeeds and the version still goes up')
    const entry = await store.read(ns, 'temp')
    t.match(entry, { content: 'new life', version: 2, tags: [], expiresAt: null })
    t.same(await historyVersions(ns, 'temp'), ['1:create', '2:create'])

    await store.write(ns, 'temp', 'updated', {}, bob)
    t.equal((await store.read(ns, 'temp'))?.expiresAt, null, 'a write without ttl clears expiry')

    await store.append(ns, 'log', 'a', '|', alice)
    await sql`update context_entries set expires_at = now() - interval '1 second' where namespace = ${ns} and key = 'log'`
    t.same(await store.append(ns, 'log', 'b', '|', alice), { status: 'created', version: 2, bytes: 1 })
    t.equal((await store.read(ns, 'log'))?.content, 'b', 'append to an expired key starts afresh')
  })

  t.test('a ttl of one second expires', async (t) => {
    const ns = freshNamespace()
    await store.write(ns, 'blink', 'gone soon', { ttlSeconds: 1 }, alice)
    t.ok(await store.read(ns, 'blink'))
    await eventually(async () => await store.read(ns, 'blink') === null, { what: 'the one-second TTL to pass' })
    t.equal(await store.read(ns, 'blink'), null)
  })

  t.test('every history row records actor and client', async (t) => {
    const ns = freshNamespace()
    const carol: Actor = { principal: 'user:carol', client: 'claude.ai' }
    await store.write(ns, 'k', 'a', {}, carol)
    await store.append(ns, 'k', 'b', '', carol)
    await store.delete(ns, 'k', undefined, carol)
    await store.restore(ns, 'k', 2, carol)
    const rows = await sql<{ actor: string, client: string | null }[]>`
      select actor, client from context_history where namespace = ${ns}`
    t.equal(rows.length, 4)
    t.same(rows, Array(4).fill({ actor: 'user:carol', client: 'claude.ai' }))
    const entry = await store.read(ns, 'k')
    t.match(entry, { updatedBy: 'user:carol', client: 'claude.ai', content: 'ab' })
  })

  t.test('the schema rejects invalid keys', async (t) => {
    await t.rejects(store.write('ns', 'has space', 'x', {}, alice), { code: '23514' })
    await t.rejects(store.write('ns', 'k'.repeat(256), 'x', {}, alice), { code: '23514' })
    await t.rejects(store.write('', 'k', 'x', {}, alice), { code: '23514' })
    const [{ count }] = await sql<[{ count: number }]>`select count(*) as count from context_history where namespace in ('ns', '')`
    t.equal(count, 0, 'no history row for a refused write')
  })

  t.test('ping', async (t) => {
    await t.resolves(store.ping())
  })
})
