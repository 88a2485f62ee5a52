import type { ErrorCode } from '../schema/errors.js'
import type { Principal } from '../schema/principal.js'
import { toolError, toolErrorCode, type ToolCallResult } from '../tools/registry.js'
import { argumentsDigest } from './approvals.js'
import type { FederatedTool } from './federation.js'
import { inputRequiredFault, isInputRequired, type ApprovalGate, type CallAudit, type CallOutcome, type InputRequiredAnswer, type InteractionChannel } from './policy.js'
import { LimitWaitAborted, UpstreamMalformed, backoffDelayMs, classifyFailure, sleep, type FailureKind } from './resilience.js'
import type { UpstreamInput } from './interactions.js'
import type { IdentitySigner } from './signed-identity.js'
import type { CallBinding } from './upstream.js'

/** What the request a call came with offers: its protocol line, cancellation, and a way back to the client. */
export interface DownstreamChannel {
  protocol: '2025' | '2026-07-28'
  /** Aborts when the client cancels or goes away. */
  signal: AbortSignal
  /** The client's progress token for this call, if it asked for progress. */
  progressToken?: string | number
  /** Sends a notification to the client during the call (progress, logging). */
  notify?: (method: string, params: Record<string, unknown>) => void
  /** Sends a request to the client during the call and waits for its answer (2025 line: elicitation, sampling). */
  request?: (method: string, params: Record<string, unknown> | undefined) => Promise<Record<string, unknown>>
  /** Whether the client declared form elicitation (known for clients with a session). */
  elicitationSupported?: boolean
  /** Whether the client declared sampling (2026-07-28: from the request's capabilities). */
  samplingSupported?: boolean
  inputResponses?: Record<string, unknown>
  requestState?: string
  /**
   * A relayed round (gateway/interactions.ts, relay): the upstream's input-required comes back as
   * the call's result instead of being fulfilled, and a retry carries the client's answers and the
   * upstream's own state to it.
   */
  upstreamInput?: UpstreamInput
  /** A relayed round's retry: un-uses its state when the call ends before any attempt reached the upstream. Never rejects (logs its failure). */
  releaseState?: () => Promise<void>
}

export interface GatewayMetrics {
  call: (upstream: string, tool: string, outcome: CallOutcome, seconds: number) => void
  retry: (upstream: string, reason: string) => void
}

export interface CallPathDependencies {
  gate: ApprovalGate
  audit: CallAudit
  metrics: GatewayMetrics
  signer: IdentitySigner | undefined
  /** Counts one attempt sent upstream for the principal; false when its budget for that upstream is spent. */
  countAttempt: (principal: Principal, upstream: FederatedTool['upstream']) => boolean
  /** Audit writes are not awaited by the call; they are tracked here so shutdown can wait for them. */
  track: (work: Promise<unknown>) => void
  log: { warn: (data: Record<string, unknown>, message: string) => void }
}

interface Ended {
  result: ToolCallResult
  outcome: CallOutcome
  code?: ErrorCode
}

function failureAnswer (tool: FederatedTool, failure: FailureKind, attempts: number, detail?: string): Ended {
  const upstream = tool.upstream.name
  const tried = attempts > 1 ? ` (${attempts} attempts)` : ''
  if (failure.kind === 'timeout') {
    return {
      outcome: 'timeout',
      code: 'MCP_2001',
      result: toolError('MCP_2001', `${tool.federatedName}: the upstream server "${upstream}" did not answer within ${tool.upstream.config.timeoutMs} ms${tried}. It may still have acted; check before calling again.`, { upstream, attempts })
    }
  }
  const outcome: CallOutcome = failure.kind === 'unreachable' ? 'unreachable' : 'upstream_error'
  const what = failure.kind === 'unreachable'
    ? `could not reach the upstream server "${upstream}"`
    : `the upstream server "${upstream}" failed${detail === undefined ? '' : `: ${detail}`}`
  return { outcome, code: 'MCP_2002', result: toolError('MCP_2002', `${tool.federatedName}: ${what}${tried}. Try again later.`, { upstream, attempts, reason: failure.reason }) }
}

/** An error's message, cut short, for the tool error: the upstream's own JSON-RPC error text, or UpstreamMalformed's description of what was wrong with its answer (no internals of this server either way). */
function upstreamMessageOf (error: unknown): string | undefined {
  const message = (error as { message?: unknown } | null)?.message
  return typeof message === 'string' ? message.replace(/\s+/g, ' ').slice(0, 300) : undefined
}

/**
 * The call path of a federated tool (access was granted by Federation.resolve before):
 * rate limit → approval gate → breaker → concurrency limit → attempts with retries → the gate's
 * `complete` → the audit, for every outcome.
 */
