-- search_context reads the search GIN indexes on every call; context writes add to them. With
-- fastupdate (the default) a write appends to the index's pending list, which every search then
-- scans entry by entry, and the write that fills it (512 kB, 005) merges the whole list into the
-- index while its caller waits. Searches outnumber writes, so the entries go straight into the
-- index instead: a write pays for its own entries, no search scans a list, no write pays for
-- others'. The lists written so far are merged here.
--
-- ALTER INDEX ... SET (fastupdate) takes an ACCESS EXCLUSIVE lock on the index until this
-- transaction commits: searches and writes of entries wait for the merge (README "Upgrading" has
-- the measured time).

alter index context_search_vector_index set (fastupdate = off);
alter index search_terms_trigrams set (fastupdate = off);
select gin_clean_pending_list('context_search_vector_index'::regclass);
select gin_clean_pending_list('search_terms_trigrams'::regclass);
