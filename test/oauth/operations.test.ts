import { createRequire } from 'node:module'
import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { rotateSigningKey, ROTATION_TAKEOVER_MS } from '../../oauth/keys.js'
import { build } from '../helper.js'
import { startOAuthServer } from './oauth-helper.js'
import { authorize, callWith, connect, grantIdOf, refresh, registerClient, tokenRequest } from './ops-helper.js'

// The built-in authorization server as an operator watches it: /ready and /metrics.

interface Sample { labels?: Record<string, string>, value?: string }
interface Family { name: string, type: string, metrics: Sample[] }
const parsePrometheusText = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => Family[]

// Part of a client name the test registers, so that a leak of client input into /metrics shows.
const MARKER = 'qx81mz'

async function scrape (t: Test, app: FastifyInstance): Promise<{ text: string, value: (name: string, labels?: Record<string, string>) => number | undefined, type: (name: string) => string | undefined }> {
  const response = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(response.statusCode, 200, 'GET /metrics answers')
  const families = parsePrometheusText(response.body)
  return {
    text: response.body,
    type: (name) => families.find((family) => family.name === name)?.type,
    value: (name, labels = {}) => {
      const sample = families.find((family) => family.name === name)?.metrics
        .find((candidate) => Object.entries(labels).every(([label, value]) => candidate.labels?.[label] === value))
      return sample?.value === undefined ? undefined : Number(sample.value)
    }
  }
}

test('/ready: authorization_server is ok, degraded while its key table cannot be read (never 503 for that), absent when off', async (t) => {
  const server = await startOAuthServer(t)
  const { app } = server
  const ready = await app.inject('/ready')
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { status: 'ok', database: 'ok', redis: 'absent', identity_provider: 'ok', authorization_server: 'ok' })
  const before = await connect(server)
  t.equal((await callWith(server, before.tokens.access_token)).status, 200, 'the resource server has read the keys')

  await app.db.sql`alter table oauth_keys rename to oauth_keys_away`
  await app.oauth?.reloadKeys()
  const degraded = await app.inject('/ready')
  t.equal(degraded.statusCode, 200, 'the database answers, so the instance stays in rotation')
  t.same(degraded.json(), { status: 'degraded', database: 'ok', redis: 'absent', identity_provider: 'ok', authorization_server: 'degraded' })
  const { tokens } = await connect(server)
  t.equal((await callWith(server, tokens.access_token)).status, 200, 'with the keys it has, it still signs in clients and its tokens are accepted')

  await app.db.sql`alter table oauth_keys_away rename to oauth_keys`
  await app.oauth?.reloadKeys()
  t.equal((await app.inject('/ready')).json().authorization_server, 'ok', 'ok again at the next read')

  const off = await build(t)
  t.equal((await off.inject('/ready')).json().authorization_server, 'absent')
})

