//! Privacy requests. For now: the jurisdiction rules their legal clocks come
//! from, exposed over gRPC; the request lifecycle follows (issue 3).
pub mod grpc;
