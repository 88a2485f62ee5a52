import { randomBytes } from 'node:crypto'
import type { Principal } from '../schema/principal.js'
import type { SseStream } from './sse.js'

/** A 2025-era MCP session of this instance: what its GET stream delivers. */
export interface Session {
  readonly id: string
  principal: Principal
  /** The bearer token of the session's latest request, kept in memory only. */
  token: string
  /** The bearer token the open stream was opened with (re-checked while it is open); null without a stream. */
  streamToken: string | null
  /** Resource URIs subscribed to (resources/subscribe). */
  readonly subscriptions: Set<string>
  stream: SseStream | null
  /** Namespaces the open stream follows, and how to stop following each. */
  readonly following: Map<string, () => void>
  lastActive: number
}

export interface SessionLimits {
  maxTotal: number
  maxPerPrincipal: number
  idleMs: number
  /** The platform's name of this instance (Fly.io's FLY_MACHINE_ID), the prefix of its session ids; else a random one. */
  instanceId?: string
}

export type Sessions = ReturnType<typeof createSessions>

/**
 * The sessions of this instance, bounded: at most `maxTotal`, at most `maxPerPrincipal` for one
 * principal (a new one then replaces that principal's longest-idle session without a stream), and
 * a session without a stream is forgotten after `idleMs` (`sweep`). Ids carry a prefix of this
 * instance, so that an id from another instance can be told from one this instance forgot.
 */
export function createSessions (limits: SessionLimits) {
  const instancePrefix = limits.instanceId ?? randomBytes(6).toString('base64url')
  const sessions = new Map<string, Session>()
  const byPrincipal = new Map<string, Set<Session>>()

  function remove (session: Session): void {
    if (sessions.get(session.id) !== session) return
    sessions.delete(session.id)
    const own = byPrincipal.get(session.principal.id)
    own?.delete(session)
    if (own?.size === 0) byPrincipal.delete(session.principal.id)
  }

  function longestIdleWithoutStream (candidates: Iterable<Session>): Session | undefined {
    let found: Session | undefined
    for (const session of candidates) {
      if (session.stream === null && (found === undefined || session.lastActive < found.lastActive)) found = session
    }
    return found
  }

  return {
    /** A new session, or null when this instance holds as many as it may (the client is then served without one). */
    create (principal: Principal, token: string): Session | null {
      const own = byPrincipal.get(principal.id)
      if (own !== undefined && own.size >= limits.maxPerPrincipal) {
        const replaced = longestIdleWithoutStream(own)
        if (replaced === undefined) return null
        remove(replaced)
      }
      if (sessions.size >= limits.maxTotal) return null
      const session: Session = {
        id: `${instancePrefix}.${randomBytes(18).toString('base64url')}`,
        principal,
        token,
        streamToken: null,
        subscriptions: new Set(),
        stream: null,
        following: new Map(),
        lastActive: Date.now()
      }
      sessions.set(session.id, session)
      const set = byPrincipal.get(principal.id) ?? new Set()
      set.add(session)
      byPrincipal.set(principal.id, set)
      return session
    },
    get (id: string): Session | undefined {
      return sessions.get(id)
    },
    /** Whether an id was made by this instance (an unknown one of ours is a session that ended: 404). */
    isOurs (id: string): boolean {
      return id.startsWith(`${instancePrefix}.`)
    },
    /** The instance an id names (its prefix), if it has the shape of one of these ids. */
    instanceOf (id: string): string | null {
      return /^([A-Za-z0-9_-]{1,64})\.[A-Za-z0-9_-]{24}$/.exec(id)?.[1] ?? null
    },
    remove,
    /** Forgets the sessions idle for longer than idleMs without a stream. */
    sweep (now = Date.now()): void {
      for (const session of sessions.values()) {
        if (session.stream === null && now - session.lastActive > limits.idleMs) remove(session)
      }
    },
    all (): IterableIterator<Session> {
      return sessions.values()
    },
    get size (): number {
      return sessions.size
    },
    get principals (): number {
      return byPrincipal.size
    }
  }
}
