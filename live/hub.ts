import { Type } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import type postgres from 'postgres'
import { changesSince, feedHead, type FeedChange, type FeedPosition } from '../db/change-feed.js'
import type { ChangeNotice } from '../db/context-store.js'

/** A page of one namespace's changes, in feed order; `eventId` is the feed position after its last change. */
export interface ChangeBatch {
  namespace: string
  changes: FeedChange[]
  eventId: string
}

export type BatchSink = (batch: ChangeBatch) => void

const PAGE = 500
// A notification whose change a read did not yet see (the feed shows a change only once every
// transaction before it has ended) is looked for again after this long, this many times.
const UNSEEN_RETRY_MS = 200
const UNSEEN_RETRIES = 5
const FAILED_READ_RETRY_MS = 1000

interface NamespaceFeed {
  namespace: string
  sinks: Set<BatchSink>
  position: FeedPosition | null
  ready: Promise<void>
  started: boolean
  reading: boolean
  again: boolean
  unseen: number
  timer: NodeJS.Timeout | undefined
}

const EventIdSchema = Type.Object({ id: Type.Integer({ minimum: 0 }) }, { additionalProperties: false })

/** A feed position as an SSE event id (opaque to clients). */
export function eventIdOf (position: FeedPosition | null): string {
  return Buffer.from(JSON.stringify(position ?? { id: 0 })).toString('base64url')
}

/** The feed position a Last-Event-ID names, or undefined when it is not one of ours. */
export function positionOfEventId (eventId: string): FeedPosition | undefined {
  if (eventId.length > 200) return undefined
  try {
    const value: unknown = JSON.parse(Buffer.from(eventId, 'base64url').toString('utf8'))
    return Value.Check(EventIdSchema, value) ? value : undefined
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
      const created: NamespaceFeed = { namespace, sinks: new Set(), position: null, ready: Promise.resolve(), started: false, reading: false, again: false, unseen: 0, timer: undefined }
      created.ready = feedHead(sql, namespace).then((head) => {
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
      let delivered = 0
      try {
        for (;;) {
          const page = await changesSince(sql, { namespace: feed.namespace, after: feed.position, limit: PAGE })
          if (feeds.get(feed.namespace) !== feed) return
          feed.position = page.position
          if (page.changes.length > 0) {
            delivered += page.changes.length
            const batch = { namespace: feed.namespace, changes: page.changes, eventId: eventIdOf(page.position) }
            for (const sink of feed.sinks) sink(batch)
          }
          if (page.changes.length < PAGE && !feed.again) break
          feed.again = false
        }
        feed.reading = false
        if (delivered === 0 && feed.unseen > 0) retryLater(feed, UNSEEN_RETRY_MS)
        else feed.unseen = 0
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
      if (feed.unseen > 0) feed.unseen--
      read(feed)
    }, ms)
  }

  return {
    join,
    /** A change committed somewhere (NOTIFY): read its namespace's feed, if anyone here follows it. */
    changed (notice: ChangeNotice): void {
      const feed = feeds.get(notice.namespace)
      if (feed === undefined) return
      feed.unseen = UNSEEN_RETRIES
      read(feed)
    },
    /** After LISTEN was (re-)established: read every followed namespace from where it stood. */
    catchUp (): void {
      for (const feed of feeds.values()) read(feed)
    },
    /** A namespace's changes after `after`, page by page, for a stream resuming from its Last-Event-ID. */
    async replay (namespace: string, after: FeedPosition, sink: BatchSink): Promise<void> {
      let position: FeedPosition | null = after
      for (;;) {
        const page = await changesSince(sql, { namespace, after: position, limit: PAGE })
        position = page.position
        if (page.changes.length > 0) sink({ namespace, changes: page.changes, eventId: eventIdOf(position) })
        if (page.changes.length < PAGE) return
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
