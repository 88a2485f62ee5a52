import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parse } from 'smol-toml'
import { test } from 'tap'
import { ConfigSchema, loadConfig } from '../../schema/config.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
const fly = parse(readFileSync(`${root}fly.toml`, 'utf8'))

/**
 * The settings Fly documents for fly.toml, from "App configuration (fly.toml)",
 * https://fly.io/docs/reference/configuration/ — every section and key on that page.
 * A table of allowed keys per section; `ANY` marks free-form maps (env names, headers, build
 * args, process names); `[spec]` marks arrays of tables ([[...]]); a few sections may be a single
 * table or an array of tables (`ONE_OR_MANY`).
 */
type Spec = { [key: string]: Spec | [Spec] | typeof LEAF | typeof ANY }
const LEAF = 'leaf' as const
const ANY = 'any' as const

const check: Spec = {
  grace_period: LEAF,
  interval: LEAF,
  timeout: LEAF,
  method: LEAF,
  path: LEAF,
  protocol: LEAF,
  tls_server_name: LEAF,
  tls_skip_verify: LEAF,
  headers: ANY
}
const machineCheck: Spec = { image: LEAF, entrypoint: LEAF, command: LEAF, kill_signal: LEAF, kill_timeout: LEAF }
const concurrency: Spec = { type: LEAF, soft_limit: LEAF, hard_limit: LEAF }
const httpOptions: Spec = { idle_timeout: LEAF, h2_backend: LEAF, response: { pristine: LEAF, headers: ANY } }
const tlsOptions: Spec = { alpn: LEAF, versions: LEAF, default_self_signed: LEAF }
const autostop: Spec = { auto_stop_machines: LEAF, auto_start_machines: LEAF, min_machines_running: LEAF }
const mounts: Spec = {
  source: LEAF,
  destination: LEAF,
  processes: LEAF,
  initial_size: LEAF,
  snapshot_retention: LEAF,
  auto_extend_size_threshold: LEAF,
  auto_extend_size_increment: LEAF,
  auto_extend_size_limit: LEAF
}
const vm: Spec = { size: LEAF, memory: LEAF, cpus: LEAF, cpu_kind: LEAF, gpus: LEAF, gpu_kind: LEAF, kernel_args: LEAF, host_dedication_id: LEAF, processes: LEAF }
const metrics: Spec = { port: LEAF, path: LEAF, processes: LEAF }

const FLY_DOCUMENTED: Spec = {
  app: LEAF,
  primary_region: LEAF,
  kill_signal: LEAF,
  kill_timeout: LEAF,
  console_command: LEAF,
  swap_size_mb: LEAF,
  build: { builder: LEAF, buildpacks: LEAF, image: LEAF, dockerfile: LEAF, ignorefile: LEAF, 'build-target': LEAF, args: ANY },
  deploy: {
    release_command: LEAF,
    release_command_timeout: LEAF,
    release_command_vm: { size: LEAF, memory: LEAF },
    strategy: LEAF,
    max_unavailable: LEAF,
    wait_timeout: LEAF
  },
  env: ANY,
  http_service: {
    processes: LEAF,
    internal_port: LEAF,
    force_https: LEAF,
    ...autostop,
    concurrency,
    http_options: httpOptions,
    tls_options: tlsOptions,
    checks: [check],
    machine_checks: [machineCheck]
  },
  services: [{
    processes: LEAF,
    internal_port: LEAF,
    protocol: LEAF,
    ...autostop,
    ports: [{ handlers: LEAF, port: LEAF, start_port: LEAF, end_port: LEAF, force_https: LEAF, http_options: httpOptions, proxy_proto_options: { version: LEAF }, tls_options: tlsOptions }],
    concurrency,
    tcp_checks: [{ grace_period: LEAF, interval: LEAF, timeout: LEAF, restart_limit: LEAF }],
    http_checks: [check],
    machine_checks: [machineCheck]
  }],
  mounts,
  vm: [vm],
  restart: [{ policy: LEAF, retries: LEAF, processes: LEAF }],
  checks: ANY, // named checks, each checked below against TOP_LEVEL_CHECK
  processes: ANY,
  metrics,
  statics: [{ guest_path: LEAF, url_prefix: LEAF, tigris_bucket: LEAF, index_document: LEAF }],
  files: [{ guest_path: LEAF, raw_value: LEAF, local_path: LEAF, secret_name: LEAF, processes: LEAF }],
  experimental: { cmd: LEAF, entrypoint: LEAF, exec: LEAF }
}
/** [mounts] and [metrics] may be written [[mounts]] / [[metrics]] (one per process group). */
const ONE_OR_MANY = new Set(['mounts', 'metrics'])
const TOP_LEVEL_CHECK: Spec = { grace_period: LEAF, interval: LEAF, method: LEAF, path: LEAF, port: LEAF, timeout: LEAF, type: LEAF, processes: LEAF, headers: ANY }

