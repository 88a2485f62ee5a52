-- Search (search_context): a weighted full-text vector per entry, and a per-namespace vocabulary
-- of the words in those vectors with a trigram index, through which a misspelt or partial word
-- of a query finds the words entries really use (see search in context-store.ts).
--
-- Safe on a large, busy table: nothing here rewrites or locks context_entries for long. The
-- vectors live in a table of their own, filled while instances of the previous release keep
-- reading and writing; only creating the trigger (at the end) holds writes of context_entries
-- (never reads) until this transaction commits, for the catch-up with the changes made meanwhile.
-- README "Search" has the measured times.

-- Trusted since PostgreSQL 13: the database owner may create it. PGlite loads it in db/embedded.ts.
create extension if not exists pg_trgm;

-- The text search configuration of every vector and query (SEARCH_LANGUAGE; the server applies a
-- change at start: applySearchLanguage in context-store.ts). One row.
create table search_settings (
  only_row boolean  primary key default true,
  language regconfig not null default 'simple',
  constraint search_settings_one_row check (only_row)
);
insert into search_settings default values;

-- Key (weight A), tags (B) and content (C). A "/" separates words (so "deploy/fly.toml" yields
-- "deploy" and "fly.toml" rather than one path token); key and tags are also split at every
-- punctuation they may hold ("db/context-store.ts" also yields "context", "store", "ts"). Content
-- beyond 100,000 characters is not indexed: a tsvector holds at most 1 MB, and 100,000 characters
-- of the most varied text stay far below that.
create function context_search_vector(language regconfig, key text, tags text[], content text) returns tsvector
language sql immutable parallel safe as $$
  select setweight(to_tsvector(language, translate(key, '/', ' ')) || to_tsvector(language, translate(key, '/:_.-', '     ')), 'A')
      || setweight(to_tsvector(language, translate(array_to_string(tags, ' '), '/', ' '))
                   || to_tsvector(language, translate(array_to_string(tags, ' '), '/:_.-', '     ')), 'B')
      || setweight(to_tsvector(language, translate(left(content, 100000), '/', ' ')), 'C')
$$;

-- The words of a vector that go into the vocabulary: 3-64 characters with a letter (numbers and
-- very long tokens make no sense as "did you mean" candidates).
create function search_terms_of(vector tsvector) returns setof text
language sql immutable parallel safe rows 100 as $$
  select term from unnest(tsvector_to_array(vector)) as term
  where char_length(term) between 3 and 64 and term ~ '[[:alpha:]]'
$$;

-- One row per live entry (none for delete tombstones), made from the entry's `version`. It repeats
-- what a search filters on (updated_at, expires_at, tags), so that ranking the matches never has
-- to visit context_entries; only the page's rows are joined there.
create table context_search (
  namespace     text        not null,
  key           text        collate "C" not null,
  version       bigint      not null,
  updated_at    timestamptz not null,
  expires_at    timestamptz,
  tags          text[]      not null,
  search_vector tsvector    not null,
  primary key (namespace, key)
);

-- Words are only ever added (a word whose entries are gone finds nothing). No unique constraint:
-- writers never wait for each other here; two writers adding the same new word at once leave it
-- twice, which lookups fold.
create table search_terms (
  namespace text not null,
  term      text collate "C" not null
);

-- 1. The existing entries, while other instances keep serving.
insert into context_search (namespace, key, version, updated_at, expires_at, tags, search_vector)
select namespace, key, version, updated_at, expires_at, tags, context_search_vector((select language from search_settings), key, tags, content)
from context_entries
where expires_at is distinct from '-infinity';

-- search_terms_of spelt out: a function call per entry costs more than the filter itself.
insert into search_terms (namespace, term)
select distinct s.namespace, t.term
from context_search s cross join lateral unnest(tsvector_to_array(s.search_vector)) as t(term)
where char_length(t.term) between 3 and 64 and t.term ~ '[[:alpha:]]';

-- Building a GIN index is faster with more memory than the default 64 MB. Writes add to a GIN
-- index's pending list, which every search then reads through: 512 kB rather than the default
-- 4 MB (at 2 MB it cost each search 0.75 ms; the writer that fills it merges it, a few ms).
set local maintenance_work_mem = '256MB';
create index context_search_vector_index on context_search using gin (search_vector) with (gin_pending_list_limit = 512);
create index search_terms_namespace_term on search_terms (namespace, term);
create index search_terms_trigrams on search_terms using gin (term gin_trgm_ops) with (gin_pending_list_limit = 512);

-- Every change of an entry keeps its row here, in the same transaction. The vector (and the
-- vocabulary) is made again only when key, content or tags changed.
create function context_search_sync() returns trigger
language plpgsql as $$
declare
  vector tsvector;
  previous tsvector;
begin
  if tg_op = 'DELETE' or new.expires_at = '-infinity' then
    delete from context_search where namespace = old.namespace and key = old.key;
    return null;
  end if;
  if tg_op = 'UPDATE' and new.key = old.key and new.content = old.content and new.tags = old.tags then
    update context_search set version = new.version, updated_at = new.updated_at, expires_at = new.expires_at
    where namespace = new.namespace and key = new.key;
    if found then
      return null;
    end if;
  end if;
  vector := context_search_vector((select language from search_settings), new.key, new.tags, new.content);
  select search_vector into previous from context_search where namespace = new.namespace and key = new.key;
  -- The words the entry did not have before (search_terms_of spelt out, as above),
  -- each one index probe (a scalar subquery, which the planner does not turn into a hash join
  -- over the whole vocabulary).
  insert into search_terms (namespace, term)
  select new.namespace, added.term
  from (
    select term from unnest(tsvector_to_array(vector)) as term where char_length(term) between 3 and 64 and term ~ '[[:alpha:]]'
    except
    select unnest(tsvector_to_array(previous))
  ) as added(term)
  where (select true from search_terms s where s.namespace = new.namespace and s.term = added.term limit 1) is null;
  insert into context_search (namespace, key, version, updated_at, expires_at, tags, search_vector)
  values (new.namespace, new.key, new.version, new.updated_at, new.expires_at, new.tags, vector)
  on conflict (namespace, key) do update set
    version = excluded.version, updated_at = excluded.updated_at, expires_at = excluded.expires_at,
    tags = excluded.tags, search_vector = excluded.search_vector;
  return null;
end
$$;

-- 2. From here on writes of context_entries wait until this transaction commits (reads do not).
create trigger context_search_sync after insert or update or delete on context_entries
for each row execute function context_search_sync();

-- 3. Catch up with what other instances changed during step 1.
delete from context_search s
where not exists (
  select from context_entries e
  where e.namespace = s.namespace and e.key = s.key and e.version = s.version and e.expires_at is distinct from '-infinity'
);

with added as (
  insert into context_search (namespace, key, version, updated_at, expires_at, tags, search_vector)
  select e.namespace, e.key, e.version, e.updated_at, e.expires_at, e.tags,
         context_search_vector((select language from search_settings), e.key, e.tags, e.content)
  from context_entries e
  where e.expires_at is distinct from '-infinity'
    and not exists (select from context_search s where s.namespace = e.namespace and s.key = e.key)
  returning namespace, search_vector
)
insert into search_terms (namespace, term)
select distinct a.namespace, t.term
from added a cross join lateral search_terms_of(a.search_vector) as t(term)
where not exists (select from search_terms s where s.namespace = a.namespace and s.term = t.term);

analyze search_settings;
analyze context_search;
analyze search_terms;
