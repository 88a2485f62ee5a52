import { readdir } from 'node:fs/promises'
import type { Writable } from 'node:stream'
import { FormatRegistry, Type, type Static, type TSchema } from '@sinclair/typebox'
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler'
import type postgres from 'postgres'
import { NO_NUL_PATTERN, Tags } from '../schema/content.js'
import { Key, Version } from '../schema/key.js'
import { createMaintenanceStore, type ExportRow, type ImportedKey } from './context-store.js'
import { createGatewayStore, type ExportedApproval, type ExportedCall } from './gateway-store.js'

// The backup format (NDJSON, UTF-8, one JSON object per line):
//
//   {"type":"header","format":"shared-context-mcp-backup","format_version":1,"server_version":"0.1.0","exported_at":"…","namespace":null}
//   {"type":"entry","namespace":"team","key":"notes/a","current":{"version":3,"content":"…","tags":["x"],"created_at":"…",
//      "updated_at":"…","updated_by":"token:ci","client":null,"expires_at":null}}
//   {"type":"version","version":1,"action":"create","content":"…","tags":["x"],"actor":"token:ci","client":null,"at":"…"}
//   … (every version of that key: 1, 2, …, n in order; they belong to the entry line above them)
//   {"type":"end","entries":1,"versions":3}
//
// Format version 2 (written only when the gateway has rows: a server without them writes
// version 1, which every older server imports) adds, after the last entry, the gateway's audit
// and approvals, and their counts on the end line:
//
//   {"type":"upstream_call","namespace":"team","id":1,"at":"…","principal":"oidc:alice","client":null,"upstream":"hr",
//      "tool":"list_employees","arguments_digest":"<sha256 hex>","outcome":"ok","code":null,"attempts":1,"duration_ms":12,"approval_id":null}
//   {"type":"approval","namespace":"team","id":"apr_…","requested_by":"oidc:alice","client":null,"upstream":"hr","tool":"delete_employee",
//      "arguments_digest":"…","mode":"out-of-band","status":"done","requested_at":"…","expires_at":"…","decided_by":"cli:bob",
//      "decided_at":"…","started_at":"…","completed_at":"…","outcome":{…},"outcome_code":null}
//   {"type":"end","entries":1,"versions":3,"upstream_calls":1,"approvals":1}
//
// Never the arguments of a call (the audit keeps their digest only; an approval's are dropped):
// an approval still waiting when it was exported is imported expired, so it can never run.
//
// "current" is the key's row as stored: null when the key has history only (it expired and was
// swept); otherwise at version n (see checkEntry); expires_at "-infinity" marks a deleted key's
// tombstone. Timestamps are UTC with microseconds. The end line lets an import tell a complete
// backup from one cut short.
//
// Import rule for a key the database already has (an entry row or any history): it is never
// changed. If its latest version, its number of versions, whether it is readable, its expires_at
// (when both have an entry row) and (when readable) its content and tags equal the backup's, it
// counts as unchanged (that is what makes a re-run resume); otherwise it is a conflict, reported
// and skipped. Keys the database has no trace of are written with their whole history, many keys
// per statement, never one without its history.

export const BACKUP_FORMAT = 'shared-context-mcp-backup'
export const BACKUP_FORMAT_VERSION = 2
/** The version of a backup without gateway lines: what older servers read. */
const BASE_FORMAT_VERSION = 1

const ROWS_PER_FETCH = 200
const DEFAULT_BATCH_ENTRIES = 500
const DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
/** Room for the largest content (16 MiB) fully JSON-escaped, 6 bytes a byte, plus the rest of the line. */
const DEFAULT_MAX_LINE_BYTES = 100 * 1024 * 1024
const IMPORT_ATTEMPTS = 3

const TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$/

// Stricter than 'date-time' in schema/content.ts: Date.parse takes 2025-02-30 (as 2 March), PostgreSQL refuses it.
FormatRegistry.Set('backup-timestamp', (value) => {
  const match = TIMESTAMP.exec(value)
  if (match === null) return false
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map(Number) as [number, number, number, number, number, number]
  const date = new Date(Date.UTC(year, month - 1, day))
  return date.getUTCMonth() === month - 1 && date.getUTCDate() === day && hour < 24 && minute < 60 && second < 60
})

