import { createHash } from 'node:crypto'
import type { Prompt, Tool } from '@modelcontextprotocol/client'
import type { Principal } from '../schema/principal.js'
import type { UpstreamToolAnnotations } from './policy.js'
import { compileAllow, mayCall, scopeKey, scopesAllowing, type AllowRules } from './access.js'
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

/** One upstream resource as clients see it: its upstream's URI, kept as is, and `<upstream>__<name>`. */
export interface FederatedResource {
  uri: string
  upstream: Upstream
  allowing: ReadonlySet<string>
  listed: Record<string, unknown>
}

/** One upstream resource template: shown to the scopes whose resource globs match its text; a URI it matches is read from its upstream. */
interface FederatedTemplate {
  upstream: Upstream
  pattern: RegExp
  /** The upstream's resource rules: a URI read through a template must itself be allowed. */
  rules: AllowRules
  allowing: ReadonlySet<string>
  listed: Record<string, unknown>
}

/** Our own resources' scheme: no upstream resource may take a URI of it. */
const OWN_SCHEME = 'context://'

/** An RFC 6570 URI template as an anchored RegExp of the URIs it can expand to (loosely: any value per expression). */
export function templatePattern (template: string): RegExp {
  let source = ''
  for (const part of template.split(/(\{[^}]*\})/)) {
    if (part.startsWith('{') && part.endsWith('}')) {
      const operator = part[1]
      source += operator === '+' || operator === '#' ? '.*' : operator === '?' || operator === '&' ? '(?:[?&][^#]*)?' : '[^/?#]*'
    } else {
      source += part.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')
    }
  }
  return new RegExp(`^${source}$`)
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
 * The federated catalogue: every upstream's tools, prompts and resources under their federated
 * names, and per scope set the lists a principal sees. Rebuilt whenever an upstream's list changes.
 * A name or URI two upstreams share goes to the first of them in UPSTREAMS_FILE; an upstream
 * resource in our own context:// scheme is not federated.
 */
export class Federation {
  private tools = new Map<string, FederatedTool>()
  private prompts = new Map<string, FederatedPrompt>()
  private resources = new Map<string, FederatedResource>()
  private templates: FederatedTemplate[] = []
  private readonly listCaches = {
    tools: new Map<string, Array<Record<string, unknown>>>(),
    prompts: new Map<string, Array<Record<string, unknown>>>(),
    resources: new Map<string, Array<Record<string, unknown>>>(),
    templates: new Map<string, Array<Record<string, unknown>>>()
  }

  constructor (private readonly upstreams: readonly Upstream[]) {
    this.rebuild()
  }

  rebuild (): void {
    const tools = new Map<string, FederatedTool>()
    const prompts = new Map<string, FederatedPrompt>()
    const resources = new Map<string, FederatedResource>()
    const templates: FederatedTemplate[] = []
    const templateTexts = new Set<string>()
    for (const upstream of this.upstreams) {
      const toolRules = compileAllow(upstream.config.allow, 'tools')
      const promptRules = compileAllow(upstream.config.allow, 'prompts')
      const resourceRules = compileAllow(upstream.config.allow, 'resources')
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
          allowing: scopesAllowing(toolRules, tool.name),
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
        if (prompts.has(federatedName)) continue
        prompts.set(federatedName, {
          federatedName,
          upstream,
          prompt: prompt.name,
          allowing: scopesAllowing(promptRules, prompt.name),
          listed: { ...prompt, name: federatedName, description: `[${upstream.name}] ${prompt.description ?? prompt.name}` }
        })
      }
      for (const resource of upstream.catalog.resources) {
        if (resource.uri.startsWith(OWN_SCHEME) || resources.has(resource.uri)) continue
        resources.set(resource.uri, {
          uri: resource.uri,
          upstream,
          allowing: scopesAllowing(resourceRules, resource.uri),
          listed: { ...resource, name: `${upstream.name}${SEPARATOR}${resource.name}`, description: `[${upstream.name}] ${resource.description ?? resource.name}` }
        })
      }
      for (const template of upstream.catalog.resourceTemplates) {
        if (template.uriTemplate.startsWith(OWN_SCHEME) || templateTexts.has(template.uriTemplate)) continue
        templateTexts.add(template.uriTemplate)
        templates.push({
          upstream,
          pattern: templatePattern(template.uriTemplate),
          rules: resourceRules,
          allowing: scopesAllowing(resourceRules, template.uriTemplate),
          listed: { ...template, name: `${upstream.name}${SEPARATOR}${template.name}`, description: `[${upstream.name}] ${template.description ?? template.name}` }
        })
      }
    }
    this.tools = tools
    this.prompts = prompts
    this.resources = resources
    this.templates = templates
    for (const cache of Object.values(this.listCaches)) cache.clear()
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

  /**
   * The upstream that serves this URI to this principal: the one that listed it, or else the first
   * whose template matches it, the URI itself allowed by that upstream's resource globs. Undefined
   * for an unknown URI and a hidden one alike.
   */
  resolveResource (uri: string, principal: Principal): Upstream | undefined {
    if (uri.startsWith(OWN_SCHEME)) return undefined
    const listed = this.resources.get(uri)
    if (listed !== undefined) return mayCall(principal, listed.allowing) ? listed.upstream : undefined
    for (const template of this.templates) {
      if (template.pattern.test(uri) && mayCall(principal, scopesAllowing(template.rules, uri))) return template.upstream
    }
    return undefined
  }

  /** The upstream tools this principal sees, as tools/list entries (of upstreams currently known). */
  list (principal: Principal): Array<Record<string, unknown>> {
    return this.visible('tools', principal, this.tools.values())
  }

  listPrompts (principal: Principal): Array<Record<string, unknown>> {
    return this.visible('prompts', principal, this.prompts.values())
  }

  listResources (principal: Principal): Array<Record<string, unknown>> {
    return this.visible('resources', principal, this.resources.values())
  }

  listResourceTemplates (principal: Principal): Array<Record<string, unknown>> {
    return this.visible('templates', principal, this.templates.values())
  }

  private visible (kind: keyof Federation['listCaches'], principal: Principal, entries: Iterable<{ allowing: ReadonlySet<string>, listed: Record<string, unknown> }>): Array<Record<string, unknown>> {
    const cache = this.listCaches[kind]
    const key = scopeKey(principal)
    let listed = cache.get(key)
    if (listed === undefined) {
      listed = [...entries].filter((entry) => mayCall(principal, entry.allowing)).map((entry) => entry.listed)
      cache.set(key, listed)
    }
    return listed
  }

  get size (): number {
    return this.tools.size
  }
}
