import { cp, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { createSql } from '../../db/connect.js'
import { createContextStore, createMaintenanceStore, type ImportedKey } from '../../db/context-store.js'
import { migrate } from '../../db/migrate.js'
import { generateNotes, type Note } from '../../test/fixtures/notes.js'

// The search benchmark's database: `entries` generated notes (test/fixtures/notes.ts) in the
// schema of the release before search, then the search migrations (005, 007), then the later ones
// (009, the tag index; 010, the recency index), each step applied while a reader and a writer keep working on the table,
// timed: what README "Upgrading" reports as the migrations' locks.

export const SEARCH_BENCH_DATABASE = 'scm_bench_search'
export const NAMESPACE = 'default'
const SEARCH_MIGRATION = 5
const CHANGE_FEED_MIGRATION = 6
/** The last of the search migrations: the first step under load ends here, the second applies the rest. */
const SEARCH_STATEMENT_TRIGGERS_MIGRATION = 7
const IMPORT_BATCH = 500
/**
 * The notes were written one after another, SEED_SPACING_MS apart, the last of them now (100k
 * notes span about a year): recency orders them as a real namespace's would, and the heap holds
 * them in the order they were written. (All written at one instant, the newest-first order was
 * key order, scattered over the heap.)
 */
const SEED_SPACING_MS = 5 * 60_000
const MIGRATIONS_DIR = fileURLToPath(new URL('../../db/migrations/', import.meta.url))

export interface ProbeStats {
  count: number
  maxMs: number
  p99Ms: number
}

export interface MigrationReport {
  /** The migration files this step applied. */
  applied: string[]
  entries: number
  seedSeconds: number
  migrationMs: number
  /** Reads (read_context's statement) and writes (write_context's) that ran while the migration did. */
  reads: ProbeStats
  writes: ProbeStats
  /** The longest time no write completed while the migration ran: how long writes were held. */
  longestWriteGapMs: number
}

function stats (durations: number[]): ProbeStats {
  const sorted = [...durations].sort((a, b) => a - b)
  return {
    count: sorted.length,
    maxMs: sorted.at(-1) ?? 0,
    p99Ms: sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] ?? 0
  }
}

function importedKey (note: Note, at: string): ImportedKey {
  return {
    namespace: NAMESPACE,
    key: note.key,
    current: { version: 1, content: note.content, tags: note.tags, created_at: at, updated_at: at, updated_by: 'bench-seed', client: null, expires_at: null },
    history: [{ version: 1, action: 'create', content: note.content, tags: note.tags, actor: 'bench-seed', client: null, at }]
  }
}

/** The bench database's URL on the server of `adminUrl`. */
export function searchBenchUrl (adminUrl: string): string {
  const url = new URL(adminUrl)
  url.pathname = `/${SEARCH_BENCH_DATABASE}`
  return url.toString()
}

/**
 * The bench database as a previous run left it, if it holds `entries` notes under every migration
 * of this build (BENCH_SEARCH_REUSE=1: the mix alone, without seeding and migrating again); else null.
 */
export async function reusableSearchDatabase (adminUrl: string, entries: number): Promise<{ url: string, keys: string[] } | null> {
  const url = searchBenchUrl(adminUrl)
  const sql = createSql(url, { max: 1, connectTimeoutMs: 10_000 })
  try {
    const shipped = (await readdir(MIGRATIONS_DIR)).filter((file) => file.endsWith('.sql')).length
    // Seeded as this build seeds (SEED_SPACING_MS apart), not all at one instant as before.
    const [row] = await sql<[{ migrations: number, entries: number, times: number }]>`
      select (select count(*)::int from schema_migrations) as migrations, (select count(*)::int from context_entries) as entries,
             (select count(distinct updated_at)::int from context_entries) as times`
    if (row === undefined || row.migrations !== shipped || row.entries !== entries || row.times <= entries / 2) return null
    // In the order they were generated (seeded SEED_SPACING_MS apart), without generating 100k
    // notes' text again in the measuring process.
    const keys = await sql<Array<{ key: string }>>`
      select key from context_entries where namespace = ${NAMESPACE} order by created_at, key`
    return { url, keys: keys.map((row) => row.key) }
  } catch {
    return null // no such database yet, or not this schema
  } finally {
    await sql.end({ timeout: 5 })
  }
}

/**
 * Leaves the bench database as a steady one is before the measured rounds: vacuumed (dead rows of
 * earlier runs gone, hint bits and visibility map set) and checkpointed, so that the rounds do not
 * pay for the seeding's WAL or an earlier run's writes (after a fresh seeding, a checkpoint forced
 * by the seed's WAL wrote 10,000 buffers for 6 s in the middle of a measured round).
 */
export async function settleSearchDatabase (url: string): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  try {
    await sql`vacuum analyze`
    await sql`checkpoint`
  } finally {
    await sql.end({ timeout: 5 })
  }
}

