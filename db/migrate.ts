import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type postgres from 'postgres'

export interface MigrateOptions {
  /** How long to wait for another instance that is migrating right now. */
  lockTimeoutMs?: number
  log?: (msg: string) => void
  /** Folder of NNN_name.sql files; defaults to ./migrations next to this module (source or dist). */
  dir?: string | URL
}

export interface MigrateResult {
  applied: string[]
}

export class MigrationChecksumError extends Error {
  override readonly name = 'MigrationChecksumError'
}

interface MigrationFile {
  version: number
  name: string
  fileName: string
  sql: string
  checksum: string
}

interface AppliedMigration {
  version: number
  name: string
  checksum: string
}

// Arbitrary constant shared by every instance of this application ("SCM1" in ASCII).
export const MIGRATION_LOCK_KEY = 0x53434d31
const DEFAULT_LOCK_TIMEOUT_MS = 30_000
const MIGRATION_FILE = /^(\d+)_([A-Za-z0-9_-]+)\.sql$/

export async function migrate (sql: postgres.Sql, options: MigrateOptions = {}): Promise<MigrateResult> {
  const files = await readMigrationFiles(options.dir ?? new URL('./migrations/', import.meta.url))
  const lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS
  const applied: string[] = []

  const alreadyApplied = await underMigrationLock(sql, lockTimeoutMs, async (tx) => {
    await tx`
      create table if not exists schema_migrations (
        version    integer     primary key,
        name       text        not null,
        checksum   text        not null,
        applied_at timestamptz not null default now()
      )`
    return await readApplied(tx)
  })
  verifyChecksums(files, alreadyApplied)

  for (const file of files) {
    if (alreadyApplied.has(file.version)) continue
    const appliedNow = await underMigrationLock(sql, lockTimeoutMs, async (tx) => {
      // Another instance may have applied it while we waited for the lock.
      const current = await readApplied(tx)
      verifyChecksums([file], current)
      if (current.has(file.version)) return false
      await tx.unsafe(file.sql)
      await tx`
        insert into schema_migrations (version, name, checksum)
        values (${file.version}, ${file.name}, ${file.checksum})`
      return true
    })
    if (appliedNow) {
      applied.push(file.fileName)
      options.log?.(`applied migration ${file.fileName}`)
    }
  }
  return { applied }
}

async function underMigrationLock<T> (
  sql: postgres.Sql,
  lockTimeoutMs: number,
  work: (tx: postgres.TransactionSql) => Promise<T>
): Promise<T> {
  const result = await sql.begin(async (tx) => {
    // Wait for the lock, but bounded: skipping would let this instance serve before the schema exists.
    await tx`select set_config('lock_timeout', ${`${lockTimeoutMs}ms`}, true)`
    await tx`select pg_advisory_xact_lock(${MIGRATION_LOCK_KEY}::bigint)`
    return await work(tx)
  })
  return result as T
}

async function readApplied (tx: postgres.TransactionSql): Promise<Map<number, AppliedMigration>> {
  const rows = await tx<AppliedMigration[]>`select version, name, checksum from schema_migrations`
  return new Map(rows.map(row => [row.version, row]))
}

function verifyChecksums (files: MigrationFile[], applied: Map<number, AppliedMigration>): void {
  for (const file of files) {
    const record = applied.get(file.version)
    if (record !== undefined && record.checksum !== file.checksum) {
      throw new MigrationChecksumError(
        `Migration ${file.fileName} was changed after it was applied to this database ` +
        `(recorded checksum ${record.checksum.slice(0, 12)}…, file now ${file.checksum.slice(0, 12)}…). ` +
        'Applied migrations must never be edited: restore the original file and put the change in a new ' +
        'migration with the next number.'
      )
    }
  }
}

/** Names of this build's migrations that the database has not applied (it needs a schema_migrations table). */
export async function pendingMigrations (sql: postgres.Sql, dir: string | URL = new URL('./migrations/', import.meta.url)): Promise<string[]> {
  const applied = new Set((await sql<Array<{ version: number }>>`select version from schema_migrations`).map((row) => row.version))
  return (await readMigrationFiles(dir)).filter((file) => !applied.has(file.version)).map((file) => file.fileName)
}

async function readMigrationFiles (dir: string | URL): Promise<MigrationFile[]> {
  const dirPath = typeof dir === 'string' ? dir : fileURLToPath(dir)
  const entries = await readdir(dirPath)
  const files: MigrationFile[] = []
  const seenVersions = new Map<number, string>()
  for (const fileName of entries.sort()) {
    const match = MIGRATION_FILE.exec(fileName)
    if (match === null) continue
    const version = Number(match[1])
    const previous = seenVersions.get(version)
    if (previous !== undefined) {
      throw new Error(`Migrations ${previous} and ${fileName} share the number ${version}; renumber one of them.`)
    }
    seenVersions.set(version, fileName)
    // Line endings normalised so a checkout with CRLF (git autocrlf) does not look like an edit.
    const sql = (await readFile(join(dirPath, fileName), 'utf8')).replace(/\r\n/g, '\n')
    files.push({
      version,
      name: match[2] ?? fileName,
      fileName,
      sql,
      checksum: createHash('sha256').update(sql).digest('hex')
    })
  }
  return files.sort((a, b) => a.version - b.version)
}
