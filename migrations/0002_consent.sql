-- The consent domain: the purposes catalogue, policy versions, subjects and
-- the append-only consent ledger. Current state is read from the ledger
-- itself (latest entry per subject and purpose through the index below), so
-- it is always a projection of history.

CREATE TABLE purposes (
    key          text PRIMARY KEY,
    display_name text NOT NULL,
    description  text NOT NULL DEFAULT '',
    consent_model text NOT NULL
        CHECK (consent_model IN ('OPT_IN', 'OPT_OUT', 'NOT_CONSENT_BASED', 'PROHIBITED')),
    -- {"EU": "OPT_IN", "US-CA": "OPT_OUT", ...}
    jurisdiction_models jsonb NOT NULL DEFAULT '{}'::jsonb,
    required_evidence text,
    honors_gpc   boolean NOT NULL DEFAULT false,
    reconsent_on_material_change boolean NOT NULL DEFAULT false,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    -- Bumped on every update; the etag is derived from it.
    revision     bigint NOT NULL DEFAULT 1
);

CREATE TABLE policy_versions (
    version_id     text PRIMARY KEY,
    effective_time timestamptz NOT NULL,
    text_sha256    text NOT NULL,
    material       boolean NOT NULL,
    summary        text NOT NULL DEFAULT '',
    publish_time   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policy_versions_material ON policy_versions (effective_time DESC) WHERE material;

CREATE TABLE subjects (
    subject_id  text PRIMARY KEY,
    minor_since timestamptz,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE consent_records (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id     text NOT NULL,
    purpose_key    text NOT NULL REFERENCES purposes (key),
    decision       text NOT NULL CHECK (decision IN ('GRANTED', 'REFUSED')),
    source         text NOT NULL,
    policy_version text REFERENCES policy_versions (version_id),
    jurisdiction   text,
    evidence_kind  text,
    evidence_reference   text,
    evidence_description text,
    effective_time timestamptz NOT NULL,
    expire_time    timestamptz,
    record_time    timestamptz NOT NULL DEFAULT now(),
    request_id     text NOT NULL,
    actor          text NOT NULL,
    CHECK (expire_time IS NULL OR expire_time > effective_time),
    CHECK (decision = 'GRANTED' OR expire_time IS NULL)
);
-- The latest decision per (subject, purpose) at any time T is the first row
-- of this index at effective_time <= T: the hot path of every check.
CREATE INDEX consent_records_decision
    ON consent_records (subject_id, purpose_key, effective_time DESC, id DESC);
CREATE INDEX consent_records_purpose ON consent_records (purpose_key, id);

CREATE TRIGGER consent_records_append_only BEFORE UPDATE OR DELETE ON consent_records
    FOR EACH ROW EXECUTE FUNCTION forbid_history_rewrite();
