import postgres from 'postgres'

export interface SqlOptions {
  max: number
  connectTimeoutMs: number
  onnotice?: (notice: postgres.Notice) => void
}

const INT8_OID = 20

// int8 (versions, counts, ids) arrives as a JS number rather than a string. Safe: versions and
// counts stay far below 2^53.
const int8AsNumber = {
  to: INT8_OID,
  from: [INT8_OID],
  serialize: (value: number) => String(value),
  parse: (value: string) => Number(value)
}

export function createSql (url: string, options: SqlOptions): postgres.Sql {
  const sql = postgres(url, {
    max: options.max,
    connect_timeout: Math.max(1, Math.ceil(options.connectTimeoutMs / 1000)),
    idle_timeout: 60,
    // Named prepared statements are also what keeps concurrent connections to the embedded
    // PGlite socket server from overwriting each other's unnamed statement (see embedded.ts).
    prepare: true,
    onnotice: options.onnotice ?? (() => {}),
    connection: { application_name: 'shared-context-mcp' },
    types: { int8AsNumber }
  })
  // The custom type only changes how int8 is parsed; callers need no typed helper for it.
  return sql as unknown as postgres.Sql
}

export class DatabaseUnavailableError extends Error {
  override readonly name = 'DatabaseUnavailableError'
}

export interface WaitOptions {
  timeoutMs: number
  log?: (msg: string) => void
}

const FIRST_RETRY_DELAY_MS = 100
const MAX_RETRY_DELAY_MS = 2000
const MIN_ATTEMPT_MS = 50

export async function waitForDatabase (sql: postgres.Sql, options: WaitOptions): Promise<void> {
  const deadline = Date.now() + options.timeoutMs
  let delay = FIRST_RETRY_DELAY_MS
  let attempts = 0
  let lastError: unknown
  while (true) {
    attempts++
    try {
      await withTimeout(sql`select 1`.execute(), deadline - Date.now())
      return
    } catch (error) {
      lastError = error
    }
    // Sleep only if there is time left for another attempt after it.
    const wait = Math.min(delay, deadline - Date.now() - MIN_ATTEMPT_MS)
    if (wait < 0) break
    options.log?.(`database ${describeServer(sql)} not reachable yet (${describeError(lastError)}); retrying in ${wait} ms`)
    await sleep(wait)
    delay = Math.min(delay * 2, MAX_RETRY_DELAY_MS)
  }
  throw new DatabaseUnavailableError(
    `Database at ${describeServer(sql)} is unavailable after ${attempts} attempts in ${options.timeoutMs} ms ` +
    `(last error: ${describeError(lastError)}). Check that PostgreSQL is running and DATABASE_URL is right, ` +
    'or raise DB_CONNECT_TIMEOUT_MS.',
    { cause: lastError }
  )
}

/** host:port list of the server, never the credentials. */
export function describeServer (sql: postgres.Sql): string {
  const { host, port } = sql.options
  return host.map((h, i) => `${h}:${port[i] ?? port[0] ?? 5432}`).join(',')
}

function describeError (error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code
    return typeof code === 'string' && !error.message.includes(code) ? `${code}: ${error.message}` : error.message
  }
  return String(error)
}

async function withTimeout<T> (promise: Promise<T>, timeoutMs: number): Promise<T> {
  // The query may settle after we gave up on it; swallow that late outcome.
  promise.catch(() => {})
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), Math.max(0, timeoutMs))
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}
