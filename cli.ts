import { createReadStream, createWriteStream, fstatSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { finished, pipeline } from 'node:stream/promises'
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { publishRevokedJti, revocationKeptUntil } from './auth/revocation.js'
import { createProgressBar, exportBackup, importBackup, ImportError, schemaMismatchForExport } from './db/backup.js'
import { createGatewayStore, type Approval } from './db/gateway-store.js'
import { approvalToolName } from './gateway/approvals.js'
import { UPSTREAM_NAME_PATTERN } from './gateway/config.js'
import { identityKeyFor } from './gateway/signed-identity.js'
import { createOAuthStore } from './db/oauth-store.js'
import { openDatabase, type OpenOptions } from './db/open.js'
import { createTokenStore } from './db/token-store.js'
import { cliGrantRevoker, listClients, revokeClient, revokeGrant, setOwnerPassword } from './oauth/admin.js'
import { KEY_RELOAD_MS, rotateSigningKey } from './oauth/keys.js'
import { ownerPasswordProblem } from './oauth/owner-password.js'
import { DEFAULT_NAMESPACE, generateToken, hashToken } from './plugins/auth.js'
import { SERVER_INFO } from './plugins/mcp.js'
import { builtInIssuerOf, ConfigError, loadConfig, MAX_JWT_CLOCK_SKEW_SECONDS, type Config } from './schema/config.js'
import { SCOPES, scopeNameProblem, type Scope } from './schema/principal.js'
import { serve } from './server.js'

const USAGE = `Usage: node dist/cli.js <command>

  serve                        start the server (default)
  migrate                      apply pending database migrations and exit
  token create --name NAME [--namespace NS] [--scopes context:read,context:write] [--global-admin]
                               create an API token; printed once, only its hash is stored.
                               Scopes: context:read|write|delete|admin, and the names the
                               gateway's upstream rules use (domain:action, e.g. hr:read).
                               context:admin is admin of NS only (default: default);
                               --global-admin makes the token admin of every namespace
  token list                   list tokens (never their secrets)
  token revoke --name NAME     revoke a token, and end the OAuth grants made by signing in with it
  token revoke-jti --jti ID [--expires-at ISO-8601]
                               revoke one JWT by its jti (until it expires; default 30 days),
                               on every instance within AUTH_CACHE_SECONDS (at once with Redis)
  export [--namespace NS]      write every entry with its history, and the gateway's audit of
                               upstream calls and its approvals, to stdout as NDJSON
                               (node dist/cli.js export > backup.ndjson); never migrates: the
                               database must have exactly this build's migrations
  import                       restore NDJSON from stdin (node dist/cli.js import < backup.ndjson);
                               keys the database already has are never changed: same state is
                               skipped, a different one is reported as a conflict (exit 3)

  The gateway's approvals (calls of upstream tools that wait for a person):
  approvals list [--all]       the pending ones (--all: every approval, newest first): id, who
                               asked, the call with its arguments, expiry
  approvals approve --id ID [--as NAME]
                               approve a pending call: it runs once, when the model asks for it
                               with get_approval; recorded as decided by NAME (default: your OS
                               user name)
  approvals reject --id ID [--as NAME]
                               reject it: it is cancelled and never runs
  gateway identity-key --upstream NAME
                               print the key upstream NAME verifies the gateway's principal JWTs
                               with (its "identity" setting); derived from GATEWAY_IDENTITY_KEY,
                               different for every upstream

  The built-in OAuth authorization server (OAUTH_SERVER=on; these work on its tables either way):
  oauth set-password           set the owner password the consent page asks for: typed twice
                               (hidden) on a terminal, else the first line of stdin; ends the
                               sign-ins in progress
  oauth clients                list clients: id, name, redirect hosts, registered, grants
  oauth grants                 list grants: id, client, who signed in, namespace, scopes,
                               created, expires
  oauth revoke-grant --id ID   end a grant: its refresh tokens go, its access tokens are refused
  oauth revoke-client --id ID  end every grant of a client and forget it (it must register again)
  oauth rotate-key             add a new signing key: published now, it signs from 3 minutes on;
                               the old keys verify until their last token has expired

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

/** --scopes: this server's context scopes, and any other domain:action name the gateway's upstream rules use (hr:read). */
function parseScopes (value: string | undefined): Scope[] {
  if (value === undefined) return ['context:read', 'context:write', 'context:delete']
  const scopes = [...new Set(value.split(',').map((scope) => scope.trim()).filter((scope) => scope !== ''))]
  if (scopes.length === 0) fail(`Unknown scope(s): (none given). Scopes: ${SCOPES.join(', ')}, and the gateway's (domain:action, e.g. hr:read).`, 2)
  const problems = scopes.map(scopeNameProblem).filter((problem) => problem !== undefined)
  if (problems.length > 0) fail(`Unknown scope(s): ${problems.join('; ')}. Scopes: ${SCOPES.join(', ')}, and the gateway's (domain:action, e.g. hr:read).`, 2)
  return scopes
}

