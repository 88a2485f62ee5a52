import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import type postgres from 'postgres'
import { test } from 'tap'
import { buildApp, loggerOptions } from '../app.js'
import { createSql } from '../db/connect.js'
import { createContextStore, createMaintenanceStore, type Actor } from '../db/context-store.js'
import configPlugin from '../plugins/config.js'
import dbPlugin from '../plugins/db.js'
import expiryPlugin, { type ExpiryPluginOptions } from '../plugins/expiry.js'
import { ConfigError, loadConfig, type Config } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { callTool, TEST_TOKEN, toolErrorOf } from './helper.js'

const alice: Actor = { principal: 'user:alice', client: null }
const MAX_CONTENT_BYTES = 100_000

async function expire (sql: postgres.Sql, namespace: string, keys: string[]): Promise<void> {
  await sql`update context_entries set expires_at = now() - interval '1 second' where namespace = ${namespace} and key in ${sql(keys)}`
}

async function historyOf (sql: postgres.Sql, namespace: string, key: string): Promise<string[]> {
  const rows = await sql<Array<{ version: number, action: string }>>`
    select version, action from context_history where namespace = ${namespace} and key = ${key} order by version`
  return rows.map((row) => `${row.version}:${row.action}`)
}

async function rowCount (sql: postgres.Sql, table: 'context_entries' | 'context_history', namespace: string): Promise<number> {
  const [row] = await sql<[{ count: number }]>`select count(*) as count from ${sql(table)} where namespace = ${namespace}`
  return row.count
}

/** Log lines of an app, parsed; `next(message)` resolves with the first line (so far or to come) whose msg starts so. */
function logSink (): { stream: Writable, lines: Array<Record<string, unknown>>, next: (message: string) => Promise<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const waiting: Array<{ message: string, resolve: (line: Record<string, unknown>) => void }> = []
  const matches = (line: Record<string, unknown>, message: string) => typeof line.msg === 'string' && line.msg.startsWith(message)
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const text of chunk.toString('utf8').split('\n')) {
        if (text === '') continue
        const line = JSON.parse(text) as Record<string, unknown>
        lines.push(line)
        for (const waiter of waiting.filter(({ message }) => matches(line, message))) {
          waiting.splice(waiting.indexOf(waiter), 1)
          waiter.resolve(line)
        }
      }
      done()
    }
  })
  const next = (message: string) => new Promise<Record<string, unknown>>((resolve) => {
    const seen = lines.find((line) => matches(line, message))
    if (seen !== undefined) resolve(seen)
    else waiting.push({ message, resolve })
  })
  return { stream, lines, next }
}

/** Expired entries with their history, inserted directly: `count` keys k/0001… in `namespace`. */
async function seedExpired (sql: postgres.Sql, namespace: string, count: number): Promise<void> {
  await sql`
    insert into context_history (namespace, key, version, action, content, tags, actor, client)
    select ${namespace}, 'k/' || lpad(g::text, 4, '0'), 1, 'create', 'x', '{}', 'user:seed', null from generate_series(1, ${count}) g`
  await sql`
    insert into context_entries (namespace, key, content, version, updated_by, expires_at)
    select ${namespace}, 'k/' || lpad(g::text, 4, '0'), 'x', 1, 'user:seed', now() - interval '1 second' from generate_series(1, ${count}) g`
}

/** Only what the sweep needs (config, db, expiry), so the test can set the plugin's batch options. */
async function sweeper (config: Config, options: ExpiryPluginOptions, stream: Writable): Promise<FastifyInstance> {
  const app = Fastify({ logger: { ...loggerOptions('debug', false), stream } })
  await app.register(configPlugin, { config })
  await app.register(dbPlugin)
  await app.register(expiryPlugin, options)
  return app
}

test('EXPIRY_SWEEP_SECONDS: default 60, 0 turns the sweep off, negative refused', async (t) => {
  t.equal(loadConfig({}).EXPIRY_SWEEP_SECONDS, 60)
  t.equal(loadConfig({ EXPIRY_SWEEP_SECONDS: '0' }).EXPIRY_SWEEP_SECONDS, 0)
  t.throws(() => loadConfig({ EXPIRY_SWEEP_SECONDS: '-1' }), ConfigError)
})

