import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { createSql, DatabaseUnavailableError, planTls, TlsSettingsError, waitForDatabase } from '../../db/connect.js'
import { testDatabase } from '../db-helper.js'
import { eventually } from '../eventually.js'

const PASSWORD = 'sup3r-secret-passw0rd'

test('waitForDatabase gives up on a closed port after the timeout, without leaking the password', async (t) => {
  const sql = createSql(`postgres://scm:${PASSWORD}@127.0.0.1:1/scm`, { max: 1, connectTimeoutMs: 1000 })
  t.teardown(async () => { await sql.end({ timeout: 1 }) })
  const logged: string[] = []
  const error = await waitForDatabase(sql, { timeoutMs: 3000, log: (msg) => logged.push(msg) }).then(() => null, (err: unknown) => err)

  t.ok(error instanceof DatabaseUnavailableError, 'DatabaseUnavailableError')
  const message = (error as Error).message
  t.match(message, '127.0.0.1:1')
  t.notMatch(message, PASSWORD)
  t.ok(logged.length >= 2, `retried with backoff, not given up at the first refusal (${logged.length} log lines)`)
  t.match(message, `after ${logged.length + 1} attempts in 3000 ms`, 'the error reports every attempt and the timeout')
  t.notMatch(logged.join('\n'), PASSWORD)
})

test('waitForDatabase keeps to its timeout when the server accepts but never answers', async (t) => {
  const sockets = new Set<Socket>()
  let closedByClient = 0
  const silent = createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => { closedByClient++ })
  })
  await new Promise<void>(resolve => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise(resolve => silent.close(resolve))
  })
  const address = silent.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  const sql = createSql(`postgres://scm:${PASSWORD}@127.0.0.1:${address.port}/scm`, { max: 1, connectTimeoutMs: 30_000 })
  t.teardown(async () => { await sql.end({ timeout: 0 }) })

  await t.rejects(waitForDatabase(sql, { timeoutMs: 500 }), DatabaseUnavailableError)
  await eventually(() => sockets.size > 0, { what: 'the server to see the connection attempt' })
  t.equal(closedByClient, 0, 'gave up on its own timeout while the connection attempt (30 s connect timeout) was still open')
})

test('createSql against the test database', async (t) => {
  const { sql } = await testDatabase(t)
  await t.resolves(waitForDatabase(sql, { timeoutMs: 5000 }))
  const [row] = await sql<[{ big: number, count: number, small: number }]>`
    select 9007199254740991::bigint as big, (select count(*) from context_entries) as count, 7::int as small`
  t.same(row, { big: Number.MAX_SAFE_INTEGER, count: 0, small: 7 }, 'int8 comes back as a JS number')
  t.equal(typeof row.big, 'number')
  const [version] = await sql<[{ v: number }]>`select ${5}::bigint + 1 as v`
  t.equal(version.v, 6, 'numbers go in as int8 parameters too')
})

const FAKE_PEM = '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n'
const VERIFY = { verify: true }
const NO_VERIFY = { verify: false }

test('planTls: a non-loopback host gets TLS with certificate and host name verification by default', async (t) => {
  const url = `postgres://scm:${PASSWORD}@db.example.com:5432/scm`
  const plan = planTls(url, VERIFY)
  t.same(plan.ssl, { rejectUnauthorized: true }, 'verified against the default trust store; postgres.js sets servername to the host name')
  t.equal(plan.verification, 'full')
  t.equal(plan.warning, undefined)
  t.equal(plan.url, url, 'URL untouched')
  t.same(planTls(url).ssl, { rejectUnauthorized: true }, 'also with no settings at all')

  for (const query of ['?sslmode=prefer', '?sslmode=allow', '?sslmode=require']) {
    t.same(planTls(url + query, VERIFY).ssl, { rejectUnauthorized: true }, `${query} verifies too`)
  }
  t.same(planTls('postgres://scm@10.1.2.3:5432/scm', VERIFY).ssl, { rejectUnauthorized: true, host: '10.1.2.3' }, 'an IP address is what the certificate is checked against')
  t.same(planTls('postgres://scm@127.db.example.com:5432/scm', VERIFY).ssl, { rejectUnauthorized: true }, 'a host name that starts with "127." is not loopback')
  t.same(planTls('postgres://scm@127.0.0.1.nip.io:5432/scm', VERIFY).ssl, { rejectUnauthorized: true })
  t.same(planTls('postgres://scm@[2001:db8::1]:5432/scm', VERIFY).ssl, { rejectUnauthorized: true, host: '2001:db8::1' })
  t.ok(planTls('postgres://scm@localhost,db.example.com/scm', VERIFY).ssl, 'one remote host among several turns TLS on')
  t.throws(() => planTls('postgres://scm@10.0.0.1,10.0.0.2/scm', VERIFY), TlsSettingsError, 'several IP hosts cannot be checked per host')

  const withCa = planTls(url, { verify: true, ca: FAKE_PEM.replaceAll('\n', '\\n') })
  t.same(withCa.ssl, { rejectUnauthorized: true, ca: FAKE_PEM }, 'DB_SSL_CA as PEM text, its newlines written as \\n')
  t.match(withCa.summary, 'against DB_SSL_CA')
})

