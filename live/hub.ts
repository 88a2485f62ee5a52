import type postgres from 'postgres'
import { changesSince, decodePosition, encodePosition, feedHead, type FeedChange, type FeedPosition } from '../db/change-feed.js'
import type { ChangeNotice } from '../db/context-store.js'

/** A page of one namespace's changes, in feed order; `eventId` is the feed position after its last change. */
export interface ChangeBatch {
  namespace: string
  changes: FeedChange[]
  eventId: string
}

export type BatchSink = (batch: ChangeBatch) => void

const PAGE = 500
// Rows the horizon holds back (the feed serves a change only once every transaction that began
// before it has ended) are looked for again after HELD_BACK_FIRST_RETRY_MS, then at twice the
// interval each time, up to HELD_BACK_MAX_RETRY_MS, until served.
const HELD_BACK_FIRST_RETRY_MS = 200
const HELD_BACK_MAX_RETRY_MS = 1000
const FAILED_READ_RETRY_MS = 1000
/** Feed reads of different namespaces at once: a catch-up of thousands of namespaces must not queue the tool calls behind it on the pool. */
const MAX_CONCURRENT_READS = 2
/** A Last-Event-ID replay reads at most this many pages (of PAGE changes); a client further behind is told to read everything again. */
export const MAX_REPLAY_PAGES = 20

interface NamespaceFeed {
  namespace: string
  sinks: Set<BatchSink>
  position: FeedPosition
  ready: Promise<void>
  started: boolean
  reading: boolean
  /** Waiting for a read slot (MAX_CONCURRENT_READS). */
  queued: boolean
  again: boolean
  heldBackRetryMs: number
  timer: NodeJS.Timeout | undefined
}

/** How a Last-Event-ID replay ended. */
export type ReplayEnd =
  | { status: 'complete', position: FeedPosition }
  /** The stream closed or was replaced meanwhile. */
  | { status: 'abandoned' }
  /** The client is more than MAX_REPLAY_PAGES pages behind: it must read everything again. */
  | { status: 'too_far_behind', position: FeedPosition }

/** A feed position as an SSE event id: the same opaque cursor changes_since hands out. */
export function eventIdOf (position: FeedPosition): string {
  return encodePosition(position)
}

/** The feed position a Last-Event-ID names, or undefined when it is not one of ours. */
export function positionOfEventId (eventId: string): FeedPosition | undefined {
  if (eventId.length > 200) return undefined
  try {
    return decodePosition(eventId)
  } catch {
    return undefined
  }
}

export interface HubOptions {
  onError: (error: unknown, namespace: string) => void
  /** Changes per feed read (tests make it small). */
  pageSize?: number
  /** Pages a Last-Event-ID replay reads at most. */
  maxReplayPages?: number
}

export type Hub = ReturnType<typeof createHub>

/**
 * The instance's fan-out of committed changes to its open streams. The history is the source: a
 * NOTIFY only says "read namespace N again"; each namespace with a subscriber keeps the feed
 * position it has delivered up to, so that a change reaches each stream once, in commit order,
 * and whatever committed while LISTEN was down is read at the next `catchUp`.
 */
