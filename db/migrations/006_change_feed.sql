-- The change feed (changes_since, db/change-feed.ts): every history row records the id of the
-- transaction that wrote it. The feed serves rows in (txid, id) order and only those whose
-- transaction is below the reading snapshot's xmin: every such transaction has finished, and no
-- transaction that starts later gets a smaller id, so a row can never commit behind a reader's
-- position (a plain bigserial id can: id 9 may commit after id 10).
--
-- The application's writers set txid themselves (see feed_txid below); the default covers every
-- other insert (import, an older release still running during a rolling upgrade). Two steps, so
-- that adding the column does not rewrite the table (a volatile default would): rows written
-- before this migration keep txid NULL, and the feed serves them first, by id.
alter table context_history add column txid xid8;
alter table context_history alter column txid set default pg_current_xact_id();

create index context_history_feed on context_history (namespace, txid, id);

-- The txid of an entry's latest change. A writer stores greatest(its own txid, this) in both
-- tables, so that a transaction which took its id before an earlier writer of the same key
-- committed still sorts after it: each key's versions reach the feed in version order. NULL until
-- the entry is next written.
alter table context_entries add column feed_txid xid8;
