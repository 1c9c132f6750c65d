//! The audit trail's hash chain and `privacy.v1.AuditService`.
//!
//! Every change writes its audit event in its own transaction (`journal`),
//! with no chain columns: the write path never serialises on the chain. The
//! sealer (a background job in `serve`) links committed events in commit
//! order: it reads unsealed events below the snapshot's xmin ordered by
//! (transaction id, id), as the change feed does, so no event can later
//! appear before a sealed one, and gives each the next `chain_seq` and
//! `hash = SHA-256(prev_hash || seq || the event's fields)`, appended to
//! `audit_chain` (events themselves are never rewritten). The next events to
//! seal are those after the last link's event in that order. One sealer
//! works at a time across replicas (a transaction-scoped advisory lock).
//! Each batch ends with a checkpoint carrying an HMAC of its position and
//! hash under a key derived from the active master key, which the database
//! never holds: whoever can write to the database can recompute links, not
//! checkpoints. Verification holds the chain against the checkpoints and,
//! when asked, against an anchor ("{chain_seq}:{hash}") kept outside.
pub mod chain;
pub mod grpc;
pub mod model;
pub mod sealer;
pub mod service;
pub mod store;
