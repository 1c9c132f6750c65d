-- Audit checkpoints become verifiable from outside the database: each one
-- carries the id of the master key its MAC was made under and an
-- HMAC-SHA-256 of its chain position and hash, keyed by a key derived from
-- that master key (master keys never enter the database, so whoever can
-- write to the database can still recompute plain SHA-256 links but not a
-- checkpoint's MAC). Checkpoints written before this migration keep NULL in
-- both: their hash is still compared with the chain, their MAC cannot be
-- checked. A position may now hold more than one checkpoint: the sealer adds
-- a keyed one at a head that only unkeyed checkpoints (or ones under a
-- master key no longer held) vouch for, and a tail removed behind the
-- service's back leaves its old checkpoints beside the new ones.
ALTER TABLE audit_checkpoints
    DROP CONSTRAINT audit_checkpoints_pkey,
    ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN key_id text,
    ADD COLUMN mac bytea,
    ADD CONSTRAINT audit_checkpoints_keyed CHECK ((key_id IS NULL) = (mac IS NULL));
CREATE INDEX audit_checkpoints_seq ON audit_checkpoints (chain_seq);
