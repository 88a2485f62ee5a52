import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { test } from 'tap'
import { loggerOptions } from '../app.js'
import configPlugin from '../plugins/config.js'
import dbPlugin from '../plugins/db.js'
import expiryPlugin from '../plugins/expiry.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'

/** Log lines of an app; `next(message)` resolves with the first line from now on whose msg is `message`, or rejects after `timeoutMs`. */
function logWatcher (): { stream: Writable, lines: Array<Record<string, unknown>>, next: (message: string, timeoutMs?: number) => Promise<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const waiting = new Set<{ message: string, resolve: (line: Record<string, unknown>) => void }>()
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const text of chunk.toString('utf8').split('\n').filter((part) => part !== '')) {
        const line = JSON.parse(text) as Record<string, unknown>
        lines.push(line)
        for (const waiter of waiting) {
          if (line.msg === waiter.message) {
            waiting.delete(waiter)
            waiter.resolve(line)
          }
        }
      }
      done()
    }
  })
  const next = (message: string, timeoutMs = 20_000) => new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${message}" log line within ${timeoutMs} ms`)), timeoutMs)
    waiting.add({ message, resolve: (line) => { clearTimeout(timer); resolve(line) } })
  })
  return { stream, lines, next }
}

test('the expiry sweep purges revoked_jtis rows whose token has expired, on its schedule, and keeps live ones', async (t) => {
  const { url, sql } = await testDatabase(t)
  await sql`insert into revoked_jtis (jti, expires_at) values
    ('expired-1', now() - interval '1 second'), ('expired-2', now() - interval '1 day'), ('live', now() + interval '1 hour')`

  const log = logWatcher()
  const app = Fastify({ logger: { ...loggerOptions('debug', false), stream: log.stream } })
  await app.register(configPlugin, { config: loadConfig({ DATABASE_URL: url, EXPIRY_SWEEP_SECONDS: '1', DB_POOL_MAX: '2' }) })
  await app.register(dbPlugin)
  await app.register(expiryPlugin)
  t.teardown(() => app.close())
  const firstSweep = log.next('expiry sweep finished')
  await app.ready()
  const remaining = async () => (await sql<Array<{ jti: string }>>`select jti from revoked_jtis order by jti`).map((row) => row.jti)

  await firstSweep
  t.same(await remaining(), ['live'], 'after a sweep only the revocation of a token that is still valid is left')
  t.match(log.lines.find((line) => line.msg === 'expiry sweep purged the revocations of expired JWTs'), { purged: 2 }, 'the sweep logs how many it purged')

  // A revocation that expires later is purged by a later sweep, without a restart.
  await sql`update revoked_jtis set expires_at = now() - interval '1 second' where jti = 'live'`
  await log.next('expiry sweep finished')
  t.same(await remaining(), [], 'the next sweep purges it')
  t.same(log.lines.filter((line) => (line.level as number) >= 40), [], 'no warning or error')
})
