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

-- The audit hash chain's links move out of audit_events into a table of
-- their own. Sealing used to rewrite every event to fill its chain columns,
-- which cost as much as writing the event again (a new row version and an
-- entry in each of its indexes, and every event carried NULL entries in two
-- indexes while it waited); now sealing appends one narrow row per event.
-- The sealer finds the next events by position, (xid, id) after the last
-- link's event, through audit_events_xid, as the change feed does; events
-- below that position are all sealed, since it seals in that order and only
-- below the oldest running transaction.
CREATE TABLE audit_chain (
    chain_seq bigint PRIMARY KEY,
    event_id  bigint NOT NULL,
    event_xid xid8 NOT NULL,
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL
);
CREATE INDEX audit_chain_event ON audit_chain (event_id);
CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION forbid_history_rewrite();
INSERT INTO audit_chain (chain_seq, event_id, event_xid, prev_hash, hash)
    SELECT chain_seq, id, xid, prev_hash, hash FROM audit_events WHERE chain_seq IS NOT NULL;

-- Audit events are now never updated, not even to seal them.
DROP TRIGGER audit_events_seal_only ON audit_events;
DROP FUNCTION audit_events_only_seal();
CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION forbid_history_rewrite();
DROP INDEX audit_events_unsealed;
ALTER TABLE audit_events DROP COLUMN chain_seq, DROP COLUMN prev_hash, DROP COLUMN hash;
