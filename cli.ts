import { createReadStream, createWriteStream, fstatSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { finished, pipeline } from 'node:stream/promises'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { publishRevokedJti, revocationKeptUntil } from './auth/revocation.js'
import { createProgressBar, exportBackup, importBackup, ImportError, schemaMismatchForExport } from './db/backup.js'
import { createContextStore } from './db/context-store.js'
import { openDatabase, type OpenOptions } from './db/open.js'
import { DEFAULT_NAMESPACE, generateToken, hashToken } from './plugins/auth.js'
import { SERVER_INFO } from './plugins/mcp.js'
import { ConfigError, loadConfig, type Config } from './schema/config.js'
import { SCOPES, type Scope } from './schema/principal.js'
import { serve } from './server.js'

const USAGE = `Usage: node dist/cli.js <command>

  serve                        start the server (default)
  migrate                      apply pending database migrations and exit
  token create --name NAME [--namespace NS] [--scopes context:read,context:write] [--global-admin]
                               create an API token; printed once, only its hash is stored.
                               context:admin is admin of NS only (default: default);
                               --global-admin makes the token admin of every namespace
  token list                   list tokens (never their secrets)
  token revoke --name NAME     revoke a token
  token revoke-jti --jti ID [--expires-at ISO-8601]
                               revoke one JWT by its jti (until it expires; default 30 days),
                               on every instance within AUTH_CACHE_SECONDS (at once with Redis)
  export [--namespace NS]      write every entry with its history to stdout as NDJSON
                               (node dist/cli.js export > backup.ndjson); never migrates: the
                               database must have exactly this build's migrations
  import                       restore NDJSON from stdin (node dist/cli.js import < backup.ndjson);
                               keys the database already has are never changed: same state is
                               skipped, a different one is reported as a conflict (exit 3)

The database is DATABASE_URL, or the embedded one in DATA_DIR.`

/** A failure to report in one line, with an exit code (2: usage). Thrown, so open databases close first. */
class CliError extends Error {
  constructor (message: string, readonly exitCode = 1) {
    super(message)
  }
}

function fail (message: string, exitCode = 1): never {
  throw new CliError(message, exitCode)
}

function configFromEnv (): Config {
  try {
    return loadConfig(process.env)
  } catch (error) {
    if (error instanceof ConfigError) fail(error.message)
    throw error
  }
}

async function withDatabase (action: (database: Awaited<ReturnType<typeof openDatabase>>, config: Config) => Promise<void>, options: OpenOptions = {}): Promise<void> {
  const config = configFromEnv()
  const log = (message: string) => process.stderr.write(`${message}\n`)
  const database = await openDatabase(config, log, log, { useRunningServer: true, ...options })
  try {
    await action(database, config)
  } finally {
    await database.close()
  }
}

function parseScopes (value: string | undefined): Scope[] {
  if (value === undefined) return ['context:read', 'context:write', 'context:delete']
  const scopes = value.split(',').map((scope) => scope.trim()).filter((scope) => scope !== '')
  const unknown = scopes.filter((scope) => !(SCOPES as readonly string[]).includes(scope))
  if (unknown.length > 0 || scopes.length === 0) fail(`Unknown scope(s): ${unknown.join(', ') || '(none given)'}. Scopes: ${SCOPES.join(', ')}.`, 2)
  return scopes as Scope[]
}

/** What a token may do, in words: said plainly at creation because "admin" alone does not say where. */
function accessOf (token: { namespace: string, scopes: readonly string[], globalAdmin: boolean }): string {
  if (token.globalAdmin) return `global admin: every scope in every namespace (calls that name no namespace act in ${token.namespace})`
  if (token.scopes.includes('context:admin')) return `admin of namespace ${token.namespace} only: every scope there, nothing in any other namespace (--global-admin makes an admin of every namespace)`
  return `${token.scopes.join(', ')} in namespace ${token.namespace} only`
}

async function tokenCommand (args: string[]): Promise<void> {
  const [action, ...rest] = args
  const { values } = parseArgs({
    args: rest,
    options: { name: { type: 'string' }, namespace: { type: 'string' }, scopes: { type: 'string' }, 'global-admin': { type: 'boolean' }, jti: { type: 'string' }, 'expires-at': { type: 'string' } },
    strict: true
  })
  switch (action) {
    case 'create': {
      const name = values.name ?? fail('token create needs --name NAME', 2)
      if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(name)) fail('--name must be 1-64 characters of A-Z a-z 0-9 _ . : -', 2)
      const namespace = values.namespace ?? DEFAULT_NAMESPACE
      if (!/^[A-Za-z0-9_.:/-]{1,255}$/.test(namespace)) fail('--namespace must be 1-255 characters of A-Z a-z 0-9 _ . : / -', 2)
      const globalAdmin = values['global-admin'] === true
      const scopes = globalAdmin ? ['context:admin' as const] : parseScopes(values.scopes)
      if (globalAdmin && values.scopes !== undefined) fail('--global-admin grants every scope in every namespace; leave out --scopes', 2)
      await withDatabase(async ({ sql }, config) => {
        const store = createContextStore(sql, { maxContentBytes: config.MAX_CONTENT_BYTES })
        if ((await store.listApiTokens()).some((token) => token.name === name)) fail(`A token named "${name}" exists already; revoke it or choose another name.`)
        const token = generateToken()
        await store.insertApiToken({ name, hash: hashToken(token).toString('hex'), namespace, scopes, globalAdmin })
        process.stdout.write(`Created token "${name}": ${accessOf({ namespace, scopes, globalAdmin })}. It is shown only now:\n${token}\n`)
      })
      return
    }
    case 'list':
      await withDatabase(async ({ sql }, config) => {
        const tokens = await createContextStore(sql, { maxContentBytes: config.MAX_CONTENT_BYTES }).listApiTokens()
        for (const token of tokens) {
          const state = token.revokedAt === null ? 'active' : `revoked ${token.revokedAt}`
          const access = token.globalAdmin || token.scopes.includes('context:admin') ? ` (${accessOf(token)})` : ''
          process.stdout.write(`${token.name}\t${token.namespace}\t${token.scopes.join(',')}${access}\tcreated ${token.createdAt}\tlast used ${token.lastUsedAt ?? 'never'}\t${state}\n`)
        }
        if (tokens.length === 0) process.stdout.write('No tokens.\n')
      })
      return
    case 'revoke': {
      const name = values.name ?? fail('token revoke needs --name NAME', 2)
      await withDatabase(async ({ sql }, config) => {
        const revoked = await createContextStore(sql, { maxContentBytes: config.MAX_CONTENT_BYTES }).revokeApiToken(name)
        if (!revoked) fail(`No active token named "${name}".`)
        process.stdout.write(`Revoked "${name}". Instances stop accepting it within seconds.\n`)
      })
      return
    }
    case 'revoke-jti': {
      const jti = values.jti ?? fail('token revoke-jti needs --jti ID', 2)
      if (jti.length === 0 || jti.length > 1024) fail('--jti must be 1-1024 characters', 2)
      const expiresAt = values['expires-at'] === undefined ? new Date(Date.now() + JTI_REVOCATION_DEFAULT_MS) : new Date(values['expires-at'])
      if (Number.isNaN(expiresAt.getTime())) fail('--expires-at must be a date such as 2026-12-31T00:00:00Z (the token\'s exp)', 2)
      if (expiresAt.getTime() <= Date.now()) fail(`--expires-at ${expiresAt.toISOString()} has passed: a token that expired then is refused anyway`, 2)
      await withDatabase(async ({ sql }, config) => {
        await createContextStore(sql, { maxContentBytes: config.MAX_CONTENT_BYTES }).revokeJti(jti, revocationKeptUntil(expiresAt))
        const published = config.REDIS_URL === undefined ? false : await publishToRedis(config.REDIS_URL, jti, expiresAt)
        process.stdout.write(`Revoked jti "${jti}" until ${expiresAt.toISOString()}. ${published
          ? 'Every instance refuses it now.'
          : `Instances refuse it within ${config.AUTH_CACHE_SECONDS} s.`}\n`)
      })
      return
    }
    default:
      fail(USAGE, 2)
  }
}