test('an expired entry is invisible at once, before any sweep removes it', async (t) => {
  const { url, sql } = await testDatabase(t)
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent', EXPIRY_SWEEP_SECONDS: '0' }))
  t.teardown(() => app.close())
  await app.ready()

  const written = await callTool(app, 'write_context', { key: 'short-lived', content: 'gone soon', ttl_seconds: 1 })
  t.notOk(written.isError)
  t.equal((await callTool(app, 'read_context', { key: 'short-lived' })).structuredContent.content, 'gone soon')
  await sleep(1200)
  const read = await callTool(app, 'read_context', { key: 'short-lived' })
  t.equal(toolErrorOf(read)?.code, 'CTX_2001', 'reading it: not found')
  const listed = await callTool(app, 'list_context', {})
  t.same(listed.structuredContent.items, [], 'listing: absent')
  t.equal(await rowCount(sql, 'context_entries', 'default'), 1, 'the row is still stored: with the sweep off nothing removes it')
})

test('the sweep removes expired rows in batches, keeps their history and every delete tombstone', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: MAX_CONTENT_BYTES })
  const ns = 'sweep'
  const expiredKeys = ['e1', 'e2', 'e3', 'e4', 'e5']
  for (const key of expiredKeys) {
    await store.write(ns, key, `${key} v1`, { ttlSeconds: 60 }, alice)
    await store.write(ns, key, `${key} v2`, { ttlSeconds: 60 }, alice)
  }
  await store.write(ns, 'later', 'still valid', { ttlSeconds: 3600 }, alice)
  await store.write(ns, 'forever', 'no ttl', {}, alice)
  await store.write(ns, 'deleted', 'x', {}, alice)
  await store.delete(ns, 'deleted', undefined, alice)
  await store.write('elsewhere', 'e1', 'other namespace, expired too', { ttlSeconds: 60 }, alice)
  await expire(sql, ns, expiredKeys)
  await expire(sql, 'elsewhere', ['e1'])
  const historyBefore = await rowCount(sql, 'context_history', ns)

  t.equal(await createMaintenanceStore(sql).sweepExpired(2), 6, 'six expired rows removed, two per statement')
  const remaining = await sql<Array<{ key: string }>>`select key from context_entries where namespace = ${ns} order by key`
  t.same(remaining.map((row) => row.key), ['deleted', 'forever', 'later'], 'unexpired entries and the tombstone stay')
  t.equal(await rowCount(sql, 'context_entries', 'elsewhere'), 0)
  t.equal(await rowCount(sql, 'context_history', ns), historyBefore, 'no history row removed')
  t.same(await historyOf(sql, ns, 'e3'), ['1:create', '2:update'])
  t.equal((await store.read(ns, 'e3', 1))?.content, 'e3 v1', 'old versions stay readable')
  t.equal(await store.read(ns, 'deleted'), null)
  t.equal(await createMaintenanceStore(sql).sweepExpired(2), 0, 'a second sweep finds nothing')
})

test('a swept key continues its version numbering: versions never repeat', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: MAX_CONTENT_BYTES })
  const maintenance = createMaintenanceStore(sql)
  const ns = 'numbering'
  const sweptAgain = async (key: string) => {
    await expire(sql, ns, [key])
    t.equal(await maintenance.sweepExpired(100), 1, `${key} swept`)
  }

  await store.write(ns, 'w', 'v1', { ttlSeconds: 60 }, alice)
  await store.write(ns, 'w', 'v2', { ttlSeconds: 60 }, alice)
  await sweptAgain('w')
  t.match(await store.write(ns, 'w', 'v3', { expectedVersion: 0 }, alice), { status: 'created', version: 3 }, 'write: created, as version 3')
  t.same(await historyOf(sql, ns, 'w'), ['1:create', '2:update', '3:create'])
  t.same(await store.write(ns, 'w', 'stale', { expectedVersion: 2 }, alice), { status: 'conflict', currentVersion: 3 })

  await store.write(ns, 'a', 'line', { ttlSeconds: 60 }, alice)
  await sweptAgain('a')
  t.match(await store.append(ns, 'a', 'fresh', '\n', alice), { status: 'created', version: 2 }, 'append after a sweep starts over at the next version')
  t.equal((await store.read(ns, 'a'))?.content, 'fresh', 'not appended to the swept content')

  await store.write(ns, 'r', 'original', { ttlSeconds: 60 }, alice)
  await sweptAgain('r')
  t.match(await store.restore(ns, 'r', 1, alice), { status: 'restored', version: 2 }, 'restore after a sweep')
  t.equal((await store.read(ns, 'r'))?.content, 'original')

  await store.write(ns, 'd', 'x', { ttlSeconds: 60 }, alice)
  await sweptAgain('d')
  t.same(await store.delete(ns, 'd', undefined, alice), { status: 'not_found' }, 'deleting a swept key: not found, as for an expired one')
  t.same(await historyOf(sql, ns, 'd'), ['1:create'], 'and no history row')
})

