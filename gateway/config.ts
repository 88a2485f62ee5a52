import { readFileSync } from 'node:fs'
import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { scopeNameProblem } from '../schema/principal.js'
import { UpstreamApprovalSchema } from './policy.js'

/**
 * The upstreams file (UPSTREAMS_FILE): the MCP servers the gateway federates. A leaf module: it
 * imports nothing of ours but leaves (scope names, the approval part of an entry), so that schema/config.ts can validate the file with the rest of the
 * configuration at start (every problem listed, exit 1).
 */

// A name becomes the `<name>__` prefix of tool names: no double underscore and no underscore at
// the end, so the split is unambiguous (hr_ + __x and hr + ___x would both be hr___x).
export const UPSTREAM_NAME_PATTERN = '^[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_|$)){0,31}$'
const HEADER_NAME_PATTERN = '^[A-Za-z0-9!#$%&\'*+.^_`|~-]{1,128}$'
const GLOB = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_./:*?-]+$', description: 'a tool name, or a glob with * and ?' })
const URI_GLOB = Type.String({ minLength: 1, maxLength: 512, pattern: '^[\\x21-\\x7e]+$', description: "an upstream resource's URI (or URI template), or a glob of them with * and ?" })

/**
 * What one scope may see of an upstream. The short form, a list of globs, names tools only (its
 * prompts and resources stay hidden); the long form names each kind separately.
 */
export const AllowEntrySchema = Type.Union([
  Type.Array(GLOB, { minItems: 1 }),
  Type.Object({
    tools: Type.Optional(Type.Array(GLOB)),
    prompts: Type.Optional(Type.Array(GLOB, { description: 'prompt-name globs' })),
    resources: Type.Optional(Type.Array(URI_GLOB, { description: 'resource URI globs; a resource template is shown when a glob matches its uriTemplate text' }))
  }, { additionalProperties: false, minProperties: 1 })
])
export type AllowEntry = Static<typeof AllowEntrySchema>
export type AllowKind = 'tools' | 'prompts' | 'resources'

/** The globs of one kind an allow entry names (the short form names tools only). */
export function globsOf (entry: AllowEntry, kind: AllowKind): readonly string[] {
  if (Array.isArray(entry)) return kind === 'tools' ? entry : []
  return entry[kind] ?? []
}

export const RetrySchema = Type.Object({
  attempts: Type.Integer({ minimum: 0, maximum: 10, default: 3, description: 'retries after the first attempt, for transient failures of calls that are safe to repeat' }),
  baseDelayMs: Type.Integer({ minimum: 1, maximum: 60000, default: 200, description: 'first backoff; doubled each retry, with ±20% jitter' }),
  maxDelayMs: Type.Integer({ minimum: 1, maximum: 600000, default: 5000 })
}, { additionalProperties: false })

export const BreakerSchema = Type.Object({
  failures: Type.Integer({ minimum: 1, maximum: 1000, default: 5, description: 'consecutive failed calls that open the breaker' }),
  openMs: Type.Integer({ minimum: 100, maximum: 3600000, default: 30000, description: 'how long it stays open before one probe call is let through (half-open)' })
}, { additionalProperties: false })

export const IdentitySchema = Type.Object({
  header: Type.String({ pattern: HEADER_NAME_PATTERN, default: 'X-Gateway-Principal', description: 'request header that carries the signed principal JWT' }),
  audience: Type.Optional(Type.String({ minLength: 1, maxLength: 512, description: "the JWT's aud; default: the upstream's url" })),
  ttlSeconds: Type.Integer({ minimum: 10, maximum: 3600, default: 60 })
}, { additionalProperties: false })

export const UpstreamSchema = Type.Object({
  name: Type.String({ pattern: UPSTREAM_NAME_PATTERN, description: 'tool prefix: 1-32 of A-Z a-z 0-9 - _ (no "__")' }),
  url: Type.String({ pattern: '^https?://[^\\s]+$', description: 'Streamable HTTP endpoint' }),
  headers: Type.Record(Type.String({ pattern: HEADER_NAME_PATTERN }), Type.String({ maxLength: 8192 }), { default: {}, description: 'sent with every request; $' + '{ENV_VAR} is replaced from the environment' }),
  critical: Type.Boolean({ default: false, description: 'true: /ready is degraded while this upstream is down' }),
  allow: Type.Record(Type.String({ minLength: 1, maxLength: 64 }), AllowEntrySchema, { default: {}, description: 'scope -> tool-name globs it may see and call, or { tools, prompts, resources } globs; nothing else is visible' }),
  confirm: Type.Optional(Type.Array(GLOB, { description: "tools that need a person's approval; default: those the upstream marks destructive" })),
  timeoutMs: Type.Integer({ minimum: 100, maximum: 3600000, default: 30000, description: 'one attempt of a call; progress notifications restart it' }),
  connectTimeoutMs: Type.Integer({ minimum: 100, maximum: 600000, default: 5000 }),
  concurrency: Type.Integer({ minimum: 1, maximum: 1000, default: 16, description: 'calls in flight to this upstream at once; more wait' }),
  callsPerMinute: Type.Integer({ minimum: 0, maximum: 1000000, default: 0, description: 'per principal, counting every attempt sent upstream; 0: only the principal\'s tier limit applies' }),
  healthCheckSeconds: Type.Integer({ minimum: 0, maximum: 3600, default: 15, description: 'ping the upstream this often, so /ready knows it is down without waiting for a call; 0: only calls and re-lists tell' }),
  refreshSeconds: Type.Integer({ minimum: 0, maximum: 86400, default: 300, description: 're-list tools this often (besides list_changed); 0: only on list_changed' }),
  retry: Type.Optional(RetrySchema),
  breaker: Type.Optional(BreakerSchema),
  identity: Type.Optional(IdentitySchema),
  approval: Type.Optional(UpstreamApprovalSchema)
}, { additionalProperties: false })

