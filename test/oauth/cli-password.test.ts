import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { test } from 'tap'
import { verifyOwnerPassword } from '../../oauth/owner-password.js'
import { runCli } from '../process-helper.js'
import { browse, CookieJar, locationOf, newPkce, OWNER_PASSWORD, startOAuthServer, type OAuthServer } from './oauth-helper.js'
import { callWith, CLAUDE_CALLBACK, connect, grantIdOf, runCliWithInput } from './ops-helper.js'

// `node dist/cli.js oauth set-password` (piped and on a terminal), and the oauth commands where OAUTH_SERVER is off.

const root = fileURLToPath(new URL('../..', import.meta.url))

function cliEnv (server: OAuthServer): Record<string, string> {
  return { DATABASE_URL: server.app.config.DATABASE_URL as string, OAUTH_SERVER: 'on', PUBLIC_URL: server.url, AUTH_CACHE_SECONDS: '0' }
}

test('oauth set-password: a piped line, refused when too short or missing, and sign-ins in progress end', async (t) => {
  t.setTimeout(120_000)
  const server = await startOAuthServer(t)
  const env = cliEnv(server)
  const storedHash = async () => (await server.app.db.sql<Array<{ password_hash: string }>>`select password_hash from oauth_owner`)[0]?.password_hash

  const { clientId } = await connect(server) // registered, and the consent page works with the current password
  // A sign-in in progress: the consent page is open in a browser.
  const jar = new CookieJar()
  const pkce = newPkce()
  const authorize = `${server.url}/oauth/authorize?${new URLSearchParams({ response_type: 'code', client_id: clientId, redirect_uri: CLAUDE_CALLBACK, code_challenge: pkce.challenge, code_challenge_method: 'S256', scope: 'context:read', resource: server.resource })}`
  const consentPage = locationOf(await browse(jar, authorize), server.url)
  t.equal((await browse(jar, consentPage)).status, 200)

  const before = await storedHash()
  for (const [input, message] of [['short\n', 'at least 12 characters'], ['', 'No password on stdin'], ['\n', 'No password on stdin']] as const) {
    const refused = await runCliWithInput(env, input, 'oauth', 'set-password')
    t.equal(refused.code, 2, `${JSON.stringify(input)} is refused`)
    t.match(refused.stderr, message)
    t.match(refused.stderr, /not changed|No password/)
  }
  t.equal(await storedHash(), before, 'nothing was stored')

  const newPassword = 'a new owner password, piped'
  const set = await runCliWithInput(env, `${newPassword}\r\nsecond line ignored\n`, 'oauth', 'set-password')
  t.equal(set.code, 0, set.stderr)
  t.equal(set.stdout, 'The owner password is set: the consent page accepts it from now on. Sign-ins in progress were ended (start them again); connections made before keep working.\n')
  t.notMatch(set.stdout + set.stderr, newPassword, 'never echoed')
  t.ok(await verifyOwnerPassword(newPassword, await storedHash() as string), 'the first line, without its line ending, is the password')
  t.notOk(await verifyOwnerPassword(OWNER_PASSWORD, await storedHash() as string))

  t.equal((await browse(jar, consentPage)).status, 400, 'the sign-in that was in progress has ended')
  await t.rejects(connect(server), /consent post: HTTP 401/, 'the old password no longer signs in')
  const connected = await connect(server, { password: newPassword })
  t.equal((await callWith(server, connected.tokens.access_token)).status, 200, 'the new one does')
})

test('oauth set-password on a terminal: asked twice, nothing echoed', async (t) => {
  t.setTimeout(120_000)
  const server = await startOAuthServer(t)
  const env = cliEnv(server)

  /** The CLI on a pseudo-terminal (util-linux `script`), answering each prompt once it shows. */
  async function onTerminal (answers: string[]): Promise<{ code: number | null, output: string }> {
    const child = spawn('script', ['-qec', `${process.execPath} --import tsx cli.ts oauth set-password`, '/dev/null'], { cwd: root, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let output = ''
    const prompts = ['New owner password: ', 'The same again: ']
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      while (prompts.length > 0 && answers.length > 0 && output.includes(prompts[0] as string)) {
        output = output.replace(prompts.shift() as string, '<prompt>')
        child.stdin.write(`${answers.shift() as string}\r`)
      }
    })
    const [code] = await once(child, 'exit') as [number | null]
    return { code, output }
  }

  const password = 'typed on a terminal 42'
  const typed = await onTerminal([password, password])
  t.equal(typed.code, 0, typed.output)
  t.match(typed.output, /<prompt>[\s\S]*<prompt>[\s\S]*The owner password is set/, 'asked twice')
  t.notMatch(typed.output, password, 'what was typed is not echoed')
  const [row] = await server.app.db.sql<Array<{ password_hash: string }>>`select password_hash from oauth_owner`
  t.ok(await verifyOwnerPassword(password, row?.password_hash as string))

  const mismatch = await onTerminal(['first entry is this', 'second entry differs'])
  t.equal(mismatch.code, 2)
  t.match(mismatch.output, 'The two entries differ; the password was not changed.')
  const tooShort = await onTerminal(['short'])
  t.equal(tooShort.code, 2, 'refused before it asks again')
  t.match(tooShort.output, 'at least 12 characters')
  t.ok(await verifyOwnerPassword(password, (await server.app.db.sql<Array<{ password_hash: string }>>`select password_hash from oauth_owner`)[0]?.password_hash as string), 'unchanged')
})

test('with OAUTH_SERVER off the oauth commands still work on the tables, and say so', async (t) => {
  t.setTimeout(120_000)
  const server = await startOAuthServer(t)
  const { tokens } = await connect(server)
  const env = { DATABASE_URL: server.app.config.DATABASE_URL as string, AUTH_CACHE_SECONDS: '0' }

  const listed = await runCli(env, 'oauth', 'grants')
  t.equal(listed.code, 0, listed.stderr)
  t.match(listed.stderr, 'Note: OAUTH_SERVER is not on in this environment.')
  t.match(listed.stdout, grantIdOf(tokens.access_token))
  const revoked = await runCli(env, 'oauth', 'revoke-grant', '--id', grantIdOf(tokens.access_token))
  t.equal(revoked.code, 0, revoked.stderr)
  t.equal((await callWith(server, tokens.access_token)).status, 401, 'revoked all the same (an operator who turned the server off can still end grants)')
  const set = await runCliWithInput(env, 'set before turning it on\n', 'oauth', 'set-password')
  t.equal(set.code, 0, set.stderr)
  t.match(set.stderr, 'OAUTH_SERVER is not on')
})
