-- What the law makes the organisation keep, as one rule for every erasure
-- path (a deletion request, the erasure of a minor, any later one); what a
-- deletion request kept, in a structured form; and whether an appeal is the
-- organisation's voluntary offer rather than the law's.

-- Why the law makes the organisation keep (subject, category, system) at
-- `p_at`: the category's retention policy names a legal reason, and the
-- subject's own clock for it (the retention schedule) has not run out. One
-- row when kept (the reason, the due time if the clock has started, and the
-- policy's period and trigger), none otherwise.
CREATE FUNCTION kept_by_law(p_subject text, p_category text, p_system text, p_at timestamptz)
RETURNS TABLE (legal_reason text, keep_until timestamptz, period_amount integer,
               period_unit text, trigger text)
LANGUAGE sql STABLE AS $$
    SELECT p.legal_reason, s.due_time, p.period_amount, p.period_unit, p.trigger
    FROM retention_policies p
    LEFT JOIN retention_schedule s
           ON s.subject_id = p_subject AND s.category = p.category AND s.data_system_id = p_system
    WHERE p.category = p_category
      AND p.legal_reason <> ''
      AND (s.due_time IS NULL OR s.due_time > p_at)
$$;

-- Whether an erasure (delete or anonymize) may touch (subject, category,
-- system) at `p_at`: no active legal hold covers it and the law does not
-- make the organisation keep it. Every erasure path asks this.
CREATE FUNCTION erasable(p_subject text, p_category text, p_system text, p_at timestamptz)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT cardinality(held_by(p_subject, p_category, p_system, p_at)) = 0
       AND NOT EXISTS (SELECT 1 FROM kept_by_law(p_subject, p_category, p_system, p_at))
$$;

-- What a request did not erase because the law keeps it: a JSON array of
-- {category, data_system, legal_reason, keep_until, period_amount,
-- period_unit, trigger}. The text form is in `exemptions` too.
ALTER TABLE privacy_requests ADD COLUMN legal_keeps jsonb NOT NULL DEFAULT '[]';

-- True when the appeal was the organisation's voluntary offer (the law of
-- the jurisdiction gives none); NULL while there is no appeal.
ALTER TABLE privacy_requests ADD COLUMN appeal_voluntary boolean;
