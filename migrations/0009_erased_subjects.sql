-- An erased subject is erased in every answer (issue 14): `subjects.erase_time`
-- (0004) says when; this says what erased it (the deletion request's name, or
-- the minor status that erased a minor without parental consent), for GetSubject.
ALTER TABLE subjects ADD COLUMN erased_by text;
