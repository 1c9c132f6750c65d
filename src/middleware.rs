//! The server-wide middleware around every call, in order: a tracing span
//! (method, caller, request id), then authentication and the caller's
//! permission for the method (UNAUTHENTICATED / PERMISSION_DENIED, audited),
//! then load shedding at the concurrency limit (RESOURCE_EXHAUSTED with
//! ErrorInfo OVERLOADED; refused calls never take a permit), then, while
//! the health monitor finds the database away, UNAVAILABLE at once (also
//! for calls already waiting on it) rather than a wait for the pool's
//! acquire timeout. Health and reflection are never shed and need no
//! credentials, so probes keep answering under load. Each call marks its
//! connection busy until its response ends (see `connections`).
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{Request, Response};
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::refusals::{self, Refusal, RefusalAudit};
use crate::auth::{self, Authenticator};
use crate::connections::{CallGuard, ConnectionInfo};
use crate::metrics::{CallRecord, GrpcMetrics};

#[derive(Clone)]
pub struct RpcLayer {
    limiter: Arc<Semaphore>,
    auth: Option<Arc<Authenticator>>,
    /// Where refused calls are audited.
    pool: PgPool,
    /// Aggregates repeated refusals (without it, each is written alone).
    refusals: Option<Arc<RefusalAudit>>,
    /// Whether the database answers (from the health monitor).
    ready: watch::Receiver<bool>,
    /// Counts calls by method and code (without it, nothing is counted).
    metrics: Option<Arc<GrpcMetrics>>,
}

impl RpcLayer {
    /// Counts every call in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<GrpcMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Audits refused calls through `refusals`, which writes repeated ones
    /// as counts.
    pub fn with_refusal_audit(mut self, refusals: Arc<RefusalAudit>) -> Self {
        self.refusals = Some(refusals);
        self
    }

    /// `auth` is `None` when no callers are configured: every call is let
    /// through and named by its peer address.
    pub fn new(
        max_concurrent_calls: usize,
        auth: Option<Arc<Authenticator>>,
        pool: PgPool,
        ready: watch::Receiver<bool>,
    ) -> Self {
        Self {
            limiter: Arc::new(Semaphore::new(max_concurrent_calls)),
            auth,
            pool,
            refusals: None,
            ready,
            metrics: None,
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            limiter: self.limiter.clone(),
            auth: self.auth.clone(),
            pool: self.pool.clone(),
            refusals: self.refusals.clone(),
            ready: self.ready.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    limiter: Arc<Semaphore>,
    auth: Option<Arc<Authenticator>>,
    pool: PgPool,
    refusals: Option<Arc<RefusalAudit>>,
    ready: watch::Receiver<bool>,
    metrics: Option<Arc<GrpcMetrics>>,
}

/// Counts the call handled now when `response` carries its status in its
/// headers (an error: a trailers-only response); otherwise hands the record
/// back, to ride with the body until its trailers.
fn settle(record: Option<CallRecord>, response: &Response<Body>) -> Option<CallRecord> {
    let mut record = record?;
    match response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        Some(status) => {
            record.set_status(status);
            None
        }
        None => Some(record),
    }
}

/// Completes when the database is found away; never if the monitor has
/// stopped (shutdown: calls in flight may finish).
async fn database_away(mut ready: watch::Receiver<bool>) {
    if ready.wait_for(|ready| !*ready).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The peer address, under TLS the client certificate's names, and the
/// connection's mark of a call in progress (which keeps it from being
/// closed as idle).
fn connection_of(request: &Request<Body>) -> (String, Vec<String>, Option<CallGuard>) {
    let extensions = request.extensions();
    if let Some(tls) = extensions.get::<TlsConnectInfo<ConnectionInfo>>() {
        let info = tls.get_ref();
        let names = tls
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| auth::tls::certificate_names(c)))
            .unwrap_or_default();
        return (
            describe(info.tcp.remote_addr()),
            names,
            Some(info.activity.begin()),
        );
    }
    if let Some(info) = extensions.get::<ConnectionInfo>() {
        return (
            describe(info.tcp.remote_addr()),
            Vec::new(),
            Some(info.activity.begin()),
        );
    }
    let peer = extensions
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr());
    (describe(peer), Vec::new(), None)
}

/// The TCP addresses inside the listener's connection info, when the
/// request carries no plain `TcpConnectInfo` of its own.
fn plain_tcp_info(request: &Request<Body>) -> Option<TcpConnectInfo> {
    let extensions = request.extensions();
    if extensions.get::<TcpConnectInfo>().is_some() {
        return None;
    }
    extensions
        .get::<TlsConnectInfo<ConnectionInfo>>()
        .map(|tls| tls.get_ref())
        .or_else(|| extensions.get::<ConnectionInfo>())
        .map(|info| info.tcp.clone())
}

