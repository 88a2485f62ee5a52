-- context:admin on an API token is admin of the token's namespace only, unless the token was
-- created as a global admin (`cli token create --global-admin`). Until now every API token with
-- context:admin was admin of every namespace; those keep that power (`token list` shows them as
-- global admins), so no running deployment loses access on upgrade.
alter table api_tokens add column global_admin boolean not null default false;
update api_tokens set global_admin = true where 'context:admin' = any (scopes);