const Timestamp = Type.String({ format: 'backup-timestamp' })
const Text = Type.String({ pattern: NO_NUL_PATTERN })
const Namespace = Type.String({ minLength: 1, maxLength: 255, pattern: NO_NUL_PATTERN })
const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])
const Action = Type.Union([Type.Literal('create'), Type.Literal('update'), Type.Literal('append'), Type.Literal('delete'), Type.Literal('restore')])

export const HeaderLineSchema = Type.Object({
  type: Type.Literal('header'),
  format: Type.Literal(BACKUP_FORMAT),
  format_version: Type.Integer({ minimum: 1 }),
  server_version: Type.String({ maxLength: 100 }),
  exported_at: Timestamp,
  namespace: Nullable(Namespace)
}, { additionalProperties: false })

export const EntryLineSchema = Type.Object({
  type: Type.Literal('entry'),
  namespace: Namespace,
  key: Key,
  current: Nullable(Type.Object({
    version: Version,
    content: Text,
    tags: Tags,
    created_at: Timestamp,
    updated_at: Timestamp,
    updated_by: Text,
    client: Nullable(Text),
    expires_at: Type.Union([Timestamp, Type.Literal('-infinity'), Type.Null()])
  }, { additionalProperties: false }))
}, { additionalProperties: false })

export const VersionLineSchema = Type.Object({
  type: Type.Literal('version'),
  version: Version,
  action: Action,
  content: Nullable(Text),
  tags: Tags,
  actor: Text,
  client: Nullable(Text),
  at: Timestamp
}, { additionalProperties: false })

const Digest = Type.String({ pattern: '^[0-9a-f]{64}$' })
const Name = Type.String({ minLength: 1, maxLength: 255, pattern: NO_NUL_PATTERN })

export const UpstreamCallLineSchema = Type.Object({
  type: Type.Literal('upstream_call'),
  namespace: Namespace,
  id: Type.Integer({ minimum: 1 }),
  at: Timestamp,
  principal: Text,
  client: Nullable(Text),
  upstream: Name,
  tool: Name,
  arguments_digest: Digest,
  outcome: Name,
  code: Nullable(Name),
  attempts: Type.Integer({ minimum: 0, maximum: 1000 }),
  duration_ms: Type.Integer({ minimum: 0, maximum: 2_147_483_647 }),
  approval_id: Nullable(Name)
}, { additionalProperties: false })

export const ApprovalLineSchema = Type.Object({
  type: Type.Literal('approval'),
  namespace: Namespace,
  id: Type.String({ pattern: '^apr_[A-Za-z0-9]{16}$' }),
  requested_by: Text,
  client: Nullable(Text),
  upstream: Name,
  tool: Name,
  arguments_digest: Digest,
  mode: Type.Union([Type.Literal('out-of-band'), Type.Literal('elicitation'), Type.Literal('input-required')]),
  status: Type.Union(['pending', 'approved', 'rejected', 'expired', 'running', 'done'].map((status) => Type.Literal(status))),
  requested_at: Timestamp,
  expires_at: Timestamp,
  decided_by: Nullable(Text),
  decided_at: Nullable(Timestamp),
  started_at: Nullable(Timestamp),
  completed_at: Nullable(Timestamp),
  outcome: Nullable(Type.Record(Type.String(), Type.Unknown())),
  outcome_code: Nullable(Name)
}, { additionalProperties: false })

export const EndLineSchema = Type.Object({
  type: Type.Literal('end'),
  entries: Type.Integer({ minimum: 0 }),
  versions: Type.Integer({ minimum: 0 }),
  upstream_calls: Type.Optional(Type.Integer({ minimum: 0 })),
  approvals: Type.Optional(Type.Integer({ minimum: 0 }))
}, { additionalProperties: false })