function isTable (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date)
}

/** Paths of keys in `value` that the spec does not document. */
function undocumented (value: Record<string, unknown>, spec: Spec, path: string): string[] {
  const found: string[] = []
  for (const [key, child] of Object.entries(value)) {
    const where = path === '' ? key : `${path}.${key}`
    let allowed = spec[key]
    if (allowed === undefined) {
      found.push(where)
      continue
    }
    if (allowed === ANY || allowed === LEAF) {
      if (allowed === LEAF && isTable(child)) found.push(`${where} (a table where Fly documents a value)`)
      continue
    }
    if (path === '' && ONE_OR_MANY.has(key) && !Array.isArray(allowed)) allowed = Array.isArray(child) ? [allowed] : allowed
    if (Array.isArray(allowed)) {
      if (!Array.isArray(child)) {
        found.push(`${where} (Fly documents [[${where}]], an array of tables)`)
        continue
      }
      child.forEach((item: unknown, index) => {
        if (isTable(item)) found.push(...undocumented(item, allowed[0], `${where}[${index}]`))
        else found.push(`${where}[${index}] (not a table)`)
      })
    } else if (isTable(child)) {
      found.push(...undocumented(child, allowed, where))
    } else {
      found.push(`${where} (a value where Fly documents a table)`)
    }
  }
  return found
}

test('fly.toml uses only settings Fly documents', async (t) => {
  t.same(undocumented(fly, FLY_DOCUMENTED, ''), [], 'every key is on https://fly.io/docs/reference/configuration/')
  const checks = fly.checks
  if (isTable(checks)) {
    for (const [name, value] of Object.entries(checks)) {
      t.ok(isTable(value), `checks.${name} is a table`)
      if (isTable(value)) t.same(undocumented(value, TOP_LEVEL_CHECK, `checks.${name}`), [])
    }
  }
})

