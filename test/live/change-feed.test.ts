import type { FastifyInstance } from 'fastify'
import type postgres from 'postgres'
import { test, type Test } from 'tap'
import { buildApp } from '../../app.js'
import { changesSince, type FeedChange, type FeedPosition } from '../../db/change-feed.js'
import { createContextStore } from '../../db/context-store.js'
import { loadConfig } from '../../schema/config.js'
import { ON_PGLITE, testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'
import { callTool, TEST_TOKEN } from '../helper.js'

interface Change { key: string, version: number, action: string }
interface FeedOutput { changes: Change[], next_cursor: string, more: boolean }

const WRITERS = 8
const OPERATIONS_PER_WRITER = 25

async function feedPage (t: Test, app: FastifyInstance, cursor: string | undefined, limit: number): Promise<FeedOutput> {
  const result = await callTool(app, 'changes_since', { limit, ...(cursor !== undefined && { cursor }) })
  if (result.isError === true) throw new Error(`changes_since failed: ${result.content[0]?.text ?? ''}`)
  return result.structuredContent as unknown as FeedOutput
}

/** One writer's operations, through the tools, alternating between the instances; some keys are shared by every writer. */
async function writer (apps: FastifyInstance[], index: number): Promise<void> {
  for (let op = 0; op < OPERATIONS_PER_WRITER; op++) {
    const app = apps[(index + op) % apps.length] as FastifyInstance
    const shared = `w/shared-${op % 3}`
    const own = `w/own-${index}`
    const [name, args] = op % 5 === 4
      ? ['delete_context', { key: own }]
      : op % 2 === 0
        ? ['append_context', { key: shared, content: `${index}.${op}` }]
        : ['write_context', { key: own, content: `${index}.${op}` }]
    const result = await callTool(app, name, args)
    if (result.isError === true && name !== 'delete_context') throw new Error(`${name} failed: ${result.content[0]?.text ?? ''}`)
  }
}

test('changes_since serves every change exactly once: concurrent writers on two instances, pages from either, a restart', async (t) => {
  const { url, sql } = await testDatabase(t)
  const config = loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent', DB_POOL_MAX: '4', EXPIRY_SWEEP_SECONDS: '0' })
  const started: FastifyInstance[] = []
  const start = async () => {
    const app = await buildApp(config)
    started.push(app)
    await app.ready()
    return app
  }
  t.teardown(() => Promise.all(started.map((app) => app.close())))
  const first = await start()
  const second = await start()

  const seen: Change[] = []
  let cursor: string | undefined
  let pages = 0
  /** Reads pages from the instances in turn until a page says nothing more is waiting. */
  const readAvailable = async (apps: FastifyInstance[]) => {
    for (;;) {
      const page = await feedPage(t, apps[pages++ % apps.length] as FastifyInstance, cursor, 7)
      seen.push(...page.changes)
      cursor = page.next_cursor
      if (!page.more) return
    }
  }
  const history = async () => (await sql<Change[]>`
    select key, version, action from context_history where namespace = 'default' order by key, version`)
  /** Reads until the feed has served as many changes as the history holds (rows pass the horizon as older transactions end). */
  const catchUp = async (apps: FastifyInstance[]) => {
    const expected = (await history()).length
    await eventually(async () => {
      await readAvailable(apps)
      return seen.length >= expected
    }, { what: `the feed to serve ${expected} changes` })
  }
  const assertExactlyOnce = async (t: Test, what: string) => {
    const served = seen.map((c) => `${c.key}@${c.version}:${c.action}`)
    t.equal(new Set(served).size, served.length, `${what}: no change served twice`)
    t.strictSame([...served].sort(), (await history()).map((c) => `${c.key}@${c.version}:${c.action}`).sort(), `${what}: every change of the history served`)
    const lastVersion = new Map<string, number>()
    const outOfOrder = seen.filter((c) => {
      const before = lastVersion.get(c.key) ?? 0
      lastVersion.set(c.key, c.version)
      return c.version <= before
    })
    t.strictSame(outOfOrder, [], `${what}: each key's versions in order`)
  }

  const state = { writing: true }
  const writers = Promise.all(Array.from({ length: WRITERS }, (_, index) => writer([first, second], index))).finally(() => { state.writing = false })
  // Reading while the writers write is where a feed ordered by commit-unsafe ids would skip rows.
  while (state.writing) await readAvailable([first, second])
  await writers
  await catchUp([first, second])
  t.ok(pages > 10, `read in many pages while writing (${pages})`)
  await assertExactlyOnce(t, 'two instances')

  // One instance goes away and a new one starts on the same database: the cursor still holds.
  await second.close()
  const third = await start()
  await callTool(third, 'write_context', { key: 'w/after-restart', content: 'x' })
  await callTool(first, 'append_context', { key: 'w/shared-0', content: 'y' })
  const before = seen.length
  await catchUp([third, first])
  t.strictSame(seen.slice(before).map((c) => c.key).sort(), ['w/after-restart', 'w/shared-0'], 'after the restart only the new changes')
  await assertExactlyOnce(t, 'after a restart')
  t.equal((await feedPage(t, third, cursor, 100)).changes.length, 0, 'nothing more to serve')
})

test('a row that commits after a later-numbered one is served, not skipped', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: 1000 })
  const actor = { principal: 'test', client: null }
  await store.write('default', 'before', 'x', {}, actor)
  const served: FeedChange[] = []
  let position: FeedPosition | null = null
  const read = async () => {
    const page = await changesSince(sql, { namespace: 'default', after: position, limit: 100 })
    served.push(...page.changes)
    position = page.position
    return page
  }
  const readUntil = (count: number, what: string) => eventually(async () => {
    await read()
    return served.length >= count
  }, { what })
  await readUntil(1, 'the first change')

  let laterWrite: Promise<unknown> | undefined
  let readMeanwhile: Promise<unknown> | undefined
  await sql.begin(async (tx) => {
    // The slow transaction takes its history id first...
    await createContextStore(tx as unknown as postgres.Sql, { maxContentBytes: 1000 }).write('default', 'slow', 'x', {}, actor)
    // ...and a later write commits while it is still open (on the embedded database the socket
    // server runs one transaction at a time: there the write and the read wait for this commit).
    laterWrite = store.write('default', 'fast', 'x', {}, actor)
    readMeanwhile = read()
    if (!ON_PGLITE) {
      await laterWrite
      await readMeanwhile
      t.notOk(served.some((c) => c.key === 'fast'), 'the later write is held back while an older transaction is open')
    }
  })
  await laterWrite
  await readMeanwhile
  await readUntil(3, 'both changes')
  const ids = await sql<Array<{ key: string, id: number }>>`select key, id from context_history where key in ('slow', 'fast') order by id`
  t.strictSame(ids.map((row) => row.key), ['slow', 'fast'], 'the slow transaction has the smaller id')
  t.strictSame(served.map((c) => c.key), ['before', 'slow', 'fast'], 'each change once, the slow one included')
})
