-- The gateway (UPSTREAMS_FILE): the audit of every upstream call, the approvals of destructive
-- calls, the request states of 2026-07-28 input-required answers that were used once, and the key
-- that signs those states. All SQL is in db/gateway-store.ts.
--
-- Like the context tables, the per-call tables are keyed by namespace first (the calling
-- principal's home namespace), so Citus can distribute them by namespace; gateway_state_keys is
-- small and read everywhere (a reference table).

-- One row per upstream call, whatever its outcome: never the arguments, only their SHA-256.
create table gateway_calls (
  namespace        text        not null,
  id               bigint      generated always as identity,
  at               timestamptz not null default now(),
  principal        text        not null,
  client           text,
  upstream         text        not null,
  tool             text        not null,
  arguments_digest text        not null,
  outcome          text        not null,
  code             text,
  attempts         integer     not null,
  duration_ms      integer     not null,
  approval_id      text,
  primary key (namespace, id),
  constraint gateway_calls_digest check (arguments_digest ~ '^[0-9a-f]{64}$'),
  constraint gateway_calls_attempts check (attempts >= 0),
  constraint gateway_calls_duration check (duration_ms >= 0)
);

create index gateway_calls_at on gateway_calls (at);

-- A call that waits for a person (out-of-band: `cli approvals approve|reject`), or one a client
-- answered in-band (elicitation, input-required). `arguments` is kept only while someone has to
-- see or run them (pending, approved, running); it is cleared once the call is done, rejected or
-- expired, leaving the digest. `outcome` is the result of the call that ran, returned to every
-- later get_approval.
create table gateway_approvals (
  namespace        text        not null,
  id               text        not null,
  requested_by     text        not null,
  client           text,
  upstream         text        not null,
  tool             text        not null,
  arguments        jsonb,
  arguments_digest text        not null,
  mode             text        not null,
  status           text        not null default 'pending',
  requested_at     timestamptz not null default now(),
  expires_at       timestamptz not null,
  decided_by       text,
  decided_at       timestamptz,
  started_at       timestamptz,
  completed_at     timestamptz,
  outcome          jsonb,
  outcome_code     text,
  primary key (namespace, id),
  constraint gateway_approvals_mode check (mode in ('out-of-band', 'elicitation', 'input-required')),
  constraint gateway_approvals_status check (status in ('pending', 'approved', 'rejected', 'expired', 'running', 'done')),
  constraint gateway_approvals_digest check (arguments_digest ~ '^[0-9a-f]{64}$'),
  constraint gateway_approvals_decided check ((decided_at is null) = (decided_by is null))
);

create index gateway_approvals_pending on gateway_approvals (expires_at) where status = 'pending';
create index gateway_approvals_by_id on gateway_approvals (id);

-- The 2026-07-28 request states that were answered: a state is accepted once (replay refused).
-- Kept until the state itself has expired, then purged.
create table gateway_used_states (
  namespace  text        not null,
  state_id   text        not null,
  expires_at timestamptz not null,
  used_at    timestamptz not null default now(),
  primary key (namespace, state_id)
);

create index gateway_used_states_expires_at on gateway_used_states (expires_at);

-- The HMAC key of request states, shared by every instance (the first to need one creates it).
create table gateway_state_keys (
  kid        text        primary key,
  secret     bytea       not null,
  created_at timestamptz not null default now(),
  constraint gateway_state_keys_length check (octet_length(secret) >= 32)
);
