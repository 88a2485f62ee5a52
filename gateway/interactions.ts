import { createHmac, randomBytes } from 'node:crypto'
import { createRequestStateCodec, inputRequired, type RequestStateCodec, type ServerContext } from '@modelcontextprotocol/server'
import type { Principal } from '../schema/principal.js'
import { toolError, type ToolCallResult } from '../tools/registry.js'
import type { DownstreamChannel } from './call.js'
import type { InputRequiredAnswer } from './policy.js'

// 2026-07-28 clients cannot be sent requests mid-call. When the upstream asks for elicitation or
// sampling during a federated call (on either line: a 2026-07-28 upstream's input-required is
// fulfilled by the gateway's upstream client, which hands it to the same request handler), the
// upstream call is held here, on this instance, and the client gets an input-required result
// naming the upstream's requests. Its request state is signed (HMAC, a key derived from the one
// approvals use) and bound to the principal, the tool it called, the digest of its arguments, the
// held call, this instance and an expiry; each state is accepted once. The retry delivers the
// answers to the waiting upstream requests and the call goes on: its result, or a further
// input-required. A retry that lands on another instance cannot reach the held call: it answers
// MCP_2005 (call the tool again). A held call nobody answers is cancelled upstream after holdMs.

/** Interaction states start so; approval states (gateway/approval-state.ts) do not. */
const STATE_PREFIX = 'gwi1.'
const MAX_STATE_CHARS = 4096
const DEFAULT_HOLD_MS = 600_000
const DEFAULT_MAX_PER_PRINCIPAL = 16
const LOST: 'MCP_2005' = 'MCP_2005'

interface StatePayload {
  /** Instance and held call. */
  i: string
  c: string
  /** Round id: the held call accepts only the state of its current round (replays refused). */
  r: string
  p: string
  ns: string
  /** The tool the client called and the digest of its arguments. */
  t: string
  d: string
  exp: number
}

/** What a round is bound to: who called which tool with which arguments. */
export interface InteractionBinding {
  principal: Principal
  tool: string
  argumentsDigest: string
}

export interface InteractionsOptions {
  /** The request-state key every instance shares (approvals' key; this module derives its own from it). */
  stateKey: () => Promise<Uint8Array>
  instanceId?: string
  /** How long a held upstream call waits for the client's answer before it is cancelled. */
  holdMs?: number
  maxPerPrincipal?: number
  log: { warn: (data: Record<string, unknown>, message: string) => void }
  now?: () => number
}

type Work = (channel: DownstreamChannel) => Promise<ToolCallResult | InputRequiredAnswer>

interface Asked {
  method: string
  params: Record<string, unknown> | undefined
  resolve: (result: Record<string, unknown>) => void
  reject: (error: Error) => void
}

interface Held {
  id: string
  binding: { principal: string, namespace: string, tool: string, argumentsDigest: string }
  controller: AbortController
  /** Requests of the upstream not yet put to the client, and those put to it in the current round. */
  asked: Map<string, Asked>
  sent: Map<string, Asked>
  round: string | undefined
  done: Promise<ToolCallResult | InputRequiredAnswer>
  /** The client request of the current round, while one is open. */
  current: DownstreamChannel | undefined
  wake: (() => void) | undefined
  timer: NodeJS.Timeout | undefined
}

export interface Interactions {
  /** Whether a request state is one of this module's (else it is an approval's, or foreign). */
  owns: (requestState: string | undefined) => boolean
  /** Runs a call for a 2026-07-28 client: its result, or input-required once the upstream asks the client something. */
  start: (binding: InteractionBinding, channel: DownstreamChannel, work: Work) => Promise<ToolCallResult | InputRequiredAnswer>
  /** A retry carrying one of this module's states: the answers go to the held call, which goes on. */
  resume: (binding: InteractionBinding, channel: DownstreamChannel) => Promise<ToolCallResult | InputRequiredAnswer>
  /** Cancels every held call waiting for a client (shutdown). */
  close: () => void
  /** Held calls right now. */
  readonly size: number
}

function bad (tool: string, why: string): ToolCallResult {
  return toolError('REQ_1101', `The answer for ${tool} was refused: ${why}. Nothing was delivered; call the tool again without requestState.`)
}