test('two instances sweeping at once: no failure, every row removed exactly once, history intact', async (t) => {
  const { url, sql } = await testDatabase(t)
  const ns = 'concurrent'
  const keys = 1200
  await sql`
    insert into context_history (namespace, key, version, action, content, tags, actor, client)
    select ${ns}, 'k/' || g, 1, 'create', 'x', '{}', 'user:seed', null from generate_series(1, ${keys}) g`
  await sql`
    insert into context_entries (namespace, key, content, version, updated_by, expires_at)
    select ${ns}, 'k/' || g, 'x', 1, 'user:seed', now() - interval '1 second' from generate_series(1, ${keys}) g`
  const other = createSql(url, { max: 2, connectTimeoutMs: 10_000 })
  t.teardown(() => other.end({ timeout: 5 }))

  const removed = await Promise.all([createMaintenanceStore(sql).sweepExpired(50), createMaintenanceStore(other).sweepExpired(50)])
  t.equal(removed[0] + removed[1], keys, `every row counted once (${removed.join(' + ')})`)
  t.equal(await rowCount(sql, 'context_entries', ns), 0)
  t.equal(await rowCount(sql, 'context_history', ns), keys)
})

test('sweeps racing writers that take over expired keys: every write lands, on the next version', async (t) => {
  const { url, sql } = await testDatabase(t)
  const ns = 'race'
  const store = createContextStore(sql, { maxContentBytes: MAX_CONTENT_BYTES })
  const keys = Array.from({ length: 150 }, (_, index) => `k/${index}`)
  for (const key of keys) await store.write(ns, key, 'old', { ttlSeconds: 60 }, alice)
  await expire(sql, ns, keys)
  const other = createSql(url, { max: 4, connectTimeoutMs: 10_000 })
  t.teardown(() => other.end({ timeout: 5 }))
  const otherStore = createContextStore(other, { maxContentBytes: MAX_CONTENT_BYTES })

  const [writes] = await Promise.all([
    Promise.all(keys.map((key, index) => (index % 2 === 0 ? store : otherStore).write(ns, key, 'new', {}, alice))),
    createMaintenanceStore(sql).sweepExpired(10),
    createMaintenanceStore(other).sweepExpired(10)
  ])
  t.same(new Set(writes.map((result) => JSON.stringify({ status: result.status, version: 'version' in result ? result.version : null }))),
    new Set([JSON.stringify({ status: 'created', version: 2 })]), 'each write created its key again as version 2')
  const rows = await sql<Array<{ versions: string }>>`
    select string_agg(version::text || ':' || action, ',' order by version) as versions
    from context_history where namespace = ${ns} group by key`
  t.same(new Set(rows.map((row) => row.versions)), new Set(['1:create,2:create']), 'history: each version once')
  t.equal(await rowCount(sql, 'context_entries', ns), keys.length, 'every key readable again')
  t.equal(await createMaintenanceStore(sql).sweepExpired(10), 0, 'nothing expired is left to sweep')
})

test('the expiry plugin sweeps on its interval on every instance, logs what it removed, and stops on close', async (t) => {
  const { url, sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: MAX_CONTENT_BYTES })
  const ns = 'default'
  const keys = Array.from({ length: 40 }, (_, index) => `p/${index}`)
  for (const key of keys) await store.write(ns, key, 'v', { ttlSeconds: 60 }, alice)
  await store.write(ns, 'kept', 'no ttl', {}, alice)

  const config = loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, EXPIRY_SWEEP_SECONDS: '1', DB_POOL_MAX: '2' })
  const logs = [logSink(), logSink()]
  const apps: FastifyInstance[] = []
  for (const { stream } of logs) {
    const app = await buildApp(config, { logger: { ...loggerOptions('info', false), stream } })
    apps.push(app)
    await app.ready()
  }
  t.teardown(() => Promise.all(apps.map((app) => app.close())))
  await expire(sql, ns, keys)

  const deadline = Date.now() + 20_000
  while (await rowCount(sql, 'context_entries', ns) > 1 && Date.now() < deadline) await sleep(100)
  t.equal(await rowCount(sql, 'context_entries', ns), 1, 'the expired rows are gone, the other stays')
  t.equal(await rowCount(sql, 'context_history', ns), keys.length + 1, 'their history stays')

  await Promise.all(apps.map((app) => app.close()))
  const messages = logs.flatMap(({ lines }) => lines.filter((line) => typeof line.msg === 'string' && line.msg.startsWith('expiry sweep')))
  t.same(messages.filter((line) => line.level !== 30), [], 'no sweep failed')
  t.equal(messages.reduce((sum, line) => sum + (line.removed as number), 0), keys.length, 'the instances logged every removal once between them')

  await store.write(ns, 'after-close', 'v', { ttlSeconds: 60 }, alice)
  await expire(sql, ns, ['after-close'])
  await sleep(1500)
  t.equal(await rowCount(sql, 'context_entries', ns), 2, 'closed instances sweep no more')
  t.equal(logs.flatMap(({ lines }) => lines).filter((line) => line.level as number >= 40).length, 0, 'and log no error after close')
})