// A JWT outlives its revocation entry only if it lives longer than this; pass --expires-at (its exp) to be exact.
const JTI_REVOCATION_DEFAULT_MS = 30 * 24 * 60 * 60 * 1000

/** Best effort: the durable list in PostgreSQL is what counts; Redis only makes it reach instances at once. */
async function publishToRedis (url: string, jti: string, expiresAt: Date): Promise<boolean> {
  const redis = new Redis(url, { lazyConnect: true, connectTimeout: 2000, maxRetriesPerRequest: 1, enableOfflineQueue: false, retryStrategy: () => null })
  redis.on('error', () => {})
  try {
    await redis.connect()
    await publishRevokedJti(redis, jti, expiresAt)
    return true
  } catch {
    process.stderr.write('Redis could not be reached: the revocation is stored, and instances pick it up from the database.\n')
    return false
  } finally {
    redis.disconnect()
  }
}

async function exportCommand (args: string[]): Promise<void> {
  let namespace: string | undefined
  try {
    namespace = parseArgs({ args, options: { namespace: { type: 'string' } }, strict: true }).values.namespace
  } catch (error) {
    fail(`${(error as Error).message}\n\n${USAGE}`, 2)
  }
  // Not migrated: a newer build's export must not change the schema of a database an older one serves.
  await withDatabase(async ({ sql, viaRunningServer }) => {
    const mismatch = await schemaMismatchForExport(sql)
    if (mismatch !== null) fail(`Export refused: ${mismatch}.`)
    const options = { ...(namespace !== undefined && { namespace }), serverVersion: SERVER_INFO.version }
    const summary = viaRunningServer ? await exportThroughFile(sql, options) : await exportBackup(sql, process.stdout, options)
    process.stderr.write(`Exported ${summary.entries} entries with ${summary.versions} versions.\n`)
  }, { migrate: false })
}

