-- The built-in OAuth 2.1 authorization server (OAUTH_SERVER=on): what oidc-provider stores through
-- its adapter (oauth/adapter.ts), the signing and cookie keys every instance shares, the namespace
-- each grant was given on the consent page, and the owner's password hash.

-- One row per oidc-provider model instance. Models whose id is a bearer secret (authorization
-- codes, refresh tokens, sessions, interactions) are stored under the SHA-256 of the id, never the
-- id itself; clients and grants under their id, so that `oauth clients|grants` can name them.
create table oauth_payloads (
  model       text        not null,
  id          text        not null,
  payload     jsonb       not null,
  grant_id    text,
  uid         text,
  expires_at  timestamptz,
  consumed_at timestamptz,
  created_at  timestamptz not null default now(),
  primary key (model, id)
);

create index oauth_payloads_grant_id on oauth_payloads (grant_id) where grant_id is not null;
create index oauth_payloads_uid on oauth_payloads (uid) where uid is not null;
create index oauth_payloads_expires_at on oauth_payloads (expires_at) where expires_at is not null;

-- Keys: `sign` keys (private JWKs, ES256) sign access tokens; the one with the latest signs_from
-- that has passed signs, the others still verify until retire_at. `cookie` keys sign the
-- authorization server's cookies.
create table oauth_keys (
  kid        text        primary key,
  use        text        not null,
  jwk        jsonb       not null,
  signs_from timestamptz not null default now(),
  retire_at  timestamptz,
  created_at timestamptz not null default now(),
  constraint oauth_keys_use check (use in ('sign', 'cookie'))
);

-- What the owner chose on the consent page that oidc-provider's grant has no field for.
create table oauth_grant_bindings (
  grant_id     text        primary key,
  namespace    text        not null,
  -- Set when the owner signed in with an API token: revoking that token revokes the grant.
  api_token_id uuid        references api_tokens (id) on delete cascade,
  subject      text        not null,
  created_at   timestamptz not null default now(),
  constraint oauth_grant_bindings_namespace_length check (char_length(namespace) between 1 and 255)
);

create index oauth_grant_bindings_api_token on oauth_grant_bindings (api_token_id) where api_token_id is not null;

-- The owner's sign-in password (scrypt), set with `node dist/cli.js oauth set-password`.
create table oauth_owner (
  singleton     boolean     primary key default true,
  password_hash text        not null,
  updated_at    timestamptz not null default now(),
  constraint oauth_owner_singleton check (singleton)
);
