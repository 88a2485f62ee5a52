import {
  ProtocolError,
  ResourceNotFoundError,
  ProtocolErrorCode,
  type CacheHint,
  type JSONRPCRequest,
  type ListResourceTemplatesResult,
  type ListResourcesResult,
  type ReadResourceResult,
  type Server,
  type ServerContext
} from '@modelcontextprotocol/server'
import { Type } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { ContextStore } from '../db/context-store.js'
import { toAppError } from '../db/errors.js'
import { decodeCursor, encodeCursor } from '../schema/cursor.js'
import { KEY_PATTERN, NAMESPACE_PATTERN } from '../schema/key.js'
import { mayUse, type Principal } from '../schema/principal.js'
import type { JsonRpcResponse } from '../plugins/mcp-multiplex-transport.js'

// Every context entry as an MCP resource, context://{namespace}/{key}. The same handlers serve both
// protocol lines; only a 2025-era resources/read is answered by answerLegacyRead (see there).

/**
 * The resources capability, advertised on both lines: resources/subscribe (2025) and
 * subscriptions/listen (2026-07-28) with notifications/resources/updated and list_changed are
 * served by plugins/live.ts.
 */
export const RESOURCE_CAPABILITIES = { subscribe: true, listChanged: true }

/**
 * 2026-07-28 caching hints (SEP-2549 ttlMs / cacheScope; the 2025 line carries none). Everything
 * depends on the caller's namespace and scopes, so nothing may sit in a shared cache. The template
 * never changes; a listing goes stale with any write by anyone, so it is kept briefly; a read is
 * never reused (its version is in _meta: a client that wants to reuse content can compare it).
 */
export const RESOURCE_CACHE_HINTS: Record<'resources/list' | 'resources/templates/list' | 'resources/read', CacheHint> = {
  'resources/templates/list': { ttlMs: 3_600_000, cacheScope: 'private' },
  'resources/list': { ttlMs: 5_000, cacheScope: 'private' },
  'resources/read': { ttlMs: 0, cacheScope: 'private' }
}

const SCHEME = 'context://'
/** RFC 6570 reserved expansion for the key: its "/" stay as they are. */
export const RESOURCE_URI_TEMPLATE = `${SCHEME}{namespace}/{+key}`
const PAGE_SIZE = 100
const CURSOR_KIND = 'resources'
const keyPattern = new RegExp(KEY_PATTERN)
const namespacePattern = new RegExp(NAMESPACE_PATTERN)
const isKey = (text: string) => text.length <= 255 && keyPattern.test(text)

/** The URI of an entry. A namespace may hold "/" and ":", so it is percent-encoded; keys need no encoding. */
export function resourceUri (namespace: string, key: string): string {
  return `${SCHEME}${encodeURIComponent(namespace)}/${key}`
}

/** The namespace and key a URI names, or null if it names no possible entry. Either part may be percent-encoded. */
export function parseResourceUri (uri: string): { namespace: string, key: string } | null {
  if (!uri.startsWith(SCHEME)) return null
  const rest = uri.slice(SCHEME.length)
  const slash = rest.indexOf('/')
  if (slash <= 0) return null
  try {
    const namespace = decodeURIComponent(rest.slice(0, slash))
    const key = decodeURIComponent(rest.slice(slash + 1))
    return namespacePattern.test(namespace) && isKey(key) ? { namespace, key } : null
  } catch {
    return null // malformed percent-encoding
  }
}

/** The gateway's upstream resources (plugins/gateway.ts), beside ours; see there. */
export interface FederatedResources {
  list: (principal: Principal) => Array<Record<string, unknown>>
  templates: (principal: Principal) => Array<Record<string, unknown>>
  /** The upstream's answer, or undefined when no upstream serves this URI to this principal (unknown and hidden alike). */
  read: (principal: Principal, uri: string, signal: AbortSignal) => Promise<ReadResourceResult | null> | undefined
}

