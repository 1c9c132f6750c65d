-- Promises kept by the purposes catalogue (issue 14, item 2). A PROHIBITED
-- purpose, or a PROHIBITED jurisdiction override, is a promise the
-- organisation made in its published policy ("never sold or shared, now or
-- in the future"). An edit of the catalogue alone cannot weaken it: only a
-- published material policy version lifts it, from that version's effective
-- time (or the lift's own time, if later), never backwards. Each promise is
-- a row here; the service refuses an UpdatePurpose that would weaken a
-- promise in force unless it names the version that lifts it.
CREATE TABLE purpose_promises (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    purpose_key     text NOT NULL REFERENCES purposes (key),
    -- NULL: the purpose's default model, in every jurisdiction; else a
    -- jurisdiction override's code ("US", "EU", "US-CA") and every
    -- jurisdiction whose lookup falls back to it.
    jurisdiction    text,
    -- Overrides under `jurisdiction` that were not PROHIBITED when the
    -- promise was made: never promised, so outside it.
    exceptions      text[] NOT NULL DEFAULT '{}',
    -- When the promise was made. NULL: from the start (the default
    -- catalogue's promises come from the published policy itself).
    make_time       timestamptz,
    -- When this service recorded it. A lift must name a version published
    -- after this: a version the promise already stood in cannot lift it.
    record_time     timestamptz NOT NULL DEFAULT now(),
    made_by         text NOT NULL,
    make_request_id text NOT NULL DEFAULT '',
    -- The lift, all or nothing: the material version that lifted it, when
    -- the lift takes effect, when and by whom it was recorded.
    lifted_by_version   text REFERENCES policy_versions (version_id),
    lift_effective_time timestamptz,
    lift_time           timestamptz,
    lifted_by           text,
    lift_request_id     text,
    CHECK ((lifted_by_version IS NULL) = (lift_effective_time IS NULL)
       AND (lifted_by_version IS NULL) = (lift_time IS NULL)
       AND (lifted_by_version IS NULL) = (lifted_by IS NULL)
       AND (lifted_by_version IS NULL) = (lift_request_id IS NULL)),
    -- Never backwards: a lift cannot take effect before it was recorded.
    CHECK (lift_effective_time IS NULL OR lift_effective_time >= lift_time)
);
-- At most one unlifted promise per (purpose, scope).
CREATE UNIQUE INDEX purpose_promises_unlifted
    ON purpose_promises (purpose_key, coalesce(jurisdiction, ''))
    WHERE lifted_by_version IS NULL;

-- History: a promise is never deleted, and the only change it takes is its
-- lift, once.
CREATE FUNCTION purpose_promises_only_lift() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.lifted_by_version IS NOT NULL
       OR NEW.lifted_by_version IS NULL
       OR (NEW.id, NEW.purpose_key, NEW.jurisdiction, NEW.exceptions, NEW.make_time,
           NEW.record_time, NEW.made_by, NEW.make_request_id)
          IS DISTINCT FROM
          (OLD.id, OLD.purpose_key, OLD.jurisdiction, OLD.exceptions, OLD.make_time,
           OLD.record_time, OLD.made_by, OLD.make_request_id) THEN
        RAISE EXCEPTION 'a purpose promise is only ever lifted, once'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER purpose_promises_lift_only BEFORE UPDATE ON purpose_promises
    FOR EACH ROW EXECUTE FUNCTION purpose_promises_only_lift();
CREATE TRIGGER purpose_promises_append_only BEFORE DELETE ON purpose_promises
    FOR EACH ROW EXECUTE FUNCTION forbid_history_rewrite();

-- The purpose row carries its promises (a projection of the table above,
-- kept by a trigger in the same transaction), so that every read of a
-- purpose (a check, the decision cache's catalogue, a write's rules) sees
-- them without another query, and a check at any time can tell whether a
-- promise was in force then.
ALTER TABLE purposes ADD COLUMN promises jsonb NOT NULL DEFAULT '[]'::jsonb;

CREATE FUNCTION purpose_promises_project() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE purposes p SET promises = coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'id', pp.id, 'jurisdiction', pp.jurisdiction,
                   'exceptions', to_jsonb(pp.exceptions), 'make_time', pp.make_time,
                   'record_time', pp.record_time,
                   'made_by', pp.made_by, 'lifted_by_version', pp.lifted_by_version,
                   'lift_effective_time', pp.lift_effective_time,
                   'lift_time', pp.lift_time, 'lifted_by', pp.lifted_by)
                 ORDER BY pp.id)
        FROM purpose_promises pp WHERE pp.purpose_key = NEW.purpose_key), '[]'::jsonb)
    WHERE p.key = NEW.purpose_key;
    RETURN NULL;
END;
$$;
CREATE TRIGGER purpose_promises_projected AFTER INSERT OR UPDATE ON purpose_promises
    FOR EACH ROW EXECUTE FUNCTION purpose_promises_project();

-- The promises already in the catalogue: every PROHIBITED default and
-- override. The default catalogue's three (migration 0003) hold from the
-- start; a purpose made PROHIBITED by a caller holds from its creation (the
-- earliest it can have been made). Exceptions: the overrides under the
-- scope that are not PROHIBITED ("EU" counts every override under it, as
-- only its member states fall back to it).
INSERT INTO purpose_promises (purpose_key, jurisdiction, exceptions, make_time, made_by,
                              make_request_id)
SELECT p.key, NULL,
       array(SELECT o.key FROM jsonb_each_text(p.jurisdiction_models) o
             WHERE o.value <> 'PROHIBITED' ORDER BY o.key),
       CASE WHEN p.key IN ('sale_of_personal_data', 'cross_context_sharing', 'profiling')
            THEN NULL ELSE p.create_time END,
       'migration 0010', ''
FROM purposes p
WHERE p.consent_model = 'PROHIBITED'
ORDER BY p.key;

INSERT INTO purpose_promises (purpose_key, jurisdiction, exceptions, make_time, made_by,
                              make_request_id)
SELECT p.key, j.key,
       array(SELECT o.key FROM jsonb_each_text(p.jurisdiction_models) o
             WHERE o.value <> 'PROHIBITED' AND o.key <> j.key
               AND (j.key = 'EU' OR o.key LIKE j.key || '-%')
             ORDER BY o.key),
       p.create_time, 'migration 0010', ''
FROM purposes p, jsonb_each_text(p.jurisdiction_models) j
WHERE j.value = 'PROHIBITED'
ORDER BY p.key, j.key;