export type HeaderLine = Static<typeof HeaderLineSchema>
type EntryLine = Static<typeof EntryLineSchema>
type VersionLine = Static<typeof VersionLineSchema>
type UpstreamCallLine = Static<typeof UpstreamCallLineSchema>
type ApprovalLine = Static<typeof ApprovalLineSchema>

/** A gateway line's row: the line without its `type`. */
function withoutType<L extends { type: string }> (line: L): Omit<L, 'type'> {
  const { type: _type, ...row } = line
  return row
}

const checkers = {
  header: TypeCompiler.Compile(HeaderLineSchema),
  entry: TypeCompiler.Compile(EntryLineSchema),
  version: TypeCompiler.Compile(VersionLineSchema),
  upstream_call: TypeCompiler.Compile(UpstreamCallLineSchema),
  approval: TypeCompiler.Compile(ApprovalLineSchema),
  end: TypeCompiler.Compile(EndLineSchema)
}
const LINE_TYPES = Object.keys(checkers) as Array<keyof typeof checkers>

/** A problem with the backup file, naming its line. */
export class BackupLineError extends Error {
  constructor (readonly line: number, problem: string) {
    super(`line ${line}: ${problem}`)
    this.name = 'BackupLineError'
  }
}

/** An import that stopped: says what was stored and what was not. */
export class ImportError extends Error {
  constructor (message: string, readonly summary: ImportSummary, options?: ErrorOptions) {
    super(message, options)
    this.name = 'ImportError'
  }
}

// ---------------------------------------------------------------------------------------------
// Export

export interface ExportOptions {
  /** Only this namespace; every namespace when undefined. */
  namespace?: string
  serverVersion: string
  /** Rows read per round trip; default 200. */
  rowsPerFetch?: number
}

export interface ExportSummary { entries: number, versions: number, upstreamCalls: number, approvals: number }

const MIGRATION_FILE = /^(\d+)_[A-Za-z0-9_-]+\.sql$/

/**
 * Why this build should not export the database, or null when it may: export reads the tables as
 * this build's migrations leave them, and does not migrate (that would change a live database
 * under the version serving it). So the database must have exactly the migrations this build
 * ships: none missing (an older schema) and none unknown (a newer one).
 */
export async function schemaMismatchForExport (sql: postgres.Sql, migrationsDir: string | URL = new URL('./migrations/', import.meta.url)): Promise<string | null> {
  const shipped = (await readdir(migrationsDir)).flatMap((name) => {
    const match = MIGRATION_FILE.exec(name)
    return match === null ? [] : [Number(match[1])]
  })
  let applied: number[]
  try {
    applied = (await sql<Array<{ version: number }>>`select version from schema_migrations order by version`).map((row) => row.version)
  } catch (error) {
    if ((error as { code?: unknown }).code === UNDEFINED_TABLE) return 'the database has never been migrated (no schema_migrations table), so there is nothing to export'
    throw error
  }
  const list = (versions: number[]) => versions.sort((a, b) => a - b).map((version) => String(version).padStart(3, '0')).join(', ')
  const missing = shipped.filter((version) => !applied.includes(version))
  const unknown = applied.filter((version) => !shipped.includes(version))
  const problems = [
    ...(missing.length === 0
      ? []
      : [`it lacks migration ${list(missing)} of this build (its schema is older: export with the version that serves it, or run \`node dist/cli.js migrate\` first if you mean to upgrade it)`]),
    ...(unknown.length === 0
      ? []
      : [`it has migration ${list(unknown)}, which this build does not ship (its schema is newer: export with the version that migrated it)`])
  ]
  return problems.length === 0 ? null : `the database does not match this build's schema: ${problems.join('; ')}`
}

