-- Tasks that failed for good stay FAILED until a person looks at them; the
-- metrics sampler counts them (by system and action) every interval, and
-- without an index that count would read every finished task.
CREATE INDEX tasks_failed ON tasks (data_system_id, action) WHERE state = 'FAILED';
