import { test } from 'tap'
import { createGatewayStore, type NewApproval } from '../../db/gateway-store.js'
import { argumentsDigest } from '../../gateway/approvals.js'
import { testDatabase } from '../db-helper.js'

const args = { id: 'e42', reason: 'left' }

function request (overrides: Partial<NewApproval> = {}): NewApproval {
  return {
    namespace: 'team',
    requestedBy: 'oidc:alice',
    client: 'claude-ai',
    upstream: 'hr',
    tool: 'delete_employee',
    arguments: args,
    argumentsDigest: argumentsDigest(args),
    mode: 'out-of-band',
    expiresInSeconds: 3600,
    ...overrides
  }
}

test('gateway store: approvals move pending → approved → running → done once; rejected and expired never run', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createGatewayStore(sql)

  await t.test('approved: one claim wins among many at once, the outcome is stored and the arguments go', async (t) => {
    const approval = await store.createApproval(request())
    t.match(approval.id, /^apr_[A-Za-z0-9]{16}$/)
    t.equal(approval.status, 'pending')
    t.same(approval.arguments, args)
    t.ok((await store.listApprovals()).some((listed) => listed.id === approval.id), 'listed as pending')
    t.equal(await store.claimApproval('team', approval.id, 'oidc:alice'), null, 'a pending approval cannot be claimed')

    const decided = await store.decideApproval(approval.id, 'approved', 'cli:bob')
    t.equal(decided.status, 'decided')
    if (decided.status !== 'decided') return
    t.equal(decided.approval.status, 'approved')
    t.equal(decided.approval.decidedBy, 'cli:bob')
    t.ok(decided.approval.decidedAt instanceof Date)
    t.ok(decided.approval.expiresAt.getTime() > (decided.approval.decidedAt as Date).getTime() + 3500_000, 'approved: as long again to collect it')
    const again = await store.decideApproval(approval.id, 'rejected', 'cli:eve')
    t.equal(again.status, 'not_pending', 'a decision is final')

    t.equal(await store.claimApproval('team', approval.id, 'oidc:mallory'), null, 'only the principal that asked may claim it')
    t.equal(await store.claimApproval('other', approval.id, 'oidc:alice'), null, 'in its own namespace only')

    const claims = await Promise.all(Array.from({ length: 12 }, () => store.claimApproval('team', approval.id, 'oidc:alice')))
    const won = claims.filter((claim) => claim !== null)
    t.equal(won.length, 1, 'exactly one of 12 concurrent claims gets the approval')
    t.same(won[0]?.arguments, args, 'the claim carries the approved arguments')
    t.equal(won[0]?.status, 'running')

    t.ok(await store.completeApproval(approval.id, { content: [{ type: 'text', text: 'deleted e42' }] }, null))
    t.notOk(await store.completeApproval(approval.id, { content: [] }, null), 'completed once')
    const done = await store.findApproval('team', approval.id)
    t.equal(done?.status, 'done')
    t.equal(done?.arguments, null, 'arguments cleared once done')
    t.same(done?.outcome, { content: [{ type: 'text', text: 'deleted e42' }] })
    t.equal(await store.claimApproval('team', approval.id, 'oidc:alice'), null, 'never claimed again')
  })

  await t.test('rejected: arguments cleared, never claimable', async (t) => {
    const approval = await store.createApproval(request())
    const decided = await store.decideApproval(approval.id, 'rejected', 'cli:bob')
    t.equal(decided.status, 'decided')
    const found = await store.findApproval('team', approval.id)
    t.equal(found?.status, 'rejected')
    t.equal(found?.arguments, null)
    t.equal(await store.claimApproval('team', approval.id, 'oidc:alice'), null)
    t.notOk((await store.listApprovals()).some((listed) => listed.id === approval.id), 'no longer listed as pending')
  })

  await t.test('expired: reads as expired, cannot be decided or claimed, and is marked so with its arguments cleared', async (t) => {
    const approval = await store.createApproval(request({ expiresInSeconds: 0 }))
    t.equal((await store.findApproval('team', approval.id))?.status, 'expired')
    const decided = await store.decideApproval(approval.id, 'approved', 'cli:bob')
    t.equal(decided.status, 'not_pending')
    if (decided.status === 'not_pending') t.equal(decided.approval.status, 'expired')
    t.equal(await store.claimApproval('team', approval.id, 'oidc:alice'), null)
    t.ok(await store.expireApprovals() >= 1)
    const marked = await sql<Array<{ status: string, arguments: unknown }>>`select status, arguments from gateway_approvals where id = ${approval.id}`
    t.same(marked, [{ status: 'expired', arguments: null }])
    t.notOk((await store.listApprovals()).some((listed) => listed.id === approval.id))
    t.ok((await store.listApprovals({ all: true })).some((listed) => listed.id === approval.id), '--all lists it')
  })

  await t.test('a claimed call that never reached the upstream goes back to approved; an in-band one does not', async (t) => {
    const approval = await store.createApproval(request())
    await store.decideApproval(approval.id, 'approved', 'cli:bob')
    t.ok(await store.claimApproval('team', approval.id, 'oidc:alice'))
    t.ok(await store.releaseApproval(approval.id), 'released')
    t.equal((await store.findApproval('team', approval.id))?.status, 'approved')
    const again = await store.claimApproval('team', approval.id, 'oidc:alice')
    t.same(again?.arguments, args, 'claimed again, with its arguments')
    t.ok(await store.completeApproval(approval.id, { content: [] }, null))
    t.notOk(await store.releaseApproval(approval.id), 'a done approval is never released')
    const inBand = await store.createAnswered(request({ mode: 'elicitation' }), 'the client\'s user (in-band)')
    t.notOk(await store.releaseApproval(inBand.id), 'an in-band one is not released: the client asks again')
  })

  await t.test('unknown ids', async (t) => {
    t.same(await store.decideApproval('apr_AAAAAAAAAAAAAAAA', 'approved', 'cli:bob'), { status: 'not_found' })
    t.equal(await store.findApproval('team', 'apr_AAAAAAAAAAAAAAAA'), null)
  })

  await t.test('pending count, used request states, the state key', async (t) => {
    const before = await store.countPending()
    await store.createApproval(request())
    t.equal(await store.countPending(), before + 1)

    const expiresAt = new Date(Date.now() + 60_000)
    t.ok(await store.useState('team', 'state-1', expiresAt), 'first use accepted')
    t.notOk(await store.useState('team', 'state-1', expiresAt), 'second use refused (a replay)')
    const concurrent = await Promise.all(Array.from({ length: 8 }, () => store.useState('team', 'state-2', expiresAt)))
    t.equal(concurrent.filter(Boolean).length, 1, 'one of 8 concurrent uses accepted')
    await store.useState('team', 'state-old', new Date(Date.now() - 11 * 60_000))
    await store.useState('team', 'state-just-expired', new Date(Date.now() - 1000))
    t.ok(await store.purgeUsedStates() >= 1, 'states long past their expiry are purged')
    t.ok(await store.useState('team', 'state-old', expiresAt), 'the purged one is forgotten (using it again is a first use)')
    t.notOk(await store.useState('team', 'state-just-expired', expiresAt), 'one just past its expiry is kept a while (instances whose clock is behind the database may still take it)')
    t.ok(await store.useState('team', 'state-1', expiresAt) === false, 'an unexpired used state is kept')
    await store.useState('other', 'state-1', expiresAt)
    await store.releaseState('team', 'state-1')
    t.ok(await store.useState('team', 'state-1', expiresAt), 'a released state may be used again')
    t.notOk(await store.useState('other', 'state-1', expiresAt), 'the same id in another namespace is not released')

    const [key, again] = await Promise.all([store.stateKey(), store.stateKey()])
    t.equal(key.length, 32)
    t.same(key, again, 'every caller gets the same key')
  })

  await t.test('in-band records: answered ones run at once, refused ones are rejected', async (t) => {
    const answered = await store.createAnswered(request({ mode: 'elicitation' }), 'claude-ai\'s user (in-band)')
    t.equal(answered.status, 'running')
    t.equal(answered.decidedBy, 'claude-ai\'s user (in-band)')
    t.ok(await store.completeApproval(answered.id, { content: [] }, null))
    const refused = await store.createRejected(request({ mode: 'input-required' }), 'the client\'s user (in-band, decline)')
    t.equal(refused.status, 'rejected')
    t.equal(refused.arguments, null, 'a refused call keeps only the digest')
  })
})

