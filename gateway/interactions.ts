import { randomBytes } from 'node:crypto'
import { inputRequired } from '@modelcontextprotocol/server'
import type { Principal } from '../schema/principal.js'
import { isDatabaseUnavailable } from '../db/errors.js'
import { toolError, type ToolCallResult } from '../tools/registry.js'
import type { DownstreamChannel } from './call.js'
import { STATE_REFUSALS, createSignedStateCodec, type SignedStateCodec, type StatePayload as BoundStatePayload } from './approval-state.js'
import { isInputRequired, type InputRequiredAnswer } from './policy.js'

// 2026-07-28 clients cannot be sent requests mid-call. Two ways to ask them what an upstream asks
// during a federated call:
//
// Relayed (stateless): a 2026-07-28 upstream answers input-required itself. Its `inputRequests`
// go to the client as they are, and its own `requestState` rides inside ours, which is signed
// (HMAC, a key every instance reads from the database) and bound to the principal, the upstream,
// the tool, the digest of its arguments, the keys the upstream asked, and an expiry. The client's
// retry, on whichever instance it lands, verifies that state, records it as used in the database
// (each state is accepted once), and calls the same upstream tool again with the client's answers
// and the upstream's own requestState. Nothing is held between rounds. A retry refused before it
// reaches the upstream (rate limit, breaker, concurrency wait) un-uses its state, so the client
// can retry with it; while the database is down the retry is DEP_3001 and goes nowhere.
//
// Held (this instance): a 2025-line upstream sends elicitation or sampling requests during the
// call. The upstream call is held here, and the client gets an input-required result naming the
// upstream's requests, with a signed request state bound to the principal, the tool, the digest
// of its arguments, the held call, this instance and an expiry; each state is accepted once. The
// retry delivers the answers to the waiting upstream requests and the call goes on: its result, or
// a further input-required. A retry that lands on another instance cannot reach the held call: it
// answers MCP_2005 (call the tool again). A held call nobody answers is cancelled upstream after
// holdMs.

/** Held-call states start so, relayed ones with RELAY_PREFIX; approval states (gateway/approval-state.ts) with neither. */
const STATE_PREFIX = 'gwi1.'
const RELAY_PREFIX = 'gwr1.'
const MAX_STATE_CHARS = 4096
/** A relayed state carries the upstream's own: the longest of those we relay, and of what we accept back. */
const MAX_UPSTREAM_STATE_CHARS = 8192
const MAX_RELAY_STATE_CHARS = 16_384
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
}

/** A relayed round's state: an approval state's binding (principal, upstream, tool, arguments digest) and what the upstream needs back. */
interface RelayPayload extends BoundStatePayload {
  /** The keys of the upstream's inputRequests: only their answers go back to it. */
  k: string[]
  /** The upstream's own requestState, returned to it byte for byte. */
  s?: string
}

/** What a round is bound to: who called which tool with which arguments. */
export interface InteractionBinding {
  principal: Principal
  tool: string
  argumentsDigest: string
}

/** A relayed round is bound to the upstream as well. */
export interface RelayBinding extends InteractionBinding {
  upstream: string
}

/** What a relayed round's upstream call carries: the client's answers to the upstream's requests, and the upstream's own state. */
export interface UpstreamInput {
  inputResponses?: Record<string, unknown>
  requestState?: string
}

export interface InteractionsOptions {
  /** The request-state key every instance shares (approvals' key; this module derives its own from it). */
  stateKey: () => Promise<Uint8Array>
  instanceId?: string
  /** How long a held upstream call waits for the client's answer before it is cancelled. */
  holdMs?: number
  maxPerPrincipal?: number
  /** Records a relayed state as used; false if it was used before (a replay). Shared by every instance (the database). */
  useState: (namespace: string, stateId: string, expiresAt: Date) => Promise<boolean>
  /** Un-uses a relayed state whose retry never reached the upstream (refused before it: rate limit, breaker, concurrency wait). */
  releaseState: (namespace: string, stateId: string) => Promise<void>
  log: { warn: (data: Record<string, unknown>, message: string) => void }
  now?: () => number
}

