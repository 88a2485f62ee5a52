import { createHash } from 'node:crypto'
import type { Prompt, Tool } from '@modelcontextprotocol/client'
import type { Principal } from '../schema/principal.js'
import type { UpstreamToolAnnotations } from './policy.js'
import { compileAllow, globToRegExp, matchesAny, mayCall, scopeKey, scopesAllowing } from './access.js'
import type { Upstream } from './upstream.js'

/** Model APIs take tool names of 1-64 characters of [A-Za-z0-9_-]. */
export const MAX_TOOL_NAME = 64
const SEPARATOR = '__'

/** One upstream tool as clients see it. */
export interface FederatedTool {
  federatedName: string
  upstream: Upstream
  /** The upstream's own name of the tool. */
  tool: string
  annotations: UpstreamToolAnnotations
  /** Scopes whose allow rules match this tool. */
  allowing: ReadonlySet<string>
  /** Whether the upstream's `confirm` globs name it (undefined: no globs configured, the gate decides by annotations). */
  confirmByConfig: boolean | undefined
  /** Whether repeating the call is harmless: read-only or idempotent by the upstream's annotations. */
  safeToRepeat: boolean
  listed: Record<string, unknown>
}

export interface FederatedPrompt {
  federatedName: string
  upstream: Upstream
  prompt: string
  allowing: ReadonlySet<string>
  listed: Record<string, unknown>
}

/**
 * `<upstream>__<tool>` kept within 64 characters of [A-Za-z0-9_-]: other characters become `_`,
 * and a name that had to be changed or cut gets a short hash of the original, so that two tools
 * never share a federated name.
 */
export function federatedNameOf (upstream: string, tool: string): string {
  const plain = `${upstream}${SEPARATOR}${tool}`
  if (plain.length <= MAX_TOOL_NAME && /^[A-Za-z0-9_-]+$/.test(tool)) return plain
  const hash = createHash('sha256').update(tool).digest('hex').slice(0, 8)
  const room = MAX_TOOL_NAME - upstream.length - SEPARATOR.length - hash.length - 1
  return `${upstream}${SEPARATOR}${tool.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, room)}_${hash}`
}

function annotationsOf (tool: Tool): UpstreamToolAnnotations {
  const given = tool.annotations ?? {}
  const annotations: UpstreamToolAnnotations = {}
  for (const hint of ['readOnlyHint', 'destructiveHint', 'idempotentHint', 'openWorldHint'] as const) {
    if (typeof given[hint] === 'boolean') annotations[hint] = given[hint]
  }
  return annotations
}

/**
 * The federated catalogue: every upstream's tools and prompts under their federated names, and
 * per scope set the list a principal sees. Rebuilt whenever an upstream's list changes.
 */
export class Federation {
  private tools = new Map<string, FederatedTool>()
  private prompts = new Map<string, FederatedPrompt>()
  private readonly listCache = new Map<string, Array<Record<string, unknown>>>()
  private readonly promptCache = new Map<string, Array<Record<string, unknown>>>()

  constructor (private readonly upstreams: readonly Upstream[]) {
    this.rebuild()
  }

  rebuild (): void {
    const tools = new Map<string, FederatedTool>()
    const prompts = new Map<string, FederatedPrompt>()
    for (const upstream of this.upstreams) {
      const rules = compileAllow(upstream.config.allow)
      const confirm = upstream.config.confirm?.map(globToRegExp)
      for (const tool of upstream.catalog.tools) {
        const federatedName = federatedNameOf(upstream.name, tool.name)
        if (tools.has(federatedName)) continue
        const annotations = annotationsOf(tool)
        const title = tool.title ?? tool.annotations?.title
        tools.set(federatedName, {
          federatedName,
          upstream,
          tool: tool.name,
          annotations,
          allowing: scopesAllowing(rules, tool.name),
          confirmByConfig: confirm === undefined ? undefined : matchesAny(tool.name, confirm),
          safeToRepeat: annotations.readOnlyHint === true || annotations.idempotentHint === true,
          listed: {
            name: federatedName,
            ...(title !== undefined && { title }),
            description: `[${upstream.name}] ${tool.description ?? tool.name}`,
            inputSchema: tool.inputSchema,
            ...(tool.outputSchema !== undefined && { outputSchema: tool.outputSchema }),
            ...(tool.annotations !== undefined && { annotations: tool.annotations }),
            ...(tool.icons !== undefined && { icons: tool.icons })
          }
        })
      }
      for (const prompt of upstream.catalog.prompts as Prompt[]) {
        const federatedName = federatedNameOf(upstream.name, prompt.name)
        prompts.set(federatedName, {
          federatedName,
          upstream,
          prompt: prompt.name,
          allowing: scopesAllowing(rules, prompt.name),
          listed: { ...prompt, name: federatedName, description: `[${upstream.name}] ${prompt.description ?? prompt.name}` }
        })
      }
    }
    this.tools = tools
    this.prompts = prompts
    this.listCache.clear()
    this.promptCache.clear()
  }

  /**
   * The tool of that name if this principal may call it; undefined for an unknown tool and for a
   * hidden one alike (the caller then answers both the same way).
   */
  resolve (name: string, principal: Principal): FederatedTool | undefined {
    const tool = this.tools.get(name)
    return tool !== undefined && mayCall(principal, tool.allowing) ? tool : undefined
  }

  resolvePrompt (name: string, principal: Principal): FederatedPrompt | undefined {
    const prompt = this.prompts.get(name)
    return prompt !== undefined && mayCall(principal, prompt.allowing) ? prompt : undefined
  }

  /** The upstream tools this principal sees, as tools/list entries (of upstreams currently known). */
  list (principal: Principal): Array<Record<string, unknown>> {
    const key = scopeKey(principal)
    let listed = this.listCache.get(key)
    if (listed === undefined) {
      listed = [...this.tools.values()].filter((tool) => mayCall(principal, tool.allowing)).map((tool) => tool.listed)
      this.listCache.set(key, listed)
    }
    return listed
  }

  listPrompts (principal: Principal): Array<Record<string, unknown>> {
    const key = scopeKey(principal)
    let listed = this.promptCache.get(key)
    if (listed === undefined) {
      listed = [...this.prompts.values()].filter((prompt) => mayCall(principal, prompt.allowing)).map((prompt) => prompt.listed)
      this.promptCache.set(key, listed)
    }
    return listed
  }

  get size (): number {
    return this.tools.size
  }
}