test('planTls: loopback hosts and Unix sockets get no TLS unless the URL asks for it', async (t) => {
  for (const host of ['127.0.0.1', 'localhost', '[::1]', '127.0.0.2', '%2Fvar%2Frun%2Fpostgresql', 'localhost,127.0.0.1']) {
    t.equal(planTls(`postgres://scm:${PASSWORD}@${host}:5432/scm`, VERIFY).ssl, false, host)
  }
  t.equal(planTls('postgres://scm@127.0.0.1/scm', NO_VERIFY).warning, undefined, 'nothing to warn about without TLS')
  t.same(planTls('postgres://scm@127.0.0.1/scm?sslmode=verify-full', VERIFY).ssl, { rejectUnauthorized: true, host: '127.0.0.1' })
})

test('planTls: sslmode in the URL wins, and postgres.js never sees it', async (t) => {
  const disabled = planTls(`postgres://scm:${PASSWORD}@db.example.com/scm?application_name=x&sslmode=disable`, VERIFY)
  t.equal(disabled.ssl, false)
  t.equal(disabled.url, `postgres://scm:${PASSWORD}@db.example.com/scm?application_name=x`)

  const chainOnly = planTls('postgres://scm@10.1.2.3/scm?sslmode=verify-ca', VERIFY)
  t.equal(chainOnly.verification, 'ca')
  const ssl = chainOnly.ssl as { checkServerIdentity?: (host: string, cert: object) => Error | undefined }
  t.equal(ssl.checkServerIdentity?.('other.example.com', {}), undefined, 'verify-ca accepts any host name')

  const dir = await mkdtemp(join(tmpdir(), 'scm-ca-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const caFile = join(dir, 'root.crt')
  await writeFile(caFile, FAKE_PEM)
  const rootcert = planTls(`postgres://scm@db.example.com/scm?sslmode=verify-full&sslrootcert=${encodeURIComponent(caFile)}`, { verify: true, ca: '/nonexistent/ca.pem' })
  t.same(rootcert.ssl, { rejectUnauthorized: true, ca: FAKE_PEM }, 'sslrootcert wins over DB_SSL_CA')
  t.equal(rootcert.url, 'postgres://scm@db.example.com/scm')
  t.same(planTls('postgres://scm@db.example.com/scm?sslrootcert=system', { verify: true, ca: caFile }).ssl, { rejectUnauthorized: true }, 'sslrootcert=system: the default trust store')

  const sql = createSql(`postgres://scm@db.example.com/scm?sslmode=require&sslrootcert=${encodeURIComponent(caFile)}`, { max: 1, connectTimeoutMs: 1000 })
  t.teardown(() => sql.end({ timeout: 0 }))
  const options = sql.options as unknown as { ssl: unknown, connection: Record<string, unknown> }
  t.same(options.ssl, { rejectUnauthorized: true, ca: FAKE_PEM }, "postgres.js gets our ssl object, not its own reading of 'require'")
  t.notOk('sslrootcert' in options.connection, 'sslrootcert is not sent to the server as a setting')
})

test('planTls: DB_SSL_VERIFY=false is the explicit opt-out, with a warning', async (t) => {
  const plan = planTls(`postgres://scm:${PASSWORD}@db.example.com/scm`, { verify: false, ca: '/nonexistent/ca.pem' })
  t.same(plan.ssl, { rejectUnauthorized: false })
  t.equal(plan.verification, 'none')
  t.match(plan.warning, /^database TLS certificate verification is OFF/)
  t.equal(planTls('postgres://scm@db.example.com/scm?sslmode=disable', NO_VERIFY).warning, undefined, 'no TLS, no warning')
})

test('planTls: clear errors for wrong or contradicting settings, without the password', async (t) => {
  const base = `postgres://scm:${PASSWORD}@db.example.com/scm`
  const cases: Array<[string, { verify: boolean, ca?: string }, RegExp]> = [
    [`${base}?sslmode=verify-full`, NO_VERIFY, /sslmode=verify-full but DB_SSL_VERIFY=false/],
    [`${base}?sslmode=verify-ca`, NO_VERIFY, /sslmode=verify-ca but DB_SSL_VERIFY=false/],
    [`${base}?sslmode=bogus`, VERIFY, /sslmode=bogus is not one of disable, allow, prefer, require, verify-ca, verify-full/],
    [`${base}?sslcert=client.crt`, VERIFY, /parameter sslcert is not supported/],
    [`${base}?sslrootcert=%2Fnonexistent%2Froot.crt`, VERIFY, /sslrootcert in DATABASE_URL: cannot read the CA file \/nonexistent\/root.crt \(ENOENT\)/],
    [base, { verify: true, ca: '/nonexistent/ca.pem' }, /DB_SSL_CA: cannot read the CA file \/nonexistent\/ca.pem/],
    [base, { verify: true, ca: '-----BEGIN PRIVATE KEY-----\nx' }, /DB_SSL_CA: the value is no PEM certificate/]
  ]
  for (const [url, settings, message] of cases) {
    const error = (() => { try { planTls(url, settings) } catch (error) { return error } })()
    t.ok(error instanceof TlsSettingsError, String(message))
    t.match((error as Error).message, message)
    t.notMatch((error as Error).message, PASSWORD)
  }
})