export interface ResourceDependencies {
  store: ContextStore
  federated?: FederatedResources
  /** The caller of a request (throws when there is none). */
  principalOf: (ctx: ServerContext) => Principal
  /** Logs a failure that is not the caller's (catalogue code SRV_9001 or a dependency). */
  logFailure: (error: unknown, method: string) => void
}

/** A failure of ours or of a dependency, as the JSON-RPC error that carries its catalogue code. */
function protocolErrorOf (error: unknown, method: string, deps: ResourceDependencies): ProtocolError {
  if (error instanceof ProtocolError) return error
  const appError = toAppError(error)
  if (appError.statusCode < 500) return new ProtocolError(ProtocolErrorCode.InvalidParams, `${appError.code}: ${appError.message}`, { code: appError.code })
  deps.logFailure(error, method)
  return new ProtocolError(ProtocolErrorCode.InternalError, `${appError.code}: ${appError.message}`, { code: appError.code })
}

/** Ours, paginated; the upstreams' (all of them, bounded at listing) on the first page. */
async function listResources (principal: Principal, cursor: string | undefined, deps: ResourceDependencies): Promise<ListResourcesResult> {
  const own = await listOwnResources(principal, cursor, deps.store)
  if (cursor !== undefined || deps.federated === undefined) return own
  const federated = deps.federated.list(principal)
  return federated.length === 0 ? own : { ...own, resources: [...own.resources, ...federated as ListResourcesResult['resources']] }
}

async function listOwnResources (principal: Principal, cursor: string | undefined, store: ContextStore): Promise<ListResourcesResult> {
  const namespace = principal.namespace
  if (!mayUse(principal, namespace, 'context:read')) return { resources: [] }
  const afterKey = cursor === undefined ? undefined : decodeCursor(CURSOR_KIND, cursor, isKey)
  const page = await store.list(namespace, { limit: PAGE_SIZE, ...(afterKey !== undefined && { afterKey }) })
  return {
    resources: page.items.map((item) => ({
      uri: resourceUri(namespace, item.key),
      name: item.key,
      description: item.preview,
      mimeType: 'text/plain',
      size: item.bytes,
      annotations: { lastModified: item.updatedAt },
      _meta: { version: item.version, updated_at: item.updatedAt, updated_by: item.updatedBy, tags: item.tags }
    })),
    ...(page.nextAfterKey !== null && { nextCursor: encodeCursor(CURSOR_KIND, page.nextAfterKey) })
  }
}

function listTemplates (principal: Principal, federated: FederatedResources | undefined): ListResourceTemplatesResult {
  const theirs = (federated?.templates(principal) ?? []) as ListResourceTemplatesResult['resourceTemplates']
  if (!principal.scopes.has('context:read') && !principal.scopes.has('context:admin')) return { resourceTemplates: theirs }
  return {
    resourceTemplates: [...theirs, {
      uriTemplate: RESOURCE_URI_TEMPLATE,
      name: 'context-entry',
      title: 'Shared context entry',
      description: `An entry of the shared context: its current text. Your own namespace is "${principal.namespace}"; ` +
        'keys are paths such as project/decisions/db.',
      mimeType: 'text/plain'
    }]
  }
}

/** An entry's text, or an upstream resource's, or null when the caller can see no such resource. */
async function readAny (principal: Principal, uri: string, deps: ResourceDependencies, signal: AbortSignal): Promise<ReadResourceResult | null> {
  const federated = deps.federated?.read(principal, uri, signal)
  if (federated !== undefined) return await federated
  return await readResource(principal, uri, deps.store)
}

