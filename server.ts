import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import { buildApp, loggerOptions } from './app.js'
import { ConfigError, loadConfig, type Config } from './schema/config.js'

function connectInstructions (config: Config, address: string, token: string | undefined): string {
  const url = `${config.PUBLIC_URL ?? address}/mcp`
  const header = token === undefined ? '' : ` --header "Authorization: Bearer ${token}"`
  const lines = [
    '',
    `shared-context-mcp is serving MCP at ${url}`,
    ''
  ]
  if (token !== undefined) {
    lines.push(
      'A token was created for this machine. It is shown only now (only its hash is stored):',
      `  ${token}`,
      ''
    )
  }
  lines.push(
    'Connect Claude Code:',
    `  claude mcp add --transport http shared-context ${url}${header}`,
    ''
  )
  if (token === undefined) lines.push('(Use the token you created earlier or AUTH_TOKEN.)', '')
  return lines.join('\n')
}

/** Starts the server: the only place that touches process (env, signals, exit, stdout). */
export async function serve (): Promise<void> {
  let config: Config
  try {
    config = loadConfig(process.env)
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`)
      process.exit(1)
    }
    throw error
  }

  let app
  try {
    app = await buildApp(config, { logger: loggerOptions(config.LOG_LEVEL, process.stdout.isTTY) })
  } catch (error) {
    process.stderr.write(`shared-context-mcp could not start: ${error instanceof Error ? error.message : String(error)}\n`)
    process.exit(1)
  }

  closeWithGrace({ delay: config.SHUTDOWN_TIMEOUT_MS }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'shutting down after an unexpected error')
    else app.log.info({ signal }, 'shutting down')
    await app.close()
  })

  const address = await app.listen({ port: config.PORT, host: config.HOST })
  process.stdout.write(connectInstructions(config, address, app.auth.createdToken))
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  await serve()
}
