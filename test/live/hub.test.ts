import { test } from 'tap'
import { changesSince, FEED_START } from '../../db/change-feed.js'
import { createContextStore } from '../../db/context-store.js'
import { createHub, type ChangeBatch } from '../../live/hub.js'
import { testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'

const actor = { principal: 'user:hub-test', client: null }

test('the hub: bounded replays, and live changes to every sink once', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: 10_000 })
  const errors: unknown[] = []
  const hub = createHub(sql, { onError: (error) => errors.push(error), pageSize: 3, maxReplayPages: 2 })
  t.teardown(() => hub.close())
  // On a shared PostgreSQL server, another database's transaction can hold the feed's horizon back for a while.
  const served = async (count: number): Promise<void> => {
    await eventually(async () => (await changesSince(sql, { namespace: 'replayed', after: null, limit: 100 })).changes.length === count, { what: `the feed to serve ${count} changes` })
  }
  for (let index = 0; index < 5; index++) await store.write('replayed', `k${index}`, 'x', {}, actor)
  await served(5)

  t.test('a replay within its page budget ends complete, at the last change', async (t) => {
    const batches: ChangeBatch[] = []
    const ended = await hub.replay('replayed', FEED_START, (batch) => batches.push(batch), () => true)
    t.equal(ended.status, 'complete')
    const keys = batches.flatMap((batch) => batch.changes.map((change) => change.key))
    t.same(keys, ['k0', 'k1', 'k2', 'k3', 'k4'], 'every change once, in order, in pages of 3')
    t.equal(batches.length, 2)
  })

  t.test('a client further behind than the budget is told so, with where the replay stopped', async (t) => {
    for (let index = 5; index < 8; index++) await store.write('replayed', `k${index}`, 'x', {}, actor)
    await served(8)
    const batches: ChangeBatch[] = []
    const ended = await hub.replay('replayed', FEED_START, (batch) => batches.push(batch), () => true)
    t.equal(ended.status, 'too_far_behind')
    t.equal(batches.flatMap((batch) => batch.changes).length, 6, 'two pages of 3 were read, no more')
  })

  t.test('a replay whose stream went away stops reading', async (t) => {
    let current = true
    const batches: ChangeBatch[] = []
    const ended = await hub.replay('replayed', FEED_START, (batch) => {
      batches.push(batch)
      current = false
    }, () => current)
    t.equal(ended.status, 'abandoned')
    t.equal(batches.length, 1, 'nothing was read after the stream went away')
  })

  t.test('live: a change committed after join resolves reaches each sink once; leaving frees the namespace', async (t) => {
    const first: string[] = []
    const second: string[] = []
    const leaveFirst = await hub.join('live', (batch) => first.push(...batch.changes.map((change) => `${change.key}@${change.version}`)))
    const leaveSecond = await hub.join('live', (batch) => second.push(...batch.changes.map((change) => `${change.key}@${change.version}`)))
    t.equal(hub.counts().namespaces, 1)
    await store.write('live', 'a', 'one', {}, actor)
    await store.write('live', 'a', 'two', {}, actor)
    hub.changed({ namespace: 'live', key: 'a', version: 2, action: 'update' })
    await eventually(() => first.length === 2 && second.length === 2, { what: 'both sinks to get both versions' })
    t.same(first, ['a@1', 'a@2'])
    t.same(second, ['a@1', 'a@2'])
    hub.changed({ namespace: 'live', key: 'a', version: 2, action: 'update' }) // a notice for a change already served
    await eventually(() => hub.counts().timers === 0, { what: 'no retry left pending for a served change' })
    leaveFirst()
    leaveSecond()
    t.same(hub.counts(), { namespaces: 0, sinks: 0, timers: 0 })
    t.same(errors, [])
  })
})