/**
 * Drops and recreates the bench database with `entries` notes, then applies the search migration
 * (and any later one) under a reader and a writer, and reports what they saw. Run in a process of
 * its own (prepare.ts), which exits with the heap it leaves.
 */
export async function prepareSearchDatabase (adminUrl: string, entries: number, log: (line: string) => void): Promise<MigrationReport[]> {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`drop database if exists ${SEARCH_BENCH_DATABASE} with (force)`)
    await admin.unsafe(`create database ${SEARCH_BENCH_DATABASE}`)
  } finally {
    await admin.end({ timeout: 5 })
  }
  const url = searchBenchUrl(adminUrl)
  const sql = createSql(url, { max: 4, connectTimeoutMs: 10_000 })
  const before = await mkdtemp(join(tmpdir(), 'scm-bench-migrations-'))
  const search = await mkdtemp(join(tmpdir(), 'scm-bench-migrations-'))
  try {
    for (const file of await readdir(MIGRATIONS_DIR)) {
      // Also the change feed's 006: this release's store (the probe writer) writes its columns.
      const version = Number(file.split('_')[0])
      if (version < SEARCH_MIGRATION || version === CHANGE_FEED_MIGRATION) await cp(join(MIGRATIONS_DIR, file), join(before, file))
      if (version <= SEARCH_STATEMENT_TRIGGERS_MIGRATION) await cp(join(MIGRATIONS_DIR, file), join(search, file))
    }
    await migrate(sql, { dir: before })

    const seedStarted = performance.now()
    const notes = generateNotes(entries)
    const maintenance = createMaintenanceStore(sql)
    const now = Date.now()
    const writtenAt = (index: number): string => new Date(now - (notes.length - 1 - index) * SEED_SPACING_MS).toISOString()
    for (let start = 0; start < notes.length; start += IMPORT_BATCH) {
      await maintenance.importBatch(notes.slice(start, start + IMPORT_BATCH).map((note, offset) => importedKey(note, writtenAt(start + offset))))
      if (start === 0) await maintenance.refreshStatistics() // as importBackup does: plans made on an empty table walk the feed index
    }
    await sql`analyze`
    const seedSeconds = (performance.now() - seedStarted) / 1000
    log(`  seeded ${entries} entries in ${seedSeconds.toFixed(1)} s; applying the search migrations, then the later ones, under load`)

    const migrations: MigrationReport[] = []
    for (const dir of [search, MIGRATIONS_DIR]) migrations.push({ ...await migrateUnderLoad(url, notes, dir), entries, seedSeconds })
    return migrations
  } finally {
    await rm(before, { recursive: true, force: true })
    await rm(search, { recursive: true, force: true })
    await sql.end({ timeout: 5 })
  }
}

/** Runs the pending migrations of `dir` while one connection reads and another writes entries back to back. */
async function migrateUnderLoad (url: string, notes: Note[], dir: string): Promise<Omit<MigrationReport, 'entries' | 'seedSeconds'>> {
  const probe = createSql(url, { max: 2, connectTimeoutMs: 10_000 })
  const migrator = createSql(url, { max: 1, connectTimeoutMs: 10_000 })
  const store = createContextStore(probe, { maxContentBytes: 102400 })
  const actor = { principal: 'bench-probe', client: null }
  const reads: number[] = []
  const writes: number[] = []
  const writeEnds: number[] = []
  const probing = { running: true }
  let n = 0
  const note = (): Note => notes[(n++ * 7919) % notes.length] as Note
  const reader = (async () => {
    while (probing.running) {
      const started = performance.now()
      await store.read(NAMESPACE, note().key)
      reads.push(performance.now() - started)
    }
  })()
  const writer = (async () => {
    while (probing.running) {
      const target = note()
      const started = performance.now()
      await store.write(NAMESPACE, target.key, `${target.content}\nEdited while migrating.`, {}, actor)
      const ended = performance.now()
      writes.push(ended - started)
      writeEnds.push(ended)
    }
  })()
  try {
    // Let both probes get going first, so that the migration meets a busy table.
    while (reads.length < 50 || writes.length < 50) await new Promise((resolve) => setImmediate(resolve))
    const readsBefore = reads.length
    const writesBefore = writes.length
    const started = performance.now()
    const { applied } = await migrate(migrator, { dir })
    const ended = performance.now()
    probing.running = false
    await Promise.all([reader, writer])
    const during = writeEnds.filter((end) => end >= started)
    let gap = 0
    let previous = started
    for (const end of during) {
      gap = Math.max(gap, end - previous)
      previous = end
    }
    return {
      applied,
      migrationMs: ended - started,
      reads: stats(reads.slice(readsBefore)),
      writes: stats(writes.slice(writesBefore)),
      longestWriteGapMs: gap
    }
  } finally {
    probing.running = false
    await Promise.allSettled([reader, writer])
    await probe.end({ timeout: 5 })
    await migrator.end({ timeout: 5 })
  }
}
