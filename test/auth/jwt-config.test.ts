import { test } from 'tap'
import { jwtOptionsFromConfig } from '../../auth/jwt.js'
import { ConfigError, loadConfig } from '../../schema/config.js'

function problemsOf (env: Record<string, string>): string[] {
  try {
    loadConfig(env)
  } catch (error) {
    if (error instanceof ConfigError) return error.problems
    throw error
  }
  return []
}

const ISSUER = 'https://idp.example.com/realms/acme'

test('JWT_ROLE_MAP must be JSON', async (t) => {
  const problems = problemsOf({ JWT_ROLE_MAP: '{hr-write: context:write}' })
  t.equal(problems.length, 1)
  t.match(problems[0], /^JWT_ROLE_MAP: must be JSON/)
  t.match(problemsOf({ JWT_ROLE_MAP: '["hr-write"]' })[0], /^JWT_ROLE_MAP: must be a JSON object/)
})

test('JWT_ROLE_MAP entries are checked against the schema, one line a problem', async (t) => {
  const problems = problemsOf({
    JWT_ROLE_MAP: JSON.stringify({
      good: { scopes: ['context:read'], namespace: 'hr' },
      'bad-scope': { scopes: ['context:read', 'context:everything'] },
      'bad-namespace': { scopes: ['context:write'], namespace: 'hr team!' },
      'no-scopes': { scopes: [] },
      extra: { scopes: ['context:read'], tenant: 'x' }
    }),
    DB_POOL_MAX: '0'
  })
  t.ok(problems.some((line) => line.startsWith('DB_POOL_MAX:')), 'schema problems are still listed')
  const roleProblems = problems.filter((line) => line.startsWith('JWT_ROLE_MAP:'))
  t.match(roleProblems, [
    /role "bad-scope" scopes\[1\]: unknown scope "context:everything"; known scopes are context:read, context:write, context:delete, context:admin/,
    /role "bad-namespace" namespace: must be 1-255 characters/,
    /role "no-scopes" scopes: /,
    /role "extra"/
  ])
  t.equal(roleProblems.length, 4, 'the valid role raises nothing')
  t.notOk(problems.some((line) => line.includes('\n')), 'each problem is one line')
})

test('a namespace over 255 characters is refused', async (t) => {
  const problems = problemsOf({ JWT_ROLE_MAP: JSON.stringify({ r: { scopes: ['context:read'], namespace: 'n'.repeat(256) } }) })
  t.match(problems, [/^JWT_ROLE_MAP: role "r" namespace:/])
})

test('OIDC_ISSUER needs PUBLIC_URL (the advertised resource and the default audience)', async (t) => {
  const problems = problemsOf({ OIDC_ISSUER: ISSUER })
  t.equal(problems.length, 1)
  t.match(problems[0], /^PUBLIC_URL: required when OIDC_ISSUER is set/)
  t.equal(problemsOf({ OIDC_ISSUER: ISSUER, JWT_AUDIENCE: 'mcp-server' }).length, 1, 'JWT_AUDIENCE alone is not enough')

  const fromPublicUrl = jwtOptionsFromConfig(loadConfig({ OIDC_ISSUER: ISSUER, PUBLIC_URL: 'https://ctx.example.com//' }), 'default')
  t.equal(fromPublicUrl?.audience, 'https://ctx.example.com/mcp')
  t.equal(fromPublicUrl?.jwksUrl, undefined, 'no JWKS_URL: discovery')
  t.equal(fromPublicUrl?.clockSkewSeconds, 30, 'default skew')
  t.same(fromPublicUrl?.roleMap, {})

  const explicit = jwtOptionsFromConfig(loadConfig({ OIDC_ISSUER: ISSUER, PUBLIC_URL: 'https://ctx.example.com', JWT_AUDIENCE: 'mcp-server' }), 'default')
  t.equal(explicit?.audience, 'mcp-server', 'JWT_AUDIENCE wins over PUBLIC_URL')

  t.same(problemsOf({ JWT_AUDIENCE: 'mcp-server' }), [], 'no issuer: nothing to check')
})