export function createCallPath (deps: CallPathDependencies) {
  async function runUpstream (tool: FederatedTool, args: Record<string, unknown>, principal: Principal, client: string | null, channel: DownstreamChannel): Promise<Ended & { attempts: number }> {
    const { upstream } = tool
    const { retry } = upstream.config
    if (!upstream.breaker.allow()) {
      const seconds = Math.ceil(upstream.breaker.retryAfterMs() / 1000)
      return {
        attempts: 0,
        outcome: 'breaker_open',
        code: 'MCP_2002',
        result: toolError('MCP_2002', `${tool.federatedName}: the upstream server "${upstream.name}" has been failing; calls to it are paused${seconds > 0 ? ` for about ${seconds} s` : ''}. Try again later.`, { upstream: upstream.name, attempts: 0, reason: 'breaker_open' })
      }
    }
    let release: (() => void) | undefined
    let headers: Record<string, string> | undefined
    try {
      headers = await identityHeaders(tool, principal, client)
      release = await upstream.limit.acquire(channel.signal)
    } catch (error) {
      upstream.breaker.released()
      if (error instanceof LimitWaitAborted) return { attempts: 0, ...cancelled(tool) }
      // Nothing was sent (the signed identity or the concurrency limit failed): attempts 0, so the
      // approval and a relayed round's state are not used up.
      deps.log.warn({ err: error, upstream: upstream.name, tool: tool.tool }, 'gateway call failed before reaching the upstream')
      return { attempts: 0, ...failureAnswer(tool, classifyFailure(error), 0) }
    }
    const binding: CallBinding = {
      notify: (method, params) => channel.notify?.(method, params ?? {}),
      request: async (method, params) => {
        if (channel.request === undefined) throw new Error(`this client cannot be asked for ${method} during a call`)
        return await channel.request(method, params)
      }
    }
    const onprogress = channel.progressToken === undefined || channel.notify === undefined
      ? undefined
      : (progress: { progress: number, total?: number, message?: string }) => channel.notify?.('notifications/progress', { ...progress, progressToken: channel.progressToken })
    let attempts = 0
    try {
      for (;;) {
        attempts++
        if (!deps.countAttempt(principal, upstream)) {
          upstream.breaker.released()
          return { attempts: attempts - 1, outcome: 'rate_limited', code: 'REQ_1103', result: toolError('REQ_1103', `${tool.federatedName}: this principal's calls to "${upstream.name}" are limited to ${upstream.config.callsPerMinute} a minute; wait a minute and try again.`, { upstream: upstream.name }) }
        }
        try {
          const result = withoutReservedMeta(await upstream.callTool(tool.tool, args, { signal: channel.signal, binding, ...(onprogress !== undefined && { onprogress }), ...(headers !== undefined && { headers }), ...(channel.upstreamInput !== undefined && { input: channel.upstreamInput }) }) as ToolCallResult)
          // A relayed round's input-required goes to the client as it is: a malformed one is no answer to pass on.
          const fault = isInputRequired(result) ? inputRequiredFault(result) : undefined
          if (fault !== undefined) throw new UpstreamMalformed(fault)
          upstream.breaker.succeeded()
          upstream.markUp()
          return { attempts, result, outcome: outcomeOf(result), ...(result.isError === true && { code: toolErrorCode(result) }) }
        } catch (error) {
          if (channel.signal.aborted) {
            upstream.breaker.released()
            return { attempts, ...cancelled(tool) }
          }
          const failure = classifyFailure(error)
          // A JSON-RPC error is the upstream's MCP server answering: it works, the call failed.
          const answered = failure.kind === 'upstream_error' && failure.reason === 'error'
          if (answered) upstream.breaker.succeeded()
          else upstream.breaker.failed()
          if (failure.kind === 'unreachable') upstream.markDown(error)
          const safe = tool.safeToRepeat || !failure.mayHaveReached
          if (!failure.transient || !safe || attempts > retry.attempts || upstream.breaker.state === 'open') {
            return { attempts, ...failureAnswer(tool, failure, attempts, answered || error instanceof UpstreamMalformed ? upstreamMessageOf(error) : undefined) }
          }
          deps.metrics.retry(upstream.name, failure.reason)
          try {
            await sleep(backoffDelayMs(attempts, retry.baseDelayMs, retry.maxDelayMs), channel.signal)
          } catch {
            return { attempts, ...cancelled(tool) }
          }
          // The retry counts as a call of the breaker's: when it is half-open only one probe goes.
          if (!upstream.breaker.allow()) return { attempts, ...failureAnswer(tool, failure, attempts) }
        }
      }
    } finally {
      release()
    }
  }

  async function identityHeaders (tool: FederatedTool, principal: Principal, client: string | null): Promise<Record<string, string> | undefined> {
    const identity = tool.upstream.config.identity
    if (identity === undefined || deps.signer === undefined) return undefined
    // Only the principal's scopes that this upstream's rules name: its other domains are none of its business.
    const scopes = Object.keys(tool.upstream.config.allow).filter((scope) => principal.scopes.has(scope)).sort()
    return { [identity.header]: await deps.signer.sign(tool.upstream.name, principal, scopes, client, identity.audience ?? tool.upstream.config.url, identity.ttlSeconds) }
  }

  /**
   * Runs one call of a federated tool for a principal the federation already let see it.
   * `approved`: get_approval runs a call a person approved; the gate already decided.
   */
  return async function callFederated (tool: FederatedTool, args: Record<string, unknown>, principal: Principal, client: string | null, channel: DownstreamChannel, approved?: { approvalId: string }): Promise<ToolCallResult | InputRequiredAnswer> {
    const started = performance.now()
    const digest = argumentsDigest(args)
    let approvalId = approved?.approvalId
    let ended: Ended & { attempts: number }
    const { gate } = deps
    if (approved === undefined && gate.requires(tool.upstream.name, tool.tool, tool.annotations)) {
      const decision = await gate.decide({
        principal,
        client,
        upstream: tool.upstream.name,
        tool: tool.tool,
        federatedName: tool.federatedName,
        arguments: args,
        argumentsDigest: digest,
        annotations: tool.annotations
      }, interactionOf(channel))
      if (decision.kind === 'input-required') return decision.result
      if (decision.kind === 'answer') {
        finish(tool, principal, client, digest, { attempts: 0, result: decision.result, outcome: decision.outcome }, started, decision.approvalId)
        return decision.result
      }
      approvalId = decision.approvalId
    }
    try {
      ended = await runUpstream(tool, args, principal, client, channel)
    } catch (error) {
      deps.log.warn({ err: error, upstream: tool.upstream.name, tool: tool.tool }, 'gateway call failed')
      ended = { attempts: 1, ...failureAnswer(tool, classifyFailure(error), 1) }
    }
    // An approved call that never reached the upstream does not use its approval up.
    if (approvalId !== undefined && !(ended.attempts === 0 && await gate.release(approvalId))) {
      await gate.complete(approvalId, { result: ended.result, ...(ended.code !== undefined && { code: ended.code }) })
    }
    // Likewise a relayed round's state: the client may retry with it once the refusal clears. Not
    // awaited (a stalled database must not hold the refusal back); its failure is logged by it.
    if (ended.attempts === 0 && channel.releaseState !== undefined) deps.track(channel.releaseState())
    finish(tool, principal, client, digest, ended, started, approvalId)
    return ended.result
  }

  function finish (tool: FederatedTool, principal: Principal, client: string | null, digest: string, ended: Ended & { attempts: number }, started: number, approvalId: string | undefined): void {
    const durationMs = performance.now() - started
    deps.metrics.call(tool.upstream.name, tool.tool, ended.outcome, durationMs / 1000)
    deps.track(deps.audit.record({
      principal: principal.id,
      namespace: principal.namespace,
      client,
      upstream: tool.upstream.name,
      tool: tool.tool,
      argumentsDigest: digest,
      outcome: ended.outcome,
      ...(ended.code !== undefined && { code: ended.code }),
      attempts: ended.attempts,
      durationMs: Math.round(durationMs),
      ...(approvalId !== undefined && { approvalId })
    }))
  }
}