/** Writes the whole store (or one namespace) to `out`, streaming: memory stays bounded by one fetch of rows. */
export async function exportBackup (sql: postgres.Sql, out: Writable, options: ExportOptions): Promise<ExportSummary> {
  const gateway = createGatewayStore(sql)
  const withGateway = await gateway.hasRows(options.namespace)
  const header: HeaderLine = {
    type: 'header',
    format: BACKUP_FORMAT,
    format_version: withGateway ? BACKUP_FORMAT_VERSION : BASE_FORMAT_VERSION,
    server_version: options.serverVersion,
    exported_at: new Date().toISOString(),
    namespace: options.namespace ?? null
  }
  await writeText(out, `${JSON.stringify(header)}\n`)
  const summary: ExportSummary = { entries: 0, versions: 0, upstreamCalls: 0, approvals: 0 }
  await createMaintenanceStore(sql).exportRows(options.namespace, options.rowsPerFetch ?? ROWS_PER_FETCH, async (rows) => {
    let text = ''
    for (const row of rows) {
      if (row.first) {
        summary.entries++
        text += `${JSON.stringify(entryLineOf(row))}\n`
      }
      if (row.version === null) continue
      summary.versions++
      const { version, action, content, tags, actor, client, at } = row.version
      const line: VersionLine = { type: 'version', version, action, content, tags, actor, client, at }
      text += `${JSON.stringify(line)}\n`
    }
    await writeText(out, text)
  })
  if (!withGateway) {
    await writeText(out, `${JSON.stringify({ type: 'end', entries: summary.entries, versions: summary.versions })}\n`)
    return summary
  }
  const rowsPerFetch = options.rowsPerFetch ?? ROWS_PER_FETCH
  await gateway.exportRows(rowsPerFetch, async (calls) => {
    summary.upstreamCalls += calls.length
    await writeText(out, calls.map((call) => `${JSON.stringify({ type: 'upstream_call', ...call })}\n`).join(''))
  }, async (approvals) => {
    summary.approvals += approvals.length
    await writeText(out, approvals.map((approval) => `${JSON.stringify({ type: 'approval', ...approval })}\n`).join(''))
  }, options.namespace)
  const end: Static<typeof EndLineSchema> = { type: 'end', entries: summary.entries, versions: summary.versions, upstream_calls: summary.upstreamCalls, approvals: summary.approvals }
  await writeText(out, `${JSON.stringify(end)}\n`)
  return summary
}

function entryLineOf ({ namespace, key, current }: ExportRow): EntryLine {
  return {
    type: 'entry',
    namespace,
    key,
    current: current === null
      ? null
      : {
          version: current.version,
          content: current.content,
          tags: current.tags,
          created_at: current.created_at,
          updated_at: current.updated_at,
          updated_by: current.updated_by,
          client: current.client,
          expires_at: current.expires_at
        }
  }
}

/** Resolves once the text is handed to the system, so a slow reader holds back the database cursor. */
function writeText (out: Writable, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    out.write(text, (error) => { if (error == null) resolve(); else reject(error) })
  })
}

// ---------------------------------------------------------------------------------------------
// Import

export interface ImportConflict {
  /** Line of the key's entry line in the backup. */
  line: number
  namespace: string
  key: string
  databaseVersion: number
  databasePresent: boolean
  backupVersion: number
  backupPresent: boolean
}

export interface ImportProgress {
  /** Bytes of the input read so far. */
  bytes: number
  lines: number
  entries: number
}

export interface ImportOptions {
  /** Keys per batch (one statement, so one transaction); default 500. */
  batchEntries?: number
  /** A batch also closes once its lines reach this many bytes; default 4 MiB. */
  batchBytes?: number
  maxLineBytes?: number
  onConflict?: (conflict: ImportConflict) => void
  onProgress?: (progress: Readonly<ImportProgress>) => void
}

export interface ImportSummary {
  header: HeaderLine | null
  /** Keys read from the backup and settled (imported, unchanged or in conflict). */
  entries: number
  imported: number
  importedVersions: number
  unchanged: number
  conflicts: number
  /** The gateway's audit rows and approvals stored (those the database had already are not counted). */
  importedUpstreamCalls: number
  importedApprovals: number
  /** The last line whose key is settled; everything after it was not stored. */
  settledThroughLine: number
}

