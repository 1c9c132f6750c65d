//! Privacy requests: their legal clocks (from `crate::rules`), lifecycle,
//! appeals and fulfilment through the data systems' task queue.
pub mod grpc;
pub mod progress;
