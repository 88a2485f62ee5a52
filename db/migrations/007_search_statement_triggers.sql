-- Search rows (context_search, search_terms) kept once per statement instead of once per row.
-- Migration 005's row trigger cost 0.4 ms a row on PostgreSQL and 1.3 ms on the embedded
-- database, 15-50 times the insert itself, so an import of 10,000 keys spent over a minute in it.
-- The same work done set-wise over the statement's transition tables costs a single-row write
-- about what the row trigger did, and a batch a fraction. Replacing the trigger and its function
-- takes a brief lock on context_entries (no rewrite, nothing re-indexed).

drop trigger context_search_sync on context_entries;
drop function context_search_sync();

-- Makes (or remakes) the search row and adds the new words of each given entry; how many.
create function context_search_index(entries context_entries[]) returns bigint
language sql as $$
  with changed as (
    select e.namespace, e.key, e.version, e.updated_at, e.expires_at, e.tags,
           context_search_vector((select language from search_settings), e.key, e.tags, e.content) as vector
    from unnest(entries) as e
  ), added as (
    -- The words an entry did not have before (search_terms_of spelt out: a function call per
    -- entry costs more than the filter), each one index probe (a scalar subquery, which the
    -- planner does not turn into a hash join over the whole vocabulary).
    select distinct c.namespace, t.term
    from changed c
    cross join lateral (
      select term from unnest(tsvector_to_array(c.vector)) as term where char_length(term) between 3 and 64 and term ~ '[[:alpha:]]'
      except
      select unnest(tsvector_to_array(s.search_vector)) from context_search s where s.namespace = c.namespace and s.key = c.key
    ) as t
    where (select true from search_terms s where s.namespace = c.namespace and s.term = t.term limit 1) is null
  ), vocabulary as (
    insert into search_terms (namespace, term) select namespace, term from added
  ), indexed as (
    insert into context_search (namespace, key, version, updated_at, expires_at, tags, search_vector)
    select namespace, key, version, updated_at, expires_at, tags, vector from changed
    on conflict (namespace, key) do update set
      version = excluded.version, updated_at = excluded.updated_at, expires_at = excluded.expires_at,
      tags = excluded.tags, search_vector = excluded.search_vector
    returning 1
  )
  select count(*) from indexed
$$;

-- A delete tombstone (expires_at '-infinity') or a removed row leaves the search; an update that
-- kept key, content and tags only moves the search row's version, time and expiry; anything else
-- is indexed again.
create function context_search_sync() returns trigger
language plpgsql as $$
declare
  indexed bigint;
begin
  if tg_op = 'DELETE' then
    delete from context_search s using old_rows o where s.namespace = o.namespace and s.key = o.key;
    return null;
  end if;
  delete from context_search s using new_rows n where n.expires_at = '-infinity' and s.namespace = n.namespace and s.key = n.key;
  if tg_op = 'INSERT' then
    indexed := context_search_index(array(select n::context_entries from new_rows n where n.expires_at is distinct from '-infinity'));
    return null;
  end if;
  with kept as (
    update context_search s set version = n.version, updated_at = n.updated_at, expires_at = n.expires_at
    from new_rows n join old_rows o on o.namespace = n.namespace and o.key = n.key
    where s.namespace = n.namespace and s.key = n.key and n.expires_at is distinct from '-infinity'
      and n.content = o.content and n.tags = o.tags
    returning s.namespace, s.key
  )
  select context_search_index(array(
    select n::context_entries from new_rows n
    where n.expires_at is distinct from '-infinity'
      and not exists (select from kept k where k.namespace = n.namespace and k.key = n.key)
  )) into indexed;
  return null;
end
$$;

-- A trigger with transition tables serves one event.
create trigger context_search_sync_insert after insert on context_entries
referencing new table as new_rows for each statement execute function context_search_sync();
create trigger context_search_sync_update after update on context_entries
referencing old table as old_rows new table as new_rows for each statement execute function context_search_sync();
create trigger context_search_sync_delete after delete on context_entries
referencing old table as old_rows for each statement execute function context_search_sync();
