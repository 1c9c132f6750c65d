-- Personal data at rest (issue 5): one data key per subject, wrapped
-- (AES-256-GCM) by a master key from configuration, never stored here in
-- clear. Values are sealed under their subject's data key; deleting the row
-- destroys the key, so every copy of those values (backups included)
-- becomes unreadable (crypto-shredding). rotate-key re-wraps rows whose
-- master_key_id is not the active one.
CREATE TABLE subject_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id    text NOT NULL UNIQUE,
    master_key_id text NOT NULL,
    wrapped_key   bytea NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    wrap_time     timestamptz NOT NULL DEFAULT now()
);
-- rotate-key's path: keys not under the active master key.
CREATE INDEX subject_keys_master ON subject_keys (master_key_id, id);

-- The sealed values ([version][data key id][nonce][ciphertext]). New rows
-- leave the clear-text columns beside them empty; rows written before this
-- migration keep their clear text until erased.
ALTER TABLE consent_records ADD COLUMN evidence_sealed bytea;
ALTER TABLE request_identifiers ADD COLUMN value_sealed bytea;
ALTER TABLE privacy_requests
    ADD COLUMN agent_sealed bytea,
    ADD COLUMN corrections_sealed bytea,
    ADD COLUMN appeal_statement_sealed bytea;
ALTER TABLE tasks
    ADD COLUMN corrections_sealed bytea,
    ADD COLUMN export_sealed bytea;

-- service_keys stays for now: `serve` on an embedded install moves its
-- identifier hash key into the generated keyring file and deletes the row;
-- an external database's operator moves it by hand (README, Key management).
-- A later migration drops the table once every install has moved its key.
