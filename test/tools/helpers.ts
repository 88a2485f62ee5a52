import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import { hashToken } from '../../plugins/auth.js'
import { eventually } from '../eventually.js'
import { callTool, toolErrorOf, type RpcOptions, type ToolErrorBody, type ToolResult } from '../helper.js'

/** Shared by the tool tests: assertions on tool results, and extra principals. */

/** The tool's structuredContent, after asserting that the call succeeded. */
export function okResult<T = Record<string, unknown>> (t: Test, result: ToolResult, what = 'tool call'): T {
  t.not(result.isError, true, `${what} succeeds: ${(result.content[0]?.text ?? '').slice(0, 160)}`)
  return result.structuredContent as T
}

/** Calls a tool, asserts success and returns its structuredContent. */
export async function ok<T = Record<string, unknown>> (t: Test, app: FastifyInstance, name: string, args: Record<string, unknown>, options: RpcOptions = {}): Promise<T> {
  return okResult<T>(t, await callTool(app, name, args, options), `${name} ${JSON.stringify(args).slice(0, 80)}`)
}

/**
 * Asserts a tool-level failure with this catalogue code: no structuredContent (SDK v1 clients would
 * validate it against the outputSchema), the text block `CODE: message`, and `{ code, message }` in
 * _meta. Returns the _meta error.
 */
export function toolError (t: Test, result: ToolResult, code: string, what = 'tool call'): ToolErrorBody {
  t.equal(result.isError, true, `${what} is an error result`)
  const error = toolErrorOf(result) ?? { code: '', message: '' }
  t.equal(error.code, code, `${what} fails with ${code}: ${String(error.message).slice(0, 160)}`)
  t.type(error.message, 'string', 'the error has a message')
  t.equal(result.structuredContent, undefined, `${what} carries no structuredContent`)
  t.equal(result.content[0]?.type, 'text', 'the error comes with a text block')
  t.equal(result.content[0]?.text, `${code}: ${error.message}`, 'the text block is "CODE: message"')
  return error
}

/** Calls a tool, asserts it fails with `code`, and returns its _meta error. */
export async function fails (t: Test, app: FastifyInstance, name: string, args: Record<string, unknown>, code: string, options: RpcOptions = {}): Promise<ToolErrorBody> {
  return toolError(t, await callTool(app, name, args, options), code, `${name} ${JSON.stringify(args).slice(0, 80)}`)
}

/** A message that names `field` the way the registry reports validation failures ("field: ...", "field.0: ..." or "field is required"). */
export function namesField (field: string): RegExp {
  return new RegExp(`(^|[\\s:])${field.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(\\.\\w+)*( is required|:)`)
}

/** A precondition on the test's own data (not an assertion about the server). */
export function assume (condition: boolean, what: string): void {
  if (!condition) throw new Error(`test data is wrong: ${what}`)
}

export function isIsoTimestamp (value: unknown): boolean {
  return typeof value === 'string' && !Number.isNaN(Date.parse(value)) && new Date(value).toISOString() === value
}

export interface HistoryVersion {
  version: number
  action: string
  actor: string
  client: string | null
  at: string
  bytes: number | null
}

export interface HistoryOutput { key: string, versions: HistoryVersion[], next_cursor: string | null }

/** Every version of a key, newest first (one page of up to 100). */
export async function historyOf (t: Test, app: FastifyInstance, key: string, options: RpcOptions = {}): Promise<HistoryVersion[]> {
  const page = await ok<HistoryOutput>(t, app, 'context_history', { key, limit: 100 }, options)
  return page.versions
}

/** Inserts an API token for a second principal (`token:<name>`) and returns the bearer token. */
export async function addToken (app: FastifyInstance, name: string, namespace: string, scopes: string[], options: { globalAdmin?: boolean } = {}): Promise<string> {
  const token = `scm_test_${name}_${'x'.repeat(40)}`
  await app.db.tokens.insertApiToken({ name, hash: hashToken(token).toString('hex'), namespace, scopes, globalAdmin: options.globalAdmin ?? false })
  return token
}

/**
 * Waits until every history row is below the change feed's horizon (db/change-feed.ts), so that
 * changes_since serves all that was written. Rows get there once every older transaction on the
 * database server has ended: at once on the embedded database, after the longest running
 * transaction of anyone on a shared server.
 */
export async function feedSettled (app: FastifyInstance): Promise<void> {
  await eventually(async () => {
    const [row] = await app.db.sql<[{ pending: number }]>`
      select count(*)::int as pending from context_history where txid >= pg_snapshot_xmin(pg_current_snapshot())`
    return row.pending === 0
  }, { what: 'every history row to pass the change feed horizon' })
}
