import type { Static, TObject } from '@sinclair/typebox'
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler'
import type { ContextStore, Actor } from '../db/context-store.js'
import { AppError, type ErrorCode } from '../schema/errors.js'
import { mayUse, type Principal, type Scope } from '../schema/principal.js'

export interface ToolAnnotations {
  readOnlyHint: boolean
  destructiveHint: boolean
  idempotentHint: boolean
  openWorldHint: false
}

/** What a handler gets: the store, the namespace it acts in, who is calling, and limits. Handlers talk to the store only. */
export interface ToolContext {
  store: ContextStore
  namespace: string
  actor: Actor
  maxContentBytes: number
}

/** What the caller of the registry provides; the registry adds the namespace the call acts in. */
export type CallDependencies = Omit<ToolContext, 'namespace'>

export interface ToolDefinition<I extends TObject = TObject, O extends TObject = TObject> {
  name: string
  title: string
  description: string
  scope: Scope
  annotations: ToolAnnotations
  inputSchema: I
  outputSchema: O
  handler: (ctx: ToolContext, input: Static<I>) => Promise<Static<O>>
  /**
   * A further scope that this call needs, decided from its validated input, and why (write_context:
   * ttl_seconds schedules a delete, so it needs context:delete). Checked in the same namespace.
   */
  extraScope?: (input: Static<I>) => { scope: Scope, reason: string } | undefined
  /** The short text block that accompanies structuredContent. */
  summarize: (output: Static<O>) => string
}

export function defineTool<I extends TObject, O extends TObject> (tool: ToolDefinition<I, O>): ToolDefinition<I, O> {
  return tool
}

export interface TextContent { type: 'text', text: string }
export interface ToolCallResult {
  [key: string]: unknown
  content: TextContent[]
  /** A success's output; absent on errors (see toolError). */
  structuredContent?: Record<string, unknown>
  isError?: boolean
  _meta?: Record<string, unknown>
}

/** The `_meta` key of a tool error result that holds its machine-readable `{ code, message, ...details }`. */
export const TOOL_ERROR_META_KEY = 'shared-context-mcp/error'

export interface ToolErrorMeta {
  [detail: string]: unknown
  code: ErrorCode
  message: string
}

export interface ObjectJsonSchema {
  [keyword: string]: unknown
  type: 'object'
}

export interface ListedTool {
  name: string
  title: string
  description: string
  inputSchema: ObjectJsonSchema
  outputSchema: ObjectJsonSchema
  annotations: ToolAnnotations & { title: string }
}

interface CompiledTool {
  definition: ToolDefinition
  check: TypeCheck<TObject>
  listed: ListedTool
}

/**
 * A tool-level failure. It carries no structuredContent: SDK v1 clients (and the Inspector) validate
 * structuredContent against the tool's outputSchema even when isError is true, so an error object
 * there reached them as a schema mismatch instead of the code. The model reads `CODE: message` in
 * the text block; programs read the code and details under `_meta[TOOL_ERROR_META_KEY]`.
 */
export function toolError (code: ErrorCode, message: string, details?: Record<string, unknown>): ToolCallResult {
  const error: ToolErrorMeta = { ...details, code, message }
  return {
    isError: true,
    content: [{ type: 'text', text: `${code}: ${message}` }],
    _meta: { [TOOL_ERROR_META_KEY]: error }
  }
}

/** The catalogue code of a tool error result (undefined for a success). */
export function toolErrorCode (result: ToolCallResult): ErrorCode | undefined {
  if (result.isError !== true) return undefined
  return (result._meta?.[TOOL_ERROR_META_KEY] as ToolErrorMeta | undefined)?.code
}

/** Plain JSON Schema of a TypeBox schema (TypeBox's symbol-keyed metadata dropped). */
function jsonSchemaOf (schema: TObject): ObjectJsonSchema {
  return JSON.parse(JSON.stringify(schema)) as ObjectJsonSchema
}

