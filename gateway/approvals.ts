import { hash } from 'node:crypto'
import { inputRequired, inputResponse } from '@modelcontextprotocol/server'
import { Type } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { Counter, Gauge, type Registry } from 'prom-client'
import { APPROVAL_ID_PATTERN, type Approval, type GatewayStore, type NewApproval } from '../db/gateway-store.js'
import type { ErrorCode } from '../schema/errors.js'
import type { Principal } from '../schema/principal.js'
import { TOOL_ERROR_META_KEY, toolError, type ToolCallResult } from '../tools/registry.js'
import { STATE_REFUSALS, createApprovalStateCodec, type ApprovalStateCodec, type StateBinding } from './approval-state.js'
import { globToRegExp } from './access.js'
import { federatedNameOf } from './federation.js'
import type {
  ApprovalDecision, ApprovalGate, ApprovalModeSetting, CallAudit, CallRecord, GatedCall, InputRequiredAnswer, InteractionChannel,
  UpstreamApproval, UpstreamToolAnnotations
} from './policy.js'

/**
 * The `upstream` of approvals of the server's own tools (APPROVE_CONTEXT_TOOLS: delete_context,
 * restore_context). No upstream can be named so: upstream names are tool-name prefixes.
 */
export const CONTEXT_TOOLS_UPSTREAM = '(context)'

/** The scope of whoever decides approvals outside the model's reach (the web view; the CLI works on the database directly). */
export const APPROVER_SCOPE = 'approvals:decide'

const PENDING: ErrorCode = 'MCP_2003'
const REFUSED: ErrorCode = 'MCP_2004'

const DEFAULT_EXPIRES_SECONDS = 3600
// How long an in-band question waits for its answer (the client's user is at the screen).
const IN_BAND_EXPIRES_SECONDS = 600
// How often an instance clears expired approvals' arguments and forgets used request states past their expiry.
const SWEEP_INTERVAL_MS = 60_000
// The most of the arguments a message quotes.
const ARGUMENTS_SHOWN_CHARS = 500

interface Logger {
  warn: (object: Record<string, unknown>, message: string) => void
  error: (object: Record<string, unknown>, message: string) => void
}