/** An entry's current text, or null when the caller cannot see such an entry (unknown, expired, deleted, or another namespace). */
export async function readResource (principal: Principal, uri: string, store: ContextStore): Promise<ReadResourceResult | null> {
  const named = parseResourceUri(uri)
  if (named === null) return null
  if (!mayUse(principal, named.namespace, 'context:read')) {
    // In its own namespace a token without context:read is told so; another namespace stays invisible.
    if (named.namespace === principal.namespace) {
      throw new ProtocolError(ProtocolErrorCode.InvalidRequest, 'AUTH_1004: reading resources needs the context:read scope, which this token does not have.', { code: 'AUTH_1004', required_scope: 'context:read' })
    }
    return null
  }
  const entry = await store.read(named.namespace, named.key)
  if (entry === null) return null
  return {
    contents: [{
      uri,
      mimeType: 'text/plain',
      text: entry.content,
      _meta: { version: entry.version, updated_at: entry.updatedAt, updated_by: entry.updatedBy }
    }]
  }
}

/** Registers resources/list, resources/templates/list and resources/read on a server (it must advertise RESOURCE_CAPABILITIES). */
export function registerResources (server: Server, deps: ResourceDependencies): void {
  const { principalOf } = deps
  server.setRequestHandler('resources/list', async (request, ctx) => {
    try {
      return await listResources(principalOf(ctx), request.params?.cursor, deps)
    } catch (error) {
      throw protocolErrorOf(error, 'resources/list', deps)
    }
  })
  server.setRequestHandler('resources/templates/list', (_request, ctx) => listTemplates(principalOf(ctx), deps.federated))
  server.setRequestHandler('resources/read', async (request, ctx) => {
    let result: ReadResourceResult | null
    try {
      result = await readAny(principalOf(ctx), request.params.uri, deps, ctx.mcpReq.signal)
    } catch (error) {
      throw protocolErrorOf(error, 'resources/read', deps)
    }
    // SEP-2164: -32602 with data { uri } and nothing else (clients tell resource-not-found from other
    // invalid params by that), so the catalogue's code leads the message; 2025-era reads are answered
    // by answerLegacyRead, with the code in data.
    if (result === null) throw new ResourceNotFoundError(request.params.uri, `CTX_2001: ${notFoundMessage(request.params.uri)}`)
    return result
  })
}

function notFoundMessage (uri: string): string {
  return `Resource not found: ${uri.slice(0, 600)}. List resources (or list_context) to see which entries exist.`
}

/** The 2025-era code for an unknown resource (spec 2025-06-18 and 2025-11-25, "Resource not found"). */
export const LEGACY_RESOURCE_NOT_FOUND = -32002

const ReadParams = Type.Object({ uri: Type.String({ maxLength: 2048 }), _meta: Type.Optional(Type.Unknown()) })
const checkReadParams = TypeCompiler.Compile(ReadParams)

/**
 * A 2025-era resources/read, answered without the SDK: its encoder maps every -32002 to -32602
 * (the 2026-07-28 rule of SEP-2164), but the 2025 revisions a client negotiated by initialize
 * define -32002 for an unknown resource. Same reader, same data { uri }.
 */
export async function answerLegacyRead (request: JSONRPCRequest, principal: Principal, deps: ResourceDependencies, signal: AbortSignal): Promise<JsonRpcResponse> {
  const params = request.params
  if (!checkReadParams.Check(params)) {
    return { jsonrpc: '2.0', id: request.id, error: { code: ProtocolErrorCode.InvalidParams, message: 'Invalid params for resources/read: uri (a string) is required.', data: { code: 'REQ_1101' } } }
  }
  try {
    const result = await readAny(principal, params.uri, deps, signal)
    if (result === null) {
      return { jsonrpc: '2.0', id: request.id, error: { code: LEGACY_RESOURCE_NOT_FOUND, message: notFoundMessage(params.uri), data: { uri: params.uri, code: 'CTX_2001' } } }
    }
    return { jsonrpc: '2.0', id: request.id, result }
  } catch (error) {
    const failure = protocolErrorOf(error, 'resources/read', deps)
    return { jsonrpc: '2.0', id: request.id, error: { code: failure.code, message: failure.message, ...(failure.data !== undefined && { data: failure.data }) } }
  }
}
