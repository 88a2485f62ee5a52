import { test } from 'tap'
import { createGatewayStore } from '../../db/gateway-store.js'
import { argumentsDigest } from '../../gateway/approvals.js'
import { identityKeyFor } from '../../gateway/signed-identity.js'
import { testDatabase } from '../db-helper.js'
import { runCli } from '../process-helper.js'

test('cli approvals list / approve / reject against the database the server uses', async (t) => {
  t.setTimeout(120_000) // each command is a new Node process
  const { url, sql } = await testDatabase(t)
  const env = { DATABASE_URL: url }
  const store = createGatewayStore(sql)
  const ask = (id: string) => store.createApproval({
    namespace: 'team',
    requestedBy: 'oidc:alice',
    client: 'claude-ai',
    upstream: 'hr',
    tool: 'delete_employee',
    arguments: { id },
    argumentsDigest: argumentsDigest({ id }),
    mode: 'out-of-band',
    expiresInSeconds: 3600
  })
  const first = await ask('e1')
  const second = await ask('e2')

  const listed = await runCli(env, 'approvals', 'list')
  t.equal(listed.code, 0, listed.stderr)
  const lines = listed.stdout.trim().split('\n')
  t.equal(lines.length, 2)
  t.match(lines[0], new RegExp(`^${first.id}\\tpending\\thr__delete_employee \\{"id":"e1"\\}\\tasked by oidc:alice via claude-ai at .*\\texpires `), 'id, state, the call with its arguments, who asked')

  const approved = await runCli(env, 'approvals', 'approve', '--id', first.id, '--as', 'bob')
  t.equal(approved.code, 0, approved.stderr)
  t.match(approved.stdout, /Approved apr_\w+: hr__delete_employee runs once, when the model asks with get_approval.*decided by cli:bob/)
  t.match(await store.findApprovalById(first.id), { status: 'approved', decidedBy: 'cli:bob' })

  const rejected = await runCli({ ...env, USER: 'carol', LOGNAME: 'carol' }, 'approvals', 'reject', '--id', second.id)
  t.equal(rejected.code, 0, rejected.stderr)
  t.match(rejected.stdout, /Rejected .*never runs/)
  const decider = (await store.findApprovalById(second.id))?.decidedBy
  t.match(decider, /^cli:\S+$/, 'without --as: the OS user who ran it')

  const again = await runCli(env, 'approvals', 'approve', '--id', second.id)
  t.equal(again.code, 1)
  t.match(again.stderr, /is not pending: it is rejected \(decided by cli:/)
  t.equal((await store.findApprovalById(second.id))?.status, 'rejected', 'a decision is final')

  const [none, all] = await Promise.all([runCli(env, 'approvals', 'list'), runCli(env, 'approvals', 'list', '--all')])
  t.equal(none.stdout, 'No pending approvals.\n')
  t.match(all.stdout, /\tapproved\t.*decided by cli:bob/)
  t.match(all.stdout, /\trejected\thr__delete_employee\t/, 'a rejected call keeps no arguments')

  // Independent refusals, run side by side.
  const [unknown, usage, badId, badName] = await Promise.all([
    runCli(env, 'approvals', 'approve', '--id', 'apr_AAAAAAAAAAAAAAAA'),
    runCli(env, 'approvals', 'approve'),
    runCli(env, 'approvals', 'approve', '--id', "x'; drop table gateway_approvals"),
    runCli(env, 'approvals', 'reject', '--id', first.id, '--as', 'bob smith')
  ])
  t.equal(unknown.code, 1)
  t.match(unknown.stderr, /No approval with id/)
  t.equal(usage.code, 2)
  t.match(usage.stderr, /needs --id/)
  t.equal(badId.code, 2, 'an id that is no approval id is a usage error')
  t.equal(badName.code, 2, '--as is a plain name')
})

test('gateway identity-key prints the key one upstream verifies its principal JWTs with', async (t) => {
  const masterKey = 'gateway-identity-key-0123456789abcdef'
  const [hr, finance, missing, badName] = await Promise.all([
    runCli({ GATEWAY_IDENTITY_KEY: masterKey }, 'gateway', 'identity-key', '--upstream', 'hr'),
    runCli({ GATEWAY_IDENTITY_KEY: masterKey }, 'gateway', 'identity-key', '--upstream', 'finance'),
    runCli({}, 'gateway', 'identity-key', '--upstream', 'hr'),
    runCli({ GATEWAY_IDENTITY_KEY: masterKey }, 'gateway', 'identity-key', '--upstream', 'hr__x')
  ])
  t.equal(hr.code, 0)
  t.equal(hr.stdout, `${identityKeyFor(masterKey, 'hr')}\n`, 'the key the gateway signs hr\'s JWTs with')
  t.not(hr.stdout, finance.stdout, 'every upstream has its own')
  t.notMatch(hr.stdout, new RegExp(masterKey), 'GATEWAY_IDENTITY_KEY itself is never printed')
  t.equal(missing.code, 2)
  t.match(missing.stderr, /GATEWAY_IDENTITY_KEY must be set/)
  t.equal(badName.code, 2, 'a name that is no upstream name is a usage error')
})