interface PendingEntry {
  line: number
  bytes: number
  key: ImportedKey
}

/**
 * Restores a backup from `input` (see the format at the top). Lines are validated as they arrive;
 * keys are written in batches, one statement each. On a bad line, or input that ends without the
 * end line, it throws an ImportError: nothing of the unfinished batch is stored, earlier batches
 * are, and running the import again with the corrected file skips them as unchanged.
 */
export async function importBackup (sql: postgres.Sql, input: AsyncIterable<Buffer | string>, options: ImportOptions = {}): Promise<ImportSummary> {
  const store = createMaintenanceStore(sql)
  const batchEntries = options.batchEntries ?? DEFAULT_BATCH_ENTRIES
  const batchBytes = options.batchBytes ?? DEFAULT_BATCH_BYTES
  const summary: ImportSummary = { header: null, entries: 0, imported: 0, importedVersions: 0, unchanged: 0, conflicts: 0, importedUpstreamCalls: 0, importedApprovals: 0, settledThroughLine: 0 }
  const progress: ImportProgress = { bytes: 0, lines: 0, entries: 0 }
  const counted = { entries: 0, versions: 0, upstreamCalls: 0, approvals: 0 }
  const gateway = createGatewayStore(sql)
  let gatewayCalls: ExportedCall[] = []
  let gatewayApprovals: ExportedApproval[] = []
  let batch: PendingEntry[] = []
  let batchSize = 0
  const inBatch = new Map<string, number>()
  let open: PendingEntry | undefined
  let ended = false
  let lastLine = 0

  const closeEntry = (): void => {
    if (open === undefined) return
    checkEntry(open)
    batch.push(open)
    batchSize += open.bytes
    open = undefined
  }

  // Statistics after batches 1, 2, 4, 8, …: the import's statement is planned once per connection
  // (generic plans), and planned on an empty database it walked the change feed's index for each
  // key's history (namespace only), so a restore into a fresh database slowed with every batch.
  // ANALYZE makes the next batch plan again with what is there; it blocks no reader or writer.
  let batches = 0
  const flush = async (throughLine: number): Promise<void> => {
    if (gatewayCalls.length > 0 || gatewayApprovals.length > 0) {
      const stored = await gateway.importRows(gatewayCalls, gatewayApprovals)
      summary.importedUpstreamCalls += stored.calls
      summary.importedApprovals += stored.approvals
      gatewayCalls = []
      gatewayApprovals = []
    }
    if (batch.length > 0) {
      const pending = batch
      const result = await importWithRetry(store, pending)
      const lines = new Map(pending.map((entry) => [`${entry.key.namespace}\u0000${entry.key.key}`, entry]))
      for (const existing of result.existing) {
        if (existing.same) {
          summary.unchanged++
          continue
        }
        summary.conflicts++
        const entry = lines.get(`${existing.namespace}\u0000${existing.key}`)
        if (entry === undefined) throw new Error('import: the database reported a key that is not in the batch')
        options.onConflict?.({
          line: entry.line,
          namespace: existing.namespace,
          key: existing.key,
          databaseVersion: existing.version,
          databasePresent: existing.present,
          backupVersion: entry.key.history.at(-1)?.version ?? 0,
          backupPresent: isPresent(entry.key)
        })
      }
      summary.entries += pending.length
      summary.imported += result.insertedKeys
      summary.importedVersions += result.insertedVersions
      batches++
      if (isPowerOfTwo(batches)) await store.refreshStatistics()
    }
    summary.settledThroughLine = throughLine
    batch = []
    batchSize = 0
    inBatch.clear()
  }

  try {
    for await (const { text, bytes, number, consumed, terminated } of readLines(input, options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES)) {
      lastLine = number
      progress.bytes = consumed
      progress.lines = number
      if (ended) throw new BackupLineError(number, 'there is more after the end line')
      const line = parseLine(text, number, terminated)
      if (number === 1) {
        summary.header = checkHeader(line, number)
        summary.settledThroughLine = 1
        continue
      }
      switch (line.type) {
        case 'entry': {
          closeEntry()
          if (batch.length >= batchEntries || batchSize >= batchBytes) await flush(number - 1)
          const entry = line as EntryLine
          const id = `${entry.namespace}\u0000${entry.key}`
          const earlier = inBatch.get(id)
          if (earlier !== undefined) throw new BackupLineError(number, `key "${entry.key}" in namespace "${entry.namespace}" appears again (first on line ${earlier})`)
          inBatch.set(id, number)
          open = { line: number, bytes, key: { namespace: entry.namespace, key: entry.key, current: entry.current, history: [] } }
          counted.entries++
          progress.entries = counted.entries
          break
        }
        case 'version': {
          if (open === undefined) throw new BackupLineError(number, 'a version line must follow its entry line (or another version of the same key)')
          const version = line as VersionLine
          const previous = open.key.history.at(-1)
          if (version.version !== (previous?.version ?? 0) + 1) {
            const found = previous === undefined ? `the first version of "${open.key.key}" is ${version.version}` : `version ${version.version} follows version ${previous.version} of "${open.key.key}"`
            throw new BackupLineError(number, `${found} (entry on line ${open.line}): a key's versions must be 1, 2, 3, … with none missing or repeated`)
          }
          if ((version.action === 'delete') !== (version.content === null)) {
            throw new BackupLineError(number, version.action === 'delete' ? 'a delete version has content null' : `a ${version.action} version needs content (only deletes have null)`)
          }
          const { type: _type, ...row } = version
          open.key.history.push(row)
          open.bytes += bytes
          counted.versions++
          break
        }
        case 'upstream_call':
        case 'approval': {
          closeEntry()
          if (summary.header !== null && summary.header.format_version < BACKUP_FORMAT_VERSION) throw new BackupLineError(number, `a "${line.type}" line needs format_version ${BACKUP_FORMAT_VERSION}; the header says ${summary.header.format_version}`)
          if (batch.length > 0) await flush(number - 1)
          if (line.type === 'upstream_call') {
            gatewayCalls.push(withoutType(line as UpstreamCallLine))
            counted.upstreamCalls++
          } else {
            gatewayApprovals.push(withoutType(line as ApprovalLine) as ExportedApproval)
            counted.approvals++
          }
          if (gatewayCalls.length + gatewayApprovals.length >= batchEntries) await flush(number)
          break
        }
        case 'end': {
          closeEntry()
          const end = line as Static<typeof EndLineSchema>
          if (end.entries !== counted.entries || end.versions !== counted.versions) {
            throw new BackupLineError(number, `the end line counts ${end.entries} entries and ${end.versions} versions, but the file holds ${counted.entries} and ${counted.versions}: lines are missing or repeated`)
          }
          if ((end.upstream_calls ?? 0) !== counted.upstreamCalls || (end.approvals ?? 0) !== counted.approvals) {
            throw new BackupLineError(number, `the end line counts ${end.upstream_calls ?? 0} upstream calls and ${end.approvals ?? 0} approvals, but the file holds ${counted.upstreamCalls} and ${counted.approvals}: lines are missing or repeated`)
          }
          ended = true // the last batch is stored once the input is known to end here
          break
        }
        default:
          throw new BackupLineError(number, '"type": "header" belongs on line 1 only')
      }
      options.onProgress?.(progress)
    }
    if (lastLine === 0) throw new BackupLineError(1, 'the input is empty; expected a backup made by `node dist/cli.js export`')
    if (!ended) throw new BackupLineError(lastLine, 'the input ends without the end line: the backup is incomplete (cut short?)')
    await flush(lastLine)
    return summary
  } catch (error) {
    const from = summary.settledThroughLine + 1
    const stored = summary.settledThroughLine <= 1
      ? 'Nothing was imported.'
      : `Lines 1–${summary.settledThroughLine} are settled (${summary.imported} entries imported, ${summary.unchanged} unchanged, ${summary.conflicts} conflicts); ` +
          'running the import again skips them.'
    const failedLines = lastLine > from ? `lines ${from}–${lastLine}` : `line ${from}`
    const notStored = summary.settledThroughLine <= 1 ? '' : ` Nothing from ${failedLines} was stored.`
    const problem = error instanceof Error ? error.message : String(error)
    throw new ImportError(`${problem}${/[.?!]$/.test(problem) ? '' : '.'}${notStored} ${stored}`, summary, { cause: error })
  }
}

