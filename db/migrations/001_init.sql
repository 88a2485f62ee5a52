-- Initial schema. Must run unchanged on PostgreSQL 15+ and on PGlite: no extensions.

-- Keys use the "C" collation: they are ASCII-only by constraint, byte order is what users expect,
-- and with "C" the primary-key btree serves `key LIKE 'prefix%'`, `key > $after` and
-- `ORDER BY key` at once. A separate (namespace, key text_pattern_ops) index would be redundant
-- (text_pattern_ops exists for non-C collations only).
create table context_entries (
  namespace  text        not null,
  key        text        collate "C" not null,
  content    text        not null,
  version    bigint      not null,
  tags       text[]      not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  updated_by text        not null,
  client     text,
  expires_at timestamptz,
  primary key (namespace, key),
  constraint context_entries_namespace_length check (char_length(namespace) between 1 and 255),
  constraint context_entries_key_format check (char_length(key) between 1 and 255 and key ~ '^[A-Za-z0-9_.:/-]+$'),
  constraint context_entries_version_positive check (version >= 1)
);

create index context_entries_tags on context_entries using gin (tags);

-- One row per version of a key, written in the same statement as the change itself.
--
-- Versioning of deletes: a delete gets its OWN version, one above the version it deleted
-- (v1 create, v2 update, v3 delete, v4 create after recreating). So versions of a key are unique
-- in history, never repeat and never go backwards, and a recreated key continues from the highest
-- version ever used (max(version) in this table). Delete rows carry content NULL.
create table context_history (
  id        bigserial   primary key,
  namespace text        not null,
  key       text        collate "C" not null,
  version   bigint      not null,
  action    text        not null,
  content   text,
  tags      text[]      not null default '{}',
  actor     text        not null,
  client    text,
  at        timestamptz not null default now(),
  constraint context_history_action check (action in ('create', 'update', 'append', 'delete', 'restore')),
  constraint context_history_content_only_for_delete_is_null check ((action = 'delete') = (content is null)),
  constraint context_history_version_positive check (version >= 1),
  constraint context_history_key_version unique (namespace, key, version)
);

create table api_tokens (
  id           uuid        primary key default gen_random_uuid(),
  name         text        not null,
  hash         text        not null unique,
  namespace    text        not null,
  scopes       text[]      not null,
  created_at   timestamptz not null default now(),
  last_used_at timestamptz,
  revoked_at   timestamptz,
  constraint api_tokens_name_length check (char_length(name) between 1 and 255),
  constraint api_tokens_namespace_length check (char_length(namespace) between 1 and 255)
);

-- A name belongs to one active token; a revoked token's name can be given to a new one.
create unique index api_tokens_active_name on api_tokens (name) where revoked_at is null;

create table revoked_jtis (
  jti        text        primary key,
  expires_at timestamptz not null
);

create index revoked_jtis_expires_at on revoked_jtis (expires_at);
