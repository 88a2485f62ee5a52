// Benchmark settings, from the environment.

export interface Settings {
  /** Any database on the PostgreSQL server to use; the bench database is created next to it. */
  adminDatabaseUrl: string
  durationSeconds: number
  warmupSeconds: number
  connections: number
  rounds: number
  keys: number
  writeRatio: number
  dbPoolMax: number
  /** Which of a (production configuration), b (floor: Fastify + postgres.js), c (SDK example), n (auth and rate limits off), m (auth, limits and metrics off) to run. */
  servers: string[]
  /** BENCH_BASELINE_DIR: a built checkout of another commit, run as server p (a's configuration). */
  baselineDir: string | undefined
}

export function positiveInteger (env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer (got ${JSON.stringify(raw)})`)
  return value
}

/** A share (above 0, at most 1) from the environment. */
export function shareOf (env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!(value > 0 && value <= 1)) throw new Error(`${name} must be a number above 0 and at most 1 (got ${JSON.stringify(raw)})`)
  return value
}

const SERVER_IDS: readonly string[] = ['a', 'b', 'c', 'n', 'm', 'p']

function serverList (raw: string | undefined, withBaseline: boolean): string[] {
  if (raw === undefined || raw === '') return SERVER_IDS.filter((id) => id !== 'p' || withBaseline)
  const ids = raw.split(',').map(id => id.trim())
  if (ids.length === 0 || ids.some(id => !SERVER_IDS.includes(id))) throw new Error(`BENCH_SERVERS must list some of ${SERVER_IDS.join(',')} (got ${JSON.stringify(raw)})`)
  if (ids.includes('p') && !withBaseline) throw new Error('server p needs BENCH_BASELINE_DIR (a built checkout of another commit)')
  return [...new Set(ids)]
}

export function readSettings (env: NodeJS.ProcessEnv): Settings {
  return {
    adminDatabaseUrl: env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
    durationSeconds: positiveInteger(env, 'BENCH_DURATION', 10),
    warmupSeconds: positiveInteger(env, 'BENCH_WARMUP', 3),
    connections: positiveInteger(env, 'BENCH_CONNECTIONS', 32),
    rounds: positiveInteger(env, 'BENCH_ROUNDS', 2),
    keys: positiveInteger(env, 'BENCH_KEYS', 1000),
    writeRatio: 0.1,
    // The server's own default (DB_POOL_MAX); every server gets the same pool.
    dbPoolMax: positiveInteger(env, 'BENCH_DB_POOL_MAX', 10),
    servers: serverList(env.BENCH_SERVERS, env.BENCH_BASELINE_DIR !== undefined),
    baselineDir: env.BENCH_BASELINE_DIR
  }
}