function parseLine (text: string, number: number, terminated: boolean): { type: string } {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (error) {
    if (!terminated) throw new BackupLineError(number, 'the input ends in the middle of this line: the backup is incomplete (cut short?)')
    throw new BackupLineError(number, text.trim() === '' ? 'the line is empty' : `not valid JSON (${(error as Error).message})`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new BackupLineError(number, 'expected a JSON object')
  const type = (value as { type?: unknown }).type as keyof typeof checkers
  if (!LINE_TYPES.includes(type)) {
    throw new BackupLineError(number, `"type" must be "header", "entry", "version", "upstream_call", "approval" or "end", got ${JSON.stringify(type)?.slice(0, 40)}`)
  }
  check(checkers[type], value, number)
  for (const [field, text] of Object.entries(value)) {
    if (typeof text === 'string' && !text.isWellFormed()) throw new BackupLineError(number, `/${field}: not valid Unicode text (a lone UTF-16 surrogate)`)
  }
  const current = (value as { current?: Record<string, unknown> | null }).current
  for (const [field, text] of Object.entries(current ?? {})) {
    if (typeof text === 'string' && !text.isWellFormed()) throw new BackupLineError(number, `/current/${field}: not valid Unicode text (a lone UTF-16 surrogate)`)
  }
  return value as { type: string }
}

function check (checker: TypeCheck<TSchema>, value: unknown, number: number): void {
  if (checker.Check(value)) return
  const first = checker.Errors(value).First()
  throw new BackupLineError(number, first === undefined ? 'invalid line' : `${first.path === '' ? 'the line' : first.path}: ${first.message}`)
}

function checkHeader (line: { type: string }, number: number): HeaderLine {
  if (line.type !== 'header') throw new BackupLineError(number, 'expected the header line ({"type":"header",…}); is this a backup made by `node dist/cli.js export`?')
  const header = line as HeaderLine
  if (header.format_version > BACKUP_FORMAT_VERSION) {
    throw new BackupLineError(number, `format_version ${header.format_version} was written by a newer server (${header.server_version}); this one reads version ${BACKUP_FORMAT_VERSION}. Upgrade first`)
  }
  return header
}

/**
 * What TypeBox cannot see: the entry line against its versions (their numbering, 1 to n, is
 * checked as they arrive). The store writes a history row for every change, a delete included, in
 * the statement that changes the entry row, numbers each change one above the row's version (or
 * above the highest in history when the key has no row), and never deletes history. So a key's
 * entry row, when it has one, is at exactly its latest version n in every state: readable, expired
 * but not yet swept (its last write was version n), or a delete tombstone (the delete is version n
 * itself). A key without an entry row was swept, and keeps its history.
 */
function checkEntry ({ line, key }: PendingEntry): void {
  const last = key.history.at(-1)
  const where = `the entry on line ${line} ("${key.key}")`
  if (last === undefined) throw new BackupLineError(line, `${where} has no version lines; every key has at least one`)
  const { current } = key
  if (current === null) return
  if (current.version !== last.version) {
    throw new BackupLineError(line, `${where} is at version ${current.version}, but its last version line is ${last.version}`)
  }
  const tombstone = current.expires_at === '-infinity'
  if (tombstone !== (last.action === 'delete')) {
    throw new BackupLineError(line, tombstone
      ? `${where} is a delete tombstone (expires_at "-infinity"), but its last version is a ${last.action}`
      : `${where} is not a tombstone, but its last version is a delete (expires_at must be "-infinity")`)
  }
  if (tombstone && (current.content !== '' || current.tags.length > 0)) {
    throw new BackupLineError(line, `${where} is a delete tombstone; its content must be "" and its tags []`)
  }
}

function isPresent ({ current }: ImportedKey): boolean {
  return current !== null && current.expires_at !== '-infinity' && (current.expires_at === null || Date.parse(current.expires_at) > Date.now())
}

const UNIQUE_VIOLATION = '23505'
const UNDEFINED_TABLE = '42P01'

async function importWithRetry (store: ReturnType<typeof createMaintenanceStore>, batch: PendingEntry[]) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await store.importBatch(batch.map((entry) => entry.key))
    } catch (error) {
      // A key written concurrently: the statement stored nothing; run again and it counts as existing.
      if (attempt >= IMPORT_ATTEMPTS || (error as { code?: unknown }).code !== UNIQUE_VIOLATION) throw error
    }
  }
}