/** An upstream's own input-required answer (2026-07-28), as the SDK client hands it back when asked to. */
interface UpstreamInputRequired {
  resultType: 'input_required'
  /** Absent or empty when the upstream sends a requestState alone (the call path checked it: inputRequiredFault). */
  inputRequests?: Record<string, unknown>
  requestState?: string
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
  /** Whether a request state is a relayed round's (gateway/interactions.ts, relay). */
  relays: (requestState: string | undefined) => boolean
  /**
   * A call of a 2026-07-28 upstream's tool for a 2026-07-28 client: `run` calls the upstream (with
   * the client's answers and the upstream's state, on a retry carrying a relayed state); an
   * input-required answer of the upstream goes back to the client under a signed state of ours.
   * `release`, on such a retry, un-uses its state: `run` calls it when the call never reached the
   * upstream, so that the client can retry with the same state once the refusal clears.
   */
  relay: (binding: RelayBinding, channel: DownstreamChannel, run: (input: UpstreamInput, release: (() => Promise<void>) | undefined) => Promise<ToolCallResult | InputRequiredAnswer>) => Promise<ToolCallResult | InputRequiredAnswer>
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
  let codecs: Promise<{ held: SignedStateCodec<StatePayload>, relayed: SignedStateCodec<RelayPayload> }> | undefined

  /** The two codecs, each with its own label: an approval, held or relayed state never verifies as another kind. */
  function codecsOf (): Promise<{ held: SignedStateCodec<StatePayload>, relayed: SignedStateCodec<RelayPayload> }> {
    codecs ??= (async () => {
      const key = await options.stateKey()
      return { held: createSignedStateCodec<StatePayload>(key, 'gateway interactions v1', now), relayed: createSignedStateCodec<RelayPayload>(key, 'gateway relayed input v1', now) }
    })()
    codecs.catch(() => { codecs = undefined })
    return codecs
  }

  const expiry = (): number => Math.ceil((now() + holdMs) / 1000)

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
      const state = (await codecsOf()).held.mint({
        i: instanceId,
        c: entry.id,
        r: round,
        p: entry.binding.principal,
        ns: entry.binding.namespace,
        t: entry.binding.tool,
        d: entry.binding.argumentsDigest
      }, expiry())
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

  /** The client's retry of a relayed round: what goes back to the upstream, or the refusal. */
  async function relayedInput (binding: RelayBinding, raw: string, responses: Record<string, unknown> | undefined): Promise<{ input: UpstreamInput, release: () => Promise<void> } | { refused: ToolCallResult }> {
    const tool = binding.tool
    const refuse = (why: string): { refused: ToolCallResult } => ({ refused: bad(tool, why) })
    if (raw.length > MAX_RELAY_STATE_CHARS) return refuse(STATE_REFUSALS.malformed)
    const verified = (await codecsOf()).relayed.verify(raw.slice(RELAY_PREFIX.length))
    if (!verified.ok) {
      options.log.warn({ tool, principal: binding.principal.id, reason: verified.reason }, 'gateway: a relayed answer was refused')
      return refuse(STATE_REFUSALS[verified.reason])
    }
    const payload = verified.payload
    if (typeof payload.sid !== 'string' || !Array.isArray(payload.k) || (payload.s !== undefined && typeof payload.s !== 'string')) return refuse(STATE_REFUSALS.malformed)
    if (payload.p !== binding.principal.id || payload.ns !== binding.principal.namespace || payload.u !== binding.upstream || payload.t !== tool || payload.d !== binding.argumentsDigest) {
      options.log.warn({ tool, principal: binding.principal.id, reason: 'mismatch' }, 'gateway: a relayed answer was refused')
      return refuse('its requestState was issued for another call (caller, tool or arguments differ)')
    }
    // Accepted once, whichever instance it reaches: a replay is refused before the upstream sees it.
    const stateId = `relay:${payload.sid}`
    if (!await options.useState(binding.principal.namespace, stateId, new Date(verified.exp * 1000))) {
      options.log.warn({ tool, principal: binding.principal.id, reason: 'replayed' }, 'gateway: a relayed answer was refused')
      return refuse('its requestState was answered before (each round is answered once)')
    }
    const inputResponses: Record<string, unknown> = {}
    for (const key of payload.k) if (typeof key === 'string' && responses !== undefined && Object.hasOwn(responses, key)) inputResponses[key] = responses[key]
    const release = async (): Promise<void> => {
      try {
        await options.releaseState(binding.principal.namespace, stateId)
      } catch (error) {
        options.log.warn({ err: error, tool, principal: binding.principal.id }, 'gateway: a relayed state whose retry never reached the upstream could not be released; a new retry with it is refused as answered before')
      }
    }
    return { input: { inputResponses, ...(payload.s !== undefined && { requestState: payload.s }) }, release }
  }