test('a sweep runs at most maxBatches statements; the rest waits for the next interval', async (t) => {
  const { url, sql } = await testDatabase(t)
  await seedExpired(sql, 'capped', 50)
  const log = logSink()
  const app = await sweeper(loadConfig({ DATABASE_URL: url, EXPIRY_SWEEP_SECONDS: '1', DB_POOL_MAX: '2' }), { batchSize: 10, maxBatches: 3 }, log.stream)
  t.teardown(() => app.close())
  await app.ready()

  const first = await log.next('expiry sweep removed')
  t.match(first, { removed: 30, backlog: true }, 'the first sweep stops after three full batches and says more may wait')
  const deadline = Date.now() + 20_000
  while (await rowCount(sql, 'context_entries', 'capped') > 0 && Date.now() < deadline) await sleep(100)
  t.equal(await rowCount(sql, 'context_entries', 'capped'), 0, 'the next sweep takes the rest')
  await app.close()
  const removals = log.lines.filter((line) => line.msg === 'expiry sweep removed expired entries')
  t.same(removals.map((line) => [line.removed, line.backlog]), [[30, true], [20, undefined]], 'thirty, then the remaining twenty')
})

test('close does not wait for a backlog: the sweep stops after the statement in flight, and the next start sweeps the rest', async (t) => {
  const { url, sql } = await testDatabase(t)
  const ns = 'backlog'
  await seedExpired(sql, ns, 100)
  const config = loadConfig({ DATABASE_URL: url, EXPIRY_SWEEP_SECONDS: '1', DB_POOL_MAX: '2' })
  const options = { batchSize: 10, maxBatches: 100 } // room for the whole backlog in one sweep
  const log = logSink()
  const app = await sweeper(config, options, log.stream)

  // A transaction holding a lock the sweep's DELETE needs keeps its first batch in flight until
  // close has begun; it lets go from a preClose hook that runs after the plugin's own.
  let release = (): void => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  let locked = (): void => {}
  const lockHeld = new Promise<void>((resolve) => { locked = resolve })
  const blocker: { transaction?: Promise<unknown> } = {}
  app.addHook('preClose', async () => {
    release()
    await blocker.transaction
  })
  await app.ready()
  blocker.transaction = sql.begin(async (tx) => {
    await tx`lock table context_entries in share mode`
    locked()
    await released
  })
  await lockHeld
  t.equal(log.lines.filter((line) => line.msg === 'expiry sweep started').length, 0, 'the lock was taken before the first sweep began')
  await log.next('expiry sweep started')

  await app.close()
  t.pass('close completed with most of the backlog still there')
  const left = await rowCount(sql, 'context_entries', ns)
  t.equal(left, 90, 'only the batch in flight when close began was removed')
  t.same(log.lines.filter((line) => line.msg === 'expiry sweep removed expired entries').map((line) => line.removed), [10])
  t.same(log.lines.filter((line) => (line.level as number) >= 40), [], 'no warning or error')

  const nextLog = logSink()
  const next = await sweeper(config, options, nextLog.stream)
  t.teardown(() => next.close())
  await next.ready()
  const deadline = Date.now() + 20_000
  while (await rowCount(sql, 'context_entries', ns) > 0 && Date.now() < deadline) await sleep(100)
  t.equal(await rowCount(sql, 'context_entries', ns), 0, 'the next start sweeps what was left')
  t.equal(await rowCount(sql, 'context_history', ns), 100, 'history intact')
})
