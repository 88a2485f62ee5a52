import { get as httpGet } from 'node:http'
import { Client as V2Client, StreamableHTTPClientTransport as V2Transport } from '@modelcontextprotocol/client'
import { Client as V1Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport as V1Transport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { ResourceListChangedNotificationSchema, ResourceUpdatedNotificationSchema } from '@modelcontextprotocol/sdk/types.js'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../app.js'
import { loadConfig } from '../../schema/config.js'
import { testDatabase, type TestDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'
import { TEST_TOKEN } from '../helper.js'

type Tap = Parameters<typeof testDatabase>[0]

export interface Instance { app: FastifyInstance, url: string }

/** `count` app instances on one database, each listening on its own port; closed at teardown. */
export async function instances (t: Tap, count: number, env: Record<string, string> = {}, database?: TestDatabase): Promise<{ database: TestDatabase, instances: Instance[] }> {
  const db = database ?? await testDatabase(t)
  const list: Instance[] = []
  t.teardown(() => Promise.all(list.map(({ app }) => app.close())))
  for (let index = 0; index < count; index++) list.push(await instance(db.url, env))
  return { database: db, instances: list }
}

export async function instance (databaseUrl: string, env: Record<string, string> = {}): Promise<Instance> {
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: databaseUrl, LOG_LEVEL: 'silent', ...env }))
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  await eventually(() => app.live.listener.listening, { what: 'the instance to LISTEN' })
  return { app, url: `${address}/mcp` }
}

export interface Notified { method: string, uri?: string, version?: unknown }

/** An SDK v1 (2025 line) client that records the resource notifications it receives. */
export async function v1Client (t: Tap, url: string, token = TEST_TOKEN): Promise<{ client: V1Client, transport: V1Transport, notified: Notified[] }> {
  const client = new V1Client({ name: 'live-v1', version: '1.0.0' })
  const notified: Notified[] = []
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (notification) => {
    notified.push({ method: notification.method, uri: notification.params.uri, version: notification.params._meta?.['shared-context-mcp/version'] })
  })
  client.setNotificationHandler(ResourceListChangedNotificationSchema, (notification) => { notified.push({ method: notification.method }) })
  const transport = new V1Transport(new URL(url), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
    reconnectionOptions: { initialReconnectionDelay: 100, maxReconnectionDelay: 1000, reconnectionDelayGrowFactor: 1.5, maxRetries: 50 }
  })
  await client.connect(transport)
  t.teardown(() => client.close().catch(() => {}))
  return { client, transport, notified }
}

/** Waits until the instance has this many open 2025-era streams. */
export async function streamsOpen (app: FastifyInstance, count: number): Promise<void> {
  await eventually(() => app.live.counts().streams === count, { what: `${count} open streams (now ${app.live.counts().streams})` })
}

export function uriOf (key: string, namespace = 'default'): string {
  return `context://${namespace}/${key}`
}

/** An SDK v2 client negotiated to 2026-07-28, recording the resource notifications it receives. */
export async function v2Client (t: Tap, url: string, token = TEST_TOKEN): Promise<{ client: V2Client, notified: Notified[] }> {
  const client = new V2Client({ name: 'live-v2', version: '1.0.0' }, { versionNegotiation: { mode: 'auto' } })
  const notified: Notified[] = []
  client.setNotificationHandler('notifications/resources/updated', (notification) => {
    notified.push({ method: notification.method, uri: notification.params.uri, version: notification.params._meta?.['shared-context-mcp/version'] })
  })
  client.setNotificationHandler('notifications/resources/list_changed', (notification) => { notified.push({ method: notification.method }) })
  await client.connect(new V2Transport(new URL(url), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
  t.teardown(() => client.close().catch(() => {}))
  return { client, notified }
}

/** initialize over plain HTTP; the session id it answers with. */
export async function initializeSession (url: string, token = TEST_TOKEN): Promise<string | null> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } })
  })
  await response.body?.cancel()
  return response.headers.get('mcp-session-id')
}

/** A JSON-RPC request in a session over plain HTTP. */
export async function sessionRpc (url: string, sessionId: string, method: string, params: Record<string, unknown>, token = TEST_TOKEN): Promise<{ status: number, body: any }> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sessionId },
    body: JSON.stringify({ jsonrpc: '2.0', id: 2, method, params })
  })
  const text = await response.text()
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text) }
}

export interface RawStream {
  status: number
  /** Everything received so far. */
  text: () => string
  /** Resolves when the server ended the stream or the connection closed. */
  ended: Promise<void>
  abort: () => void
}

/** GET /mcp with a session id, read as text: the raw SSE stream. */
export function openRawStream (url: string, sessionId: string, options: { token?: string, lastEventId?: string } = {}): Promise<RawStream> {
  return new Promise((resolve, reject) => {
    const request = httpGet(url, {
      headers: {
        authorization: `Bearer ${options.token ?? TEST_TOKEN}`,
        accept: 'text/event-stream',
        'mcp-session-id': sessionId,
        ...(options.lastEventId !== undefined && { 'last-event-id': options.lastEventId })
      }
    }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { text += chunk })
      const ended = new Promise<void>((resolve) => {
        response.once('end', () => resolve())
        response.once('close', () => resolve())
        response.once('error', () => resolve())
      })
      resolve({ status: response.statusCode ?? 0, text: () => text, ended, abort: () => request.destroy() })
    })
    request.once('error', reject)
  })
}
