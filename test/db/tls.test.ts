import { execFile } from 'node:child_process'
import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { promisify } from 'node:util'
import { test } from 'tap'
import { buildApp, loggerOptions } from '../../app.js'
import { createSql, DatabaseTlsError, TlsSettingsError, waitForDatabase, type TlsSettings } from '../../db/connect.js'
import { openDatabase } from '../../db/open.js'
import { loadConfig } from '../../schema/config.js'
import { TEST_TOKEN } from '../helper.js'
import { freePort } from '../../scripts/free-port.js'

const run = promisify(execFile)
const PG_BIN = '/usr/lib/postgresql/15/bin'
const PASSWORD = 'tls-test-passw0rd-not-for-logs'
const TIMEOUT_MS = 3000

// initdb and postgres refuse to run as root.
const asPostgres = process.getuid?.() === 0 ? ['runuser', '-u', 'postgres', '--'] : []

async function runAsPostgres (command: string, args: string[]): Promise<void> {
  const [file, ...prefix] = [...asPostgres, command]
  await run(file as string, [...prefix, ...args])
}

interface Cluster {
  port: number
  certPath: string
  cert: string
}

/** A throwaway PostgreSQL 15 that accepts only TLS (hostssl, trust) with a self-signed certificate for localhost and 127.0.0.2 (not 127.0.0.1). */
async function startCluster (t: Parameters<Parameters<typeof test>[0]>[0]): Promise<Cluster> {
  const dir = await mkdtemp(join(tmpdir(), 'scm-tls-'))
  t.teardown(async () => { await rm(dir, { recursive: true, force: true }) })
  const data = join(dir, 'data')
  const certPath = join(dir, 'server.crt')
  const keyPath = join(dir, 'server.key')
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.2'])
  if (asPostgres.length > 0) await run('chown', ['-R', 'postgres:', dir])
  await runAsPostgres(join(PG_BIN, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '--no-instructions'])
  const port = await freePort()
  await appendFile(join(data, 'postgresql.conf'), [
    'listen_addresses = \'127.0.0.1,127.0.0.2\'',
    `port = ${port}`,
    `unix_socket_directories = '${dir}'`,
    'ssl = on',
    `ssl_cert_file = '${certPath}'`,
    `ssl_key_file = '${keyPath}'`,
    'fsync = off',
    ''
  ].join('\n'))
  await writeFile(join(data, 'pg_hba.conf'), 'local all all trust\nhostssl all all 127.0.0.0/8 trust\n')
  await runAsPostgres(join(PG_BIN, 'pg_ctl'), ['-D', data, '-l', join(dir, 'log'), '-w', '-t', '30', 'start'])
  t.teardown(async () => { await runAsPostgres(join(PG_BIN, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']) })
  return { port, certPath, cert: await readFile(certPath, 'utf8') }
}

test('database TLS against a server with a self-signed certificate', async (t) => {
  const cluster = await startCluster(t)
  const url = (host: string, query = '') => `postgres://postgres:${PASSWORD}@${host}:${cluster.port}/postgres${query}`

  /** Connects, returns whether the session is encrypted, or the error; and the retries waitForDatabase logged. */
  async function attempt (target: string, tls?: TlsSettings, timeoutMs = TIMEOUT_MS): Promise<{ ssl?: boolean, error?: Error, retries: string[] }> {
    const sql = createSql(target, { max: 1, connectTimeoutMs: TIMEOUT_MS, ...(tls === undefined ? {} : { tls }) })
    const retries: string[] = []
    try {
      await waitForDatabase(sql, { timeoutMs, log: (message) => retries.push(message) })
      const [row] = await sql<[{ ssl: boolean }]>`select ssl from pg_stat_ssl where pid = pg_backend_pid()`
      return { ssl: row.ssl, retries }
    } catch (error) {
      return { error: error as Error, retries }
    } finally {
      await sql.end({ timeout: 1 })
    }
  }

  await t.test('verification without the CA: refused at once with one clear line', async (t) => {
    for (const query of ['?sslmode=verify-full', '?sslmode=require']) {
      const { error, retries } = await attempt(url('localhost', query))
      t.ok(error instanceof DatabaseTlsError, `${query}: DatabaseTlsError`)
      const message = error?.message ?? ''
      t.match(message, `localhost:${cluster.port}`, 'names host:port')
      t.match(message, /self-signed certificate; set DB_SSL_CA to the server's CA certificate/)
      t.notMatch(message, PASSWORD)
      t.notMatch(message, '\n', 'one line')
      t.same(retries, [], 'refused at the first attempt, without retrying until the timeout')
    }
  })

  await t.test('accepted with that certificate as the CA, and the session is encrypted', async (t) => {
    const withPath = await attempt(url('localhost', '?sslmode=verify-full'), { verify: true, ca: cluster.certPath })
    t.equal(withPath.error, undefined, 'DB_SSL_CA as a file path')
    t.equal(withPath.ssl, true)
    const withPem = await attempt(url('localhost', '?sslmode=require'), { verify: true, ca: cluster.cert })
    t.equal(withPem.error, undefined, 'DB_SSL_CA as the PEM itself')
    t.equal(withPem.ssl, true)
    const withRootcert = await attempt(url('localhost', `?sslmode=verify-full&sslrootcert=${encodeURIComponent(cluster.certPath)}`))
    t.equal(withRootcert.error, undefined, 'sslrootcert in the URL (not sent to the server as a setting)')
    t.equal(withRootcert.ssl, true)
  })

  await t.test('the host name is checked against the certificate; verify-ca checks the chain only', async (t) => {
    const full = await attempt(url('127.0.0.1', '?sslmode=verify-full'), { verify: true, ca: cluster.cert })
    t.ok(full.error instanceof DatabaseTlsError, 'the certificate names localhost and 127.0.0.2, not 127.0.0.1')
    t.match(full.error?.message ?? '', /127\.0\.0\.1.*connect by a host name the certificate lists/)
    const listedAddress = await attempt(url('127.0.0.2', '?sslmode=verify-full'), { verify: true, ca: cluster.cert })
    t.equal(listedAddress.error, undefined, 'an IP address the certificate lists is accepted')
    t.equal(listedAddress.ssl, true)
    const chainOnly = await attempt(url('127.0.0.1', '?sslmode=verify-ca'), { verify: true, ca: cluster.cert })
    t.equal(chainOnly.error, undefined)
    t.equal(chainOnly.ssl, true)
    const wrongCa = await attempt(url('127.0.0.1', '?sslmode=verify-ca'), { verify: true })
    t.ok(wrongCa.error instanceof DatabaseTlsError, 'verify-ca without the CA is refused')
  })

  await t.test('plain connections are refused by the hostssl-only server', async (t) => {
    for (const query of ['?sslmode=disable', '']) {
      const { error, ssl } = await attempt(url('localhost', query), { verify: true, ca: cluster.cert }, 300)
      t.equal(ssl, undefined, `${query || 'no sslmode (loopback)'}: no session`)
      t.match(error?.message ?? '', /no encryption/, 'pg_hba refuses the unencrypted connection')
      t.notMatch(error?.message ?? '', PASSWORD)
    }
  })

  await t.test('through openDatabase: DB_SSL_CA from the config, and DB_SSL_VERIFY=false warned about', async (t) => {
    const info: string[] = []
    const warnings: string[] = []
    const verified = await openDatabase(
      loadConfig({ DATABASE_URL: url('localhost', '?sslmode=verify-full'), DB_SSL_CA: cluster.certPath, DB_CONNECT_TIMEOUT_MS: String(TIMEOUT_MS) }),
      (message) => info.push(message), (message) => warnings.push(message))
    const [row] = await verified.sql<[{ ssl: boolean }]>`select ssl from pg_stat_ssl where pid = pg_backend_pid()`
    await verified.close()
    t.equal(row.ssl, true)
    t.same(warnings, [], 'no warning while verifying')
    t.match(info.join('\n'), /database TLS: on, certificate and host name verified against DB_SSL_CA/)

    const unverifiedConfig = loadConfig({ DATABASE_URL: url('localhost', '?sslmode=require'), DB_SSL_VERIFY: 'false', DB_CONNECT_TIMEOUT_MS: String(TIMEOUT_MS) })
    for (const start of [1, 2]) {
      warnings.length = 0
      const unverified = await openDatabase(unverifiedConfig, () => {}, (message) => warnings.push(message))
      const [again] = await unverified.sql<[{ ssl: boolean }]>`select ssl from pg_stat_ssl where pid = pg_backend_pid()`
      await unverified.close()
      t.equal(again.ssl, true, `start ${start}: accepted, encrypted`)
      t.equal(warnings.length, 1, `start ${start}: one warning`)
      t.match(warnings[0], 'database TLS certificate verification is OFF')
      t.notMatch(warnings[0], PASSWORD)
    }

    const lines: string[] = []
    const stream = new Writable({ write (chunk, _encoding, done) { lines.push(String(chunk)); done() } })
    const app = await buildApp({ ...unverifiedConfig, AUTH_TOKEN: TEST_TOKEN }, { logger: { ...loggerOptions('info', false), stream } })
    await app.ready()
    await app.close()
    const warned = lines.map((line) => JSON.parse(line) as { level: number, msg: string }).filter((entry) => entry.msg.includes('database TLS'))
    t.equal(warned.length, 1, 'the server logs it once')
    t.match(warned[0], { level: 40, msg: /^database TLS certificate verification is OFF/ }, 'at warn level')

    await t.rejects(openDatabase(loadConfig({ DATABASE_URL: url('localhost', '?sslmode=verify-full'), DB_CONNECT_TIMEOUT_MS: String(TIMEOUT_MS) }), () => {}),
      DatabaseTlsError, 'without DB_SSL_CA, start-up fails')
    await t.rejects(openDatabase(loadConfig({ DATABASE_URL: url('localhost', '?sslmode=verify-full'), DB_SSL_VERIFY: 'false' }), () => {}),
      TlsSettingsError, 'verify-full contradicted by DB_SSL_VERIFY=false is refused before connecting')
  })
})
