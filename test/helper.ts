import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { buildApp } from '../app.js'
import { loadConfig, type Config } from '../schema/config.js'
import { testDatabase } from './db-helper.js'

export const TEST_TOKEN = 'test-token-0123456789abcdef0123456789abcdef'

type Tap = Parameters<typeof testDatabase>[0]

/** Builds the app against this test file's own database; closed when the test ends. */
export async function build (t: Tap, env: Record<string, string> = {}): Promise<FastifyInstance> {
  const { url } = await testDatabase(t)
  const config: Config = loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url, LOG_LEVEL: 'silent', ...env })
  const app = await buildApp(config)
  t.teardown(() => app.close())
  await app.ready()
  return app
}

let nextId = 1

export interface RpcOptions {
  token?: string | null
  headers?: Record<string, string>
}

/** POSTs one JSON-RPC request to /mcp the way a 2025-era client does. */
export function rpc (app: FastifyInstance, method: string, params: Record<string, unknown> = {}, options: RpcOptions = {}): Promise<LightMyRequestResponse> {
  const token = options.token === undefined ? TEST_TOKEN : options.token
  return app.inject({
    method: 'POST',
    url: '/mcp',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      ...(token !== null && { authorization: `Bearer ${token}` }),
      ...options.headers
    },
    payload: { jsonrpc: '2.0', id: nextId++, method, params }
  })
}

export interface ToolResult {
  isError?: boolean
  content: Array<{ type: string, text: string }>
  /** A success's output; error results have none (read them with toolErrorOf). */
  structuredContent: Record<string, unknown>
  _meta?: Record<string, unknown>
}

/** The machine-readable part of a tool error result: `_meta['shared-context-mcp/error']`. */
export interface ToolErrorBody {
  [detail: string]: unknown
  code: string
  message: string
}

/** A tool error result's `{ code, message, ...details }`, or undefined when the result is no error or lacks it. */
export function toolErrorOf (result: { isError?: boolean, _meta?: Record<string, unknown> } | undefined): ToolErrorBody | undefined {
  if (result?.isError !== true) return undefined
  return result._meta?.['shared-context-mcp/error'] as ToolErrorBody | undefined
}

/** Calls a tool and returns its result; fails loudly on a protocol error. */
export async function callTool (app: FastifyInstance, name: string, args: Record<string, unknown>, options: RpcOptions = {}): Promise<ToolResult> {
  const response = await rpc(app, 'tools/call', { name, arguments: args }, options)
  const body = response.json() as { result?: ToolResult, error?: unknown }
  if (body.result === undefined) throw new Error(`tools/call ${name} failed with HTTP ${response.statusCode}: ${response.body}`)
  return body.result
}