test('documented values are within the documented choices', async (t) => {
  t.match(fly.app, /^[a-z0-9-]+$/, 'app name: lowercase letters, digits, dashes')
  t.match(fly.primary_region, /^[a-z]{3}$/, 'primary_region: a three-letter region code')
  t.ok(['SIGINT', 'SIGTERM', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGKILL', 'SIGSTOP'].includes(String(fly.kill_signal)), 'kill_signal')
  t.ok(typeof fly.kill_timeout === 'number' && fly.kill_timeout <= 300, 'kill_timeout: seconds, at most 300')
  const env = fly.env
  t.ok(isTable(env), '[env]')
  if (isTable(env)) {
    for (const [name, value] of Object.entries(env)) {
      t.type(value, 'string', `env ${name}: Fly env values can only be strings`)
      t.notOk(name.startsWith('FLY_'), `env ${name}: names cannot begin with FLY_`)
    }
  }
  const service = fly.http_service
  if (!isTable(service)) throw new Error('no [http_service]')
  t.ok(['off', 'stop', 'suspend'].includes(String(service.auto_stop_machines)), 'auto_stop_machines: "off", "stop" or "suspend"')
  t.type(service.auto_start_machines, 'boolean')
  t.equal(service.auto_stop_machines !== 'off', service.auto_start_machines, 'auto stop and auto start both enabled or both disabled (Fly recommends)')
  const concurrency = service.concurrency
  if (isTable(concurrency)) t.ok(['connections', 'requests'].includes(String(concurrency.type)), 'concurrency.type')
  const deploy = fly.deploy
  if (isTable(deploy) && deploy.strategy !== undefined) t.ok(['rolling', 'immediate', 'canary', 'bluegreen'].includes(String(deploy.strategy)), 'deploy.strategy')
})

test('the service, its concurrency, health check and release command fit this server', async (t) => {
  const env = fly.env as Record<string, string>
  const service = fly.http_service as Record<string, unknown>
  t.equal(service.internal_port, Number(env.PORT), 'internal_port is the PORT the server listens on')
  t.equal(env.HOST, '0.0.0.0', 'HOST=0.0.0.0: the proxy reaches the Machine on its private address')
  t.equal(service.force_https, true, 'force_https')

  const concurrency = service.concurrency as Record<string, unknown>
  t.equal(concurrency.type, 'requests', 'concurrency counted in requests (HTTP service)')
  t.type(concurrency.soft_limit, 'number')
  t.type(concurrency.hard_limit, 'number')
  t.ok((concurrency.soft_limit as number) >= 1 && (concurrency.soft_limit as number) < (concurrency.hard_limit as number), 'soft_limit < hard_limit')

  const checks = service.checks as Array<Record<string, unknown>>
  const ready = checks.find((c) => c.path === '/ready')
  t.ok(ready, 'an [[http_service.checks]] on /ready')
  if (ready !== undefined) {
    t.equal(String(ready.method ?? 'get').toLowerCase(), 'get')
    t.ok(durationMs(ready.timeout) > 2000, '/ready waits up to 2 s for the database: the check timeout must be longer')
    t.ok(durationMs(ready.grace_period) >= 5000, 'grace_period leaves time to connect and migrate')
  }

  const deploy = fly.deploy as Record<string, unknown>
  t.equal(deploy.release_command, 'node dist/cli.js migrate', 'release_command runs the migrations')
  t.ok(existsSync(`${root}cli.ts`), 'cli.ts exists (built to dist/cli.js)')

  const shutdownMs = Number(env.SHUTDOWN_TIMEOUT_MS ?? loadConfig({}).SHUTDOWN_TIMEOUT_MS)
  t.equal(fly.kill_signal, 'SIGTERM', 'SIGTERM starts the graceful shutdown')
  t.ok((fly.kill_timeout as number) * 1000 > shutdownMs, 'kill_timeout outlasts SHUTDOWN_TIMEOUT_MS')
})

test('[env] is a valid server configuration without secrets', async (t) => {
  const env = fly.env as Record<string, string>
  const known = Object.keys(ConfigSchema.properties)
  for (const name of Object.keys(env)) t.ok(known.includes(name), `${name} is a setting the server reads`)
  for (const secret of ['AUTH_TOKEN', 'DATABASE_URL', 'REDIS_URL']) t.notOk(secret in env, `${secret} belongs in \`fly secrets\`, not fly.toml`)
  // The server refuses a public bind without auth; the token comes from `fly secrets set` at deploy.
  t.doesNotThrow(() => loadConfig({ ...env, AUTH_TOKEN: 'x'.repeat(32) }), 'loadConfig accepts [env]')

  // https://fly.io/docs/networking/request-headers/: X-Forwarded-For is "<client>, <the app's Fly IP>"
  // and the connection comes from the proxy, so the client is two trusted hops away; "true" would
  // take the leftmost entry, which the client controls.
  t.equal(env.TRUST_PROXY, '2', 'TRUST_PROXY trusts exactly Fly Proxy\'s two hops')
  t.match(env.PUBLIC_URL, /^https:\/\//, 'PUBLIC_URL is https (force_https)')
  const host = new URL(env.PUBLIC_URL ?? 'https://invalid').hostname
  if (host.endsWith('.fly.dev')) t.equal(host, `${String(fly.app)}.fly.dev`, 'PUBLIC_URL matches the app name')
})

test('the spec walker flags what Fly does not document', async (t) => {
  const bad = parse(`
app = "x"
colour = "blue"
[http_service]
  internal_port = 3000
  concurency = { type = "requests" }
  [[http_service.checks]]
    path = "/ready"
    expect_status = 200
[env]
  ANYTHING = "ok"
`)
  t.same(undocumented(bad, FLY_DOCUMENTED, ''), ['colour', 'http_service.concurency', 'http_service.checks[0].expect_status'])
})

/** Fly durations: a number is milliseconds; strings carry a unit. */
function durationMs (value: unknown): number {
  if (typeof value === 'number') return value
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(String(value))
  if (match === null) return Number.NaN
  return Number(match[1]) * ({ ms: 1, s: 1000, m: 60000 }[match[2] as 'ms' | 's' | 'm'])
}
