/**
 * The contract between the gateway's call path (G1: gateway/call.ts) and the approval gate and the
 * audit (G2: gateway/approvals.ts, db/gateway-store.ts), and the approval part of an upstream's entry.
 */
import { Type, type Static } from '@sinclair/typebox'
import type { Principal } from '../schema/principal.js'
import type { ToolCallResult } from '../tools/registry.js'
import type { ErrorCode } from '../schema/errors.js'

/**
 * How a person approves an upstream's gated calls. in-band: the client asks its user (2025:
 * elicitation/create during the call; 2026-07-28: an input-required answer), when it can; otherwise,
 * and always with out-of-band, the call waits for `cli approvals approve|reject`.
 */
export const ApprovalModeSchema = Type.Union([Type.Literal('in-band'), Type.Literal('out-of-band')])
export type ApprovalModeSetting = Static<typeof ApprovalModeSchema>

/** An upstream entry's `approval` (UPSTREAMS_FILE): all optional. */
export const UpstreamApprovalSchema = Type.Object({
  /** Default: APPROVAL_MODE (out-of-band unless the server listens on loopback only). */
  mode: Type.Optional(ApprovalModeSchema),
  /** Per tool (the upstream's own tool names; globs as in `allow`): overrides `mode`. */
  tools: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 128 }), ApprovalModeSchema)),
  /** How long a pending approval (or an in-band question) waits for its answer. */
  expiresInSeconds: Type.Optional(Type.Integer({ minimum: 30, maximum: 7 * 24 * 3600 }))
}, { additionalProperties: false })
export type UpstreamApproval = Static<typeof UpstreamApprovalSchema>

export interface UpstreamToolAnnotations { readOnlyHint?: boolean, destructiveHint?: boolean, idempotentHint?: boolean, openWorldHint?: boolean }

/** One call of a federated tool, after access was granted and the arguments were validated. */
export interface GatedCall {
  principal: Principal
  /** The MCP client's name, as the context tools record it. */
  client: string | null
  /** The upstream's configured name. */
  upstream: string
  /** The upstream's own tool name. */
  tool: string
  /** `${upstream}__${tool}` */
  federatedName: string
  arguments: Record<string, unknown>
  /** sha256 hex of the canonical JSON of arguments (see argumentsDigest in gateway/approvals.ts). */
  argumentsDigest: string
  annotations: UpstreamToolAnnotations
}

/** What the call path gets from the request for asking a person in-band. */
export interface InteractionChannel {
  protocol: '2025' | '2026-07-28'
  /** 2025 line: sends elicitation/create to the client during the call; undefined if the client lacks form elicitation. */
  elicit?: (message: string, requestedSchema: Record<string, unknown>) => Promise<{ action: 'accept' | 'decline' | 'cancel', content?: Record<string, unknown> }>
  /** 2026-07-28: the input responses the client sent back with this call, if any. */
  inputResponses?: Record<string, unknown>
  /** 2026-07-28: the request state the client echoed back with this call, if any (raw wire string). */
  requestState?: string
  /** 2026-07-28: whether the client can answer an input-required result (form elicitation capability). */
  inputRequiredSupported?: boolean
  signal: AbortSignal
}

/**
 * A 2026-07-28 multi-round-trip answer (`resultType: 'input_required'`): the call path returns it as
 * the tools/call result as is (the SDK v2 server accepts it from a tool handler).
 */
export interface InputRequiredAnswer {
  [key: string]: unknown
  resultType: 'input_required'
  inputRequests: Record<string, { method: 'elicitation/create', params: Record<string, unknown> }>
  requestState: string
}

/** Whether a tools/call result is a 2026-07-28 input-required answer (an upstream's relayed one, or ours). */
export function isInputRequired (result: object): boolean {
  return (result as { resultType?: unknown }).resultType === 'input_required'
}

/**
 * What makes an upstream's input-required answer malformed, or undefined when it is well formed.
 * 2026-07-28: it carries at least one of non-empty inputRequests and a requestState; one with a
 * requestState alone asks nothing (the client pauses, then retries with the state).
 */
export function inputRequiredFault (result: object): string | undefined {
  const { inputRequests, requestState } = result as { inputRequests?: unknown, requestState?: unknown }
  if (inputRequests !== undefined && (typeof inputRequests !== 'object' || inputRequests === null || Array.isArray(inputRequests))) {
    return 'an input_required answer whose inputRequests is not an object'
  }
  const entries = Object.entries(inputRequests ?? {})
  for (const [key, entry] of entries) {
    if (typeof (entry as { method?: unknown } | null)?.method !== 'string') return `an input_required answer whose input request "${key.slice(0, 64)}" names no method`
  }
  if (entries.length === 0 && typeof requestState !== 'string') return 'an input_required answer with neither inputRequests nor requestState'
  return undefined
}

export type ApprovalDecision =
  /** Run the upstream call now (no approval needed, or approved; approvalId set when an approval was claimed). */
  | { kind: 'run', approvalId?: string }
  /** Answer the client with this (pending / rejected / expired / cancelled / a stored outcome). */
  | { kind: 'answer', result: ToolCallResult, outcome: CallOutcome, approvalId?: string }
  /** 2026-07-28: ask the client for input; it calls again with inputResponses + requestState. */
  | { kind: 'input-required', result: InputRequiredAnswer }

export interface ApprovalGate {
  /** Whether this tool needs a person's approval (the upstream's `confirm` globs, default: destructiveHint). */
  requires (upstream: string, tool: string, annotations: UpstreamToolAnnotations): boolean
  decide (call: GatedCall, channel: InteractionChannel): Promise<ApprovalDecision>
  /** After an approved call ran (exactly once): its outcome, so asking again returns it. */
  complete (approvalId: string, outcome: { result: ToolCallResult, code?: ErrorCode }): Promise<void>
  /** After an approved call that never reached the upstream: true if the approval can be collected again (out-of-band), false if it was used up. */
  release (approvalId: string): Promise<boolean>
}

export type CallOutcome = 'ok' | 'input_required' | 'tool_error' | 'timeout' | 'upstream_error' | 'unreachable' | 'breaker_open' | 'rate_limited' | 'denied' | 'pending' | 'rejected' | 'expired' | 'cancelled'

export interface CallRecord {
  principal: string
  /** The principal's home namespace (principal.namespace): the audit is keyed by it, like every table. */
  namespace: string
  client: string | null
  upstream: string
  tool: string
  argumentsDigest: string
  outcome: CallOutcome
  code?: ErrorCode
  attempts: number
  durationMs: number
  approvalId?: string
}

/** Never throws into the call path: a failed audit write is logged and counted. */
export interface CallAudit { record (call: CallRecord): Promise<void> }
