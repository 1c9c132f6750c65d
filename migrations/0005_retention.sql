-- Retention that runs by itself: data categories, a policy per category,
-- per-subject overrides, the schedule of when each (subject, category,
-- system) falls due, and legal holds.

-- Retention can ask a system to anonymize instead of delete.
ALTER TABLE tasks DROP CONSTRAINT tasks_action_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_action_check
    CHECK (action IN ('EXPORT', 'DELETE', 'CORRECT', 'SUPPRESS', 'RESTRICT', 'ANONYMIZE'));

CREATE TABLE data_categories (
    key         text PRIMARY KEY,
    description text NOT NULL
);
INSERT INTO data_categories (key, description) VALUES
 ('account_information', 'Name, email, login and profile of an account'),
 ('communication_records', 'Emails and messages exchanged with the subject'),
 ('contact_form_inquiries', 'Contact-form submissions and sales inquiries'),
 ('device_and_usage_data', 'Device identifiers, browsing and usage of the services'),
 ('log_data', 'Server and access logs'),
 ('api_debug_io', 'API inputs and outputs kept briefly for debugging'),
 ('customer_deployment_data', 'Data processed in a customer''s private deployment'),
 ('payment_records', 'Invoices, payments and billing details'),
 ('security_records', 'Security events and fraud-prevention records'),
 ('privacy_request_records', 'Records of privacy requests and how they were answered'),
 ('consent_records', 'The consent ledger');

CREATE TABLE retention_policies (
    category      text PRIMARY KEY REFERENCES data_categories (key),
    trigger       text NOT NULL CHECK (trigger IN ('CREATED', 'LAST_ACTIVITY', 'ACCOUNT_CLOSED',
                      'CONTRACT_ENDED', 'CONSENT_WITHDRAWN')),
    period_amount integer NOT NULL CHECK (period_amount > 0),
    period_unit   text NOT NULL CHECK (period_unit IN ('calendar_days', 'months')),
    action        text NOT NULL CHECK (action IN ('DELETE', 'ANONYMIZE')),
    legal_reason  text NOT NULL DEFAULT '',
    update_time   timestamptz NOT NULL DEFAULT now()
);
-- The defaults, from the two policies (shared/seeds): personal information
-- removed 30 days after the account is deleted; contact records kept as long
-- as needed (here: a year after the last exchange); deployment data per the
-- customer's agreement (a per-subject override; 30 days after the contract
-- ends otherwise); API inputs and outputs kept only briefly for debugging;
-- longer only where the law requires it (payments: tax law). Editable with
-- SetRetentionPolicy.
INSERT INTO retention_policies (category, trigger, period_amount, period_unit, action, legal_reason) VALUES
 ('account_information', 'ACCOUNT_CLOSED', 30, 'calendar_days', 'DELETE', ''),
 ('communication_records', 'ACCOUNT_CLOSED', 30, 'calendar_days', 'DELETE', ''),
 ('contact_form_inquiries', 'LAST_ACTIVITY', 12, 'months', 'DELETE', ''),
 ('device_and_usage_data', 'ACCOUNT_CLOSED', 30, 'calendar_days', 'DELETE', ''),
 ('log_data', 'CREATED', 90, 'calendar_days', 'DELETE', ''),
 ('api_debug_io', 'CREATED', 30, 'calendar_days', 'DELETE', ''),
 ('customer_deployment_data', 'CONTRACT_ENDED', 30, 'calendar_days', 'DELETE', ''),
 ('payment_records', 'ACCOUNT_CLOSED', 84, 'months', 'DELETE',
  'Tax and accounting records are kept 7 years (e.g. 26 U.S.C. 6001 and state law)'),
 ('security_records', 'CREATED', 12, 'months', 'DELETE', ''),
 ('privacy_request_records', 'CREATED', 24, 'months', 'ANONYMIZE',
  'CCPA regulations (11 CCR 7101) require request records for 24 months'),
 ('consent_records', 'ACCOUNT_CLOSED', 60, 'months', 'ANONYMIZE',
  'Proof of consent and of refusals (GDPR Art. 7(1)), kept for the limitation period');

CREATE TABLE retention_overrides (
    subject_id    text NOT NULL,
    category      text NOT NULL REFERENCES data_categories (key),
    period_amount integer NOT NULL CHECK (period_amount > 0),
    period_unit   text NOT NULL CHECK (period_unit IN ('calendar_days', 'months')),
    reason        text NOT NULL DEFAULT '',
    update_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject_id, category)
);

-- When each (subject, category, system) falls due. SCHEDULED until due;
-- the sweeper turns due entries into DELETE tasks (TASKED) or, under a
-- legal hold, HELD until the hold ends.
CREATE TABLE retention_schedule (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id    text NOT NULL,
    category      text NOT NULL REFERENCES data_categories (key),
    data_system_id text NOT NULL REFERENCES data_systems (id),
    trigger       text NOT NULL,
    anchor_time   timestamptz NOT NULL,
    due_time      timestamptz NOT NULL,
    action        text NOT NULL,
    overridden    boolean NOT NULL DEFAULT false,
    state         text NOT NULL DEFAULT 'SCHEDULED' CHECK (state IN ('SCHEDULED', 'HELD', 'TASKED')),
    task_id       bigint REFERENCES tasks (id),
    update_time   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subject_id, category, data_system_id)
);
-- The sweeper's path: due entries in due order.
CREATE INDEX retention_schedule_due ON retention_schedule (due_time, id) WHERE state = 'SCHEDULED';
CREATE INDEX retention_schedule_held ON retention_schedule (id) WHERE state = 'HELD';
ALTER TABLE retention_schedule SET (autovacuum_vacuum_scale_factor = 0.02);

CREATE TABLE legal_holds (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id    text,
    category      text REFERENCES data_categories (key),
    data_system_id text REFERENCES data_systems (id),
    reason        text NOT NULL,
    end_time      timestamptz,
    place_time    timestamptz NOT NULL DEFAULT now(),
    placed_by     text NOT NULL,
    release_time  timestamptz,
    released_by   text,
    release_reason text,
    CHECK (subject_id IS NOT NULL OR category IS NOT NULL OR data_system_id IS NOT NULL)
);
CREATE INDEX legal_holds_active ON legal_holds (subject_id) WHERE release_time IS NULL;

-- Whether an active hold covers (subject, category, system) at `at`.
CREATE FUNCTION held_by(p_subject text, p_category text, p_system text, p_at timestamptz)
RETURNS bigint[] LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(h.id ORDER BY h.id), '{}')
    FROM legal_holds h
    WHERE h.release_time IS NULL
      AND (h.end_time IS NULL OR h.end_time > p_at)
      AND (h.subject_id IS NULL OR h.subject_id = p_subject)
      AND (h.category IS NULL OR h.category = p_category)
      AND (h.data_system_id IS NULL OR h.data_system_id = p_system)
$$;

-- When a closed privacy request's record was minimised (kept 24 months,
-- CCPA 11 CCR 7101, then only what the metrics need stays).
ALTER TABLE privacy_requests ADD COLUMN minimize_time timestamptz;
CREATE INDEX privacy_requests_to_minimize ON privacy_requests (close_time)
    WHERE close_time IS NOT NULL AND minimize_time IS NULL;
