import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

// Server n: this server as built (dist/, the very JavaScript server a runs), with authentication
// and rate limits off; logging as a (info). The difference between a and n is what auth + rate
// limiting cost. Metrics stay on in both: buildApp always registers them. Only the
// types come from the sources; the code is imported from dist/ under the working directory (the
// repository root for the benchmark's children), so both servers run the same build.

type AppModule = typeof import('../../app.js')
type ConfigModule = typeof import('../../schema/config.js')

function built (path: string): string {
  return pathToFileURL(join(process.cwd(), 'dist', path)).href
}

const { buildApp, loggerOptions } = await import(built('app.js')) as AppModule
const { loadConfig } = await import(built('schema/config.js')) as ConfigModule

const config = loadConfig({ ...process.env, RATE_LIMITS: 'off' })
const app = await buildApp(config, { logger: loggerOptions(config.LOG_LEVEL, process.stdout.isTTY), withoutAuthentication: true })

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}
await app.listen({ host: config.HOST, port: config.PORT })
