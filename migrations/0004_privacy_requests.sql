-- Privacy requests, their lifecycle and clock; the data-system registry and
-- the task queue the systems pull; suppression entries, lifecycle events and
-- the disclosure log. Every table that grows with subjects carries
-- subject_id (DESIGN.md, Scale).

-- Where personal data lives.
CREATE TABLE data_systems (
    id           text PRIMARY KEY,
    display_name text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('INTERNAL', 'PROCESSOR')),
    categories   text[] NOT NULL,
    country      text NOT NULL,
    actions      text[] NOT NULL,
    description  text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE privacy_requests (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id    text NOT NULL,
    request_type  text NOT NULL,
    -- As filed ("DE"), and the rules applied ("EU", "default") with the
    -- version of the rules table the clock was started under.
    jurisdiction  text NOT NULL,
    rules_code    text NOT NULL,
    rules_version text NOT NULL,
    channel       text NOT NULL,
    identifier_kinds text[] NOT NULL DEFAULT '{}',
    -- {display_name, contact, evidence_reference, evidence_description}
    agent         jsonb,
    -- [{field, current_value, corrected_value}]
    corrections   jsonb NOT NULL DEFAULT '[]'::jsonb,
    categories    text[] NOT NULL DEFAULT '{}',
    state         text NOT NULL CHECK (state IN ('RECEIVED', 'AWAITING_VERIFICATION',
                      'IN_PROGRESS', 'ON_HOLD', 'COMPLETED', 'PARTIALLY_COMPLETED',
                      'DENIED', 'CANCELED')),
    -- While ON_HOLD: the state to resume in, why, since when, and whether
    -- the jurisdiction stops the clock for that reason.
    held_from     text,
    hold_reason   text,
    hold_start    date,
    hold_pauses_clock boolean NOT NULL DEFAULT false,
    -- The clock (see src/rules/deadline.rs): inputs, and the dates derived
    -- from them, kept for filtering.
    receive_time  timestamptz NOT NULL,
    received_date date NOT NULL,
    period_amount integer NOT NULL,
    period_unit   text NOT NULL,
    extension_amount integer,
    extension_unit   text,
    extended      boolean NOT NULL DEFAULT false,
    extension_reason text,
    paused_days   integer NOT NULL DEFAULT 0,
    original_due_date date NOT NULL,
    due_date      date NOT NULL,
    -- What the rules said at filing.
    verification_required boolean NOT NULL,
    agent_may_file boolean NOT NULL,
    statutory     boolean NOT NULL,
    free_limit_exceeded boolean NOT NULL,
    prior_requests_12_months integer NOT NULL,
    deadline_citation jsonb NOT NULL,
    -- The outcome.
    denial_reason text,
    explanation   text NOT NULL DEFAULT '',
    exemptions    text[] NOT NULL DEFAULT '{}',
    -- The appeal.
    appeal_state  text CHECK (appeal_state IN ('PENDING', 'GRANTED', 'UPHELD')),
    appeal_statement text,
    appeal_create_time timestamptz,
    appeal_due_date date,
    appeal_explanation text,
    appeal_regulator_contact_required boolean,
    appeal_regulator_contact_provided boolean,
    appeal_decide_time timestamptz,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    close_time    timestamptz
);
CREATE INDEX privacy_requests_subject ON privacy_requests (subject_id, request_type, receive_time);
CREATE INDEX privacy_requests_open_due ON privacy_requests (due_date, id)
    WHERE state IN ('RECEIVED', 'AWAITING_VERIFICATION', 'IN_PROGRESS', 'ON_HOLD');
CREATE INDEX privacy_requests_receive_time ON privacy_requests (receive_time);

-- Identifiers given with a request, as keyed hashes (never in clear).
CREATE TABLE request_identifiers (
    privacy_request_id bigint NOT NULL REFERENCES privacy_requests (id),
    subject_id text NOT NULL,
    kind       text NOT NULL,
    hash       bytea NOT NULL,
    PRIMARY KEY (privacy_request_id, kind, hash)
);

-- Every state change of a request: who, when, why. Append-only.
CREATE TABLE request_transitions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    privacy_request_id bigint NOT NULL REFERENCES privacy_requests (id),
    subject_id  text NOT NULL,
    from_state  text,
    to_state    text NOT NULL,
    action      text NOT NULL,
    actor       text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    request_id  text NOT NULL,
    transition_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX request_transitions_request ON request_transitions (privacy_request_id, id);
CREATE TRIGGER request_transitions_append_only BEFORE UPDATE OR DELETE ON request_transitions
    FOR EACH ROW EXECUTE FUNCTION forbid_history_rewrite();