/** The upstream's result without the `io.modelcontextprotocol/*` keys of its _meta: they describe the upstream's envelope, not ours. */
function withoutReservedMeta (result: ToolCallResult): ToolCallResult {
  const meta = result._meta
  if (meta === undefined) return result
  const kept = Object.fromEntries(Object.entries(meta).filter(([key]) => !key.startsWith('io.modelcontextprotocol/')))
  const { _meta: _dropped, ...rest } = result
  return Object.keys(kept).length === 0 ? rest as ToolCallResult : { ...rest, _meta: kept } as ToolCallResult
}

/** An upstream's answer: a success, a tool error, or (a relayed round) its own input-required. */
function outcomeOf (result: ToolCallResult): CallOutcome {
  if (result.isError === true) return 'tool_error'
  return isInputRequired(result) ? 'input_required' : 'ok'
}

function cancelled (tool: FederatedTool): Ended {
  return { outcome: 'cancelled', code: 'MCP_2002', result: toolError('MCP_2002', `${tool.federatedName}: the call was cancelled by the client.`, { upstream: tool.upstream.name, reason: 'cancelled' }) }
}

export type CallFederated = ReturnType<typeof createCallPath>

/** What the approval gate may use of the client's request to ask a person in-band. */
export function interactionOf (channel: DownstreamChannel): InteractionChannel {
  const request = channel.request
  return {
    protocol: channel.protocol,
    signal: channel.signal,
    ...(request !== undefined && channel.elicitationSupported === true && {
      elicit: async (message: string, requestedSchema: Record<string, unknown>) => {
        const answer = await request('elicitation/create', { mode: 'form', message, requestedSchema })
        const action = answer.action === 'accept' || answer.action === 'decline' ? answer.action : 'cancel'
        const content = typeof answer.content === 'object' && answer.content !== null ? answer.content as Record<string, unknown> : undefined
        return { action, ...(content !== undefined && { content }) }
      }
    }),
    ...(channel.inputResponses !== undefined && { inputResponses: channel.inputResponses }),
    ...(channel.requestState !== undefined && { requestState: channel.requestState }),
    ...(channel.protocol === '2026-07-28' && { inputRequiredSupported: channel.elicitationSupported === true })
  }
}
