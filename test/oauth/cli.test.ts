import { Redis } from 'ioredis'
import { test } from 'tap'
import { revokedJtiKey } from '../../auth/revocation.js'
import { runCli } from '../process-helper.js'
import { startOAuthServer, type OAuthServer } from './oauth-helper.js'
import { callWith, connect, connectUnregistered, DOCUMENT_CLIENT_ID, documentFetch, grantIdOf, refresh } from './ops-helper.js'

// `node dist/cli.js oauth …` and `token revoke` against the database of a running authorization server.

function cliEnv (server: OAuthServer): Record<string, string> {
  return { DATABASE_URL: server.app.config.DATABASE_URL as string, OAUTH_SERVER: 'on', PUBLIC_URL: server.url, AUTH_CACHE_SECONDS: '0' }
}

function lineOf (output: string, start: string): string | undefined {
  return output.split('\n').find((line) => line.startsWith(start))
}

test('oauth clients, grants, revoke-grant, revoke-client: what they list, what they end, and unknown ids', async (t) => {
  t.setTimeout(170_000) // each command is a new Node process
  const server = await startOAuthServer(t, { AUTH_CACHE_SECONDS: '0' }, { oauthFetch: documentFetch })
  const env = cliEnv(server)

  const [noClients, noGrants] = await Promise.all([runCli(env, 'oauth', 'clients'), runCli(env, 'oauth', 'grants')])
  t.equal(noClients.code, 0, noClients.stderr)
  t.equal(noClients.stdout, 'No clients.\n')
  t.equal(noGrants.stdout, 'No grants.\n')

  const claude = await connect(server)
  const work = await connect(server, { namespace: 'work', scopes: ['context:read'] }, { client_name: 'Work laptop' })
  const document = await connectUnregistered(server, DOCUMENT_CLIENT_ID)
  const [claudeGrant, workGrant, documentGrant] = [claude, work, document].map((connection) => grantIdOf(connection.tokens.access_token)) as [string, string, string]

  const [clients, grants] = await Promise.all([runCli(env, 'oauth', 'clients'), runCli(env, 'oauth', 'grants')])
  t.equal(clients.code, 0, clients.stderr)
  t.notMatch(clients.stderr, 'OAUTH_SERVER is not on', 'no note where the server is on')
  t.match(lineOf(clients.stdout, claude.clientId), new RegExp(`^${claude.clientId}\\tClaude\\tredirects to claude\\.ai\\tregistered \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z\\t1 grant$`), 'id, name, redirect host, registration time, grants')
  t.match(lineOf(clients.stdout, work.clientId), /\tWork laptop\tredirects to claude\.ai\t/)
  t.equal(lineOf(clients.stdout, DOCUMENT_CLIENT_ID), `${DOCUMENT_CLIENT_ID}\t(client ID metadata document, not stored)\t-\t-\t1 grant`, 'a metadata-document client is listed by its grants')
  t.equal(clients.stdout.trim().split('\n').length, 3)
  t.match(lineOf(grants.stdout, claudeGrant), new RegExp(`^${claudeGrant}\\tClaude \\(${claude.clientId}\\)\\tby owner\\tnamespace default\\tcontext:read context:write\\tcreated \\S+Z\\texpires \\S+Z$`))
  t.match(lineOf(grants.stdout, workGrant), /\tby owner\tnamespace work\tcontext:read\t/)
  t.match(lineOf(grants.stdout, documentGrant), new RegExp(`^${documentGrant}\\t${DOCUMENT_CLIENT_ID}\\tby owner\\t`))
  t.notMatch(grants.stdout + clients.stdout, claude.tokens.refresh_token, 'no secret is listed')

  const revoked = await runCli(env, 'oauth', 'revoke-grant', '--id', claudeGrant)
  t.equal(revoked.code, 0, revoked.stderr)
  t.equal(revoked.stdout, `Revoked grant ${claudeGrant}: its refresh tokens are deleted, and its access tokens are refused by every instance within 0 s. The client must be connected again.\n`)
  t.equal((await callWith(server, claude.tokens.access_token)).status, 401, 'its access token is refused')
  t.equal((await refresh(server, claude.clientId, claude.tokens.refresh_token)).status, 400, 'its refresh token is gone')
  t.equal((await callWith(server, work.tokens.access_token)).status, 200, 'other grants are untouched')
  const [before] = await server.app.db.sql`select count(*)::int as n from revoked_jtis`
  const [again, unknownGrant, dashed] = await Promise.all([
    runCli(env, 'oauth', 'revoke-grant', '--id', claudeGrant),
    runCli(env, 'oauth', 'revoke-grant', '--id', 'no-such-grant'),
    runCli(env, 'oauth', 'revoke-grant', '--id', '-Xy3_dash-first')
  ])
  t.equal(again.code, 1, 'a grant that is gone is an unknown id')
  t.equal(again.stderr.trim().split('\n').at(-1), `No grant with id "${claudeGrant}" (node dist/cli.js oauth grants lists them).`)
  t.equal(unknownGrant.code, 1)
  t.equal(dashed.stderr.trim().split('\n').at(-1), 'No grant with id "-Xy3_dash-first" (node dist/cli.js oauth grants lists them).', 'an id starting with "-" (ids are base64url) is read as the id, not refused as an ambiguous option')
  const [after] = await server.app.db.sql`select count(*)::int as n from revoked_jtis`
  t.equal(after?.n, before?.n, 'an unknown id writes nothing')

  const forgotten = await runCli(env, 'oauth', 'revoke-client', '--id', work.clientId)
  t.equal(forgotten.code, 0, forgotten.stderr)
  t.equal(forgotten.stdout, `Revoked client ${work.clientId}. Ended 1 grant: their access tokens are refused by every instance within 0 s. It is forgotten: its next token request gets invalid_client, and it must register again.\n`)
  t.equal((await callWith(server, work.tokens.access_token)).status, 401)
  const refused = await refresh(server, work.clientId, work.tokens.refresh_token)
  t.equal((await refused.json() as { error: string }).error, 'invalid_client', 'the forgotten client gets invalid_client, so that it registers again')

  const documentRevoked = await runCli(env, 'oauth', 'revoke-client', '--id', DOCUMENT_CLIENT_ID)
  t.equal(documentRevoked.code, 0, documentRevoked.stderr)
  t.match(documentRevoked.stdout, /Ended 1 grant: .* Its id is a Client ID Metadata Document URL, which is never stored/)
  t.equal((await callWith(server, document.tokens.access_token)).status, 401)

  const unknownClient = await runCli(env, 'oauth', 'revoke-client', '--id', 'no-such-client')
  t.equal(unknownClient.code, 1)
  t.match(unknownClient.stderr, 'No client with id "no-such-client"')
  const [finalClients, finalGrants] = await Promise.all([runCli(env, 'oauth', 'clients'), runCli(env, 'oauth', 'grants')])
  t.equal(finalClients.stdout, `${lineOf(clients.stdout, claude.clientId)?.replace('1 grant', '0 grants')}\n`, 'only the client whose grant alone was revoked is left')
  t.equal(finalGrants.stdout, 'No grants.\n')

  const usageErrors = [['revoke-grant'], ['revoke-client'], ['revoke-grant', '--id', ''], ['revoke-grant', '--id', 'x', '--extra'], ['frobnicate']]
  const usages = await Promise.all(usageErrors.map((args) => runCli(env, 'oauth', ...args)))
  usages.forEach((usage, index) => t.equal(usage.code, 2, `oauth ${usageErrors[index]?.join(' ')} is a usage error`))
})