/**
 * An export holds one transaction open, and the running server's embedded database serves one
 * transaction at a time: written to stdout directly, a reader that stalls (`| less`, Ctrl-Z) would
 * stall every request. So the export goes to a private temporary file at disk speed first.
 */
async function exportThroughFile (sql: Parameters<typeof exportBackup>[0], options: Parameters<typeof exportBackup>[2]): Promise<Awaited<ReturnType<typeof exportBackup>>> {
  const folder = await mkdtemp(join(tmpdir(), 'scm-export-'))
  try {
    const file = join(folder, 'backup.ndjson')
    const out = createWriteStream(file, { mode: 0o600 })
    const summary = await exportBackup(sql, out, options)
    out.end()
    await finished(out)
    await pipeline(createReadStream(file), process.stdout, { end: false })
    return summary
  } finally {
    await rm(folder, { recursive: true, force: true })
  }
}

async function importCommand (args: string[]): Promise<void> {
  if (args.length > 0) fail(`import takes no arguments; it reads the backup from stdin.\n\n${USAGE}`, 2)
  if (process.stdin.isTTY) fail('import reads the backup from stdin: node dist/cli.js import < backup.ndjson', 2)
  const stdin = fstatSync(0)
  const bar = createProgressBar(process.stderr, stdin.isFile() ? stdin.size : undefined)
  await withDatabase(async ({ sql }) => {
    let summary
    try {
      summary = await importBackup(sql, process.stdin, {
        onProgress: (progress) => bar?.update(progress),
        onConflict: (conflict) => {
          bar?.clear()
          const state = (version: number, present: boolean) => `version ${version} (${present ? 'readable' : 'deleted or expired'})`
          process.stderr.write(`conflict, line ${conflict.line}: "${conflict.key}" in namespace "${conflict.namespace}": the database has ${state(conflict.databaseVersion, conflict.databasePresent)}, ` +
            `the backup ${state(conflict.backupVersion, conflict.backupPresent)}; left as it is\n`)
        }
      })
    } catch (error) {
      bar?.clear()
      if (error instanceof ImportError) fail(`Import stopped: ${error.message}`)
      throw error
    }
    bar?.clear()
    process.stdout.write(`Imported ${summary.imported} entries with ${summary.importedVersions} versions; ${summary.unchanged} were there already, unchanged; ${summary.conflicts} conflicts.\n`)
    if (summary.conflicts > 0) fail(`${summary.conflicts} key(s) differ between the backup and the database and were not changed (listed above).`, 3)
  })
}

// Whatever this process creates (the embedded database's files) is its owner's only.
process.umask(0o077)
const [command = 'serve', ...args] = process.argv.slice(2)
try {
  switch (command) {
    case 'serve':
      await serve()
      break
    case 'migrate':
      await withDatabase(async () => { process.stdout.write('Migrations are up to date.\n') }, { migrate: true })
      break
    case 'token':
      await tokenCommand(args)
      break
    case 'export':
      await exportCommand(args)
      break
    case 'import':
      await importCommand(args)
      break
    default:
      fail(USAGE, 2)
  }
} catch (error) {
  const message = error instanceof CliError ? error.message : `${command} failed: ${error instanceof Error ? error.message : String(error)}`
  process.stderr.write(`${message}\n`)
  process.exit(error instanceof CliError ? error.exitCode : 1)
}
