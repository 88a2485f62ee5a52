import { test } from 'tap'
import { createContextStore } from '../../db/context-store.js'
import { testDatabase } from '../db-helper.js'

test('race', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createContextStore(sql, { maxContentBytes: 100000 })
  for (let round = 0; round < 30; round++) {
    const ns = `r${round}`
    await Promise.all(Array.from({ length: 60 }, (_, i) => {
      switch (i % 4) {
        case 0: return store.write(ns, 'hot', `w${i}`, {}, { principal: 'writer', client: String(i) })
        case 1: return store.append(ns, 'hot', `a${i}`, ',', { principal: 'appender', client: String(i) })
        case 2: return store.delete(ns, 'hot', undefined, { principal: 'deleter', client: String(i) })
        default: return store.restore(ns, 'hot', 1, { principal: 'restorer', client: String(i) })
      }
    }))
    const rows = await sql<{ version: number, action: string, actor: string }[]>`select version, action, actor, client from context_history where namespace = ${ns} order by version`
    for (let i = 1; i < rows.length; i++) {
      if (rows[i - 1]!.action === 'delete' && !['create', 'restore'].includes(rows[i]!.action)) console.log(ns, rows.slice(Math.max(0, i - 3), i + 2))
    }
  }
})
