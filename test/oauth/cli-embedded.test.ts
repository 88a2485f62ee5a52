import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { createSql } from '../../db/connect.js'
import { SOCKET_URL } from '../../db/embedded.js'
import { verifyOwnerPassword } from '../../oauth/owner-password.js'
import { runCli, startServer, waitFor } from '../process-helper.js'
import { runCliWithInput } from './ops-helper.js'

// A server started with OAUTH_SERVER=on on the embedded database: what it prints while nobody can
// sign in, and the oauth commands going through its socket while it runs.

const HINT = 'Nobody can sign in on the consent page yet'

test('start-up says how to set the owner password, once, until one is set; the oauth commands work while the server runs', async (t) => {
  t.setTimeout(170_000)
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-oauth-cli-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const serverEnv = { DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'warn', OAUTH_SERVER: 'on', PUBLIC_URL: 'https://ctx.example.com' }
  const first = startServer(serverEnv)
  t.teardown(() => first.child.kill('SIGKILL'))
  await waitFor(first, (output) => output.includes('oauth set-password'))
  t.match(first.stdout(), 'Connect Claude.ai (this server is its own OAuth authorization server): Settings → Connectors → Add custom connector,\n  URL https://ctx.example.com/mcp\n')
  t.match(first.stdout(), `${HINT}: there is no owner password and no API token.`)
  t.match(first.stdout(), '\n  node dist/cli.js oauth set-password\n')
  t.match(first.stdout(), 'fly ssh console --pty -C "node dist/cli.js oauth set-password"')
  t.equal(first.stdout().split(HINT).length - 1, 1, 'printed once')

  const env = { DATA_DIR: dataDir, OAUTH_SERVER: 'on', PUBLIC_URL: 'https://ctx.example.com' }
  const password = 'set while the server runs'
  const set = await runCliWithInput(env, `${password}\n`, 'oauth', 'set-password')
  t.equal(set.code, 0, set.stderr)
  t.match(set.stderr, /in use by a running server .*using its database through/, 'through the running server\'s socket')
  const [clients, grants, rotated] = await Promise.all([runCli(env, 'oauth', 'clients'), runCli(env, 'oauth', 'grants'), runCli(env, 'oauth', 'rotate-key')])
  t.equal(clients.stdout, 'No clients.\n', clients.stderr)
  t.equal(grants.stdout, 'No grants.\n', grants.stderr)
  t.equal(rotated.code, 0, rotated.stderr)
  const kid = /^New signing key (sign-\d{14}-[0-9a-f]{6})\.$/m.exec(rotated.stdout)?.[1]
  t.ok(kid, rotated.stdout)
  t.match(rotated.stdout, /signs access tokens from \S+Z \(in 3 minutes\)/)
  t.match(rotated.stdout, /the keys it replaces \(sign-initial\) verify tokens until \S+Z, then retire/)

  const sql = createSql(SOCKET_URL, { max: 1, connectTimeoutMs: 5000, path: join(dataDir, 'postgres.sock') })
  t.teardown(() => sql.end())
  const [owner] = await sql<Array<{ password_hash: string }>>`select password_hash from oauth_owner`
  t.ok(await verifyOwnerPassword(password, owner?.password_hash as string), 'stored in the server\'s database')
  const keys = await sql<Array<{ kid: string, signs_from: Date, retire_at: Date | null }>>`select kid, signs_from, retire_at from oauth_keys where use = 'sign' order by signs_from`
  t.same(keys.map((key) => key.kid), ['sign-initial', kid])
  const [initial, added] = [...keys] as [typeof keys[0], typeof keys[0]]
  t.equal(initial.retire_at?.getTime(), added.signs_from.getTime() + (900 + 300) * 1000, 'the old key retires once the last token it may sign has expired (900 s) plus clock skew (300 s)')
  await sql.end()

  first.child.kill('SIGTERM')
  t.equal(await first.exited, 0, 'the server was not disturbed')

  const second = startServer(serverEnv)
  t.teardown(() => second.child.kill('SIGKILL'))
  await waitFor(second, (output) => output.includes('URL https://ctx.example.com/mcp'))
  t.notMatch(second.stdout(), HINT, 'with an owner password set, nothing more to do')
  second.child.kill('SIGTERM')
  t.equal(await second.exited, 0)
})
