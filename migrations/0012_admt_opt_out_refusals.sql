-- An opt-out of automated decisionmaking technology (California 11 CCR 7221,
-- from 2027-01-01) refuses profiling in the consent ledger, like the opt-out
-- of profiling it sits beside.
INSERT INTO request_type_refusals (request_type, purpose_key) VALUES
    ('opt_out_admt', 'profiling');
