-- ListTasks filters by subject (issue 14): one person's tasks without a scan
-- of the queue, which grows with subjects.
CREATE INDEX tasks_subject ON tasks (subject_id, id);