test('gateway store: the audit keeps a digest, never the arguments, and exports in pages', async (t) => {
  const { sql } = await testDatabase(t)
  const store = createGatewayStore(sql)
  const digest = argumentsDigest({ secret: 'do-not-store' })
  for (let index = 0; index < 5; index++) {
    await store.recordCall({
      namespace: index % 2 === 0 ? 'a' : 'b',
      principal: 'token:ci',
      client: null,
      upstream: 'hr',
      tool: 'list_employees',
      argumentsDigest: digest,
      outcome: 'ok',
      code: null,
      attempts: 1,
      durationMs: 12.6,
      approvalId: null
    })
  }
  const rows = await sql`select * from gateway_calls`
  t.equal(rows.length, 5)
  t.notMatch(JSON.stringify(rows), /do-not-store/, 'no argument value is stored')
  t.equal(rows[0]?.duration_ms, 13)
  await t.rejects(store.recordCall({
    namespace: 'a', principal: 'p', client: null, upstream: 'hr', tool: 't', argumentsDigest: 'not-a-digest', outcome: 'ok', code: null, attempts: 1, durationMs: 1, approvalId: null
  }), 'a digest that is not SHA-256 hex is refused by the table')

  const approval = await store.createApproval(request({ arguments: { secret: 'do-not-export' }, argumentsDigest: digest }))
  const calls: unknown[] = []
  const approvals: unknown[] = []
  await store.exportRows(2, async (page) => { calls.push(...page) }, async (page) => { approvals.push(...page) })
  t.equal(calls.length, 5, 'every audit row, over three pages')
  t.match(calls[0], { namespace: 'a', upstream: 'hr', tool: 'list_employees', arguments_digest: digest, outcome: 'ok', attempts: 1, duration_ms: 13 })
  t.equal(approvals.length, 1)
  t.match(approvals[0], { id: approval.id, status: 'pending', requested_by: 'oidc:alice' })
  t.notMatch(JSON.stringify(approvals), /do-not-export/, 'approvals are exported without their arguments')
})
