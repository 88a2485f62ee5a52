import postgres from 'postgres'
import { createSql } from '../db/connect.js'
import { createContextStore } from '../db/context-store.js'
import { keyName, randomContent } from './calls.js'
import { NAMESPACE } from './database.js'
import { FLOOR_POOL, READ_SQL, WRITE_SQL, normalizeSql, readParams, writeParams } from './peers/floor-sql.js'

// The floor's guard: runs one read and one write through the project's store on the bench
// database, records the statements postgres.js sends (its debug hook), and compares their text and
// parameters with the floor's copy. Run before the servers start; a store change that the copy
// misses stops the benchmark instead of comparing different SQL.

interface Sent { query: string, parameters: unknown[] }

function compare (what: string, sent: Sent | undefined, text: string, parameters: unknown[]): string[] {
  if (sent === undefined) return [`${what}: the store sent no statement`]
  const problems: string[] = []
  if (normalizeSql(sent.query) !== normalizeSql(text)) {
    problems.push(`${what}: the store's SQL text differs from bench/peers/floor-sql.ts:\n  store: ${normalizeSql(sent.query)}\n  floor: ${normalizeSql(text)}`)
  }
  if (JSON.stringify(sent.parameters) !== JSON.stringify(parameters)) {
    problems.push(`${what}: parameters differ: store ${JSON.stringify(sent.parameters)}, floor ${JSON.stringify(parameters)}`)
  }
  return problems
}

/** The floor's pool settings against the server's (createSql's parsed options; nothing connects). */
function poolProblems (databaseUrl: string): string[] {
  const server = createSql(databaseUrl, { max: 1, connectTimeoutMs: 10_000 })
  const options = server.options as unknown as Record<string, unknown>
  const problems: string[] = []
  for (const [name, value] of Object.entries(FLOOR_POOL)) {
    const theirs = name === 'connection'
      ? Object.fromEntries(Object.keys(value).map((setting) => [setting, (options.connection as Record<string, unknown>)[setting]]))
      : options[name]
    if (JSON.stringify(theirs) !== JSON.stringify(value)) {
      problems.push(`pool setting ${name}: the server's createSql has ${JSON.stringify(theirs)}, bench/peers/floor-sql.ts ${JSON.stringify(value)}`)
    }
  }
  return problems
}

export async function checkFloorSql (databaseUrl: string): Promise<void> {
  const poolDiffers = poolProblems(databaseUrl)
  if (poolDiffers.length > 0) throw new Error(poolDiffers.join('\n'))
  const sent: Sent[] = []
  const sql = postgres(databaseUrl, {
    max: 1,
    prepare: true,
    onnotice: () => {},
    debug: (_connection, query, parameters) => { sent.push({ query, parameters }) }
  })
  try {
    const store = createContextStore(sql, { maxContentBytes: 102400 })
    const key = keyName(0)
    const content = randomContent()
    const principal = 'bench-sql-check'
    // Connecting fetches the array types first; only what the calls send counts.
    await sql`select 1`
    sent.length = 0
    await store.read(NAMESPACE, key)
    const [read] = sent.splice(0)
    await store.write(NAMESPACE, key, content, {}, { principal, client: null })
    const [write] = sent.splice(0)
    const problems = [
      ...compare('read_context', read, READ_SQL, readParams(NAMESPACE, key)),
      ...compare('write_context', write, WRITE_SQL, writeParams(NAMESPACE, key, content, principal, null))
    ]
    if (problems.length > 0) throw new Error(problems.join('\n'))
  } finally {
    await sql.end({ timeout: 5 })
  }
}
