import postgres from 'postgres'
import { createSql } from '../db/connect.js'
import { createContextStore } from '../db/context-store.js'
import { migrate } from '../db/migrate.js'
import { keyName, randomContent } from './calls.js'

export const BENCH_DATABASE = 'scm_bench'
export const NAMESPACE = 'default'
const SEED_CONCURRENCY = 16

/** The URL of the bench database on the same server as `adminUrl`. */
export function benchDatabaseUrl (adminUrl: string): string {
  const url = new URL(adminUrl)
  url.pathname = `/${BENCH_DATABASE}`
  return url.toString()
}

/** Drops and recreates the bench database, applies the project's migrations, and seeds `keys` entries. */
export async function prepareDatabase (adminUrl: string, keys: number): Promise<string> {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`drop database if exists ${BENCH_DATABASE} with (force)`)
    await admin.unsafe(`create database ${BENCH_DATABASE}`)
  } finally {
    await admin.end({ timeout: 5 })
  }

  const url = benchDatabaseUrl(adminUrl)
  const sql = createSql(url, { max: SEED_CONCURRENCY, connectTimeoutMs: 10_000 })
  try {
    await migrate(sql)
    const store = createContextStore(sql, { maxContentBytes: 102400 })
    const actor = { principal: 'bench-seed', client: null }
    for (let start = 0; start < keys; start += SEED_CONCURRENCY) {
      const batch = []
      for (let i = start; i < Math.min(keys, start + SEED_CONCURRENCY); i++) {
        batch.push(store.write(NAMESPACE, keyName(i), randomContent(), {}, actor))
      }
      await Promise.all(batch)
    }
    // Fresh statistics, so the first run does not plan against an empty table.
    await sql`analyze`
  } finally {
    await sql.end({ timeout: 5 })
  }
  return url
}
