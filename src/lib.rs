//! privacy-records: a gRPC service that keeps an organisation's privacy state
//! (consent, privacy requests, the data systems' tasks, retention and audit)
//! in PostgreSQL.
//!
//! A request flows: `middleware` (span, load shedding, metrics) →
//! `<domain>::grpc` (parse into domain values, one call, encode) → the use
//! case, `<domain>::service` or `::queries` (the rules; a write inside one
//! transaction with `idempotency` and `journal`, see `rpc::mutate`) →
//! `<domain>::store` (SQL) → `error` (the one mapping to gRPC statuses).
pub mod audit;
pub mod auth;
pub mod caller;
pub mod changefeed;
pub mod cli;
pub mod config;
pub mod connections;
pub mod consent;
pub mod convert;
pub mod datasystems;
pub mod db;
pub mod embedded_pg;
pub mod error;
pub mod health;
pub mod idempotency;
pub mod identifiers;
pub mod journal;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod names;
pub mod reads;
pub mod requests;
pub mod retention;
pub mod rpc;
pub mod rules;
pub mod server;
pub mod telemetry;
pub mod tokens;
pub mod transport;

/// The generated `privacy.v1` messages, clients and servers.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("privacy.v1");
    include!(concat!(env!("OUT_DIR"), "/privacy_v1_limits.rs"));

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("privacy_v1_descriptor");
}
