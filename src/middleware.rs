//! The server-wide middleware around every call, in order: a tracing span
//! (method, caller, request id), then load shedding at the concurrency limit
//! (RESOURCE_EXHAUSTED with ErrorInfo OVERLOADED). Health and reflection are
//! never shed, so probes keep answering under load.
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Clone)]
pub struct RpcLayer {
    limiter: Arc<Semaphore>,
}

impl RpcLayer {
    pub fn new(max_concurrent_calls: usize) -> Self {
        Self {
            limiter: Arc::new(Semaphore::new(max_concurrent_calls)),
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    limiter: Arc<Semaphore>,
}

fn never_shed(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

impl<S> Service<Request<Body>> for RpcService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let header_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            caller = %format!("peer:{peer}"),
            request_id = tracing::field::Empty,
        );
        if !header_id.is_empty() {
            span.record("request_id", header_id.as_str());
        }

        let permit = if never_shed(&method) {
            None
        } else {
            match self.limiter.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let _enter = span.enter();
                    tracing::warn!("concurrency limit reached; call shed");
                    let response = crate::error::overloaded_status().into_http::<Body>();
                    return Box::pin(async move { Ok(response) });
                }
            }
        };

        // The clone taken for this call must be the one that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let started = Instant::now();
                let result = inner.call(request).await;
                drop(permit);
                if let Ok(response) = &result {
                    // Errors end in a trailers-only response with the status
                    // in the headers; successes carry it in the trailers.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_owned();
                    let elapsed_us = started.elapsed().as_micros() as u64;
                    if code == "0" {
                        tracing::debug!(elapsed_us, "rpc done");
                    } else {
                        tracing::info!(grpc_status = %code, elapsed_us, "rpc failed");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}