export const UpstreamsFileSchema = Type.Object({
  upstreams: Type.Array(UpstreamSchema, { minItems: 1, maxItems: 100 })
}, { additionalProperties: false })

type UpstreamInput = Static<typeof UpstreamSchema>
export interface UpstreamConfig extends Omit<UpstreamInput, 'retry' | 'breaker'> {
  retry: Static<typeof RetrySchema>
  breaker: Static<typeof BreakerSchema>
}

const ENV_REFERENCE = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g

/** A header value with its ${ENV_VAR} references replaced, or the names of the variables that are not set. */
function expand (value: string, env: Record<string, string | undefined>): { value: string, missing: string[] } {
  const missing: string[] = []
  const expanded = value.replace(ENV_REFERENCE, (_match, name: string) => {
    const found = env[name]
    if (found === undefined) {
      missing.push(name)
      return ''
    }
    return found
  })
  return { value: expanded, missing }
}

function pointerToPath (pointer: string): string {
  return pointer.split('/').slice(1).map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((path, part) => /^\d+$/.test(part) ? `${path}[${part}]` : `${path}.${part}`, 'UPSTREAMS_FILE')
}

/**
 * Reads and validates the upstreams file. Returns the upstreams, or every problem found (header
 * values are never shown: they carry secrets).
 */
export function loadUpstreams (path: string, env: Record<string, string | undefined>): { upstreams: UpstreamConfig[], problems: string[] } {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    return { upstreams: [], problems: [`UPSTREAMS_FILE: cannot read ${JSON.stringify(path)} (${(error as NodeJS.ErrnoException).code ?? 'error'})`] }
  }
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (error) {
    return { upstreams: [], problems: [`UPSTREAMS_FILE: ${JSON.stringify(path)} is not JSON (${(error as Error).message})`] }
  }
  const withDefaults = Value.Default(UpstreamsFileSchema, Value.Clone(raw))
  const problems: string[] = []
  const seen = new Set<string>()
  for (const error of Value.Errors(UpstreamsFileSchema, withDefaults)) {
    const where = pointerToPath(error.path)
    if (seen.has(where)) continue
    seen.add(where)
    const secret = /\.headers\./.test(where)
    problems.push(`${where}: ${error.message}${secret || error.value === undefined || typeof error.value === 'object' ? '' : ` (got ${JSON.stringify(error.value).slice(0, 80)})`}`)
  }
  if (problems.length > 0) return { upstreams: [], problems }

  const file = withDefaults as Static<typeof UpstreamsFileSchema>
  const names = new Set<string>()
  const upstreams = file.upstreams.map((upstream, index): UpstreamConfig => {
    const where = `UPSTREAMS_FILE.upstreams[${index}]`
    if (names.has(upstream.name.toLowerCase())) problems.push(`${where}.name: ${JSON.stringify(upstream.name)} is used twice (names are compared ignoring case)`)
    names.add(upstream.name.toLowerCase())
    const headers: Record<string, string> = {}
    for (const [name, value] of Object.entries(upstream.headers)) {
      const expanded = expand(value, env)
      for (const variable of expanded.missing) problems.push(`${where}.headers.${name}: environment variable ${variable} is not set`)
      headers[name] = expanded.value
    }
    for (const scope of Object.keys(upstream.allow)) {
      const problem = scopeNameProblem(scope)
      if (problem !== undefined) problems.push(`${where}.allow: ${problem}`)
    }
    if (Object.keys(upstream.allow).length === 0) problems.push(`${where}.allow: empty, so no principal could see any of ${upstream.name}'s tools; name at least one scope and its tool globs, e.g. {"${upstream.name}:read": ["list_*"]}`)
    return {
      ...upstream,
      headers,
      retry: Value.Default(RetrySchema, upstream.retry ?? {}) as Static<typeof RetrySchema>,
      breaker: Value.Default(BreakerSchema, upstream.breaker ?? {}) as Static<typeof BreakerSchema>
    }
  })
  return { upstreams: problems.length > 0 ? [] : upstreams, problems }
}