export function createInteractions (options: InteractionsOptions): Interactions {
  const instanceId = options.instanceId ?? randomBytes(9).toString('base64url')
  const holdMs = options.holdMs ?? DEFAULT_HOLD_MS
  const maxPerPrincipal = options.maxPerPrincipal ?? DEFAULT_MAX_PER_PRINCIPAL
  const now = options.now ?? Date.now
  const held = new Map<string, Held>()
  let codec: Promise<RequestStateCodec<StatePayload>> | undefined

  function codecOf (): Promise<RequestStateCodec<StatePayload>> {
    codec ??= (async () => {
      // Its own key: an approval state never verifies as an interaction state, nor the reverse.
      const key = createHmac('sha256', await options.stateKey()).update('gateway interactions v1').digest()
      return createRequestStateCodec<StatePayload>({ key, ttlSeconds: Math.ceil(holdMs / 1000) })
    })()
    codec.catch(() => { codec = undefined })
    return codec
  }

  function heldBy (principal: string): number {
    let count = 0
    for (const entry of held.values()) if (entry.binding.principal === principal) count++
    return count
  }

  function drop (entry: Held): void {
    clearTimeout(entry.timer)
    held.delete(entry.id)
    for (const asked of [...entry.asked.values(), ...entry.sent.values()]) asked.reject(new Error('the call ended before the client answered'))
    entry.asked.clear()
    entry.sent.clear()
  }

  /** Runs the held call until it ends or asks the client something; answers the open round accordingly. */
  async function nextStop (entry: Held, channel: DownstreamChannel): Promise<ToolCallResult | InputRequiredAnswer> {
    entry.current = channel
    const onAbort = (): void => entry.controller.abort(channel.signal.reason)
    channel.signal.addEventListener('abort', onAbort, { once: true })
    try {
      const stop = await new Promise<{ kind: 'done', result: ToolCallResult | InputRequiredAnswer } | { kind: 'asked' } | { kind: 'failed', error: unknown }>((resolve) => {
        entry.done.then((result) => resolve({ kind: 'done', result }), (error: unknown) => resolve({ kind: 'failed', error }))
        const asked = (): void => { setImmediate(() => resolve({ kind: 'asked' })) } // siblings asked at once go in one round
        if (entry.asked.size > 0) asked()
        else entry.wake = asked
      })
      entry.wake = undefined
      if (stop.kind !== 'asked') {
        drop(entry)
        if (stop.kind === 'failed') throw stop.error
        return stop.result
      }
      const round = randomBytes(12).toString('base64url')
      const inputRequests: Record<string, { method: string, params: Record<string, unknown> }> = {}
      for (const [key, asked] of entry.asked) {
        inputRequests[key] = { method: asked.method, params: asked.params ?? {} }
        entry.sent.set(key, asked)
      }
      entry.asked.clear()
      entry.round = round
      const state = await (await codecOf()).mint({
        i: instanceId,
        c: entry.id,
        r: round,
        p: entry.binding.principal,
        ns: entry.binding.namespace,
        t: entry.binding.tool,
        d: entry.binding.argumentsDigest,
        exp: Math.ceil((now() + holdMs) / 1000)
      }, undefined as unknown as ServerContext)
      clearTimeout(entry.timer)
      entry.timer = setTimeout(() => {
        options.log.warn({ tool: entry.binding.tool, principal: entry.binding.principal }, 'gateway: a held upstream call got no answer in time; cancelled')
        entry.controller.abort(new Error('the client did not answer in time'))
        drop(entry)
      }, holdMs)
      entry.timer.unref()
      return inputRequired({ inputRequests: inputRequests as never, requestState: STATE_PREFIX + state }) as InputRequiredAnswer
    } finally {
      channel.signal.removeEventListener('abort', onAbort)
      entry.current = undefined
    }
  }

  function workChannel (entry: Held, first: DownstreamChannel): DownstreamChannel {
    let keys = 0
    const supports = { 'elicitation/create': first.elicitationSupported === true, 'sampling/createMessage': first.samplingSupported === true }
    return {
      protocol: '2026-07-28',
      signal: entry.controller.signal,
      ...(first.progressToken !== undefined && { progressToken: first.progressToken }),
      // Progress and logging reach the client while one of its requests is open; between rounds they are dropped.
      notify: (method, params) => {
        const current = entry.current
        if (current?.notify === undefined) return
        if (method === 'notifications/progress') {
          if (current.progressToken === undefined) return
          current.notify(method, { ...params, progressToken: current.progressToken })
        } else current.notify(method, params)
      },
      request: async (method, params) => {
        if (supports[method as keyof typeof supports] !== true) throw new Error(`this client did not declare ${method}`)
        if (!held.has(entry.id)) {
          if (heldBy(entry.binding.principal) >= maxPerPrincipal) throw new Error('too many calls of this client wait for its answers')
          held.set(entry.id, entry)
        }
        return await new Promise<Record<string, unknown>>((resolve, reject) => {
          entry.asked.set(`upstream_${++keys}`, { method, params, resolve, reject })
          entry.wake?.()
        })
      },
      ...(first.inputResponses !== undefined && { inputResponses: first.inputResponses }),
      ...(first.requestState !== undefined && { requestState: first.requestState }),
      ...(first.elicitationSupported !== undefined && { elicitationSupported: first.elicitationSupported })
    }
  }

  return {
    owns: (requestState) => typeof requestState === 'string' && requestState.startsWith(STATE_PREFIX),

    async start (binding, channel, work) {
      const entry: Held = {
        id: randomBytes(12).toString('base64url'),
        binding: { principal: binding.principal.id, namespace: binding.principal.namespace, tool: binding.tool, argumentsDigest: binding.argumentsDigest },
        controller: new AbortController(),
        asked: new Map(),
        sent: new Map(),
        round: undefined,
        done: Promise.resolve(undefined as never),
        current: undefined,
        wake: undefined,
        timer: undefined
      }
      entry.done = work(workChannel(entry, channel))
      entry.done.catch(() => {})
      return await nextStop(entry, channel)
    },

    async resume (binding, channel) {
      const raw = channel.requestState ?? ''
      const tool = binding.tool
      if (raw.length > MAX_STATE_CHARS) return bad(tool, 'its requestState is not one this server issued')
      let payload: StatePayload
      try {
        payload = await (await codecOf()).verify(raw.slice(STATE_PREFIX.length), undefined as unknown as ServerContext)
      } catch (error) {
        const reason = (error as Error).message
        options.log.warn({ tool, principal: binding.principal.id, reason }, 'gateway: an interaction answer was refused')
        return bad(tool, reason === 'mac' ? 'its requestState does not carry this server\'s signature' : reason === 'expired' ? 'its requestState has expired' : 'its requestState is not one this server issued')
      }
      if (typeof payload !== 'object' || payload === null || typeof payload.c !== 'string' || typeof payload.r !== 'string') return bad(tool, 'its requestState is not one this server issued')
      if (payload.exp * 1000 <= now()) return bad(tool, 'its requestState has expired')
      if (payload.p !== binding.principal.id || payload.ns !== binding.principal.namespace || payload.t !== tool || payload.d !== binding.argumentsDigest) {
        return bad(tool, 'its requestState was issued for another call (caller, tool or arguments differ)')
      }
      if (payload.i !== instanceId) {
        return toolError(LOST, `${tool}: the upstream call waiting for this answer is held by another instance of this server, which this request did not reach; ` +
          'nothing was delivered. Call the tool again without requestState (the upstream will ask again).', { reason: 'other_instance' })
      }
      const entry = held.get(payload.c)
      if (entry === undefined) {
        return toolError(LOST, `${tool}: the upstream call waiting for this answer has ended (answered before, cancelled, or not answered in time); ` +
          'nothing was delivered. Call the tool again without requestState.', { reason: 'gone' })
      }
      if (entry.round !== payload.r || entry.current !== undefined) return bad(tool, 'its requestState was answered before (each round is answered once)')
      entry.round = undefined
      clearTimeout(entry.timer)
      const responses = channel.inputResponses ?? {}
      for (const [key, asked] of entry.sent) {
        const answer = responses[key]
        // An unanswered request is put to the client again in the next round.
        if (typeof answer === 'object' && answer !== null && !Array.isArray(answer)) asked.resolve(answer as Record<string, unknown>)
        else entry.asked.set(key, asked)
      }
      entry.sent.clear()
      return await nextStop(entry, channel)
    },

    close () {
      for (const entry of [...held.values()]) {
        if (entry.current !== undefined) continue
        entry.controller.abort(new Error('the server is shutting down'))
        drop(entry)
      }
    },

    get size () {
      return held.size
    }
  }
}
