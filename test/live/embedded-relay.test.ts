import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { startChangeListener } from '../../db/change-listener.js'
import { createSql } from '../../db/connect.js'
import { createContextStore, type ChangeNotice } from '../../db/context-store.js'
import { SOCKET_URL, startEmbeddedPostgres } from '../../db/embedded.js'
import { migrate } from '../../db/migrate.js'
import { pgliteTemplate } from '../pglite-template.js'
import { eventually } from '../eventually.js'

test('the embedded database in a data folder: a LISTEN connection beside the one pooled connection gets every committed change', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-relay-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const embedded = await startEmbeddedPostgres({ dataDir, loadDataDir: await pgliteTemplate() })
  t.teardown(() => embedded.close())
  // As db/open.ts connects: the pool of one over the Unix socket, and the listener's own connection.
  const connection = { connectTimeoutMs: 5000, path: embedded.socketPath }
  const sql = createSql(SOCKET_URL, { ...connection, max: 1 })
  t.teardown(() => sql.end({ timeout: 1 }))
  await migrate(sql)
  const notices: ChangeNotice[] = []
  const listener = startChangeListener((handlers) => createSql(SOCKET_URL, { ...connection, max: 1, listener: handlers }), {
    onChange: (notice) => notices.push(notice),
    onListening: () => {},
    onLost: () => {}
  })
  t.teardown(() => listener.close())
  await eventually(() => listener.listening, { what: 'LISTEN' })

  const store = createContextStore(sql, { maxContentBytes: 1024 })
  const actor = { principal: 'test', client: null }
  await store.write('ns', 'k', 'one', {}, actor)
  await store.write('ns', 'k', 'stale', { expectedVersion: 7 }, actor) // a conflict changes nothing and announces nothing
  await store.append('ns', 'k', 'two', '\n', actor)
  await store.delete('ns', 'k', undefined, actor)
  await store.restore('ns', 'k', 1, actor)
  await Promise.all(Array.from({ length: 20 }, (_, index) => store.write('ns', `many/${index}`, 'x', {}, actor)))
  await eventually(() => notices.length >= 24, { what: 'every change announced' })
  t.same(notices.slice(0, 4), [
    { namespace: 'ns', key: 'k', version: 1, action: 'create' },
    { namespace: 'ns', key: 'k', version: 2, action: 'append' },
    { namespace: 'ns', key: 'k', version: 3, action: 'delete' },
    { namespace: 'ns', key: 'k', version: 4, action: 'restore' }
  ], 'each change once, with namespace, key, version and action (never content)')
  t.equal(new Set(notices.slice(4).map((notice) => notice.key)).size, 20, 'concurrent writes each announced')
  const rows = await sql<Array<{ n: number }>>`select 1 as n`
  t.same(rows, [{ n: 1 }], 'the pooled connection is unharmed by the notifications it carried')
})
