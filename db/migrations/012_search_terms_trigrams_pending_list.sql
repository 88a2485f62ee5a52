-- The vocabulary's trigram index (search_terms_trigrams) gets its pending list back (011 turned it
-- off with the vector index's). A write that brings new words adds one vocabulary row per word and
-- about seven trigram entries per row; straight into the index, concurrent writers queue on its
-- pages: on the hot-path benchmark (32 connections, 10% writes of 1 KiB of words never seen before)
-- 1,316 req/s with the list off, 1,966 with it on, 2,009 with the vector index's on too. Only
-- searches with a word no entry holds read this index (the typo lookup), and they scan its list:
-- after 50 writes of 114 new words each, 10.1 ms for such a search with the list, 10.3 ms without
-- (README "Search", Storage and write cost). The vector index, which every search reads, keeps none.
--
-- ALTER INDEX ... SET takes an ACCESS EXCLUSIVE lock on the index until this transaction commits;
-- turning the list on merges nothing, so the lock is held only for the catalogue update.

alter index search_terms_trigrams set (fastupdate = on);