test('/metrics: registrations, decisions, failed sign-ins, tokens by grant type, reuse, revocations, and the clients and grants gauges', async (t) => {
  const server = await startOAuthServer(t)
  const { app } = server

  const initial = await scrape(t, app)
  t.equal(initial.type('scm_oauth_tokens_issued_total'), 'COUNTER')
  t.equal(initial.type('scm_oauth_clients'), 'GAUGE')
  t.equal(initial.value('scm_oauth_tokens_issued_total', { grant_type: 'refresh_token' }), 0, 'series exist from the start')
  t.equal(initial.value('scm_oauth_clients'), 0)

  t.equal((await registerClient(server, { redirect_uris: ['http://evil.example/callback'] })).status, 400, 'a redirect URI the policy forbids')
  const first = await connect(server, {}, { client_name: `Claude ${MARKER}` })
  await t.rejects(authorize(server, first.clientId, { password: 'not the owner password' }), /HTTP 401/)
  await t.rejects(authorize(server, first.clientId, { token: 'scm_not-a-token-of-this-server' }), /HTTP 401/)
  const denied = await authorize(server, first.clientId, { decision: 'deny' })
  t.equal(denied.callback.searchParams.get('error'), 'access_denied')

  const refreshed = await refresh(server, first.clientId, first.tokens.refresh_token)
  t.equal(refreshed.status, 200)
  const replayed = await refresh(server, first.clientId, first.tokens.refresh_token)
  t.equal((await replayed.json() as { error: string }).error, 'invalid_grant', 'a rotated-out refresh token presented again')

  const second = await connect(server)
  const codeAgain = await tokenRequest(server, { grant_type: 'authorization_code', code: second.code, redirect_uri: 'https://claude.ai/api/mcp/auth_callback', code_verifier: second.verifier, client_id: second.clientId })
  t.equal(codeAgain.status, 400, 'an authorization code used twice')
  t.equal((await callWith(server, second.tokens.access_token)).status, 401, 'and the grant it made is ended')

  const third = await connect(server)
  const revocation = await fetch(`${server.url}/oauth/revoke`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: third.tokens.refresh_token, token_type_hint: 'refresh_token', client_id: third.clientId }).toString()
  })
  t.equal(revocation.status, 200)
  t.equal((await refresh(server, 'no-such-client', 'x')).status, 401, 'a client the server does not know')

  const fourth = await connect(server)
  const scraped = await scrape(t, app)
  t.notMatch(scraped.text, MARKER, 'nothing a client sent appears in the output')
  t.equal(scraped.value('scm_oauth_registrations_total', { outcome: 'registered' }), 4)
  t.equal(scraped.value('scm_oauth_registrations_total', { outcome: 'refused' }), 1)
  t.equal(scraped.value('scm_oauth_authorizations_total', { decision: 'granted' }), 4)
  t.equal(scraped.value('scm_oauth_authorizations_total', { decision: 'denied' }), 1)
  t.equal(scraped.value('scm_oauth_sign_in_failures_total', { method: 'password' }), 1)
  t.equal(scraped.value('scm_oauth_sign_in_failures_total', { method: 'api_token' }), 1)
  t.equal(scraped.value('scm_oauth_tokens_issued_total', { grant_type: 'authorization_code' }), 4)
  t.equal(scraped.value('scm_oauth_tokens_issued_total', { grant_type: 'refresh_token' }), 1)
  t.equal(scraped.value('scm_oauth_reuse_detected_total', { credential: 'refresh_token' }), 1)
  t.equal(scraped.value('scm_oauth_reuse_detected_total', { credential: 'authorization_code' }), 1)
  t.equal(scraped.value('scm_oauth_revocations_total'), 1)
  t.equal(scraped.value('scm_oauth_token_errors_total', { error: 'invalid_grant' }), 2, 'the refresh token and the code presented again')
  t.equal(scraped.value('scm_oauth_token_errors_total', { error: 'invalid_client' }), 1)
  t.equal(scraped.value('scm_oauth_clients'), 4, 'the registered clients')
  t.equal(scraped.value('scm_oauth_active_grants'), 1, 'three grants were ended (refresh reuse, code reuse, revocation); the fourth is active')
  t.equal((await callWith(server, fourth.tokens.access_token)).status, 200)

  // A new signing key rebuilds the provider: its events are still counted.
  const store = app.oauth?.store
  if (store === undefined) throw new Error('no authorization server')
  const { kid } = await rotateSigningKey(store, 900, Date.now() - ROTATION_TAKEOVER_MS)
  await app.oauth?.reloadKeys()
  const fifth = await connect(server)
  t.equal(JSON.parse(Buffer.from(fifth.tokens.access_token.split('.')[0] as string, 'base64url').toString()).kid, kid, 'signed by the rebuilt provider with the new key')
  const afterRebuild = await scrape(t, app)
  t.equal(afterRebuild.value('scm_oauth_registrations_total', { outcome: 'registered' }), 5)
  t.equal(afterRebuild.value('scm_oauth_tokens_issued_total', { grant_type: 'authorization_code' }), 5)
  t.equal(afterRebuild.value('scm_oauth_active_grants'), 2)
  t.ok(grantIdOf(fifth.tokens.access_token))

  await app.db.sql`alter table oauth_payloads rename to oauth_payloads_away`
  const unreadable = await scrape(t, app)
  t.ok(Number.isNaN(unreadable.value('scm_oauth_clients')), 'a count the database cannot give reads as NaN, and the scrape still answers')
  t.ok(Number.isNaN(unreadable.value('scm_oauth_active_grants')))
  await app.db.sql`alter table oauth_payloads_away rename to oauth_payloads`
  t.equal((await scrape(t, app)).value('scm_oauth_clients'), 5)
})

test('/metrics without the authorization server: no oauth series', async (t) => {
  const app = await build(t)
  const scraped = await scrape(t, app)
  t.notMatch(scraped.text, 'scm_oauth_')
})