  /** The upstream's input-required, as ours: its requests as they are, its state inside our signed one. */
  async function relayedQuestion (binding: RelayBinding, channel: DownstreamChannel, asked: UpstreamInputRequired): Promise<ToolCallResult | InputRequiredAnswer> {
    const tool = binding.tool
    const requests = asked.inputRequests ?? {}
    const supports: Record<string, boolean | undefined> = { 'elicitation/create': channel.elicitationSupported, 'sampling/createMessage': channel.samplingSupported }
    for (const request of Object.values(requests)) {
      const method = (request as { method?: unknown } | null)?.method
      if (typeof method !== 'string' || supports[method] !== true) {
        return upstreamRefused(binding, `a request this client did not declare it can answer (${typeof method === 'string' ? method.slice(0, 64) : 'no method'})`)
      }
    }
    if (asked.requestState !== undefined && (typeof asked.requestState !== 'string' || asked.requestState.length > MAX_UPSTREAM_STATE_CHARS)) {
      return upstreamRefused(binding, `a requestState longer than ${MAX_UPSTREAM_STATE_CHARS} characters`)
    }
    const { relayed } = await codecsOf()
    return inputRequired({
      inputRequests: requests as never,
      requestState: RELAY_PREFIX + relayed.mint({
        sid: randomBytes(16).toString('base64url'),
        p: binding.principal.id,
        ns: binding.principal.namespace,
        u: binding.upstream,
        t: tool,
        d: binding.argumentsDigest,
        k: Object.keys(requests),
        ...(asked.requestState !== undefined && { s: asked.requestState })
      }, expiry())
    }) as InputRequiredAnswer
  }

  function upstreamRefused (binding: RelayBinding, what: string): ToolCallResult {
    options.log.warn({ tool: binding.tool, upstream: binding.upstream }, 'gateway: an upstream\'s input-required answer was not relayed')
    return toolError('MCP_2002', `${binding.tool}: the upstream server "${binding.upstream}" answered with ${what}; it was not passed on. Try again later.`, { upstream: binding.upstream, reason: 'input_required_refused' })
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

    relays: (requestState) => typeof requestState === 'string' && requestState.startsWith(RELAY_PREFIX),

    async relay (binding, channel, run) {
      let input: UpstreamInput = {}
      let release: (() => Promise<void>) | undefined
      if (typeof channel.requestState === 'string' && channel.requestState.startsWith(RELAY_PREFIX)) {
        let accepted: Awaited<ReturnType<typeof relayedInput>>
        try {
          accepted = await relayedInput(binding, channel.requestState, channel.inputResponses)
        } catch (error) {
          // Whether the state was answered before is the database's to say: without it, nothing goes upstream.
          if (!isDatabaseUnavailable(error)) throw error
          options.log.warn({ err: error, tool: binding.tool, principal: binding.principal.id }, 'gateway: a relayed answer could not be checked (database unavailable)')
          return toolError('DEP_3001', `${binding.tool}: the database is unavailable right now, so this answer could not be checked; nothing reached the upstream. ` +
            'Retry in a few seconds with the same requestState (if it is then refused as answered before, call the tool again without it).')
        }
        if ('refused' in accepted) return accepted.refused
        input = accepted.input
        release = accepted.release
      }
      const result = await run(input, release)
      if (!isInputRequired(result)) return result
      return await relayedQuestion(binding, channel, result as unknown as UpstreamInputRequired)
    },

    async resume (binding, channel) {
      const raw = channel.requestState ?? ''
      const tool = binding.tool
      if (raw.length > MAX_STATE_CHARS) return bad(tool, 'its requestState is not one this server issued')
      const verified = (await codecsOf()).held.verify(raw.slice(STATE_PREFIX.length))
      if (!verified.ok) {
        options.log.warn({ tool, principal: binding.principal.id, reason: verified.reason }, 'gateway: an interaction answer was refused')
        return bad(tool, STATE_REFUSALS[verified.reason])
      }
      const payload = verified.payload
      if (typeof payload.c !== 'string' || typeof payload.r !== 'string') return bad(tool, STATE_REFUSALS.malformed)
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