function describeValidationError (check: TypeCheck<TObject>, input: unknown): string {
  const first = check.Errors(input).First()
  if (first === undefined) return 'input is invalid'
  const field = first.path === '' ? 'arguments' : first.path.slice(1).replace(/\//g, '.')
  const hint = typeof first.schema.description === 'string' ? ` — ${first.schema.description.replace(/\.$/, '')}` : ''
  if (first.path !== '' && first.value === undefined) return `${field} is required${hint}`
  return `${field}: ${first.message}${hint}`
}

/**
 * The tool registry: compiled validators and the advertised list are built once, at start-up; a
 * call does a scope check, validates the arguments, and runs the handler. Tool failures come back
 * as `isError` results with a catalogue code; anything unexpected is rethrown for the caller.
 */
export function createToolRegistry (tools: ToolDefinition[]) {
  const byName = new Map<string, CompiledTool>()
  for (const definition of tools) {
    byName.set(definition.name, {
      definition,
      check: TypeCompiler.Compile(definition.inputSchema),
      listed: {
        name: definition.name,
        title: definition.title,
        description: definition.description,
        inputSchema: jsonSchemaOf(definition.inputSchema),
        outputSchema: jsonSchemaOf(definition.outputSchema),
        annotations: { title: definition.title, ...definition.annotations }
      }
    })
  }
  const listCache = new Map<string, ListedTool[]>()

  function listable (principal: Principal, tool: ToolDefinition): boolean {
    return principal.scopes.has(tool.scope) || principal.scopes.has('context:admin')
  }

  function preflight (name: string, args: unknown, principal: Principal): { tool: CompiledTool, namespace: string, input: Record<string, unknown>, refusal?: ToolCallResult } {
    const tool = byName.get(name)
    if (tool === undefined) throw new UnknownToolError(name, [...byName.keys()])
    const scope = tool.definition.scope
    const named = (args as { namespace?: unknown } | undefined)?.namespace
    const namespace = typeof named === 'string' ? named : principal.namespace
    const where = namespace === principal.namespace ? '' : ` in namespace "${namespace.slice(0, 255)}"`
    const input = (args ?? {}) as Record<string, unknown>
    if (!mayUse(principal, namespace, scope)) {
      return { tool, namespace, input, refusal: toolError('AUTH_1004', `${name} needs the ${scope} scope${where}, which this token does not have.`, { required_scope: scope }) }
    }
    if (scope !== 'context:read' && principal.writesRefused !== undefined) throw principal.writesRefused
    if (!tool.check.Check(input)) {
      return { tool, namespace, input, refusal: toolError('REQ_1101', `Invalid arguments for ${name}: ${describeValidationError(tool.check, input)}. Nothing was changed.`) }
    }
    const extra = tool.definition.extraScope?.(input)
    if (extra !== undefined && !mayUse(principal, namespace, extra.scope)) {
      return { tool, namespace, input, refusal: toolError('AUTH_1004', `${name} ${extra.reason} needs the ${extra.scope} scope${where}, which this token does not have. Nothing was changed.`, { required_scope: extra.scope }) }
    }
    return { tool, namespace, input }
  }

  return {
    /** The tools this principal may call, in registration order. */
    list (principal: Principal): ListedTool[] {
      const cacheKey = [...principal.scopes].sort().join(' ')
      let listed = listCache.get(cacheKey)
      if (listed === undefined) {
        listed = [...byName.values()].filter((tool) => listable(principal, tool.definition)).map((tool) => tool.listed)
        listCache.set(cacheKey, listed)
      }
      return listed
    },

    /**
     * The refusal this call would get (unknown tool thrown; scope or arguments as a tool error), or
     * undefined when it would run: what the approval gate checks before it asks anyone.
     */
    refusalOf (name: string, args: unknown, principal: Principal): ToolCallResult | undefined {
      return preflight(name, args, principal).refusal
    },

    async call (name: string, args: unknown, principal: Principal, dependencies: CallDependencies): Promise<ToolCallResult> {
      const { tool, namespace, input, refusal } = preflight(name, args, principal)
      if (refusal !== undefined) return refusal
      try {
        const output = await tool.definition.handler({ ...dependencies, namespace }, input)
        return {
          content: [{ type: 'text', text: tool.definition.summarize(output) }],
          structuredContent: output
        }
      } catch (error) {
        if (error instanceof AppError && error.statusCode < 500) return toolError(error.code, error.message, error.details)
        throw error
      }
    }
  }
}

export type ToolRegistry = ReturnType<typeof createToolRegistry>

export class UnknownToolError extends Error {
  constructor (name: string, known: string[]) {
    super(`Unknown tool "${name.slice(0, 100)}". Available tools: ${known.join(', ')}.`)
    this.name = 'UnknownToolError'
  }
}
