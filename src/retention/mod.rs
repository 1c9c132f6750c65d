//! Retention that runs by itself (`privacy.v1.RetentionService`): a policy
//! per data category, lifecycle events that set when each (subject,
//! category, system) falls due, legal holds, and the sweeper that turns what
//! has fallen due into tasks for the data systems.
pub mod grpc;
pub mod model;
pub mod service;
pub mod store;
pub mod sweeper;
