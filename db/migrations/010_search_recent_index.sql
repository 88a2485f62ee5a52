-- search_context's broad queries (see search in context-store.ts): the namespace's search rows
-- newest first, in the order a search wants its candidates in, so that a query matching a large
-- share of the entries walks the newest ones until it has enough instead of visiting every match
-- the vector index yields (on 100,000 entries a word 17,656 of them hold cost 28 ms that way).
--
-- Built in this transaction (CREATE INDEX CONCURRENTLY cannot run in one, and every migration
-- runs in one): it holds writes of context_search, and so of context_entries through the search
-- triggers, while it is built; reads and searches go on. README "Upgrading" has the measured time.

set local maintenance_work_mem = '256MB';
create index context_search_recent on context_search (namespace, updated_at desc, key);
