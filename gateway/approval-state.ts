import { randomBytes } from 'node:crypto'
import { createRequestStateCodec, type RequestStateCodec, type ServerContext } from '@modelcontextprotocol/server'

// The request state of a 2026-07-28 input-required approval question. It travels through the
// client, so it is signed (HMAC-SHA256, the SDK's codec, with a key every instance reads from the
// database) and bound to the call it asks about: who asked, which upstream tool, the digest of the
// exact arguments, and an expiry. Its id lets the store accept each state once (replay refused).

/** What a signed state says: short field names, since it rides every retry. */
interface StatePayload {
  /** State id: recorded as used when the answer is accepted. */
  sid: string
  /** The principal's id and home namespace. */
  p: string
  ns: string
  u: string
  t: string
  /** SHA-256 hex of the canonical arguments. */
  d: string
  /** Expiry, Unix seconds (the codec checks its own copy; this one dates the used-state record). */
  exp: number
}

export interface StateBinding {
  principal: string
  namespace: string
  upstream: string
  tool: string
  argumentsDigest: string
}

export type VerifiedState = { ok: true, stateId: string, expiresAt: Date } | { ok: false, reason: 'malformed' | 'signature' | 'expired' | 'mismatch' }

export interface ApprovalStateCodec {
  mint: (binding: StateBinding) => Promise<string>
  verify: (state: string, binding: StateBinding) => Promise<VerifiedState>
}

const MAX_STATE_CHARS = 4096

// The codec takes a ServerContext only for its optional `bind` callback, which is not used: the
// binding is part of the signed payload instead, so that a mismatch can be told from a forgery.
const NO_CONTEXT = undefined as unknown as ServerContext

export function createApprovalStateCodec (key: Uint8Array, ttlSeconds: number, now: () => number = Date.now): ApprovalStateCodec {
  const codec: RequestStateCodec<StatePayload> = createRequestStateCodec<StatePayload>({ key, ttlSeconds })
  return {
    async mint (binding) {
      const payload: StatePayload = {
        sid: randomBytes(16).toString('base64url'),
        p: binding.principal,
        ns: binding.namespace,
        u: binding.upstream,
        t: binding.tool,
        d: binding.argumentsDigest,
        exp: Math.floor(now() / 1000) + ttlSeconds
      }
      return await codec.mint(payload)
    },
    async verify (state, binding) {
      if (typeof state !== 'string' || state.length > MAX_STATE_CHARS) return { ok: false, reason: 'malformed' }
      let payload: StatePayload
      try {
        payload = await codec.verify(state, NO_CONTEXT)
      } catch (error) {
        const reason = (error as Error).message
        return { ok: false, reason: reason === 'mac' ? 'signature' : reason === 'expired' ? 'expired' : 'malformed' }
      }
      if (typeof payload !== 'object' || payload === null || typeof payload.sid !== 'string' || typeof payload.exp !== 'number') return { ok: false, reason: 'malformed' }
      if (payload.exp * 1000 <= now()) return { ok: false, reason: 'expired' }
      if (payload.p !== binding.principal || payload.ns !== binding.namespace || payload.u !== binding.upstream ||
          payload.t !== binding.tool || payload.d !== binding.argumentsDigest) return { ok: false, reason: 'mismatch' }
      return { ok: true, stateId: payload.sid, expiresAt: new Date(payload.exp * 1000) }
    }
  }
}
