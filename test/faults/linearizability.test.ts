import type { FastifyInstance } from 'fastify'
import { test } from 'tap'
import { buildApp } from '../../app.js'
import { loadConfig } from '../../schema/config.js'
import { ON_PGLITE, testDatabase } from '../db-helper.js'
import { TEST_TOKEN } from '../helper.js'
import { TcpProxy, viaProxy } from '../tcp-proxy.js'
import { checkHistory, checkKey, describeOps, minimalFailing, type Op, type OpKind, type OpInput, type Outcome } from './linearizability.js'
import { resolveUnknown, runWorkload, type HistoryRow, type Target } from './workload.js'

// Linearizability of the store under faults: 16 clients over several server instances on one
// database, random read/write/CAS/append/delete/restore on three hot keys, while the database
// connections of random instances are cut or stalled and restored. CI runs it briefly
// (LIN_SECONDS, default 10); `npm run torture` runs it for minutes. Seeded: LIN_SEED replays the
// client and fault choices (the interleaving itself is up to the machine).

const SEED = Number(process.env.LIN_SEED ?? Math.floor(Math.random() * 2 ** 31))
const SECONDS = Number(process.env.LIN_SECONDS ?? 10)
// The embedded database is one process that one server opens: one instance there.
const INSTANCES = ON_PGLITE ? 1 : Number(process.env.LIN_INSTANCES ?? 2)

let nextId = 0
function op (kind: OpKind, input: OpInput, invokedAt: number, completedAt: number, outcome: Outcome, client = 0): Op {
  return { id: nextId++, client, key: 'k', kind, input, invokedAt, completedAt: outcome.type === 'unknown' ? Infinity : completedAt, outcome }
}
const ok = (version: number, content?: string): Outcome => ({ type: 'ok', version, ...(content !== undefined && { content }) })

test('the checker', async (t) => {
  t.test('accepts overlapping operations in some valid order, and unknown outcomes either way', async (t) => {
    const history = [
      op('write', { content: 'a' }, 0, 10, ok(1)),
      op('read', {}, 1, 3, ok(1, 'a'), 1), // overlaps the write, sees it
      op('write', { content: 'lost?' }, 11, 0, { type: 'unknown', why: 'timeout' }, 2),
      op('append', { content: 'b', separator: '+' }, 12, 14, ok(2), 1), // the unknown write did not happen
      op('read', {}, 15, 16, ok(2, 'a+b')),
      op('write', { content: 'maybe' }, 17, 0, { type: 'unknown', why: 'DEP_3001' }, 2),
      op('read', {}, 30, 31, ok(3, 'maybe')), // this one did
      op('delete', { expectedVersion: 3 }, 32, 33, ok(3)),
      op('read', {}, 34, 35, { type: 'error', code: 'CTX_2001' }),
      op('restore', { version: 2 }, 36, 37, ok(5)),
      op('read', {}, 38, 39, ok(5, 'a+b')),
      op('write', { content: 'x', expectedVersion: 4 }, 40, 41, { type: 'error', code: 'CTX_2002' })
    ]
    t.equal(checkKey(history).linearizable, true)
  })

  t.test('refuses a stale read, a lost update and a version that repeats, and keeps the witness small', async (t) => {
    const stale = [
      op('write', { content: 'a' }, 0, 1, ok(1)),
      op('write', { content: 'b' }, 2, 3, ok(2)),
      op('read', {}, 4, 5, ok(1, 'a'), 1),
      op('read', {}, 6, 7, ok(2, 'b'), 2)
    ]
    t.equal(checkKey(stale).linearizable, false, 'a read of an overwritten value after the overwrite ended')
    const witness = minimalFailing(stale)
    t.ok(witness.some((o) => o.kind === 'read' && o.outcome.type === 'ok' && o.outcome.content === 'a'), 'the witness holds the stale read')
    t.ok(witness.length < stale.length, `smaller than the history (${witness.length} of ${stale.length}):\n${describeOps(witness)}`)
    const lostUpdate = [
      op('write', { content: 'a' }, 0, 1, ok(1)),
      op('write', { content: 'b', expectedVersion: 1 }, 2, 6, ok(2), 1),
      op('write', { content: 'c', expectedVersion: 1 }, 3, 7, ok(2), 2)
    ]
    t.equal(checkKey(lostUpdate).linearizable, false, 'two compare-and-sets on the same version both succeeding')
    const deleteMissed = [
      op('delete', {}, 0, 1, { type: 'error', code: 'CTX_2001' }),
      op('write', { content: 'a' }, 2, 3, ok(1)),
      op('delete', {}, 4, 5, { type: 'error', code: 'CTX_2001' })
    ]
    t.equal(checkKey(deleteMissed).linearizable, false, 'a delete that found nothing after a write ended')
  })
})

test(`linearizable under database faults: ${INSTANCES} instance(s), 16 clients, ${SECONDS} s (seed ${SEED}; LIN_SEED=${SEED} replays the choices)`, async (t) => {
  const { url, sql } = await testDatabase(t)
  const target = new URL(url)
  const apps: FastifyInstance[] = []
  const targets: Target[] = []
  t.teardown(async () => {
    await Promise.all(apps.map((app) => app.close()))
    await Promise.all(targets.map(({ proxy }) => proxy.stop()))
  })
  for (let i = 0; i < INSTANCES; i++) {
    const proxy = new TcpProxy(target.hostname, Number(target.port))
    await proxy.start()
    const app = await buildApp(loadConfig({
      AUTH_TOKEN: TEST_TOKEN,
      DATABASE_URL: viaProxy(url, proxy),
      LOG_LEVEL: 'silent',
      RATE_LIMITS: 'off',
      DB_POOL_MAX: '4',
      DB_CONNECT_TIMEOUT_MS: '2000',
      DB_STATEMENT_TIMEOUT_MS: '1000'
    }))
    apps.push(app)
    targets.push({ base: await app.listen({ host: '127.0.0.1', port: 0 }), proxy })
  }

  const { history, faults } = await runWorkload({ targets, token: TEST_TOKEN, clients: 16, keys: ['hot/a', 'hot/b', 'hot/c'], durationMs: SECONDS * 1000, faultEveryMs: 1500, seed: SEED })
  const rows = await sql<HistoryRow[]>`select key, version, client from context_history`
  const settled = resolveUnknown(history, rows)
  const report = checkHistory(settled.history)
  const succeeded = history.filter((o) => o.outcome.type === 'ok').length
  const unknown = history.length - succeeded - history.filter((o) => o.outcome.type === 'error').length
  t.comment(`${history.length} operations on ${report.keys} keys (${succeeded} ok, ${unknown} unknown outcome: ${settled.applied} found applied in the history, ${settled.dropped} not), ${faults.cuts} cuts and ${faults.stalls} stalls, ${report.anomalies.length} anomalies`)
  for (const anomaly of report.anomalies) t.comment(`not linearizable: ${anomaly.key}; a minimal failing sub-history:\n${describeOps(anomaly.minimal)}`)
  t.same(report.anomalies.map((anomaly) => anomaly.key), [], 'no anomalies')
  t.same(report.inconclusive, [], 'every key decided')
  t.ok(faults.cuts + faults.stalls > 0, 'faults were injected')
  t.ok(succeeded > 30 && unknown > 0, 'both successes and unknown outcomes occurred')
  t.equal(rows.filter((row) => row.client?.startsWith('lin-op-') !== true).length, 0, 'every version in the history was written by a recorded operation')
})
