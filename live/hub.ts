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
// A notified change the feed does not serve yet (it serves a change only once every transaction
// that began before it has ended) is looked for again after this long, for at most UNSEEN_FOR_MS.
const UNSEEN_RETRY_MS = 200
const HELD_BACK_RETRY_MS = 1000
const UNSEEN_FOR_MS = 60_000
const MAX_UNSEEN = 1000
const FAILED_READ_RETRY_MS = 1000

interface NamespaceFeed {
  namespace: string
  sinks: Set<BatchSink>
  position: FeedPosition
  ready: Promise<void>
  started: boolean
  reading: boolean
  again: boolean
  /** Notified changes (key@version) not served yet, and until when to keep looking for them. */
  unseen: Set<string>
  unseenUntil: number
  timer: NodeJS.Timeout | undefined
}

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
}

export type Hub = ReturnType<typeof createHub>

/**
 * The instance's fan-out of committed changes to its open streams. The history is the source: a
 * NOTIFY only says "read namespace N again"; each namespace with a subscriber keeps the feed
 * position it has delivered up to, so that a change reaches each stream once, in commit order,
 * and whatever committed while LISTEN was down is read at the next `catchUp`.
 */
export function createHub (sql: postgres.Sql, options: HubOptions) {
  const feeds = new Map<string, NamespaceFeed>()

  /** Adds a sink for a namespace's changes from now on; resolves when it is in place (rejects if the feed cannot be read). */
  async function join (namespace: string, sink: BatchSink): Promise<() => void> {
    let feed = feeds.get(namespace)
    if (feed === undefined) {
      const created: NamespaceFeed = { namespace, sinks: new Set(), position: { txid: '0', id: 0 }, ready: Promise.resolve(), started: false, reading: false, again: false, unseen: new Set(), unseenUntil: 0, timer: undefined }
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

  function read (feed: NamespaceFeed): void {
    if (!feed.started || feed.reading) {
      feed.again = true
      return
    }
    feed.reading = true
    feed.again = false
    readPages().catch((error: unknown) => options.onError(error, feed.namespace))

    async function readPages (): Promise<void> {
      let heldBack = false
      try {
        for (;;) {
          const page = await changesSince(sql, { namespace: feed.namespace, after: feed.position, limit: PAGE })
          if (feeds.get(feed.namespace) !== feed) return
          feed.position = page.position
          if (page.changes.length > 0) {
            for (const change of page.changes) feed.unseen.delete(`${change.key}@${change.version}`)
            const batch = { namespace: feed.namespace, changes: page.changes, eventId: eventIdOf(page.position) }
            for (const sink of feed.sinks) sink(batch)
          }
          heldBack = page.heldBack
          if (!page.more && !feed.again) break
          feed.again = false
        }
        feed.reading = false
        const awaitingNotified = feed.unseen.size > 0 && Date.now() < feed.unseenUntil
        if (!awaitingNotified) feed.unseen.clear()
        // Rows the horizon holds back (a transaction still running somewhere on the server) are
        // read again until served, whether or not another notification comes: one whose NOTIFY
        // reached no feed (no stream followed the namespace then) would otherwise wait for the next.
        if (awaitingNotified) retryLater(feed, UNSEEN_RETRY_MS)
        else if (heldBack) retryLater(feed, HELD_BACK_RETRY_MS)
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
      if (feed === undefined) return
      if (feed.unseen.size < MAX_UNSEEN) feed.unseen.add(`${notice.key}@${notice.version}`)
      feed.unseenUntil = Date.now() + UNSEEN_FOR_MS
      read(feed)
    },
    /** After LISTEN was (re-)established: read every followed namespace from where it stood. */
    catchUp (): void {
      for (const feed of feeds.values()) read(feed)
    },
    /** A namespace's changes after `after`, page by page, for a stream resuming from its Last-Event-ID. */
    async replay (namespace: string, after: FeedPosition, sink: BatchSink): Promise<void> {
      let position = after
      for (;;) {
        const page = await changesSince(sql, { namespace, after: position, limit: PAGE })
        position = page.position
        if (page.changes.length > 0) sink({ namespace, changes: page.changes, eventId: eventIdOf(position) })
        if (!page.more) {
          // What the horizon still holds back is the live feed's to serve (the stream joined it first).
          const feed = feeds.get(namespace)
          if (page.heldBack && feed !== undefined) retryLater(feed, HELD_BACK_RETRY_MS)
          return
        }
      }
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
    }
  }
}
