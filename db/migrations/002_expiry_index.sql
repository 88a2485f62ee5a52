-- The expiry sweep (sweepExpiredBatch in context-store.ts) looks for rows whose TTL has passed.
-- Only entries written with ttl_seconds have a finite expires_at (tombstones are '-infinity',
-- most rows null), so a partial index keeps the sweep from scanning the whole table.
create index context_entries_expiring on context_entries (expires_at) where expires_at > '-infinity';
