import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

// Servers n and m: this server as built (dist/, the very JavaScript server a runs), with
// authentication and rate limits off; logging as a (info). n keeps metrics on, m
// (BENCH_WITHOUT_METRICS=1) turns them off too. The difference between a and n is what auth + rate
// limiting cost; between n and m what metrics cost. Only the types come from the sources; the code
// is imported from dist/ under the working directory (the repository root for the benchmark's
// children), so every server runs the same build.

type AppModule = typeof import('../../app.js')
type ConfigModule = typeof import('../../schema/config.js')

function built (path: string): string {
  return pathToFileURL(join(process.cwd(), 'dist', path)).href
}

const { buildApp, logDestination, loggerOptions } = await import(built('app.js')) as AppModule
const { loadConfig } = await import(built('schema/config.js')) as ConfigModule

const config = loadConfig({ ...process.env, RATE_LIMITS: 'off' })
// Log lines batched as server.ts batches them (and flushed at exit, as it does).
const destination = logDestination(1)
process.once('exit', () => destination.flushSync())
const app = await buildApp(config, { logger: loggerOptions(config.LOG_LEVEL, false, destination), withoutAuthentication: true, withoutMetrics: process.env.BENCH_WITHOUT_METRICS === '1' })

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}
await app.listen({ host: config.HOST, port: config.PORT })