/** JSON with object keys sorted at every level: the same arguments always give the same digest. */
export function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item ?? null)).join(',')}]`
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, item]) => item !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonicalJson(item)}`).join(',')}}`
  }
  return JSON.stringify(value) ?? 'null'
}

/** SHA-256 hex of the canonical JSON of a call's arguments: what the audit and approvals keep instead of them. */
export function argumentsDigest (args: Record<string, unknown>): string {
  return hash('sha256', canonicalJson(args), 'hex')
}

export interface UpstreamApprovalRule {
  /** Tool-name globs that need approval; undefined: every tool MCP's annotations call destructive. */
  confirm?: readonly string[]
  approval?: UpstreamApproval
}

export interface ApprovalRules {
  upstreams: ReadonlyMap<string, UpstreamApprovalRule>
  /** APPROVAL_MODE: for upstreams that set none. */
  defaultMode: ApprovalModeSetting
  /** APPROVAL_EXPIRES_SECONDS: how long an out-of-band approval waits, unless the upstream says. */
  expiresInSeconds?: number
  /** APPROVE_CONTEXT_TOOLS: the server's own tools that need approval (upstream CONTEXT_TOOLS_UPSTREAM). */
  contextTools?: ReadonlySet<string>
}

export interface ApprovalGateDependencies {
  store: GatewayStore
  rules: ApprovalRules
  log: Logger
  /** The glob matcher `allow` uses, so that `confirm` matches the same way. */
  matches?: (glob: string, name: string) => boolean
  /** The request-state key; read from (or created in) the database at the first use when absent. */
  stateKey?: Uint8Array
  now?: () => number
}

/** What get_approval needs of the call path: run an approved call exactly as an allowed call runs (after the gate). */
export type ApprovedCallRunner = (call: GatedCall, approvalId: string) => Promise<ToolCallResult>

export interface GatewayApprovals extends ApprovalGate {
  /** The model's get_approval: the approval's state, or — approved and not yet run — the call's result, run now, once. */
  resume: (principal: Principal, args: unknown, run: ApprovedCallRunner) => Promise<ToolCallResult>
}

/** The model's way to learn what became of a call that waited for a person. */
export const GET_APPROVAL_TOOL = {
  name: 'get_approval',
  title: 'Get approval',
  description: 'Learn what became of a call that waited for a person\'s approval (its answer named an approval_id, code MCP_2003). ' +
    'While the person has not decided it answers MCP_2003 again: tell the user, and call again later. Once approved, this call ' +
    'runs the approved call — exactly once — and returns its result; later calls return the same result. Rejected or expired: ' +
    'MCP_2004, and the call never ran. You cannot approve anything yourself.',
  inputSchema: Type.Object({
    approval_id: Type.String({ pattern: APPROVAL_ID_PATTERN, description: 'The approval_id the waiting call answered with, e.g. apr_3fZk9QpLx2mWb7Tc.' })
  }, { additionalProperties: false }),
  annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: true }
} as const

const checkGetApproval = TypeCompiler.Compile(GET_APPROVAL_TOOL.inputSchema)

const CONFIRM_KEY = 'approval'
const ConfirmSchema = {
  type: 'object' as const,
  properties: { approve: { type: 'boolean' as const, title: 'Run it', description: 'Yes runs the call once; no cancels it.' } },
  required: ['approve']
}

function shown (args: Record<string, unknown>): string {
  const text = canonicalJson(args)
  return text.length > ARGUMENTS_SHOWN_CHARS ? `${text.slice(0, ARGUMENTS_SHOWN_CHARS)}…` : text
}

function whatItDoes (federatedName: string, args: Record<string, unknown> | null): string {
  return args === null ? federatedName : `${federatedName} ${shown(args)}`
}

/** The tool name the model called for an approval: the federated name of the upstream's tool, or the server's own tool's name. */
export function approvalToolName (upstream: string, tool: string): string {
  return upstream === CONTEXT_TOOLS_UPSTREAM ? tool : federatedNameOf(upstream, tool)
}

function toolNameOf (approval: Pick<Approval, 'upstream' | 'tool'>): string {
  return approvalToolName(approval.upstream, approval.tool)
}

function pendingResult (approval: Approval): ToolCallResult {
  const what = whatItDoes(toolNameOf(approval), approval.arguments)
  return toolError(PENDING, `${what} waits for a person's approval (approval ${approval.id}, expires ${approval.expiresAt.toISOString()}). ` +
    `It has not run. Someone with the ${APPROVER_SCOPE} scope decides (node dist/cli.js approvals approve --id ${approval.id}); ` +
    `then call get_approval with approval_id "${approval.id}": if approved, that runs it once and returns its result.`, {
    approval_id: approval.id,
    status: 'pending',
    tool: toolNameOf(approval),
    expires_at: approval.expiresAt.toISOString()
  })
}

function runningResult (approval: Approval): ToolCallResult {
  return toolError(PENDING, `The approved call ${toolNameOf(approval)} (approval ${approval.id}) is running since ${approval.startedAt?.toISOString() ?? 'now'}; ` +
    'it is never run twice. Call get_approval again for its result.', { approval_id: approval.id, status: 'running', tool: toolNameOf(approval) })
}

function refusedResult (approval: Pick<Approval, 'id' | 'upstream' | 'tool' | 'status' | 'decidedBy' | 'decidedAt' | 'expiresAt'>, status: 'rejected' | 'expired'): ToolCallResult {
  const name = toolNameOf(approval)
  const why = status === 'rejected'
    ? `was rejected by ${approval.decidedBy ?? 'a person'}${approval.decidedAt === null ? '' : ` at ${approval.decidedAt.toISOString()}`}`
    : `expired at ${approval.expiresAt.toISOString()} without being ${approval.decidedAt === null ? 'decided' : 'collected'}`
  return toolError(REFUSED, `${name} (approval ${approval.id}) ${why}; it was cancelled and never ran. Ask again only if the user still wants it.`, {
    approval_id: approval.id,
    status,
    tool: name
  })
}

