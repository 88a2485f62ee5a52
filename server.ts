import { networkInterfaces } from 'node:os'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import { buildApp, logDestination, loggerOptions } from './app.js'
import { ConfigError, loadConfig, type Config } from './schema/config.js'

/**
 * What a start prints: the MCP URL, a token created just now, and the Claude Code command.
 * `remoteUrls` is set when the server listens on every interface without PUBLIC_URL (the URL is
 * then on 127.0.0.1): the URLs of this machine's other addresses, possibly none.
 */
export function connectInstructions (url: string, token: string | undefined, remoteUrls?: readonly string[]): string {
  const add = `claude mcp add --transport http shared-context ${url} --header "Authorization: Bearer ${token ?? '<your token>'}"`
  const lines = [
    '',
    `shared-context-mcp is serving MCP at ${url}`
  ]
  if (remoteUrls !== undefined) {
    lines.push(remoteUrls.length === 0
      ? 'It listens on every interface: from other machines, use this machine\'s address or name instead of 127.0.0.1.'
      : 'It listens on every interface: from other machines, use this machine\'s address instead of 127.0.0.1:',
    ...remoteUrls.map((remote) => `  ${remote}`),
    '(In a container: the host\'s address and published port. Set PUBLIC_URL to have the URL printed here.)')
  }
  lines.push('')
  if (token !== undefined) {
    lines.push(
      'A token was created for this machine. It is shown only now (only its hash is stored):',
      `  ${token}`,
      ''
    )
  }
  lines.push(
    'Connect Claude Code:',
    `  ${add}`,
    ''
  )
  if (token === undefined) lines.push('Use AUTH_TOKEN or a token you created earlier; `node dist/cli.js token create --name NAME` makes another.', '')
  else {
    lines.push(
      'Added shared-context before, with an older token? Replace that entry:',
      '  claude mcp remove shared-context',
      `  ${add}`,
      ''
    )
  }
  return lines.join('\n')
}

/**
 * What a start with the built-in authorization server (OAUTH_SERVER=on) adds: where Claude.ai
 * connects, and — while nobody could sign in on the consent page (no owner password, no API
 * token) — how to set the owner password.
 */
export function authorizationServerInstructions (url: string, ownerCannotSignIn: boolean): string {
  const lines = [
    '',
    'Connect Claude.ai (this server is its own OAuth authorization server): Settings → Connectors → Add custom connector,',
    `  URL ${url}`,
    ''
  ]
  if (ownerCannotSignIn) {
    lines.push(
      'Nobody can sign in on the consent page yet: there is no owner password and no API token. Set the owner password',
      '(it asks for it twice, hidden):',
      '  node dist/cli.js oauth set-password',
      'On Fly.io: fly ssh console --pty -C "node dist/cli.js oauth set-password"; in Docker: docker exec -it <container> node dist/cli.js oauth set-password',
      ''
    )
  }
  return lines.join('\n')
}

/** Whether the consent page has no way to sign in: no owner password and no active API token (AUTH_TOKEN does not sign in there). */
async function ownerCannotSignIn (app: Awaited<ReturnType<typeof buildApp>>): Promise<boolean> {
  if (app.oauth === null) return false
  try {
    return await app.oauth.store.ownerPasswordHash() === null && await app.db.tokens.countActiveApiTokens() === 0
  } catch (error) {
    app.log.warn({ err: error }, 'could not tell whether the owner can sign in on the consent page')
    return false
  }
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

  // Batched log lines: whatever is still buffered is written when the process exits, however it exits.
  const pretty = process.stdout.isTTY
  const destination = pretty ? undefined : logDestination(1)
  const flushLog = (): void => {
    try {
      destination?.flushSync()
    } catch {
      // stdout closed: nothing can be written anyway
    }
  }
  process.once('exit', flushLog)

  let app
  try {
    app = await buildApp(config, { logger: loggerOptions(config.LOG_LEVEL, pretty, destination) })
  } catch (error) {
    process.stderr.write(`shared-context-mcp could not start: ${error instanceof Error ? error.message : String(error)}\n`)
    process.exit(1)
  }

  closeWithGrace({ delay: config.SHUTDOWN_TIMEOUT_MS }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'shutting down after an unexpected error')
    else app.log.info({ signal }, 'shutting down')
    await app.close()
    flushLog()
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
  // The start-up lines before the instructions, in the order they happened.
  flushLog()
  // Fastify reports a wildcard bind as 127.0.0.1, so HOST says whether other machines can connect.
  const wildcard = config.PUBLIC_URL === undefined && ['0.0.0.0', '::', '[::]'].includes(config.HOST)
  const url = mcpUrlOf(config, address)
  process.stdout.write(connectInstructions(url, token, wildcard ? remoteUrlsOf(address) : undefined))
  if (app.oauth !== null) process.stdout.write(authorizationServerInstructions(url, await ownerCannotSignIn(app)))
}

/** The URL clients use: PUBLIC_URL when set; a wildcard bind address is shown as loopback. */
function mcpUrlOf (config: Config, address: string): string {
  if (config.PUBLIC_URL !== undefined) return `${config.PUBLIC_URL.replace(/\/+$/, '')}/mcp`
  const url = new URL(address)
  if (url.hostname === '0.0.0.0' || url.hostname === '[::]') url.hostname = '127.0.0.1'
  return `${url.origin}/mcp`
}

/** The MCP URL on each of this machine's non-loopback IPv4 addresses (what other machines on the network reach). */
function remoteUrlsOf (address: string): string[] {
  return Object.values(networkInterfaces()).flatMap((entries) => entries ?? [])
    .filter((entry) => entry.family === 'IPv4' && !entry.internal)
    .map((entry) => {
      const url = new URL(address)
      url.hostname = entry.address
      return `${url.origin}/mcp`
    })
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  await serve()
}
