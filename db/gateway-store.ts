import { randomBytes } from 'node:crypto'
import type postgres from 'postgres'

// All SQL of the gateway: the audit of upstream calls, approvals, used request states and the
// request-state key (db/migrations/008_gateway.sql). Every state change of an approval is one
// conditional UPDATE, so two instances (or a CLI and a server) never both move the same approval:
// the one whose UPDATE matched the row won; the other gets no row back.

export type ApprovalMode = 'out-of-band' | 'elicitation' | 'input-required'
export type ApprovalStatus = 'pending' | 'approved' | 'rejected' | 'expired' | 'running' | 'done'

/** One upstream call as the audit stores it: never the arguments, only their digest. */
export interface CallAuditRow {
  namespace: string
  principal: string
  client: string | null
  upstream: string
  tool: string
  argumentsDigest: string
  outcome: string
  code: string | null
  attempts: number
  durationMs: number
  approvalId: string | null
}

export interface Approval {
  namespace: string
  id: string
  requestedBy: string
  client: string | null
  upstream: string
  tool: string
  /** Kept while pending, approved or running; null once done, rejected or expired. */
  arguments: Record<string, unknown> | null
  argumentsDigest: string
  mode: ApprovalMode
  /** `pending` past its expiry reads as `expired` (expiredPending marks it so). */
  status: ApprovalStatus
  requestedAt: Date
  expiresAt: Date
  decidedBy: string | null
  decidedAt: Date | null
  startedAt: Date | null
  completedAt: Date | null
  /** The stored result of the call that ran (a ToolCallResult). */
  outcome: Record<string, unknown> | null
  outcomeCode: string | null
}

export interface NewApproval {
  namespace: string
  requestedBy: string
  client: string | null
  upstream: string
  tool: string
  arguments: Record<string, unknown>
  argumentsDigest: string
  mode: ApprovalMode
  expiresInSeconds: number
}

export type DecideResult =
  | { status: 'decided', approval: Approval }
  | { status: 'not_found' }
  /** Decided before (or running, done), or expired: the approval as it is. */
  | { status: 'not_pending', approval: Approval }

interface ApprovalRow {
  namespace: string
  id: string
  requested_by: string
  client: string | null
  upstream: string
  tool: string
  arguments: Record<string, unknown> | null
  arguments_digest: string
  mode: ApprovalMode
  status: ApprovalStatus
  requested_at: Date
  expires_at: Date
  decided_by: string | null
  decided_at: Date | null
  started_at: Date | null
  completed_at: Date | null
  outcome: Record<string, unknown> | null
  outcome_code: string | null
}

/** Approval ids: 96 random bits, URL- and shell-safe, recognisable in a log. */
export function newApprovalId (): string {
  return `apr_${randomBytes(12).toString('base64url').replace(/[-_]/g, (c) => (c === '-' ? 'x' : 'z'))}`
}

export const APPROVAL_ID_PATTERN = '^apr_[A-Za-z0-9]{16}$'

function approvalOf (row: ApprovalRow): Approval {
  return {
    namespace: row.namespace,
    id: row.id,
    requestedBy: row.requested_by,
    client: row.client,
    upstream: row.upstream,
    tool: row.tool,
    arguments: row.arguments,
    argumentsDigest: row.arguments_digest,
    mode: row.mode,
    status: row.status,
    requestedAt: row.requested_at,
    expiresAt: row.expires_at,
    decidedBy: row.decided_by,
    decidedAt: row.decided_at,
    startedAt: row.started_at,
    completedAt: row.completed_at,
    outcome: row.outcome,
    outcomeCode: row.outcome_code
  }
}

/** An audit row as `cli export` writes it: its columns, times as ISO text (the backup's upstream_call line but for `type`). */
export interface ExportedCall {
  namespace: string
  id: number
  at: string
  principal: string
  client: string | null
  upstream: string
  tool: string
  arguments_digest: string
  outcome: string
  code: string | null
  attempts: number
  duration_ms: number
  approval_id: string | null
}

