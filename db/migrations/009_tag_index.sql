-- list_context by tag (see list in context-store.ts): one row per tag of each live entry, in key
-- order under (namespace, tag), so that a tag's first page is an index range rather than a walk
-- of the namespace's keys until enough entries with the tag turned up (on 100,000 entries a
-- common tag's page read up to 4,400 entries and took 8-24 ms; through this table 1.5 ms).
--
-- Safe on a large, busy table, in the way of 005: the rows are filled and indexed while other
-- instances keep reading and writing (nothing here locks context_entries against either); only
-- creating the triggers (at the end) holds writes of context_entries (never reads) until this
-- transaction commits, for the catch-up with the changes made meanwhile. README "Upgrading" has
-- the measured times.

create table context_tags (
  namespace text not null,
  tag       text not null,
  key       text collate "C" not null
);

-- 1. The existing entries' tags (delete tombstones have none).
insert into context_tags (namespace, tag, key)
select distinct e.namespace, t.tag, e.key
from context_entries e cross join unnest(e.tags) as t(tag)
where e.expires_at is distinct from '-infinity';

set local maintenance_work_mem = '256MB';
alter table context_tags add primary key (namespace, tag, key);
-- Before the triggers, so that it does not hold writes: the catch-up changes few rows.
analyze context_tags;

-- Kept once per statement, over its transition tables (as 007 keeps the search rows): the tags an
-- entry gained are added, the ones it lost (or all, when it is deleted or becomes a tombstone)
-- removed. A write that keeps an entry's tags changes nothing here.
create function context_tags_sync() returns trigger
language plpgsql as $$
begin
  if tg_op = 'INSERT' then
    insert into context_tags (namespace, tag, key)
    select distinct n.namespace, t.tag, n.key
    from new_rows n cross join unnest(n.tags) as t(tag)
    where n.expires_at is distinct from '-infinity'
    on conflict do nothing;
  elsif tg_op = 'DELETE' then
    delete from context_tags c
    using old_rows o cross join unnest(o.tags) as t(tag)
    where c.namespace = o.namespace and c.tag = t.tag and c.key = o.key;
  else
    delete from context_tags c
    using (
      select o.namespace, t.tag, o.key from old_rows o cross join unnest(o.tags) as t(tag)
      where o.expires_at is distinct from '-infinity'
      except
      select n.namespace, t.tag, n.key from new_rows n cross join unnest(n.tags) as t(tag)
      where n.expires_at is distinct from '-infinity'
    ) as lost
    where c.namespace = lost.namespace and c.tag = lost.tag and c.key = lost.key;
    insert into context_tags (namespace, tag, key)
    select namespace, tag, key from (
      select n.namespace, t.tag, n.key from new_rows n cross join unnest(n.tags) as t(tag)
      where n.expires_at is distinct from '-infinity'
      except
      select o.namespace, t.tag, o.key from old_rows o cross join unnest(o.tags) as t(tag)
      where o.expires_at is distinct from '-infinity'
    ) as gained
    on conflict do nothing;
  end if;
  return null;
end
$$;

-- 2. From here on writes of context_entries wait until this transaction commits (reads do not).
create trigger context_tags_sync_insert after insert on context_entries
referencing new table as new_rows for each statement execute function context_tags_sync();
create trigger context_tags_sync_update after update on context_entries
referencing old table as old_rows new table as new_rows for each statement execute function context_tags_sync();
create trigger context_tags_sync_delete after delete on context_entries
referencing old table as old_rows for each statement execute function context_tags_sync();

-- 3. Catch up with what other instances changed during step 1.
delete from context_tags c
where not exists (
  select from context_entries e
  where e.namespace = c.namespace and e.key = c.key and e.expires_at is distinct from '-infinity' and c.tag = any (e.tags)
);

-- An anti join: a third of the time an EXCEPT took, while writes wait.
insert into context_tags (namespace, tag, key)
select e.namespace, t.tag, e.key
from context_entries e cross join unnest(e.tags) as t(tag)
where e.expires_at is distinct from '-infinity'
  and not exists (select from context_tags c where c.namespace = e.namespace and c.tag = t.tag and c.key = e.key)
on conflict do nothing;
