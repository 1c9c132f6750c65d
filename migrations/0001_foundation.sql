-- The cross-cutting tables every RPC uses: idempotency keys (AIP-155), the
-- audit trail, and the change feed.

-- A mutating RPC's request_id and the response it produced, so a retry gets
-- the first response back and a reused id with another request is refused.
CREATE TABLE idempotency_keys (
    request_id   text PRIMARY KEY,
    method       text NOT NULL,
    request_hash bytea NOT NULL,
    -- The encoded response message; NULL only inside the first transaction.
    response     bytea,
    consistency_token text,
    create_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_create_time ON idempotency_keys (create_time);

-- Who changed what. Written in the same transaction as the change. The chain
-- columns are filled later, in commit order, by the audit sealer (so the hash
-- chain never serialises the write path); until then they are NULL.
CREATE TABLE audit_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    occur_time  timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    method      text NOT NULL,
    target      text NOT NULL,
    subject_id  text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    chain_seq   bigint UNIQUE,
    prev_hash   bytea,
    hash        bytea
);
CREATE INDEX audit_events_subject ON audit_events (subject_id, id) WHERE subject_id IS NOT NULL;
CREATE INDEX audit_events_target ON audit_events (target, id);
CREATE INDEX audit_events_xid ON audit_events (xid, id);

-- Every committed change, for WatchConsentChanges and (later) caches.
-- Readers order by (xid, id) and only read rows whose transaction id is below
-- the oldest transaction still running (pg_snapshot_xmin of the current
-- snapshot): every such transaction has finished, so no row can later appear
-- before a position a reader has passed, even when transactions commit out
-- of id order.
CREATE TABLE change_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind        text NOT NULL,
    subject_id  text,
    purpose_key text,
    consent_record_id bigint,
    policy_version text,
    change_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX change_events_position ON change_events (xid, id);
CREATE INDEX change_events_subject ON change_events (subject_id, xid, id) WHERE subject_id IS NOT NULL;

-- History is append-only: the ledger and the audit trail refuse UPDATE and
-- DELETE (the audit sealer may only fill the chain columns).
CREATE FUNCTION forbid_history_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE FUNCTION audit_events_only_seal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.chain_seq IS NOT NULL
       OR (NEW.id, NEW.xid, NEW.occur_time, NEW.actor, NEW.method, NEW.target,
           NEW.subject_id, NEW.request_id, NEW.details)
          IS DISTINCT FROM
          (OLD.id, OLD.xid, OLD.occur_time, OLD.actor, OLD.method, OLD.target,
           OLD.subject_id, OLD.request_id, OLD.details) THEN
        RAISE EXCEPTION 'audit events are append-only; only the sealer may chain them once'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION forbid_history_rewrite();
CREATE TRIGGER audit_events_seal_only BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_only_seal();