fn describe(peer: Option<std::net::SocketAddr>) -> String {
    peer.map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
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

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let record = self.metrics.as_ref().map(|m| m.begin(&method));
        let (peer, certificate_names, in_progress) = connection_of(&request);
        // tonic's `Request::remote_addr` (which names unauthenticated
        // callers) looks for the plain TCP info, which the listener's own
        // connection info wraps.
        if let Some(tcp) = plain_tcp_info(&request) {
            request.extensions_mut().insert(tcp);
        }
        let header_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        // The log gets what a stranger sent bounded, as the audit trail
        // does: a path that is no method as "unknown method", the request
        // id cut to its limit.
        // A span made while the caller's trace context is current continues
        // it (when traces are on; otherwise this costs a header lookup).
        let parent = caller_trace(request.headers());
        let span = tracing::info_span!(
            "rpc",
            method = %refusals::method_name(&method),
            caller = tracing::field::Empty,
            peer = %peer,
            request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        drop(parent);
        name_trace(&span);
        if !header_id.is_empty() {
            span.record(
                "request_id",
                refusals::cut(&header_id, refusals::MAX_REQUEST_ID),
            );
        }

        let open = auth::is_open(&method);

        match &self.auth {
            Some(authenticator) if !open => {
                match authenticator.authorize(&method, request.headers(), &certificate_names) {
                    Ok(caller) => {
                        span.record("caller", caller.as_str());
                        request.extensions_mut().insert(caller);
                    }
                    Err(denial) => {
                        let name = method.trim_start_matches('/').to_owned();
                        let status = denial.status(&name);
                        let pool = self.pool.clone();
                        let refusals = self.refusals.clone();
                        let request_id = (!header_id.is_empty()).then_some(header_id);
                        return Box::pin(
                            async move {
                                let (actor, outcome, reason) = auth::denial_fields(&denial);
                                tracing::warn!(%actor, %outcome, %reason, "call refused");
                                match &refusals {
                                    Some(refusals) => {
                                        refusals
                                            .record(Refusal {
                                                actor: &actor,
                                                path: &method,
                                                outcome,
                                                reason: &reason,
                                                peer: &peer,
                                                request_id: request_id.as_deref(),
                                            })
                                            .await
                                    }
                                    None => {
                                        auth::audit_denial(
                                            &pool,
                                            &actor,
                                            &method,
                                            outcome,
                                            &reason,
                                            &peer,
                                            request_id.as_deref(),
                                        )
                                        .await
                                    }
                                }
                                let response = status.into_http::<Body>();
                                settle(record, &response);
                                Ok(response)
                            }
                            .instrument(span),
                        );
                    }
                }
            }
            _ => {
                span.record("caller", format!("peer:{peer}").as_str());
            }
        }

        // Only after authentication: a refused call must not hold one of
        // the callers' permits (a flood of strangers would shed callers).
        // Authentication is a hash and a map lookup, cheaper than the call.
        let permit = if open {
            None
        } else {
            match self.limiter.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let _enter = span.enter();
                    tracing::warn!("concurrency limit reached; call shed");
                    let response = crate::error::overloaded_status().into_http::<Body>();
                    if let Some(metrics) = &self.metrics {
                        metrics.shed();
                    }
                    settle(record, &response);
                    return Box::pin(async move { Ok(response) });
                }
            }
        };

        if !open && !*self.ready.borrow() {
            drop(permit);
            let response = crate::error::database_away_status().into_http::<Body>();
            settle(record, &response);
            return Box::pin(async move { Ok(response) });
        }
        let ready = self.ready.clone();

        // The clone taken for this call must be the one that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let started = Instant::now();
                let call = inner.call(request);
                let result = if open {
                    call.await
                } else {
                    tokio::select! {
                        result = call => result,
                        () = database_away(ready) => {
                            Ok(crate::error::database_away_status().into_http::<Body>())
                        }
                    }
                };
                drop(permit);
                let result = match result {
                    Ok(response) => {
                        let record = settle(record, &response);
                        if in_progress.is_some() || record.is_some() {
                            Ok(response.map(|body| CallBody::wrap(body, in_progress, record)))
                        } else {
                            Ok(response)
                        }
                    }
                    // The record, dropped, counts the call as cancelled.
                    Err(e) => Err(e),
                };
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

/// A response body that keeps its call marked in progress on its
/// connection until the body ends (a stream's last message), so a long
/// stream is never idle, and that counts the call handled then, with the
/// status its trailers carry.
struct CallBody {
    inner: Body,
    _busy: Option<CallGuard>,
    record: Option<CallRecord>,
}

impl CallBody {
    fn wrap(inner: Body, busy: Option<CallGuard>, record: Option<CallRecord>) -> Body {
        Body::new(Self {
            inner,
            _busy: busy,
            record,
        })
    }
}

impl http_body::Body for CallBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(record)) = (&polled, self.record.as_mut())
            && let Some(status) = frame
                .trailers_ref()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
        {
            record.set_status(status);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The caller's W3C trace context (`traceparent`, `tracestate`), made
/// current until the guard is dropped, when there is one.
fn caller_trace(headers: &http::HeaderMap) -> Option<opentelemetry::ContextGuard> {
    use opentelemetry::trace::TraceContextExt as _;

    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    if !headers.contains_key("traceparent") {
        return None;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    parent
        .span()
        .span_context()
        .is_valid()
        .then(|| parent.attach())
}

/// Names the span's trace in its logs (`trace_id`), when traces are on.
fn name_trace(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", trace_id.to_string());
    }
}
