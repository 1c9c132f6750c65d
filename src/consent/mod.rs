//! Consent: the purposes catalogue, the append-only ledger of grants and
//! refusals, policy versions, and the decision "may this subject's data be
//! used for this purpose?".
pub mod cache;
pub mod decision;
pub mod group_commit;
pub mod grpc;
pub mod model;
pub mod queries;
pub mod service;
pub mod store;
pub mod watch;
