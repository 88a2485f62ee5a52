import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import { buildApp, loggerOptions } from './app.js'
import { ConfigError, loadConfig, type Config } from './schema/config.js'

function connectInstructions (url: string, token: string | undefined): string {
  const header = ` --header "Authorization: Bearer ${token ?? '<your token>'}"`
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
  if (token === undefined) lines.push('Use AUTH_TOKEN or a token you created earlier; `node dist/cli.js token create --name NAME` makes another.', '')
  return lines.join('\n')
}

/** Starts the server: the only place that touches process (env, signals, exit, stdout). */
export async function serve (): Promise<void> {
  process.umask(0o077) // the embedded database's files: owner only (db/embedded.ts)
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

  let address: string
  try {
    address = await app.listen({ port: config.PORT, host: config.HOST })
  } catch (error) {
    process.stderr.write(`shared-context-mcp could not listen on ${config.HOST}:${config.PORT}: ${error instanceof Error ? error.message : String(error)}\n`)
    await app.close()
    process.exit(1)
  }
  const token = await app.auth.createLocalTokenIfNone()
  process.stdout.write(connectInstructions(mcpUrlOf(config, address), token))
}

/** The URL clients use: PUBLIC_URL when set; a wildcard bind address is shown as loopback. */
function mcpUrlOf (config: Config, address: string): string {
  if (config.PUBLIC_URL !== undefined) return `${config.PUBLIC_URL.replace(/\/+$/, '')}/mcp`
  const url = new URL(address)
  if (url.hostname === '0.0.0.0' || url.hostname === '[::]') url.hostname = '127.0.0.1'
  return `${url.origin}/mcp`
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  await serve()
}