/** An approval as `cli export` writes it: its columns without the arguments, times as ISO text (the backup's approval line but for `type`). */
export interface ExportedApproval extends Omit<ApprovalRow, 'arguments' | 'requested_at' | 'expires_at' | 'decided_at' | 'started_at' | 'completed_at'> {
  requested_at: string
  expires_at: string
  decided_at: string | null
  started_at: string | null
  completed_at: string | null
}

export function createGatewayStore (sql: postgres.Sql) {
  const columns = sql`namespace, id, requested_by, client, upstream, tool, arguments, arguments_digest, mode,
    case when status in ('pending', 'approved') and expires_at <= now() then 'expired' else status end as status,
    requested_at, expires_at, decided_by, decided_at, started_at, completed_at, outcome, outcome_code`

  // Audit rows are written in batches: while one insert is in flight, the rows of the calls that
  // end meanwhile wait and go together in the next statement, so a busy gateway pays one round trip
  // per batch rather than one per call. Each call's promise settles when its own row's batch does.
  let waiting: Array<{ call: CallAuditRow, settle: (error?: unknown) => void }> = []
  let writing = false

  async function writeWaiting (): Promise<void> {
    writing = true
    while (waiting.length > 0) {
      const batch = waiting
      waiting = []
      const rows = batch.map(({ call }) => ({
        namespace: call.namespace,
        principal: call.principal,
        client: call.client,
        upstream: call.upstream,
        tool: call.tool,
        arguments_digest: call.argumentsDigest,
        outcome: call.outcome,
        code: call.code,
        attempts: call.attempts,
        duration_ms: Math.max(0, Math.round(call.durationMs)),
        approval_id: call.approvalId
      }))
      try {
        await sql`
          insert into gateway_calls (namespace, principal, client, upstream, tool, arguments_digest, outcome, code, attempts, duration_ms, approval_id)
          select namespace, principal, client, upstream, tool, arguments_digest, outcome, code, attempts, duration_ms, approval_id
          from rows from (jsonb_to_recordset(${sql.json(rows as unknown as postgres.JSONValue)})
            as (namespace text, principal text, client text, upstream text, tool text, arguments_digest text, outcome text, code text,
                attempts integer, duration_ms integer, approval_id text)) with ordinality as r
          order by r.ordinality`
        for (const { settle } of batch) settle()
      } catch (error) {
        for (const { settle } of batch) settle(error)
      }
    }
    writing = false
  }

  async function recordCall (call: CallAuditRow): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      waiting.push({ call, settle: (error) => { if (error === undefined) resolve(); else reject(error) } })
      if (!writing) writeWaiting().catch(() => {})
    })
  }

  /** A new approval: pending (out-of-band) until someone decides; in-band ones are created running (see createAnswered). */
  async function createApproval (approval: NewApproval): Promise<Approval> {
    const [row] = await sql<[ApprovalRow]>`
      insert into gateway_approvals (namespace, id, requested_by, client, upstream, tool, arguments, arguments_digest, mode, expires_at)
      values (${approval.namespace}, ${newApprovalId()}, ${approval.requestedBy}, ${approval.client}, ${approval.upstream}, ${approval.tool},
              ${sql.json(approval.arguments as postgres.JSONValue)}, ${approval.argumentsDigest}, ${approval.mode},
              now() + make_interval(secs => ${approval.expiresInSeconds}))
      returning ${columns}`
    return approvalOf(row)
  }

  /**
   * An approval a client gave in-band (elicitation accepted, input-required answered): recorded as
   * decided by `decidedBy` and running at once, so that the call's outcome is stored like any other.
   */
  async function createAnswered (approval: NewApproval, decidedBy: string): Promise<Approval> {
    const [row] = await sql<[ApprovalRow]>`
      insert into gateway_approvals (namespace, id, requested_by, client, upstream, tool, arguments, arguments_digest, mode, expires_at,
                                     status, decided_by, decided_at, started_at)
      values (${approval.namespace}, ${newApprovalId()}, ${approval.requestedBy}, ${approval.client}, ${approval.upstream}, ${approval.tool},
              ${sql.json(approval.arguments as postgres.JSONValue)}, ${approval.argumentsDigest}, ${approval.mode},
              now() + make_interval(secs => ${approval.expiresInSeconds}), 'running', ${decidedBy}, now(), now())
      returning ${columns}`
    return approvalOf(row)
  }

  /** An in-band refusal (elicitation declined or cancelled, input-required declined): recorded as rejected by `decidedBy`. */
  async function createRejected (approval: NewApproval, decidedBy: string): Promise<Approval> {
    const [row] = await sql<[ApprovalRow]>`
      insert into gateway_approvals (namespace, id, requested_by, client, upstream, tool, arguments, arguments_digest, mode, expires_at,
                                     status, decided_by, decided_at)
      values (${approval.namespace}, ${newApprovalId()}, ${approval.requestedBy}, ${approval.client}, ${approval.upstream}, ${approval.tool},
              null, ${approval.argumentsDigest}, ${approval.mode}, now(), 'rejected', ${decidedBy}, now())
      returning ${columns}`
    return approvalOf(row)
  }

  async function findApproval (namespace: string, id: string): Promise<Approval | null> {
    const rows = await sql<ApprovalRow[]>`select ${columns} from gateway_approvals where namespace = ${namespace} and id = ${id}`
    return rows[0] === undefined ? null : approvalOf(rows[0])
  }

  /** By id alone (the CLI knows no namespace). */
  async function findApprovalById (id: string): Promise<Approval | null> {
    const rows = await sql<ApprovalRow[]>`select ${columns} from gateway_approvals where id = ${id}`
    return rows[0] === undefined ? null : approvalOf(rows[0])
  }

  /** Pending approvals (not expired), oldest first; with `all`, every approval, newest first. */
  async function listApprovals (options: { all?: boolean, limit?: number } = {}): Promise<Approval[]> {
    const limit = options.limit ?? 100
    const rows = options.all === true
      ? await sql<ApprovalRow[]>`select ${columns} from gateway_approvals order by requested_at desc, id limit ${limit}`
      : await sql<ApprovalRow[]>`
          select ${columns} from gateway_approvals where status = 'pending' and expires_at > now()
          order by requested_at, id limit ${limit}`
    return rows.map(approvalOf)
  }

  /**
   * A person's decision on a pending approval. Approving gives the caller as long again to collect
   * it as the request had to wait (expires_at moves to now + that period); rejecting clears the
   * arguments. Only a pending, unexpired approval changes.
   */
  async function decideApproval (id: string, decision: 'approved' | 'rejected', decidedBy: string): Promise<DecideResult> {
    const rows = await sql<ApprovalRow[]>`
      update gateway_approvals set
        status = ${decision}, decided_by = ${decidedBy}, decided_at = now(),
        arguments = case when ${decision}::text = 'rejected' then null else arguments end,
        expires_at = case when ${decision}::text = 'approved' then now() + (expires_at - requested_at) else expires_at end
      where id = ${id} and status = 'pending' and expires_at > now()
      returning ${columns}`
    if (rows[0] !== undefined) return { status: 'decided', approval: approvalOf(rows[0]) }
    const current = await findApprovalById(id)
    return current === null ? { status: 'not_found' } : { status: 'not_pending', approval: current }
  }

  /**
   * Claims an approved approval for running: exactly one caller gets the row (with its arguments),
   * whatever runs at the same time; the approval is `running` from then on and never runs again.
   */
  async function claimApproval (namespace: string, id: string, requestedBy: string): Promise<Approval | null> {
    const rows = await sql<ApprovalRow[]>`
      update gateway_approvals set status = 'running', started_at = now()
      where namespace = ${namespace} and id = ${id} and requested_by = ${requestedBy} and status = 'approved' and expires_at > now()
      returning ${columns}`
    return rows[0] === undefined ? null : approvalOf(rows[0])
  }

  /** Stores the outcome of the call that ran; the arguments go. False if the approval was not running. */
  async function completeApproval (id: string, outcome: Record<string, unknown>, code: string | null): Promise<boolean> {
    const rows = await sql`
      update gateway_approvals set status = 'done', completed_at = now(), arguments = null,
        outcome = ${sql.json(outcome as postgres.JSONValue)}, outcome_code = ${code}
      where id = ${id} and status = 'running'
      returning id`
    return rows.length > 0
  }

  /**
   * An out-of-band approval whose claimed call never reached the upstream (breaker open, rate
   * limited, the tool gone, cancelled before it was sent) goes back to approved, to be collected
   * again until it expires. False when it was not such an approval.
   */
  async function releaseApproval (id: string): Promise<boolean> {
    const rows = await sql`
      update gateway_approvals set status = 'approved', started_at = null
      where id = ${id} and status = 'running' and mode = 'out-of-band' and arguments is not null
      returning id`
    return rows.length > 0
  }

  /** Marks pending and approved-but-uncollected approvals past their expiry as expired and clears their arguments. */
  async function expireApprovals (): Promise<number> {
    const rows = await sql`
      update gateway_approvals set status = 'expired', arguments = null
      where status in ('pending', 'approved') and expires_at <= now()
      returning id`
    return rows.length
  }

  async function countPending (): Promise<number> {
    const [row] = await sql<[{ count: number }]>`
      select count(*)::int as count from gateway_approvals where status = 'pending' and expires_at > now()`
    return row.count
  }

  /** Records a request state as used; false if it was used before (a replay). */
  async function useState (namespace: string, stateId: string, expiresAt: Date): Promise<boolean> {
    const rows = await sql`
      insert into gateway_used_states (namespace, state_id, expires_at) values (${namespace}, ${stateId}, ${expiresAt})
      on conflict do nothing
      returning state_id`
    return rows.length > 0
  }

  /** Un-uses a request state: what it answered never reached the upstream, so it may be answered again. */
  async function releaseState (namespace: string, stateId: string): Promise<void> {
    await sql`delete from gateway_used_states where namespace = ${namespace} and state_id = ${stateId}`
  }

  /**
   * Forgets used states whose expiry passed a while ago (a state past its expiry is refused
   * anyway). The while is for clocks: the instance judges expiry by its own clock, this purge by
   * the database's, and a state forgotten while an instance behind the database still takes it
   * could be used twice.
   */
  async function purgeUsedStates (): Promise<number> {
    const rows = await sql`delete from gateway_used_states where expires_at < now() - interval '10 minutes' returning state_id`
    return rows.length
  }

  /** The request-state HMAC key: created by the first instance that needs it, the same for all. */
  async function stateKey (): Promise<Buffer> {
    await sql`insert into gateway_state_keys (kid, secret) values ('state-initial', ${randomBytes(32)}) on conflict (kid) do nothing`
    const [row] = await sql<[{ secret: Buffer }]>`select secret from gateway_state_keys where kid = 'state-initial'`
    return Buffer.from(row.secret)
  }

  /** Whether there is anything for `cli export` to write (of one namespace, or any). */
  async function hasRows (namespace?: string): Promise<boolean> {
    const [row] = await sql<[{ any: boolean }]>`
      select exists (select from gateway_calls where ${namespace === undefined ? sql`true` : sql`namespace = ${namespace}`})
          or exists (select from gateway_approvals where ${namespace === undefined ? sql`true` : sql`namespace = ${namespace}`}) as any`
    return row.any
  }

  /** Every audit row, then every approval (never their arguments), in pages; for `cli export`. */
  async function exportRows (rowsPerFetch: number, onCalls: (rows: ExportedCall[]) => Promise<void>, onApprovals: (rows: ExportedApproval[]) => Promise<void>, namespace?: string): Promise<void> {
    await sql.begin('isolation level repeatable read read only', async (tx) => {
      const q = tx as unknown as postgres.Sql
      const inNamespace = namespace === undefined ? q`true` : q`namespace = ${namespace}`
      let after: { namespace: string, id: number } | undefined
      for (;;) {
        const rows = await q<Array<{
          namespace: string,
          id: string,
          at: string,
          principal: string,
          client: string | null,
          upstream: string,
          tool: string,
          arguments_digest: string,
          outcome: string,
          code: string | null,
          attempts: number,
          duration_ms: number,
          approval_id: string | null
        }>>`
          select namespace, id, to_char(at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as at, principal, client, upstream, tool,
                 arguments_digest, outcome, code, attempts, duration_ms, approval_id
          from gateway_calls
          where ${inNamespace} and ${after === undefined ? q`true` : q`(namespace, id) > (${after.namespace}, ${after.id})`}
          order by namespace, id limit ${rowsPerFetch}`
        if (rows.length === 0) break
        await onCalls(rows.map((row) => ({ ...row, id: Number(row.id) })))
        const last = rows.at(-1) as (typeof rows)[number]
        after = { namespace: last.namespace, id: Number(last.id) }
        if (rows.length < rowsPerFetch) break
      }
      let afterApproval: { namespace: string, id: string } | undefined
      for (;;) {
        const rows = await q<ApprovalRow[]>`
          select ${columns} from gateway_approvals
          where ${inNamespace} and ${afterApproval === undefined ? q`true` : q`(namespace, id) > (${afterApproval.namespace}, ${afterApproval.id})`}
          order by namespace, id limit ${rowsPerFetch}`
        if (rows.length === 0) break
        await onApprovals(rows.map(({ arguments: _arguments, ...row }) => ({
          ...row,
          requested_at: row.requested_at.toISOString(),
          expires_at: row.expires_at.toISOString(),
          decided_at: row.decided_at?.toISOString() ?? null,
          started_at: row.started_at?.toISOString() ?? null,
          completed_at: row.completed_at?.toISOString() ?? null
        })))
        const last = rows.at(-1) as ApprovalRow
        afterApproval = { namespace: last.namespace, id: last.id }
        if (rows.length < rowsPerFetch) break
      }
    })
  }

  /**
   * Restores exported rows (`cli import`); rows the database has (same namespace and id) are left
   * as they are. An approval that was still waiting (pending, approved) comes back expired: its
   * arguments are not in a backup, so it can never run.
   */
  async function importRows (calls: ExportedCall[], approvals: ExportedApproval[]): Promise<{ calls: number, approvals: number }> {
    return await sql.begin(async (tx) => {
      const q = tx as unknown as postgres.Sql
      let insertedCalls = 0
      if (calls.length > 0) {
        const rows = await q`
          insert into gateway_calls (namespace, id, at, principal, client, upstream, tool, arguments_digest, outcome, code, attempts, duration_ms, approval_id)
          overriding system value
          select * from jsonb_to_recordset(${q.json(calls as unknown as postgres.JSONValue)})
            as r(namespace text, id bigint, at timestamptz, principal text, client text, upstream text, tool text, arguments_digest text, outcome text, code text,
                 attempts integer, duration_ms integer, approval_id text)
          on conflict do nothing
          returning id`
        insertedCalls = rows.length
        // Ids given here must not come back from the identity later.
        await q`
          select setval(pg_get_serial_sequence('gateway_calls', 'id'),
                        greatest((select max(id) from gateway_calls), (select last_value from gateway_calls_id_seq)))`
      }
      let insertedApprovals = 0
      if (approvals.length > 0) {
        const rows = await q`
          insert into gateway_approvals (namespace, id, requested_by, client, upstream, tool, arguments, arguments_digest, mode, status, requested_at, expires_at,
                                         decided_by, decided_at, started_at, completed_at, outcome, outcome_code)
          select namespace, id, requested_by, client, upstream, tool, null, arguments_digest, mode,
                 case when status in ('pending', 'approved') then 'expired' else status end,
                 requested_at, expires_at, decided_by, decided_at, started_at, completed_at, outcome, outcome_code
          from jsonb_to_recordset(${q.json(approvals as unknown as postgres.JSONValue)})
            as r(namespace text, id text, requested_by text, client text, upstream text, tool text, arguments_digest text, mode text, status text,
                 requested_at timestamptz, expires_at timestamptz, decided_by text, decided_at timestamptz, started_at timestamptz, completed_at timestamptz,
                 outcome jsonb, outcome_code text)
          on conflict do nothing
          returning id`
        insertedApprovals = rows.length
      }
      return { calls: insertedCalls, approvals: insertedApprovals }
    })
  }

  return {
    hasRows,
    importRows,
    recordCall,
    createApproval,
    createAnswered,
    createRejected,
    findApproval,
    findApprovalById,
    listApprovals,
    decideApproval,
    claimApproval,
    completeApproval,
    releaseApproval,
    expireApprovals,
    countPending,
    useState,
    releaseState,
    purgeUsedStates,
    stateKey,
    exportRows
  }
}

export type GatewayStore = ReturnType<typeof createGatewayStore>
