//! The data-system registry, the task queue the systems pull, and the
//! disclosure log (`privacy.v1.DataSystemService`).
pub mod grpc;
pub mod model;
pub mod service;
pub mod store;
