import { inputRequired, inputResponse } from '@modelcontextprotocol/server'
import { Type, type TObject } from '@sinclair/typebox'
import type { DomainTool, ToolContext } from './domain-server.js'

/** What the user answered to "your name?", and the upstream's own requestState that came back with it. */
export interface NameAnswer {
  action: string
  name: unknown
  state: unknown
}

export interface AskNameOptions {
  inputSchema?: TObject
  /** The question (default "Your name?"). */
  question?: (args: Record<string, unknown>) => string
  /** The upstream's own requestState sent with the question (none by default). */
  requestState?: () => string
  /** The tool's result once answered (default { name }). */
  result?: (answer: NameAnswer, ctx: ToolContext) => Record<string, unknown>
}

/**
 * `confirm_name` of a 2026-07-28 upstream (startDomainServer, era '2026-07-28'): without an answer
 * it answers input-required, asking the client for a name by form elicitation; with one, its result.
 */
export function askNameTool (options: AskNameOptions = {}): DomainTool {
  return {
    name: 'confirm_name',
    title: 'Confirm a name',
    description: 'Asks the user for a name, then answers with it.',
    inputSchema: options.inputSchema ?? Type.Object({}),
    annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    handler: async (args, ctx) => {
      const mcpReq = ctx.server.mcpReq
      const answer = inputResponse(mcpReq.inputResponses, 'name')
      if (answer.kind !== 'elicit') {
        const requestState = options.requestState?.()
        return inputRequired({
          inputRequests: { name: inputRequired.elicit({ message: options.question?.(args) ?? 'Your name?', requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] } }) },
          ...(requestState !== undefined && { requestState })
        }) as never
      }
      const named: NameAnswer = { action: answer.action, name: answer.content?.name ?? null, state: mcpReq.requestState<unknown>() ?? null }
      return options.result?.(named, ctx) ?? { name: named.name }
    }
  }
}
