import { randomBytes } from 'node:crypto'
import type postgres from 'postgres'
import type { Test } from 'tap'
import { createSql } from '../db/connect.js'
import { startEmbeddedPostgres } from '../db/embedded.js'
import { migrate } from '../db/migrate.js'
import { pgliteTemplate } from './pglite-template.js'

/** Whether this run's test databases are embedded PGlite (no TEST_DATABASE_URL) rather than a PostgreSQL server. */
export const ON_PGLITE = (process.env.TEST_DATABASE_URL ?? '') === ''

export interface TestDatabase {
  url: string
  sql: postgres.Sql
}

type TeardownHost = Pick<Test, 'teardown'>

const POOL_MAX = 10
const CONNECT_TIMEOUT_MS = 10_000

/**
 * An isolated, migrated database for one test file, removed at teardown. With TEST_DATABASE_URL a
 * fresh database on that server; otherwise an in-memory embedded PGlite.
 */
export async function testDatabase (t: TeardownHost): Promise<TestDatabase> {
  const database = await testDatabaseUrlForEmptyDb(t)
  await migrate(database.sql)
  return database
}

/** Like testDatabase, but not migrated (for migration tests). */
export async function testDatabaseUrlForEmptyDb (t: TeardownHost): Promise<TestDatabase> {
  const serverUrl = process.env.TEST_DATABASE_URL
  const database = ON_PGLITE || serverUrl === undefined
    ? await startEmbedded()
    : await createServerDatabase(serverUrl)
  const sql = createSql(database.url, { max: POOL_MAX, connectTimeoutMs: CONNECT_TIMEOUT_MS })
  t.teardown(async () => {
    try {
      await sql.end({ timeout: 5 })
    } finally {
      await database.dispose()
    }
  })
  return { url: database.url, sql }
}

interface DisposableDatabase {
  url: string
  dispose(): Promise<void>
}

async function startEmbedded (): Promise<DisposableDatabase> {
  const embedded = await startEmbeddedPostgres({ loadDataDir: await pgliteTemplate() })
  return { url: embedded.url, dispose: embedded.close }
}

async function createServerDatabase (serverUrl: string): Promise<DisposableDatabase> {
  const name = `scm_test_${randomBytes(6).toString('hex')}`
  const admin = createSql(serverUrl, { max: 1, connectTimeoutMs: CONNECT_TIMEOUT_MS })
  try {
    await admin`create database ${admin(name)}`
  } catch (error) {
    await admin.end({ timeout: 5 })
    throw error
  }
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    dispose: async () => {
      try {
        await admin`drop database if exists ${admin(name)} with (force)`
      } finally {
        await admin.end({ timeout: 5 })
      }
    }
  }
}

/**
 * Locks an entry's row from a connection of the test's own, so that a write to it waits until
 * `release()` — a way to keep a call in flight without sleeping. Resolves once the lock is held.
 */
export async function holdEntryLock (sql: postgres.Sql, namespace: string, key: string): Promise<{ release: () => Promise<void> }> {
  let release: () => void = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  let locked: () => void = () => {}
  const isLocked = new Promise<void>((resolve) => { locked = resolve })
  const holder = sql.begin(async (tx) => {
    await tx`select key from context_entries where namespace = ${namespace} and key = ${key} for update`
    locked()
    await released
  })
  await Promise.race([isLocked, holder])
  return {
    release: async () => {
      release()
      await holder
    }
  }
}