/** What a token may do, in words: said plainly at creation because "admin" alone does not say where. */
function accessOf (token: { namespace: string, scopes: readonly string[], globalAdmin: boolean }): string {
  if (token.globalAdmin) return `global admin: every scope in every namespace (calls that name no namespace act in ${token.namespace})`
  if (token.scopes.includes('context:admin')) return `admin of namespace ${token.namespace} only: every scope there, nothing in any other namespace (--global-admin makes an admin of every namespace)`
  return `${token.scopes.join(', ')} in namespace ${token.namespace} only`
}

/**
 * `--name value` as `--name=value` for the options that take a value, so that a value starting
 * with "-" (a grant id, a jti or a token name may) is read as the value: parseArgs refuses it as
 * ambiguous otherwise.
 */
function withJoinedValues (args: string[], valueOptions: string[]): string[] {
  const joined: string[] = []
  for (let index = 0; index < args.length; index++) {
    const arg = args[index] as string
    const next = args[index + 1]
    if (next !== undefined && valueOptions.includes(arg.replace(/^--/, '')) && arg.startsWith('--')) {
      joined.push(`${arg}=${next}`)
      index++
    } else {
      joined.push(arg)
    }
  }
  return joined
}

async function tokenCommand (args: string[]): Promise<void> {
  const [action, ...rest] = args
  const { values } = parseArgs({
    args: withJoinedValues(rest, ['name', 'namespace', 'scopes', 'jti', 'expires-at']),
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
        const tokens = createTokenStore(sql)
        if ((await tokens.listApiTokens()).some((token) => token.name === name)) fail(`A token named "${name}" exists already; revoke it or choose another name.`)
        const token = generateToken()
        await tokens.insertApiToken({ name, hash: hashToken(token).toString('hex'), namespace, scopes, globalAdmin })
        process.stdout.write(`Created token "${name}": ${accessOf({ namespace, scopes, globalAdmin })}. It is shown only now:\n${token}\n`)
      })
      return
    }
    case 'list':
      await withDatabase(async ({ sql }) => {
        const tokens = await createTokenStore(sql).listApiTokens()
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
        const tokens = createTokenStore(sql)
        const id = await tokens.revokeApiToken(name)
        // A run that stopped after revoking the token ends, when run again, the grants left behind.
        const ids = id !== null ? [id] : (await tokens.listApiTokens()).filter((token) => token.name === name && token.revokedAt !== null).map((token) => token.id)
        const publisher = createRevocationPublisher(config.REDIS_URL)
        try {
          const revoker = cliGrantRevoker(createOAuthStore(sql), tokens.revokeJti, publisher.publish)
          let grants = 0
          for (const tokenId of ids) grants += await revoker.revokeGrantsOfApiToken(tokenId)
          if (id === null && grants === 0) fail(`No active token named "${name}".`)
          const ended = grants === 0 ? '' : ` Ended ${grants} OAuth grant${grants === 1 ? '' : 's'} made by signing in with it on the consent page: ${refusedWhen(publisher, config, 'their access tokens are refused')}`
          process.stdout.write(id === null ? `"${name}" was revoked before.${ended}\n` : `Revoked "${name}". Instances stop accepting it within seconds.${ended}\n`)
        } finally {
          publisher.close()
        }
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
        await createTokenStore(sql).revokeJti(jti, revocationKeptUntil(expiresAt))
        const publisher = createRevocationPublisher(config.REDIS_URL)
        try {
          await publisher.publish(jti, expiresAt)
        } finally {
          publisher.close()
        }
        process.stdout.write(`Revoked jti "${jti}" until ${expiresAt.toISOString()}. ${publisher.published()
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

interface RevocationPublisher {
  publish: (id: string, expiresAt: Date) => Promise<void>
  /** Whether every revocation so far reached Redis (false without REDIS_URL). */
  published: () => boolean
  close: () => void
}

/**
 * Tells every instance of revocations at once through Redis (REDIS_URL); without it they see them
 * in the database within AUTH_CACHE_SECONDS. Best effort: the durable list in PostgreSQL is what
 * counts. Connects at the first revocation; an unreachable Redis is reported once.
 */
function createRevocationPublisher (url: string | undefined): RevocationPublisher {
  let redis: Redis | undefined
  let state: 'none' | 'published' | 'unreachable' = 'none'
  return {
    async publish (id, expiresAt) {
      if (url === undefined || state === 'unreachable') return
      try {
        if (redis === undefined) {
          redis = new Redis(url, { lazyConnect: true, connectTimeout: 2000, maxRetriesPerRequest: 1, enableOfflineQueue: false, retryStrategy: () => null })
          redis.on('error', () => {})
          await redis.connect()
        }
        await publishRevokedJti(redis, id, expiresAt)
        state = 'published'
      } catch {
        state = 'unreachable'
        process.stderr.write('Redis could not be reached: the revocation is stored, and instances pick it up from the database.\n')
      }
    },
    published: () => state === 'published',
    close: () => redis?.disconnect()
  }
}

function refusedWhen (publisher: RevocationPublisher, config: Config, what: string): string {
  return publisher.published() ? `${what} by every instance now.` : `${what} by every instance within ${config.AUTH_CACHE_SECONDS} s.`
}

// More than any password, far less than a stream that never ends.
const PASSWORD_INPUT_MAX_BYTES = 8 * 1024

/** The first line of stdin (a piped password), without its line ending. */
async function firstLineOfStdin (): Promise<string> {
  const chunks: Buffer[] = []
  let length = 0
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    chunks.push(chunk)
    length += chunk.length
    if (chunk.includes(0x0a) || length > PASSWORD_INPUT_MAX_BYTES) break
  }
  const text = Buffer.concat(chunks).toString('utf8')
  const end = text.indexOf('\n')
  return (end < 0 ? text : text.slice(0, end)).replace(/\r$/, '')
}

/**
 * Lines typed at the terminal without echo: each prompt goes to stderr, what is typed nowhere.
 * One reader for every prompt, so that lines typed ahead are not lost between them.
 */
function hiddenPrompter (): { ask: (prompt: string) => Promise<string>, close: () => void } {
  // readline echoes what is typed to its output; this output drops it.
  const silent = new Writable({ write: (_chunk, _encoding, done) => { done() } })
  const lines = createInterface({ input: process.stdin, output: silent, terminal: true })
  let cancelled = false
  lines.on('SIGINT', () => { cancelled = true; lines.close() })
  const typed = lines[Symbol.asyncIterator]()
  return {
    async ask (prompt) {
      process.stderr.write(prompt)
      const next = await typed.next()
      process.stderr.write('\n')
      if (cancelled) fail('Cancelled; the password was not changed.', 130)
      if (next.done === true) fail('No password entered; the password was not changed.', 2)
      return next.value
    },
    close: () => { lines.close() }
  }
}

/** The new owner password: typed twice, hidden, on a terminal; otherwise the first line of stdin. Refused before any database is opened. */
async function readNewPassword (): Promise<string> {
  if (process.stdin.isTTY !== true) {
    const password = await firstLineOfStdin()
    if (password === '') fail('No password on stdin: run the command on a terminal, or pipe one line (printf \'%s\\n\' "$PASSWORD" | node dist/cli.js oauth set-password).', 2)
    const problem = ownerPasswordProblem(password)
    if (problem !== undefined) fail(`${problem} The password was not changed.`, 2)
    return password
  }
  const prompter = hiddenPrompter()
  try {
    const password = await prompter.ask('New owner password: ')
    const problem = ownerPasswordProblem(password)
    if (problem !== undefined) fail(`${problem} The password was not changed.`, 2)
    if (await prompter.ask('The same again: ') !== password) fail('The two entries differ; the password was not changed.', 2)
    return password
  } finally {
    prompter.close()
  }
}

/** An `oauth` command run where OAUTH_SERVER is off works all the same, but says what it acts on. */
function noteIfServerOff (config: Config): void {
  if (builtInIssuerOf(config) !== undefined) return
  process.stderr.write('Note: OAUTH_SERVER is not on in this environment. The command works on the built-in authorization server\'s tables all the same; servers use them when they run with OAUTH_SERVER=on.\n')
}

function idOption (value: string | undefined, command: string): string {
  if (value === undefined) fail(`oauth ${command} needs --id ID (see node dist/cli.js oauth ${command === 'revoke-grant' ? 'grants' : 'clients'})`, 2)
  if (value.length === 0 || value.length > 2048) fail('--id must be 1-2048 characters', 2)
  return value
}

function plural (count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`
}

async function oauthCommand (args: string[]): Promise<void> {
  const [action, ...rest] = args
  let id: string | undefined
  try {
    id = parseArgs({ args: withJoinedValues(rest, ['id']), options: { id: { type: 'string' } }, strict: true }).values.id
  } catch (error) {
    fail(`${(error as Error).message}\n\n${USAGE}`, 2)
  }
  switch (action) {
    case 'set-password': {
      configFromEnv() // a configuration problem is reported before anyone types
      // Read first: the database (an embedded one takes seconds to open) is not held while someone types.
      const password = await readNewPassword()
      await withDatabase(async ({ sql }, config) => {
        noteIfServerOff(config)
        const refused = await setOwnerPassword(createOAuthStore(sql), password)
        if (refused !== undefined) fail(`${refused} The password was not changed.`, 2)
        process.stdout.write('The owner password is set: the consent page accepts it from now on. Sign-ins in progress were ended (start them again); connections made before keep working.\n')
      })
      return
    }
    case 'clients':
      await withDatabase(async ({ sql }, config) => {
        noteIfServerOff(config)
        const clients = await listClients(createOAuthStore(sql))
        for (const client of clients) {
          process.stdout.write(client.kind === 'registered'
            ? `${client.clientId}\t${client.name ?? '(no name)'}\tredirects to ${client.redirectHosts.join(',') || '(none)'}\tregistered ${client.createdAt ?? ''}\t${plural(client.grants, 'grant')}\n`
            : `${client.clientId}\t(client ID metadata document, not stored)\t-\t-\t${plural(client.grants, 'grant')}\n`)
        }
        if (clients.length === 0) process.stdout.write('No clients.\n')
      })
      return
    case 'grants':
      await withDatabase(async ({ sql }, config) => {
        noteIfServerOff(config)
        const grants = await createOAuthStore(sql).listGrants()
        for (const grant of grants) {
          const client = grant.clientName === null ? grant.clientId : `${grant.clientName} (${grant.clientId})`
          process.stdout.write(`${grant.grantId}\t${client}\tby ${grant.subject}\tnamespace ${grant.namespace ?? '(none: its tokens are refused)'}\t${grant.scope || '(no scopes)'}\tcreated ${grant.createdAt}\texpires ${grant.expiresAt ?? 'never'}\n`)
        }
        if (grants.length === 0) process.stdout.write('No grants.\n')
      })
      return
    case 'revoke-grant': {
      const grantId = idOption(id, action)
      await withDatabase(async ({ sql }, config) => {
        noteIfServerOff(config)
        const store = createOAuthStore(sql)
        const publisher = createRevocationPublisher(config.REDIS_URL)
        try {
          if (!await revokeGrant(store, cliGrantRevoker(store, createTokenStore(sql).revokeJti, publisher.publish), grantId)) fail(`No grant with id "${grantId}" (node dist/cli.js oauth grants lists them).`)
          process.stdout.write(`Revoked grant ${grantId}: its refresh tokens are deleted, and ${refusedWhen(publisher, config, 'its access tokens are refused')} The client must be connected again.\n`)
        } finally {
          publisher.close()
        }
      })
      return
    }
    case 'revoke-client': {
      const clientId = idOption(id, action)
      await withDatabase(async ({ sql }, config) => {
        noteIfServerOff(config)
        const store = createOAuthStore(sql)
        const publisher = createRevocationPublisher(config.REDIS_URL)
        try {
          const revoked = await revokeClient(cliGrantRevoker(store, createTokenStore(sql).revokeJti, publisher.publish), clientId)
          if (revoked === null) fail(`No client with id "${clientId}" (node dist/cli.js oauth clients lists them).`)
          const grants = revoked.grants === 0 ? 'It had no grants.' : `Ended ${plural(revoked.grants, 'grant')}: ${refusedWhen(publisher, config, 'their access tokens are refused')}`
          const forgotten = revoked.forgotten
            ? 'It is forgotten: its next token request gets invalid_client, and it must register again.'
            : 'Its id is a Client ID Metadata Document URL, which is never stored: it can connect again if the owner allows it on the consent page.'
          process.stdout.write(`Revoked client ${clientId}. ${grants} ${forgotten}\n`)
        } finally {
          publisher.close()
        }
      })
      return
    }
    case 'rotate-key':
      await withDatabase(async ({ sql }, config) => {
        noteIfServerOff(config)
        const store = createOAuthStore(sql)
        const current = await store.listKeys('sign')
        if (current.length === 0) fail('No signing key to rotate yet: a server creates the first one when it starts with OAUTH_SERVER=on.')
        const now = Date.now()
        const rotated = await rotateSigningKey(store, config.OAUTH_ACCESS_TOKEN_SECONDS, now)
        const minutes = (ms: number) => Math.round(ms / 60_000)
        process.stdout.write([
          `New signing key ${rotated.kid}.`,
          `  published now: every instance reads the keys within ${KEY_RELOAD_MS / 1000} s and accepts what it signs`,
          `  signs access tokens from ${rotated.signsFrom.toISOString()} (in ${minutes(rotated.signsFrom.getTime() - now)} minutes)`,
          `  the keys it replaces (${current.map((key) => key.kid).join(', ')}) verify tokens until ${rotated.othersRetireAt.toISOString()}, then retire`,
          `  (OAUTH_ACCESS_TOKEN_SECONDS=${config.OAUTH_ACCESS_TOKEN_SECONDS} here, plus ${MAX_JWT_CLOCK_SKEW_SECONDS} s of clock skew: run this with the servers' settings)`,
          ''
        ].join('\n'))
      })
      return
    default:
      fail(USAGE, 2)
  }
}

function describeApproval (approval: Approval): string {
  const call = `${approvalToolName(approval.upstream, approval.tool)}${approval.arguments === null ? '' : ` ${JSON.stringify(approval.arguments)}`}`
  const decided = approval.decidedBy === null ? '' : `\tdecided by ${approval.decidedBy} at ${approval.decidedAt?.toISOString() ?? ''}`
  return `${approval.id}\t${approval.status}\t${call}\tasked by ${approval.requestedBy}${approval.client === null ? '' : ` via ${approval.client}`} ` +
    `at ${approval.requestedAt.toISOString()}\texpires ${approval.expiresAt.toISOString()}${decided}`
}

/** Who decides: --as NAME, else the OS user running the command, recorded as `cli:NAME`. */
function deciderOf (name: string | undefined): string {
  const who = name ?? userInfo().username
  if (!/^[A-Za-z0-9_.@:-]{1,64}$/.test(who)) fail('--as must be 1-64 characters of A-Z a-z 0-9 _ . @ : -', 2)
  return `cli:${who}`
}

/** `gateway identity-key --upstream NAME`: the key that upstream verifies its principal JWTs with. */
function gatewayCommand (args: string[]): void {
  const [action, ...rest] = args
  let values: { upstream?: string }
  try {
    values = parseArgs({ args: rest, options: { upstream: { type: 'string' } }, strict: true }).values
  } catch (error) {
    fail(`${(error as Error).message}\n\n${USAGE}`, 2)
  }
  if (action !== 'identity-key') fail(USAGE, 2)
  const upstream = values.upstream ?? fail('gateway identity-key needs --upstream NAME (an upstream\'s name in UPSTREAMS_FILE)', 2)
  if (!new RegExp(UPSTREAM_NAME_PATTERN).test(upstream)) fail(`--upstream: ${JSON.stringify(upstream.slice(0, 64))} is not an upstream name`, 2)
  const masterKey = process.env.GATEWAY_IDENTITY_KEY
  if (masterKey === undefined || masterKey.length < 32) fail('GATEWAY_IDENTITY_KEY must be set (at least 32 characters), as for the server', 2)
  process.stdout.write(`${identityKeyFor(masterKey, upstream)}\n`)
}

async function approvalsCommand (args: string[]): Promise<void> {
  const [action, ...rest] = args
  let values: { id?: string, as?: string, all?: boolean }
  try {
    values = parseArgs({ args: withJoinedValues(rest, ['id', 'as']), options: { id: { type: 'string' }, as: { type: 'string' }, all: { type: 'boolean' } }, strict: true }).values
  } catch (error) {
    fail(`${(error as Error).message}\n\n${USAGE}`, 2)
  }
  switch (action) {
    case 'list':
      await withDatabase(async ({ sql }) => {
        const store = createGatewayStore(sql)
        await store.expireApprovals()
        const approvals = await store.listApprovals({ all: values.all === true })
        for (const approval of approvals) process.stdout.write(`${describeApproval(approval)}\n`)
        if (approvals.length === 0) process.stdout.write(values.all === true ? 'No approvals.\n' : 'No pending approvals.\n')
      })
      return
    case 'approve':
    case 'reject': {
      const id = values.id ?? fail(`approvals ${action} needs --id ID (node dist/cli.js approvals list shows them)`, 2)
      if (!/^apr_[A-Za-z0-9]{16}$/.test(id)) fail('--id must be an approval id such as apr_3fZk9QpLx2mWb7Tc (node dist/cli.js approvals list shows them)', 2)
      const decidedBy = deciderOf(values.as)
      await withDatabase(async ({ sql }) => {
        const result = await createGatewayStore(sql).decideApproval(id, action === 'approve' ? 'approved' : 'rejected', decidedBy)
        if (result.status === 'not_found') fail(`No approval with id "${id}" (node dist/cli.js approvals list shows the pending ones).`)
        if (result.status === 'not_pending') {
          const { approval } = result
          const state = approval.status === 'expired' ? `expired at ${approval.expiresAt.toISOString()}` : `${approval.status}${approval.decidedBy === null ? '' : ` (decided by ${approval.decidedBy})`}`
          fail(`Approval ${id} is not pending: it is ${state}. Nothing was changed.`)
        }
        const { approval } = result
        process.stdout.write(action === 'approve'
          ? `Approved ${id}: ${approvalToolName(approval.upstream, approval.tool)} runs once, when the model asks with get_approval (before ${approval.expiresAt.toISOString()}). Recorded as decided by ${decidedBy}.\n`
          : `Rejected ${id}: ${approvalToolName(approval.upstream, approval.tool)} is cancelled and never runs. Recorded as decided by ${decidedBy}.\n`)
      })
      return
    }
    default:
      fail(USAGE, 2)
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
    const gateway = summary.upstreamCalls + summary.approvals === 0 ? '' : `, ${plural(summary.upstreamCalls, 'upstream call')} (audit) and ${plural(summary.approvals, 'approval')}`
    process.stderr.write(`Exported ${summary.entries} entries with ${summary.versions} versions${gateway}.\n`)
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
    const gateway = summary.importedUpstreamCalls + summary.importedApprovals === 0 ? '' : ` Gateway: ${plural(summary.importedUpstreamCalls, 'upstream call')} and ${plural(summary.importedApprovals, 'approval')} restored.`
    process.stdout.write(`Imported ${summary.imported} entries with ${summary.importedVersions} versions; ${summary.unchanged} were there already, unchanged; ${summary.conflicts} conflicts.${gateway}\n`)
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
    case 'oauth':
      await oauthCommand(args)
      break
    case 'approvals':
      await approvalsCommand(args)
      break
    case 'gateway':
      gatewayCommand(args)
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