test('oauth revoke-grant with REDIS_URL: every instance hears of it at once', { skip: process.env.REDIS_URL ? false : 'needs REDIS_URL (CI sets it)' }, async (t) => {
  t.setTimeout(120_000)
  const redisUrl = process.env.REDIS_URL as string
  const server = await startOAuthServer(t)
  const { tokens } = await connect(server)
  const grantId = grantIdOf(tokens.access_token)
  const redis = new Redis(redisUrl)
  t.teardown(async () => {
    await redis.del(revokedJtiKey(`grant:${grantId}`))
    await redis.quit()
  })
  const revoked = await runCli({ ...cliEnv(server), REDIS_URL: redisUrl }, 'oauth', 'revoke-grant', '--id', grantId)
  t.equal(revoked.code, 0, revoked.stderr)
  t.match(revoked.stdout, 'its access tokens are refused by every instance now')
  t.equal(await redis.get(revokedJtiKey(`grant:${grantId}`)), '1', 'published under the grant\'s revocation id')
  const ttl = await redis.pttl(revokedJtiKey(`grant:${grantId}`))
  t.ok(ttl > 86_400_000, `kept for the longest access-token lifetime a server may have (${ttl} ms)`)

  const unreachable = await runCli({ ...cliEnv(server), REDIS_URL: 'redis://127.0.0.1:1' }, 'oauth', 'revoke-client', '--id', (await connect(server)).clientId)
  t.equal(unreachable.code, 0, 'Redis down: the durable revocation still counts')
  t.match(unreachable.stderr, 'Redis could not be reached')
  t.match(unreachable.stdout, 'within 0 s')
})

test('token revoke --name also ends the grants made by signing in with that token', async (t) => {
  t.setTimeout(120_000)
  const server = await startOAuthServer(t, { AUTH_CACHE_SECONDS: '0' })
  const env = cliEnv(server)
  const created = await runCli(env, 'token', 'create', '--name', 'laptop', '--scopes', 'context:read,context:write')
  t.equal(created.code, 0, created.stderr)
  const apiToken = /^(scm_\S+)$/m.exec(created.stdout)?.[1] as string
  const byToken = await connect(server, { token: apiToken })
  const byOwner = await connect(server)
  t.match((await runCli(env, 'oauth', 'grants')).stdout, new RegExp(`^${grantIdOf(byToken.tokens.access_token)}\\t.*\\tby token:laptop\\t`, 'm'))

  const revoked = await runCli(env, 'token', 'revoke', '--name', 'laptop')
  t.equal(revoked.code, 0, revoked.stderr)
  t.equal(revoked.stdout, 'Revoked "laptop". Instances stop accepting it within seconds. Ended 1 OAuth grant made by signing in with it on the consent page: their access tokens are refused by every instance within 0 s.\n')
  t.equal((await callWith(server, byToken.tokens.access_token)).status, 401, 'the OAuth connection made with the token ends with it')
  t.equal((await refresh(server, byToken.clientId, byToken.tokens.refresh_token)).status, 400)
  t.equal((await callWith(server, byOwner.tokens.access_token)).status, 200, 'the owner\'s own grant stays')
  const again = await runCli(env, 'token', 'revoke', '--name', 'laptop')
  t.equal(again.code, 1)
  t.match(again.stderr, 'No active token named "laptop"')
})