function unknownApproval (id: string): ToolCallResult {
  return toolError('REQ_1101', `No approval "${id.slice(0, 64)}" of yours exists. Use the approval_id a waiting call answered with; nothing was run.`)
}

/**
 * The approval gate (issue 16 item 6). A gated call either runs now (approved in-band by the
 * client's user) or answers: pending (out-of-band, an approval row a person decides with the CLI),
 * rejected, or — 2026-07-28 — input-required with a signed request state. get_approval (resume)
 * claims an approved row in one conditional UPDATE, so the call runs exactly once.
 */
export function createApprovalGate (dependencies: ApprovalGateDependencies): GatewayApprovals {
  const { store, rules, log } = dependencies
  const compiled = new Map<string, RegExp>()
  const matches = dependencies.matches ?? ((glob: string, name: string) => {
    let pattern = compiled.get(glob)
    if (pattern === undefined) compiled.set(glob, pattern = globToRegExp(glob))
    return pattern.test(name)
  })
  const now = dependencies.now ?? Date.now
  const codecs = new Map<number, Promise<ApprovalStateCodec>>()

  function codecFor (ttlSeconds: number): Promise<ApprovalStateCodec> {
    let codec = codecs.get(ttlSeconds)
    if (codec === undefined) {
      codec = (async () => createApprovalStateCodec(dependencies.stateKey ?? await store.stateKey(), ttlSeconds, now))()
      codec.catch(() => codecs.delete(ttlSeconds))
      codecs.set(ttlSeconds, codec)
    }
    return codec
  }

  // Expired approvals read as expired anyway; the sweep drops their arguments and old used states,
  // piggybacking on gate traffic (at most once a minute, never awaited by a call).
  let lastSweep = now()
  function sweepNowAndThen (): void {
    if (now() - lastSweep < SWEEP_INTERVAL_MS) return
    lastSweep = now()
    Promise.all([store.expireApprovals(), store.purgeUsedStates()])
      .catch((error: unknown) => log.warn({ err: error }, 'approvals: the sweep of expired approvals failed'))
  }

  function modeOf (upstream: string, tool: string): ApprovalModeSetting {
    const approval = rules.upstreams.get(upstream)?.approval
    for (const [glob, mode] of Object.entries(approval?.tools ?? {})) if (matches(glob, tool)) return mode
    return approval?.mode ?? rules.defaultMode
  }

  function expiresInSeconds (upstream: string): number {
    return rules.upstreams.get(upstream)?.approval?.expiresInSeconds ?? rules.expiresInSeconds ?? DEFAULT_EXPIRES_SECONDS
  }

  function newApproval (call: GatedCall, mode: NewApproval['mode'], seconds: number): NewApproval {
    return {
      namespace: call.principal.namespace,
      requestedBy: call.principal.id,
      client: call.client,
      upstream: call.upstream,
      tool: call.tool,
      arguments: call.arguments,
      argumentsDigest: call.argumentsDigest,
      mode,
      expiresInSeconds: seconds
    }
  }

  function bindingOf (call: GatedCall): StateBinding {
    return { principal: call.principal.id, namespace: call.principal.namespace, upstream: call.upstream, tool: call.tool, argumentsDigest: call.argumentsDigest }
  }

  function question (call: GatedCall): string {
    return `Allow ${whatItDoes(call.federatedName, call.arguments)}? It was marked as needing a person's approval; it runs once if you say yes.`
  }

  async function outOfBand (call: GatedCall): Promise<ApprovalDecision> {
    const approval = await store.createApproval(newApproval(call, 'out-of-band', expiresInSeconds(call.upstream)))
    return { kind: 'answer', result: pendingResult(approval), outcome: 'pending', approvalId: approval.id }
  }

  async function refusedInBand (call: GatedCall, mode: 'elicitation' | 'input-required', action: string): Promise<ApprovalDecision> {
    const approval = await store.createRejected(newApproval(call, mode, 0), `${call.client ?? 'the client'}'s user (in-band, ${action})`)
    const result = toolError(REFUSED, `${call.federatedName} was not approved (the user answered "${action}"); it was cancelled and never ran.`, {
      approval_id: approval.id, status: 'rejected', tool: call.federatedName
    })
    return { kind: 'answer', result, outcome: action === 'cancel' ? 'cancelled' : 'rejected', approvalId: approval.id }
  }

  async function approvedInBand (call: GatedCall, mode: 'elicitation' | 'input-required'): Promise<ApprovalDecision> {
    const approval = await store.createAnswered(newApproval(call, mode, IN_BAND_EXPIRES_SECONDS), `${call.client ?? 'the client'}'s user (in-band)`)
    return { kind: 'run', approvalId: approval.id }
  }

  async function elicit (call: GatedCall, channel: InteractionChannel & { elicit: NonNullable<InteractionChannel['elicit']> }): Promise<ApprovalDecision> {
    // A question left unanswered, an error answer or the client gone counts as "cancel": nothing runs.
    let timer: NodeJS.Timeout | undefined
    const unanswered = new Promise<{ action: 'cancel' }>((resolve) => {
      timer = setTimeout(() => resolve({ action: 'cancel' }), IN_BAND_EXPIRES_SECONDS * 1000)
      channel.signal.addEventListener('abort', () => resolve({ action: 'cancel' }), { once: true })
    })
    let answer: Awaited<ReturnType<typeof channel.elicit>>
    try {
      answer = await Promise.race([channel.elicit(question(call), ConfirmSchema), unanswered])
    } catch (error) {
      log.warn({ err: error, upstream: call.upstream, tool: call.tool }, 'the approval question got an error answer')
      answer = { action: 'cancel' }
    } finally {
      clearTimeout(timer)
    }
    if (answer.action === 'accept' && answer.content?.approve === true) return await approvedInBand(call, 'elicitation')
    return await refusedInBand(call, 'elicitation', answer.action === 'accept' ? 'no' : answer.action)
  }

  function badAnswer (call: GatedCall, why: string): ApprovalDecision {
    return {
      kind: 'answer',
      result: toolError('REQ_1101', `The approval answer for ${call.federatedName} was refused: ${why}. Nothing was run; call the tool again without requestState to be asked again.`),
      outcome: 'denied'
    }
  }

  async function inputRequiredRound (call: GatedCall, channel: InteractionChannel): Promise<ApprovalDecision> {
    const codec = await codecFor(IN_BAND_EXPIRES_SECONDS)
    const binding = bindingOf(call)
    if (channel.requestState === undefined) {
      const result: InputRequiredAnswer = inputRequired({
        inputRequests: { [CONFIRM_KEY]: inputRequired.elicit({ message: question(call), requestedSchema: ConfirmSchema }) },
        requestState: await codec.mint(binding)
      }) as InputRequiredAnswer
      return { kind: 'input-required', result }
    }
    const verified = await codec.verify(channel.requestState, binding)
    if (!verified.ok) {
      const why = {
        ...STATE_REFUSALS,
        mismatch: 'its requestState was issued for another call (caller, tool or arguments differ)'
      }[verified.reason]
      log.warn({ upstream: call.upstream, tool: call.tool, principal: call.principal.id, reason: verified.reason }, 'approval answer refused')
      return badAnswer(call, why)
    }
    const answer = inputResponse(channel.inputResponses, CONFIRM_KEY)
    if (answer.kind !== 'elicit') return badAnswer(call, 'it carries no answer to the approval question')
    // Accepted once: a second use of the same state (a replay) is refused, whatever it answers.
    if (!await store.useState(call.principal.namespace, verified.stateId, verified.expiresAt)) {
      log.warn({ upstream: call.upstream, tool: call.tool, principal: call.principal.id }, 'approval answer replayed')
      return badAnswer(call, 'its requestState was answered before (each question is answered once)')
    }
    if (answer.action === 'accept' && answer.content?.approve === true) return await approvedInBand(call, 'input-required')
    return await refusedInBand(call, 'input-required', answer.action === 'accept' ? 'no' : answer.action)
  }

  async function resume (principal: Principal, args: unknown, run: ApprovedCallRunner): Promise<ToolCallResult> {
    if (!checkGetApproval.Check(args)) {
      return toolError('REQ_1101', 'Invalid arguments for get_approval: approval_id must be the id a waiting call answered with (apr_ and 16 letters or digits). Nothing was run.')
    }
    const id = args.approval_id
    let approval = await store.findApproval(principal.namespace, id)
    if (approval === null || approval.requestedBy !== principal.id) return unknownApproval(id)
    if (approval.status === 'approved') {
      const claimed = await store.claimApproval(principal.namespace, id, principal.id)
      if (claimed !== null) return await runClaimed(principal, claimed, run)
      approval = await store.findApproval(principal.namespace, id) ?? approval
    }
    switch (approval.status) {
      case 'pending': return pendingResult(approval)
      case 'running': return runningResult(approval)
      case 'rejected': return refusedResult(approval, 'rejected')
      case 'expired':
      case 'approved': // it expired between the claim and the read
        return refusedResult(approval, 'expired')
      case 'done': return (approval.outcome ?? toolError('SRV_9001', 'The call ran, but its result was not stored.')) as unknown as ToolCallResult
    }
  }

  async function runClaimed (principal: Principal, approval: Approval, run: ApprovedCallRunner): Promise<ToolCallResult> {
    const args = approval.arguments ?? {}
    const call: GatedCall = {
      principal,
      client: approval.client,
      upstream: approval.upstream,
      tool: approval.tool,
      federatedName: toolNameOf(approval),
      arguments: args,
      argumentsDigest: approval.argumentsDigest,
      annotations: {}
    }
    try {
      return await run(call, approval.id)
    } catch (error) {
      // Whether it reached the upstream is unknown: it is never run again, and asking again says so.
      const result = toolError('SRV_9001', `The approved call ${call.federatedName} failed before its outcome was known; it is not run again.`)
      await complete(approval.id, { result, code: 'SRV_9001' })
      throw error
    }
  }

  async function complete (approvalId: string, outcome: { result: ToolCallResult, code?: ErrorCode }): Promise<void> {
    try {
      if (!await store.completeApproval(approvalId, storedOutcome(outcome.result), outcome.code ?? null)) {
        log.warn({ approvalId }, 'approval outcome not stored: the approval was not running')
      }
    } catch (error) {
      // The call ran and its caller gets the result now; only a later get_approval misses it (it says "running").
      log.error({ err: error, approvalId }, 'approval outcome could not be stored')
    }
  }

  async function release (approvalId: string): Promise<boolean> {
    try {
      return await store.releaseApproval(approvalId)
    } catch (error) {
      log.error({ err: error, approvalId }, 'approval could not be released')
      return false
    }
  }

  return {
    requires (upstream: string, tool: string, annotations: UpstreamToolAnnotations): boolean {
      if (upstream === CONTEXT_TOOLS_UPSTREAM) return rules.contextTools?.has(tool) === true
      const confirm = rules.upstreams.get(upstream)?.confirm
      if (confirm !== undefined) return confirm.some((glob) => matches(glob, tool))
      // MCP's defaults: a tool is destructive unless it says it is read-only or not destructive.
      return annotations.readOnlyHint !== true && annotations.destructiveHint !== false
    },

    async decide (call: GatedCall, channel: InteractionChannel): Promise<ApprovalDecision> {
      sweepNowAndThen()
      if (modeOf(call.upstream, call.tool) === 'in-band') {
        if (channel.protocol === '2025' && channel.elicit !== undefined) return await elicit(call, { ...channel, elicit: channel.elicit })
        if (channel.protocol === '2026-07-28' && (channel.inputRequiredSupported === true || channel.requestState !== undefined)) return await inputRequiredRound(call, channel)
      }
      return await outOfBand(call)
    },

    complete,
    release,
    resume
  }
}

