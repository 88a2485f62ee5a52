import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { createContextStore } from '../../db/context-store.js'
import { openDatabase } from '../../db/open.js'
import { loadConfig } from '../../schema/config.js'

// The embedded database's socket server interleaves the extended-protocol messages of concurrent
// connections (electric-sql/pglite#1046): with several pooled connections, a transaction beside
// another statement failed with 'portal "" does not exist' in most rounds.
test('on the embedded database, transactions run beside concurrent statements', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-concurrency-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const database = await openDatabase(loadConfig({ DATA_DIR: dataDir, LOG_LEVEL: 'silent' }), () => {})
  t.teardown(() => database.close())
  const { sql } = database
  const store = createContextStore(sql, { maxContentBytes: 100 * 1024 })
  const actor = { principal: 'test', client: null }
  const failures: string[] = []
  for (let round = 0; round < 20; round++) {
    const results = await Promise.allSettled([
      sql.begin(async (tx) => {
        await tx`insert into revoked_jtis (jti, expires_at) values (${`round-${round}`}, now() + interval '1 hour')`
        return await tx`select count(*)::int as count from revoked_jtis`
      }),
      store.write('default', `key-${round}`, `content ${round}`, {}, actor),
      store.read('default', `key-${Math.max(0, round - 1)}`),
      sql`select 1`
    ])
    for (const result of results) if (result.status === 'rejected') failures.push((result.reason as Error).message)
  }
  t.same(failures, [], 'no statement failed')
  t.equal((await sql<[{ count: number }]>`select count(*)::int as count from revoked_jtis where jti like 'round-%'`)[0].count, 20, 'every transaction committed')
  t.equal((await store.list('default', { limit: 100 })).items.length, 20, 'every write committed')
})
