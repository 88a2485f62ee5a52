import type postgres from 'postgres'
import { CHANGE_CHANNEL, type ChangeNotice } from './context-store.js'
import type { OpenDatabase } from './open.js'

export interface ChangeListenerHandlers {
  /** A change committed on any instance (a malformed payload is dropped). */
  onChange: (notice: ChangeNotice) => void
  /**
   * LISTEN is in place: first at start, then after every reconnect (`reconnected` true). Whatever
   * committed while it was not is in the history: the caller catches up from there.
   */
  onListening: (reconnected: boolean) => void
  /** The listening connection was lost; reconnecting with backoff. */
  onLost: (error: unknown) => void
  /**
   * While listening, a `select 1` is sent this often: an idle LISTEN connection owes no answer, so
   * without it a dead network path would go unnoticed until TCP gives up (the stall guard cuts a
   * connection whose answer does not come).
   */
  probeMs?: number
}

export interface ChangeListener {
  readonly listening: boolean
  /** Times LISTEN was re-established after its connection dropped. */
  readonly reconnects: number
  /** The listening connection's backend process id (tests terminate it); null while not listening. */
  backendPid: () => Promise<number | null>
  close: () => Promise<void>
}

const MIN_RETRY_MS = 100
const MAX_RETRY_MS = 5000

/**
 * The one listening connection of an instance: LISTEN on CHANGE_CHANNEL over a connection of its
 * own (opened by `connect`, the same database as the pool), re-established with backoff whenever
 * it drops — postgres.js's own sql.listen gives up silently when its first re-listen fails.
 * Resolves once LISTEN is in place (or keeps retrying in the background if the database is down).
 */
export function startChangeListener (connect: OpenDatabase['connectListener'], handlers: ChangeListenerHandlers): ChangeListener {
  let listening = false
  let closed = false
  let attempting = false
  let everListened = false
  let reconnects = 0
  let retryMs = MIN_RETRY_MS
  let retryTimer: NodeJS.Timeout | undefined
  const probe = handlers.probeMs === undefined
    ? undefined
    : setInterval(() => {
      if (listening) sql`select 1`.catch(() => {}) // a probe left unanswered ends the connection: onclose reconnects
    }, handlers.probeMs)
  probe?.unref()

  const sql: postgres.Sql = connect({
    onnotify: (channel, payload) => {
      if (channel !== CHANGE_CHANNEL) return
      const notice = parseNotice(payload)
      if (notice !== undefined) handlers.onChange(notice)
    },
    onclose: () => {
      if (!listening || closed) return
      listening = false
      handlers.onLost(new Error('the listening connection closed'))
      scheduleAttempt()
    }
  })

  function scheduleAttempt (): void {
    if (closed || attempting || retryTimer !== undefined) return
    retryTimer = setTimeout(() => {
      retryTimer = undefined
      attempt().catch(() => {}) // attempt handles its own failures
    }, retryMs)
    retryMs = Math.min(retryMs * 2, MAX_RETRY_MS)
  }

  async function attempt (): Promise<void> {
    if (closed || attempting) return
    attempting = true
    try {
      await sql`listen ${sql(CHANGE_CHANNEL)}`
      attempting = false
      if (closed) return
      listening = true
      retryMs = MIN_RETRY_MS
      const reconnected = everListened
      everListened = true
      if (reconnected) reconnects++
      handlers.onListening(reconnected)
    } catch (error) {
      attempting = false
      if (closed) return
      handlers.onLost(error)
      scheduleAttempt()
    }
  }

  attempt().catch(() => {})

  return {
    get listening () { return listening },
    get reconnects () { return reconnects },
    backendPid: async () => {
      if (!listening) return null
      const [row] = await sql<Array<{ pid: number }>>`select pg_backend_pid() as pid`
      return row?.pid ?? null
    },
    close: async () => {
      closed = true
      listening = false
      if (probe !== undefined) clearInterval(probe)
      if (retryTimer !== undefined) clearTimeout(retryTimer)
      retryTimer = undefined
      await sql.end({ timeout: 1 })
    }
  }
}

const ACTIONS = new Set(['create', 'update', 'append', 'delete', 'restore'])

/** The payload the writers' NOTIFY carries (context-store.ts `notified`), checked field by field. */
export function parseNotice (payload: string): ChangeNotice | undefined {
  let value: unknown
  try {
    value = JSON.parse(payload)
  } catch {
    return undefined
  }
  if (typeof value !== 'object' || value === null) return undefined
  const { namespace, key, version, action } = value as Record<string, unknown>
  if (typeof namespace !== 'string' || typeof key !== 'string' || typeof version !== 'number' || typeof action !== 'string' || !ACTIONS.has(action)) return undefined
  return { namespace, key, version, action: action as ChangeNotice['action'] }
}
