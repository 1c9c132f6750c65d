-- RecordConsent writes in one statement (ledger entry, idempotency key,
-- audit and change events), one round trip and one commit. Its response is
-- built from what that statement returns, which the key cannot hold before
-- the statement runs; so its key points at the ledger entry it wrote (the
-- ledger is append-only, so the entry is the stored response) and keeps the
-- transaction id its consistency token is made of. Keys written by the other
-- methods keep their sealed response as before; every key records its
-- transaction id from now on (NULL for keys older than this migration).
ALTER TABLE idempotency_keys
    ADD COLUMN consent_record_id bigint,
    ADD COLUMN xid xid8;
ALTER TABLE idempotency_keys ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

-- Nothing reads audit events by transaction id since the sealer has its own
-- partial index (0006); the index only cost every write an entry.
DROP INDEX audit_events_xid;