/** Splits UTF-8 input into lines of at most `maxLineBytes`; a final line without a newline counts. */
async function * readLines (input: AsyncIterable<Buffer | string>, maxLineBytes: number): AsyncGenerator<{ text: string, bytes: number, number: number, consumed: number, terminated: boolean }> {
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false })
  let pieces: Buffer[] = []
  let pieceBytes = 0
  let number = 0
  let before = 0 // bytes of the input before the current chunk
  const decode = (): string => {
    try {
      return decoder.decode(Buffer.concat(pieces, pieceBytes)).replace(/\r$/, '')
    } catch {
      throw new BackupLineError(number, 'not valid UTF-8')
    }
  }
  for await (const chunk of input) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk
    let start = 0
    while (start < buffer.length) {
      const newline = buffer.indexOf(0x0a, start)
      const end = newline === -1 ? buffer.length : newline
      pieceBytes += end - start
      if (pieceBytes > maxLineBytes) throw new BackupLineError(number + 1, `longer than ${maxLineBytes} bytes`)
      pieces.push(buffer.subarray(start, end))
      if (newline === -1) break
      number++
      yield { text: decode(), bytes: pieceBytes, number, consumed: before + newline + 1, terminated: true }
      pieces = []
      pieceBytes = 0
      start = newline + 1
    }
    before += buffer.length
  }
  if (pieceBytes > 0) {
    number++
    yield { text: decode(), bytes: pieceBytes, number, consumed: before, terminated: false }
  }
}

