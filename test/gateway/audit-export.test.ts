import { Writable } from 'node:stream'
import { test } from 'tap'
import { exportBackup, importBackup, ImportError } from '../../db/backup.js'
import { createContextStore } from '../../db/context-store.js'
import { createGatewayStore } from '../../db/gateway-store.js'
import { argumentsDigest } from '../../gateway/approvals.js'
import { testDatabase } from '../db-helper.js'
import { runCli } from '../process-helper.js'

class StringSink extends Writable {
  text = ''
  override _write (chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    this.text += chunk.toString('utf8')
    done()
  }
}

async function exportText (sql: Parameters<typeof exportBackup>[0], namespace?: string): Promise<string> {
  const sink = new StringSink()
  await exportBackup(sql, sink, { serverVersion: 'test', rowsPerFetch: 2, ...(namespace !== undefined && { namespace }) })
  return sink.text
}

async function * input (text: string): AsyncGenerator<string> {
  yield text
}

const lineOf = (text: string) => text.trimEnd().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>)

test('cli export carries the gateway\'s audit and approvals (never arguments); import restores them; old exports still import', async (t) => {
  const source = await testDatabase(t)
  const context = createContextStore(source.sql, { maxContentBytes: 100_000 })
  await context.write('team', 'notes', 'hello', {}, { principal: 'token:ci', client: null })
  const gateway = createGatewayStore(source.sql)

  const plain = await exportText(source.sql)
  t.match(lineOf(plain)[0], { type: 'header', format_version: 1 }, 'no gateway rows: format version 1, as older servers read it')
  t.same(lineOf(plain).at(-1), { type: 'end', entries: 1, versions: 1 })

  const secret = { id: 'e42', reason: 'top secret reason' }
  for (let index = 0; index < 3; index++) {
    await gateway.recordCall({ namespace: index === 2 ? 'other' : 'team', principal: 'oidc:alice', client: 'claude-ai', upstream: 'hr', tool: 'delete_employee', argumentsDigest: argumentsDigest(secret), outcome: index === 0 ? 'pending' : 'ok', code: null, attempts: 1, durationMs: 5, approvalId: null })
  }
  const waiting = await gateway.createApproval({ namespace: 'team', requestedBy: 'oidc:alice', client: 'claude-ai', upstream: 'hr', tool: 'delete_employee', arguments: secret, argumentsDigest: argumentsDigest(secret), mode: 'out-of-band', expiresInSeconds: 3600 })
  const decided = await gateway.createApproval({ namespace: 'team', requestedBy: 'oidc:alice', client: null, upstream: 'hr', tool: 'delete_employee', arguments: secret, argumentsDigest: argumentsDigest(secret), mode: 'out-of-band', expiresInSeconds: 3600 })
  await gateway.decideApproval(decided.id, 'approved', 'cli:bob')
  await gateway.claimApproval('team', decided.id, 'oidc:alice')
  await gateway.completeApproval(decided.id, { content: [{ type: 'text', text: 'deleted e42' }] }, null)

  const text = await exportText(source.sql)
  t.notMatch(text, /top secret reason/, 'no argument is exported')
  const lines = lineOf(text)
  t.match(lines[0], { type: 'header', format_version: 2 })
  t.same(lines.map((line) => line.type), ['header', 'entry', 'version', 'upstream_call', 'upstream_call', 'upstream_call', 'approval', 'approval', 'end'], 'the gateway lines after the entries')
  t.match(lines.find((line) => line.type === 'upstream_call' && line.outcome === 'pending'), { namespace: 'team', principal: 'oidc:alice', upstream: 'hr', tool: 'delete_employee', arguments_digest: argumentsDigest(secret), outcome: 'pending', attempts: 1, duration_ms: 5 })
  t.match(lines.find((line) => line.type === 'approval' && line.id === decided.id), { status: 'done', requested_by: 'oidc:alice', decided_by: 'cli:bob', decided_at: /Z$/, outcome: { content: [{ text: 'deleted e42' }] } }, 'who asked, who decided, when')
  t.same(lines.at(-1), { type: 'end', entries: 1, versions: 1, upstream_calls: 3, approvals: 2 })
  const other = lineOf(await exportText(source.sql, 'other'))
  t.same(other.map((line) => line.type), ['header', 'upstream_call', 'end'], '--namespace: that namespace\'s rows only')

  const target = await testDatabase(t)
  const summary = await importBackup(target.sql, input(text))
  t.match(summary, { imported: 1, importedUpstreamCalls: 3, importedApprovals: 2 })
  const targetGateway = createGatewayStore(target.sql)
  t.equal((await targetGateway.findApproval('team', waiting.id))?.status, 'expired', 'a waiting approval comes back expired: its arguments are not in the backup')
  t.match(await targetGateway.findApproval('team', decided.id), { status: 'done', decidedBy: 'cli:bob', outcome: { content: [{ text: 'deleted e42' }] } })
  const again = await importBackup(target.sql, input(text))
  t.match(again, { unchanged: 1, importedUpstreamCalls: 0, importedApprovals: 0 }, 'a second run adds nothing')
  await targetGateway.recordCall({ namespace: 'team', principal: 'p', client: null, upstream: 'hr', tool: 't', argumentsDigest: argumentsDigest({}), outcome: 'ok', code: null, attempts: 1, durationMs: 1, approvalId: null })
  t.equal((await target.sql`select count(*)::int as n from gateway_calls`)[0]?.n, 4, 'new audit rows after an import take new ids')

  await t.test('refused: gateway lines under a version-1 header, and counts that do not add up', async (t) => {
    const downgraded = text.replace('"format_version":2', '"format_version":1')
    await t.rejects(importBackup(target.sql, input(downgraded)), /needs format_version 2/)
    const cut = lines.filter((line, index) => !(line.type === 'upstream_call' && index === 3)).map((line) => JSON.stringify(line)).join('\n') + '\n'
    const error = await importBackup(target.sql, input(cut)).catch((caught: unknown) => caught)
    t.ok(error instanceof ImportError)
    t.match((error as Error).message, /the end line counts 3 upstream calls and 2 approvals, but the file holds 2 and 2/)
    const bad = text.replace(argumentsDigest(secret), 'not-a-digest')
    await t.rejects(importBackup(target.sql, input(bad)), /arguments_digest/)
  })

  await t.test('the CLI says what it exported and imported', async (t) => {
    t.setTimeout(60_000)
    const exported = await runCli({ DATABASE_URL: source.url }, 'export')
    t.equal(exported.code, 0, exported.stderr)
    t.match(exported.stderr, /Exported 1 entries with 1 versions, 3 upstream calls \(audit\) and 2 approvals\./)
  })
})
