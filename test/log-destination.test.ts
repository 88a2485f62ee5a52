import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { test } from 'tap'
import { logDestination } from '../app.js'
import { eventually } from './eventually.js'

// The batched log destination (app.ts): lines wait in memory until a batch is full, the periodic
// flush comes, or someone flushes; nothing is lost, reordered or split.

test('log lines are batched, kept in order, and all written by a flush', async (t) => {
  const folder = mkdtempSync(join(tmpdir(), 'scm-log-'))
  t.teardown(() => rmSync(folder, { recursive: true, force: true }))
  const file = join(folder, 'out.log')
  const fd = openSync(file, 'w')
  t.teardown(() => closeSync(fd))
  const destination = logDestination(fd)
  const logger = pino({ base: null }, destination)
  const written = () => readFileSync(file, 'utf8')

  logger.info({ n: 0 }, 'first')
  t.equal(written(), '', 'a single line waits for its batch')
  for (let n = 1; n < 200; n++) logger.info({ n, padding: 'x'.repeat(100) }, 'line')
  t.ok(written().length > 0, 'a full batch is written at once')
  t.ok(written().endsWith('\n'), 'a batch holds whole lines only')

  destination.flushSync()
  const lines = written().trimEnd().split('\n').map((line) => JSON.parse(line) as { n: number })
  t.same(lines.map((line) => line.n), Array.from({ length: 200 }, (_, n) => n), 'every line, once, in order')

  logger.info({ n: 200 }, 'late')
  await eventually(async () => written().includes('"n":200') || undefined, { what: 'the periodic flush', timeoutMs: 5000 })

  logger.info({ n: 201 }, 'flushed by pino')
  await new Promise<void>((resolve, reject) => { logger.flush((error) => { if (error != null) reject(error); else resolve() }) })
  t.match(written(), /"n":201/, "pino's flush writes what waits")
})
