import { test } from 'tap'
import { testDatabase } from '../db-helper.js'

// patches/postgres+*.patch (applied by npm's postinstall, patch-package): postgres.js's Query
// settles through prototype methods instead of two closures kept on every query, which kept each
// query's result alive past V8's young-generation collections (README, Benchmark > Search mix).
// If an upgrade of postgres.js drops the patch, this fails before the garbage comes back.
test('postgres.js queries settle through prototype methods, not closures kept on each query', async (t) => {
  const { sql } = await testDatabase(t)
  const query = sql<Array<{ one: number }>>`select 1 as one`
  t.notOk(Object.hasOwn(query, 'resolve'), 'no resolve closure on the query')
  t.notOk(Object.hasOwn(query, 'reject'), 'no reject closure on the query')
  t.equal(typeof (query as unknown as { resolve?: unknown }).resolve, 'function', 'resolve is a method of its class')
  t.strictSame([...await query], [{ one: 1 }], 'the query answers as before')
  await t.rejects(sql`select * from no_such_table`, { code: '42P01' }, 'and fails as before')
})