export interface GatewayMetrics {
  auditFailed: () => void
}

/** The gateway's approval metrics on the app's registry: pending approvals (read at each scrape) and failed audit writes. */
export function registerApprovalMetrics (registry: Registry, store: Pick<GatewayStore, 'countPending'>, log: Logger): GatewayMetrics {
  registry.registerMetric(new Gauge({
    name: 'scm_gateway_pending_approvals',
    help: 'Gated upstream calls waiting for a person\'s decision (node dist/cli.js approvals list), read from the database at each scrape; NaN when it cannot be read.',
    registers: [],
    async collect () {
      try {
        this.set(await store.countPending())
      } catch (error) {
        log.warn({ err: error }, 'metrics: could not count pending approvals')
        this.set(Number.NaN)
      }
    }
  }))
  const failures = new Counter({
    name: 'scm_gateway_audit_failures_total',
    help: 'Upstream calls whose audit row could not be written (the call itself was not failed; see the log).',
    registers: [registry]
  })
  failures.inc(0)
  return { auditFailed: () => failures.inc() }
}

/** The audit of upstream calls: one row per call; a failed write is logged and counted, never thrown into the call. */
export function createCallAudit (store: Pick<GatewayStore, 'recordCall'>, log: Logger, metrics?: GatewayMetrics): CallAudit {
  return {
    async record (call: CallRecord): Promise<void> {
      try {
        await store.recordCall({
          namespace: call.namespace,
          principal: call.principal,
          client: call.client,
          upstream: call.upstream,
          tool: call.tool,
          argumentsDigest: call.argumentsDigest,
          outcome: call.outcome,
          code: call.code ?? null,
          attempts: call.attempts,
          durationMs: call.durationMs,
          approvalId: call.approvalId ?? null
        })
      } catch (error) {
        metrics?.auditFailed()
        log.error({ err: error, upstream: call.upstream, tool: call.tool, outcome: call.outcome }, 'gateway audit row could not be written')
      }
    }
  }
}

/**
 * An approval keeps the result of the call it ran, for a later get_approval, up to this size; a
 * larger one (the upstream's data, which the database need not hold) only as its size and digest.
 */
export const MAX_STORED_OUTCOME_BYTES = 16_384

/** What an approval stores of the result of its call: the result itself when small, else what it was. */
export function storedOutcome (result: ToolCallResult): ToolCallResult {
  const text = JSON.stringify(result)
  const bytes = Buffer.byteLength(text)
  if (bytes <= MAX_STORED_OUTCOME_BYTES) return result
  const sha256 = hash('sha256', text, 'hex')
  const failed = result.isError === true
  return {
    ...(failed && { isError: true }),
    content: [{ type: 'text', text: `The approved call ran${failed ? ' and failed' : ''}. Its result (${bytes} bytes, sha256 ${sha256}) was returned when it ran; results over ${MAX_STORED_OUTCOME_BYTES} bytes are not kept.` }],
    _meta: {
      ...(failed && result._meta?.[TOOL_ERROR_META_KEY] !== undefined && { [TOOL_ERROR_META_KEY]: result._meta[TOOL_ERROR_META_KEY] }),
      'shared-context-mcp/approval-outcome': { kept: false, bytes, sha256 }
    }
  }
}
