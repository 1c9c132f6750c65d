-- Request ids belong to the caller that used them: a stored response is
-- served only to the caller whose call left it. `caller` is the
-- authenticated caller's name, or '' for calls on a server without
-- authentication (where callers are known only by their address, which
-- changes with every connection, so it cannot hold a key).
ALTER TABLE idempotency_keys ADD COLUMN caller text NOT NULL DEFAULT '';

-- The keys stored before: their caller is the actor of the audit event their
-- call wrote (a call that wrote none, an idle poll, stays '').
UPDATE idempotency_keys k SET caller = a.actor
FROM (SELECT DISTINCT ON (request_id) request_id, actor FROM audit_events
      WHERE request_id IN (SELECT request_id FROM idempotency_keys)
        AND actor NOT LIKE 'peer:%'
      ORDER BY request_id, id) a
WHERE a.request_id = k.request_id;

-- Claims stored before responses were tied to their subjects hold tasks of
-- many subjects, which an erasure cannot reach: they are forgotten (a replay
-- claims again; the first claim's leases expire and their tasks go back to
-- the queue).
DELETE FROM idempotency_keys WHERE method = 'privacy.v1.DataSystemService/ClaimTasks';

ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (caller, request_id);
ALTER TABLE idempotency_keys ALTER COLUMN caller DROP DEFAULT;
