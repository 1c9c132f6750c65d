-- The audit hash chain: the sealer finds unsealed events through this index
-- and records a checkpoint of the chain's head after each batch.
CREATE INDEX audit_events_unsealed ON audit_events (xid, id) WHERE chain_seq IS NULL;

CREATE TABLE audit_checkpoints (
    chain_seq       bigint PRIMARY KEY,
    hash            bytea NOT NULL,
    checkpoint_time timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION forbid_history_rewrite();
