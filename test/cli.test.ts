import { Redis } from 'ioredis'
import { test } from 'tap'
import { revokedJtiKey } from '../auth/revocation.js'
import { buildApp } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { callTool } from './helper.js'
import { runCli } from './process-helper.js'

test('cli: migrate, token create / list / revoke against the same database the server uses', async (t) => {
  t.setTimeout(120_000) // each command is a new Node process
  const { url } = await testDatabase(t)
  const env = { DATABASE_URL: url }

  const migrated = await runCli(env, 'migrate')
  t.equal(migrated.code, 0, migrated.stderr)
  t.match(migrated.stdout, /up to date/)

  const created = await runCli(env, 'token', 'create', '--name', 'ci-bot', '--namespace', 'team', '--scopes', 'context:read,context:write')
  t.equal(created.code, 0, created.stderr)
  const token = /^(scm_\S+)$/m.exec(created.stdout)?.[1]
  t.ok(token, 'token printed once')

  const app = await buildApp(loadConfig({ DATABASE_URL: url, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  await app.ready()
  const written = await callTool(app, 'write_context', { key: 'notes', content: 'from the bot' }, { token: token as string })
  t.notOk(written.isError)
  const history = await callTool(app, 'context_history', { key: 'notes' }, { token: token as string })
  t.equal((history.structuredContent.versions as Array<{ actor: string }>)[0]?.actor, 'token:ci-bot')
  const rows = await app.db.sql<Array<{ namespace: string }>>`select namespace from context_entries where key = 'notes'`
  t.same(rows.map((row) => row.namespace), ['team'], 'written in the token\'s namespace')

  const listed = await runCli(env, 'token', 'list')
  t.match(listed.stdout, /ci-bot\tteam\tcontext:read,context:write/)
  t.notMatch(listed.stdout, new RegExp(token as string), 'list never shows a secret')

  const duplicate = await runCli(env, 'token', 'create', '--name', 'ci-bot')
  t.equal(duplicate.code, 1)
  const badScope = await runCli(env, 'token', 'create', '--name', 'x', '--scopes', 'root')
  t.equal(badScope.code, 2)
  t.match(badScope.stderr, /Unknown scope/)

  const revoked = await runCli(env, 'token', 'revoke', '--name', 'ci-bot')
  t.equal(revoked.code, 0, revoked.stderr)
  const again = await runCli(env, 'token', 'revoke', '--name', 'ci-bot')
  t.equal(again.code, 1)
  const usage = await runCli(env, 'frobnicate')
  t.equal(usage.code, 2)
  t.match(usage.stderr, /Usage/)
})

test('cli: token revoke-jti stores the revocation (and publishes it to Redis when REDIS_URL is set)', async (t) => {
  t.setTimeout(120_000)
  const { url, sql } = await testDatabase(t)
  const env = { DATABASE_URL: url }
  const jti = `cli-${Date.now()}`

  const revoked = await runCli(env, 'token', 'revoke-jti', '--jti', jti, '--expires-at', '2099-01-01T00:00:00Z')
  t.equal(revoked.code, 0, revoked.stderr)
  t.match(revoked.stdout, /within 5 s/)
  const rows = await sql<Array<{ expires_at: Date }>>`select expires_at from revoked_jtis where jti = ${jti}`
  t.equal(rows[0]?.expires_at.toISOString(), '2099-01-01T00:05:00.000Z', 'stored until the given expiry plus the largest clock skew allowed (300 s)')

  await t.test('with REDIS_URL: also published to Redis', { skip: process.env.REDIS_URL ? false : 'needs REDIS_URL (CI sets it)' }, async (t) => {
    const redisUrl = process.env.REDIS_URL as string
    const published = `${jti}-redis`
    const result = await runCli({ DATABASE_URL: url, REDIS_URL: redisUrl }, 'token', 'revoke-jti', '--jti', published, '--expires-at', '2099-01-01T00:00:00Z')
    t.equal(result.code, 0, result.stderr)
    t.match(result.stdout, /Every instance refuses it now/)
    const redis = new Redis(redisUrl)
    t.teardown(async () => {
      await redis.del(revokedJtiKey(published))
      await redis.quit()
    })
    t.equal(await redis.get(revokedJtiKey(published)), '1', 'published to Redis')
    t.equal((await sql`select 1 from revoked_jtis where jti = ${published}`).length, 1, 'and stored')
  })

  const badDate = await runCli(env, 'token', 'revoke-jti', '--jti', 'x', '--expires-at', 'tomorrow-ish')
  t.equal(badDate.code, 2, 'a bad date is a usage error')
  t.match(badDate.stderr, /--expires-at/)
  t.equal((await runCli(env, 'token', 'revoke-jti')).code, 2, '--jti is required')
  const past = await runCli(env, 'token', 'revoke-jti', '--jti', 'x', '--expires-at', '2026')
  t.equal(past.code, 2, 'an expiry that has passed is a usage error, not a silent no-op')
  t.match(past.stderr, /has passed/)

  const unreachableRedis = await runCli({ DATABASE_URL: url, REDIS_URL: 'redis://127.0.0.1:1' }, 'token', 'revoke-jti', '--jti', `${jti}-2`)
  t.equal(unreachableRedis.code, 0, 'Redis down: the durable revocation still counts')
  t.match(unreachableRedis.stderr, /Redis could not be reached/)
  t.equal((await sql`select 1 from revoked_jtis where jti = ${`${jti}-2`}`).length, 1)
})
