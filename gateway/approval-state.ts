import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'

// Request states of the gateway's 2026-07-28 input-required answers. They travel through the
// client, so each is signed (HMAC-SHA256, with a key every instance reads from the database, and a
// label per kind of state so that one kind never verifies as another) and carries its expiry.
//
// The approval question's state (createApprovalStateCodec) is bound to the call it asks about:
// who asked, which upstream tool, the digest of the exact arguments, and an expiry. Its id lets the
// store accept each state once (replay refused).

/** What verifying a signed state found. */
export type Verified<T> = { ok: true, payload: T, exp: number } | { ok: false, reason: 'malformed' | 'signature' | 'expired' }

/** Why a signed state was refused, as the refusal tells the client. */
export const STATE_REFUSALS: Record<'malformed' | 'signature' | 'expired', string> = {
  malformed: 'its requestState is not one this server issued',
  signature: 'its requestState does not carry this server\'s signature',
  expired: 'its requestState has expired'
}

/** Seals a JSON payload with an expiry into a wire string, and opens it again (no request context involved). */
export interface SignedStateCodec<T> {
  mint: (payload: T, expiresAtSeconds: number) => string
  verify: (state: string) => Verified<T>
}

/**
 * `base64url(JSON { p, exp }) "." base64url(HMAC)`, keyed by HMAC(key, label). The expiry is checked
 * with `now`; the payload's own fields are the caller's to check.
 */
export function createSignedStateCodec<T> (key: Uint8Array, label: string, now: () => number = Date.now): SignedStateCodec<T> {
  if (key.byteLength < 32) throw new RangeError('a request-state key must have at least 32 bytes')
  const derived = createHmac('sha256', key).update(`shared-context-mcp request state: ${label}`).digest()
  const mac = (body: string): Buffer => createHmac('sha256', derived).update(body).digest()
  return {
    mint (payload, expiresAtSeconds) {
      const body = Buffer.from(JSON.stringify({ p: payload, exp: expiresAtSeconds })).toString('base64url')
      return `${body}.${mac(body).toString('base64url')}`
    },
    verify (state) {
      const dot = state.lastIndexOf('.')
      if (dot <= 0) return { ok: false, reason: 'malformed' }
      const body = state.slice(0, dot)
      const given = Buffer.from(state.slice(dot + 1), 'base64url')
      const expected = mac(body)
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'signature' }
      let envelope: { p?: unknown, exp?: unknown }
      try {
        envelope = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as typeof envelope
      } catch {
        return { ok: false, reason: 'malformed' }
      }
      if (typeof envelope !== 'object' || envelope === null || typeof envelope.exp !== 'number' || typeof envelope.p !== 'object' || envelope.p === null) return { ok: false, reason: 'malformed' }
      if (envelope.exp * 1000 <= now()) return { ok: false, reason: 'expired' }
      return { ok: true, payload: envelope.p as T, exp: envelope.exp }
    }
  }
}

/** What a signed approval state says: short field names, since it rides every retry. */
export interface StatePayload {
  /** State id: recorded as used when the answer is accepted. */
  sid: string
  /** The principal's id and home namespace. */
  p: string
  ns: string
  u: string
  t: string
  /** SHA-256 hex of the canonical arguments. */
  d: string
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

/** Longest request state a client may echo back (what we mint is far shorter). */
export const MAX_STATE_CHARS = 4096

export function createApprovalStateCodec (key: Uint8Array, ttlSeconds: number, now: () => number = Date.now): ApprovalStateCodec {
  const codec = createSignedStateCodec<StatePayload>(key, 'approval question v1', now)
  return {
    async mint (binding) {
      const payload: StatePayload = {
        sid: randomBytes(16).toString('base64url'),
        p: binding.principal,
        ns: binding.namespace,
        u: binding.upstream,
        t: binding.tool,
        d: binding.argumentsDigest
      }
      return codec.mint(payload, Math.floor(now() / 1000) + ttlSeconds)
    },
    async verify (state, binding) {
      if (typeof state !== 'string' || state.length > MAX_STATE_CHARS) return { ok: false, reason: 'malformed' }
      const verified = codec.verify(state)
      if (!verified.ok) return verified
      const payload = verified.payload
      if (typeof payload.sid !== 'string') return { ok: false, reason: 'malformed' }
      if (payload.p !== binding.principal || payload.ns !== binding.namespace || payload.u !== binding.upstream ||
          payload.t !== binding.tool || payload.d !== binding.argumentsDigest) return { ok: false, reason: 'mismatch' }
      return { ok: true, stateId: payload.sid, expiresAt: new Date(verified.exp * 1000) }
    }
  }
}