-- Which purposes a request type refuses in the consent ledger when it takes
-- effect (opt-outs at once; the others once verified). Data, not code:
-- edit it with the purposes catalogue.
CREATE TABLE request_type_refusals (
    request_type text NOT NULL,
    purpose_key  text NOT NULL REFERENCES purposes (key),
    PRIMARY KEY (request_type, purpose_key)
);
INSERT INTO request_type_refusals (request_type, purpose_key) VALUES
    ('opt_out_sale', 'sale_of_personal_data'),
    ('opt_out_sale', 'cross_context_sharing'),
    ('opt_out_targeted_advertising', 'targeted_advertising'),
    ('opt_out_targeted_advertising', 'cross_context_sharing'),
    ('opt_out_profiling', 'profiling'),
    ('opt_out_profiling', 'personalized_recommendations'),
    ('limit_sensitive_data', 'sensitive_data_processing'),
    ('objection', 'marketing_email'),
    ('objection', 'targeted_advertising'),
    ('objection', 'personalized_recommendations');

-- Work for the data systems. A task is QUEUED until a worker claims it
-- (LEASED until lease_expire_time); an expired lease makes it claimable
-- again. attempts counts claims.
CREATE TABLE tasks (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    data_system_id text NOT NULL REFERENCES data_systems (id),
    privacy_request_id bigint REFERENCES privacy_requests (id),
    subject_id     text NOT NULL,
    action         text NOT NULL CHECK (action IN ('EXPORT', 'DELETE', 'CORRECT', 'SUPPRESS', 'RESTRICT')),
    categories     text[] NOT NULL,
    corrections    jsonb NOT NULL DEFAULT '[]'::jsonb,
    state          text NOT NULL DEFAULT 'QUEUED'
        CHECK (state IN ('QUEUED', 'LEASED', 'SUCCEEDED', 'EXEMPTED', 'FAILED', 'ABANDONED')),
    attempts       integer NOT NULL DEFAULT 0,
    max_attempts   integer NOT NULL DEFAULT 5,
    -- A retryable failure waits until then before it can be claimed again.
    available_time timestamptz NOT NULL DEFAULT now(),
    worker         text,
    lease_id       uuid,
    lease_expire_time timestamptz,
    records_affected bigint,
    content_sha256 text,
    system_reference text,
    export_json    jsonb,
    exempt_reason  text,
    last_error     text,
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'LEASED' OR (lease_id IS NOT NULL AND lease_expire_time IS NOT NULL))
);
CREATE INDEX tasks_queued ON tasks (data_system_id, id) WHERE state = 'QUEUED';
-- A queue table churns: vacuum it often, so claims walking tasks_queued do
-- not wade through the index entries of tasks already taken.
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
CREATE INDEX tasks_leased ON tasks (data_system_id, lease_expire_time) WHERE state = 'LEASED';
CREATE INDEX tasks_request ON tasks (privacy_request_id, id);

-- Keyed hashes (HMAC-SHA-256) of erased people's identifiers, so they are
-- neither re-ingested nor re-contacted.
CREATE TABLE suppression_entries (
    kind        text NOT NULL,
    hash        bytea NOT NULL,
    privacy_request_id bigint REFERENCES privacy_requests (id),
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, hash)
);

-- Lifecycle events about a subject's data (account closed, ...), for the
-- retention schedule.
CREATE TABLE lifecycle_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id  text NOT NULL,
    category    text,
    data_system_id text,
    event       text NOT NULL,
    event_time  timestamptz NOT NULL,
    privacy_request_id bigint REFERENCES privacy_requests (id),
    record_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lifecycle_events_subject ON lifecycle_events (subject_id, event_time);

-- When a subject's own records here were minimised after a deletion.
ALTER TABLE subjects ADD COLUMN erase_time timestamptz;

-- Disclosures of personal data to third parties.
CREATE TABLE disclosures (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id   text,
    recipient    text NOT NULL,
    categories   text[] NOT NULL,
    basis        text NOT NULL CHECK (basis IN ('SERVICE_PROVIDER', 'LEGAL_OBLIGATION',
                     'FRAUD_PREVENTION', 'SALE', 'SHARING')),
    purpose_key  text,
    disclose_time timestamptz NOT NULL,
    contradicted_purpose text,
    actor        text NOT NULL,
    request_id   text NOT NULL,
    record_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX disclosures_time ON disclosures (disclose_time);
CREATE TRIGGER disclosures_append_only BEFORE UPDATE OR DELETE ON disclosures
    FOR EACH ROW EXECUTE FUNCTION forbid_history_rewrite();

-- Change events name the resource for the non-consent kinds
-- ("privacyRequests/7", "tasks/9").
ALTER TABLE change_events ADD COLUMN resource text;

-- Keys the service generates for itself when none is configured (the
-- identifier hash key). Interim: the security issue moves keys out of the
-- database into configuration.
CREATE TABLE service_keys (
    name        text PRIMARY KEY,
    key         bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now()
);
