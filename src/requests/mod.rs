//! Privacy requests: their legal clocks (from `crate::rules`), lifecycle,
//! appeals and fulfilment through the data systems' task queue.
pub mod erasure;
pub mod fulfilment;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod queries;
pub mod service;
pub mod store;