export function createHub (sql: postgres.Sql, options: HubOptions) {
  const { pageSize = PAGE, maxReplayPages = MAX_REPLAY_PAGES } = options
  const feeds = new Map<string, NamespaceFeed>()

  /**
   * Adds a sink for a namespace's changes. The sink is in place at once; it gets every change after
   * the feed's position, which is settled when this resolves (rejects if the feed cannot be read):
   * a change that commits after that is delivered.
   */
  async function join (namespace: string, sink: BatchSink): Promise<() => void> {
    let feed = feeds.get(namespace)
    if (feed === undefined) {
      const created: NamespaceFeed = { namespace, sinks: new Set(), position: { txid: '0', id: 0 }, ready: Promise.resolve(), started: false, reading: false, queued: false, again: false, heldBackRetryMs: HELD_BACK_FIRST_RETRY_MS, timer: undefined }
      created.ready = feedHead(sql).then((head) => {
        created.position = head
        created.started = true
        if (created.again) read(created)
      })
      feeds.set(namespace, created)
      feed = created
    }
    feed.sinks.add(sink)
    const joined = feed
    const leave = (): void => {
      joined.sinks.delete(sink)
      if (joined.sinks.size === 0 && feeds.get(namespace) === joined) {
        feeds.delete(namespace)
        if (joined.timer !== undefined) clearTimeout(joined.timer)
        joined.timer = undefined
      }
    }
    try {
      await joined.ready
    } catch (error) {
      leave()
      throw error
    }
    return leave
  }

  const waiting: NamespaceFeed[] = []
  let readsRunning = 0

  function read (feed: NamespaceFeed): void {
    if (!feed.started || feed.reading || feed.queued) {
      feed.again = true
      return
    }
    if (readsRunning >= MAX_CONCURRENT_READS) {
      feed.queued = true
      waiting.push(feed)
      return
    }
    feed.reading = true
    feed.again = false
    readsRunning++
    readPages().catch((error: unknown) => options.onError(error, feed.namespace)).finally(() => {
      readsRunning--
      const next = waiting.shift()
      if (next !== undefined) {
        next.queued = false
        if (feeds.get(next.namespace) === next) read(next)
      }
    })

    async function readPages (): Promise<void> {
      let heldBack = false
      try {
        for (;;) {
          const page = await changesSince(sql, { namespace: feed.namespace, after: feed.position, limit: pageSize })
          if (feeds.get(feed.namespace) !== feed) return
          feed.position = page.position
          if (page.changes.length > 0) {
            const batch = { namespace: feed.namespace, changes: page.changes, eventId: eventIdOf(page.position) }
            for (const sink of feed.sinks) sink(batch)
          }
          heldBack = page.heldBack
          if (!page.more && !feed.again) break
          feed.again = false
        }
        feed.reading = false
        // Rows the horizon holds back (a transaction still running somewhere on the server) are
        // read again until served, whether or not another notification comes: their NOTIFY may
        // have come before they could be served, or reached no feed (no stream followed the
        // namespace then).
        if (heldBack) {
          retryLater(feed, feed.heldBackRetryMs)
          feed.heldBackRetryMs = Math.min(HELD_BACK_MAX_RETRY_MS, feed.heldBackRetryMs * 2)
        } else {
          feed.heldBackRetryMs = HELD_BACK_FIRST_RETRY_MS
        }
      } catch (error) {
        feed.reading = false
        options.onError(error, feed.namespace)
        retryLater(feed, FAILED_READ_RETRY_MS)
      }
    }
  }

  function retryLater (feed: NamespaceFeed, ms: number): void {
    if (feed.timer !== undefined || feeds.get(feed.namespace) !== feed) return
    feed.timer = setTimeout(() => {
      feed.timer = undefined
      read(feed)
    }, ms)
  }

  return {
    join,
    /** A change committed somewhere (NOTIFY): read its namespace's feed, if anyone here follows it. */
    changed (notice: ChangeNotice): void {
      const feed = feeds.get(notice.namespace)
      if (feed !== undefined) read(feed)
    },
    /** After LISTEN was (re-)established: read every followed namespace from where it stood. */
    catchUp (): void {
      for (const feed of feeds.values()) read(feed)
    },
    /**
     * A namespace's changes after `after`, page by page, for a stream resuming from its
     * Last-Event-ID, while `isCurrent()` holds, for at most `maxReplayPages` pages.
     */
    async replay (namespace: string, after: FeedPosition, sink: BatchSink, isCurrent: () => boolean): Promise<ReplayEnd> {
      let position = after
      for (let pages = 0; ; pages++) {
        if (!isCurrent()) return { status: 'abandoned' }
        if (pages === maxReplayPages) return { status: 'too_far_behind', position }
        const page = await changesSince(sql, { namespace, after: position, limit: pageSize })
        if (!isCurrent()) return { status: 'abandoned' }
        position = page.position
        if (page.changes.length > 0) sink({ namespace, changes: page.changes, eventId: eventIdOf(position) })
        if (!page.more) {
          // What the horizon still holds back is the live feed's to serve (the stream joined it first).
          const feed = feeds.get(namespace)
          if (page.heldBack && feed !== undefined) retryLater(feed, HELD_BACK_FIRST_RETRY_MS)
          return { status: 'complete', position }
        }
      }
    },
    /** The position a followed namespace's feed has delivered up to (undefined if nobody here follows it). */
    positionOf (namespace: string): FeedPosition | undefined {
      return feeds.get(namespace)?.position
    },
    /** For tests and metrics: namespaces followed, sinks, pending timers. */
    counts (): { namespaces: number, sinks: number, timers: number } {
      let sinks = 0
      let timers = 0
      for (const feed of feeds.values()) {
        sinks += feed.sinks.size
        if (feed.timer !== undefined) timers++
      }
      return { namespaces: feeds.size, sinks, timers }
    },
    close (): void {
      for (const feed of feeds.values()) if (feed.timer !== undefined) clearTimeout(feed.timer)
      feeds.clear()
      waiting.length = 0
    }
  }
}