// ---------------------------------------------------------------------------------------------
// Progress on a terminal

const PROGRESS_MIN_BYTES = 1024 * 1024
const PROGRESS_INTERVAL_MS = 200
const BAR_WIDTH = 30

export interface ProgressBar {
  update (progress: Readonly<ImportProgress>): void
  /** Clears the bar line, e.g. before printing another line to the same stream. */
  clear (): void
}

/**
 * A one-line progress bar on `stream`, or null when it is not a terminal or the input is known to
 * be small. `totalBytes` undefined (a pipe): counts without a percentage.
 */
export function createProgressBar (stream: Writable & { isTTY?: boolean }, totalBytes: number | undefined): ProgressBar | null {
  if (stream.isTTY !== true || (totalBytes !== undefined && totalBytes < PROGRESS_MIN_BYTES)) return null
  let last = 0
  let shown = false
  return {
    update (progress) {
      const now = Date.now()
      if (now - last < PROGRESS_INTERVAL_MS) return
      last = now
      shown = true
      const mib = (progress.bytes / 1048576).toFixed(1)
      if (totalBytes === undefined || totalBytes === 0) {
        stream.write(`\r\x1b[Kimporting: ${progress.entries} entries, ${mib} MiB`)
        return
      }
      const fraction = Math.min(1, progress.bytes / totalBytes)
      const filled = Math.round(fraction * BAR_WIDTH)
      stream.write(`\r\x1b[K[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}] ${Math.floor(fraction * 100)}% ${progress.entries} entries, ${mib} MiB`)
    },
    clear () {
      if (shown) stream.write('\r\x1b[K')
      shown = false
      last = 0
    }
  }
}

function isPowerOfTwo (count: number): boolean {
  return (count & (count - 1)) === 0
}
