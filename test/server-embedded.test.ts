import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { callToolOverHttp, servingUrl, startServer, waitFor } from './process-helper.js'

// server.ts started as an operator starts it, with the embedded database in DATA_DIR or with none.
// Nothing here uses the test database or Redis, so CI runs this file once (scripts/embedded-pass-tests.ts).
const AUTH_TOKEN = 'server-test-token-0123456789abcdef0123456789'

/** Ports of the TCP sockets the process listens on (from /proc: its socket inodes in its network namespace's tables). */
async function tcpListeningPorts (pid: number): Promise<number[]> {
  const inodes = new Set<string>()
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')
    const match = /^socket:\[(\d+)\]$/.exec(target)
    if (match?.[1] !== undefined) inodes.add(match[1])
  }
  const ports: number[] = []
  for (const table of ['tcp', 'tcp6']) {
    const lines = (await readFile(`/proc/${pid}/net/${table}`, 'utf8').catch(() => '')).split('\n').slice(1)
    for (const line of lines) {
      const fields = line.trim().split(/\s+/) // sl local_address rem_address st ... inode (10th)
      if (fields[3] === '0A' && inodes.has(fields[9] ?? '')) ports.push(parseInt((fields[1] ?? '').split(':')[1] ?? '', 16))
    }
  }
  return ports.sort((a, b) => a - b)
}

async function groupOrWorldAccessible (dir: string): Promise<string[]> {
  const names = ['.', ...await readdir(dir, { recursive: true })]
  const modes = await Promise.all(names.map(async (name) => ({ name, mode: (await lstat(join(dir, name))).mode })))
  return modes.filter(({ mode }) => (mode & 0o077) !== 0).map(({ name, mode }) => `${name} ${(mode & 0o777).toString(8)}`)
}

test('first start on loopback with the embedded database: creates a token, prints it once with the claude line; no TCP port for the database, DATA_DIR owner only', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-data-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const env = { DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'warn' }

  const first = startServer(env)
  t.teardown(() => first.child.kill('SIGKILL'))
  await waitFor(first, (output) => output.includes('claude mcp add'))
  const token = /^\s+(scm_\S+)$/m.exec(first.stdout())?.[1]
  t.ok(token, 'token printed')
  const url = servingUrl(first)
  t.match(first.stdout(), new RegExp(`claude mcp add --transport http shared-context ${url.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} --header "Authorization: Bearer ${token}"`))
  t.notOk(first.stderr().includes(token as string), 'the token is not in the log')

  const written = await callToolOverHttp(url, token as string, 'write_context', { key: 'persisted', content: 'survives restarts' })
  t.equal(written.status, 200)
  t.equal(written.body.result?.structuredContent.version, 1)
  t.same(await tcpListeningPorts(first.child.pid as number), [Number(new URL(url).port)], 'no TCP listener but PORT: the database is on a Unix socket')
  t.same(await groupOrWorldAccessible(dataDir), [], 'nothing in DATA_DIR is open to group or others')

  first.child.kill('SIGTERM')
  t.equal(await first.exited, 0, 'clean exit on SIGTERM')

  const second = startServer(env)
  t.teardown(() => second.child.kill('SIGKILL'))
  await waitFor(second, (output) => output.includes('claude mcp add'))
  t.notMatch(second.stdout(), /scm_/, 'no new token on the second start')
  const read = await callToolOverHttp(servingUrl(second), token as string, 'read_context', { key: 'persisted' })
  t.equal(read.body.result?.structuredContent.content, 'survives restarts', 'data and token persisted in DATA_DIR')
  second.child.kill('SIGTERM')
  t.equal(await second.exited, 0)
  t.same(await groupOrWorldAccessible(dataDir), [], 'nor after a restart and a shutdown')
})

test('invalid configuration: exit 1 with one line per problem, secrets not echoed', async (t) => {
  const server = startServer({ PORT: 'abc', AUTH_TOKEN: 'short-secret-value', LOG_LEVEL: 'loud' })
  t.equal(await server.exited, 1)
  const stderr = server.stderr()
  t.match(stderr, /PORT/)
  t.match(stderr, /AUTH_TOKEN/)
  t.match(stderr, /LOG_LEVEL/)
  t.notMatch(stderr, /short-secret-value/)
})

test('database unreachable at start: retries until DB_CONNECT_TIMEOUT_MS, then exit 1 without the password', async (t) => {
  const server = startServer({ DATABASE_URL: 'postgres://app:hunter2-secret@127.0.0.1:1/db', DB_CONNECT_TIMEOUT_MS: '3000', AUTH_TOKEN })
  t.equal(await server.exited, 1)
  t.match(server.stderr(), /127\.0\.0\.1:1/)
  const retries = server.stdout().match(/database 127\.0\.0\.1:1 not reachable yet \([^)]*\); retrying in \d+ ms/g) ?? []
  t.ok(retries.length >= 2, `retried with backoff before giving up (${retries.length} retry lines)`)
  t.match(server.stderr(), `could not start: Database at 127.0.0.1:1 is unavailable after ${retries.length + 1} attempts in 3000 ms`, 'then gave up at DB_CONNECT_TIMEOUT_MS with one line')
  t.notMatch(server.stderr() + server.stdout(), /hunter2/)
})

test('a start that cannot listen exits 1 with a plain line and creates no token', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'scm-data-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const blocker = createServer()
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => blocker.close())
  const busyPort = (blocker.address() as { port: number }).port

  const failed = startServer({ DATA_DIR: dataDir, PORT: String(busyPort), LOG_LEVEL: 'silent' })
  t.equal(await failed.exited, 1)
  t.match(failed.stderr(), /could not listen on 127\.0\.0\.1:\d+/)
  t.notMatch(failed.stdout(), /scm_/)

  const next = startServer({ DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'silent' })
  t.teardown(() => next.child.kill('SIGKILL'))
  await waitFor(next, (output) => output.includes('claude mcp add'))
  t.match(next.stdout(), /shown only now/, 'the token is created by the start that serves')
  next.child.kill('SIGTERM')
  t.equal(await next.exited, 0)
})
