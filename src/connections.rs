//! The gRPC listener's connections and what each may cost: a cap on open
//! connections in total and per peer address (over it a new connection is
//! closed at once, so established callers keep their file descriptors), a
//! deadline for a new connection's first bytes (the TLS handshake has its own
//! timeout on top), and an idle timeout that closes a connection with no call
//! in progress. HTTP/2 keepalive (set on the server) closes connections whose
//! peer stopped answering.
//!
//! The plaintext health listener gets the same treatment with small fixed
//! caps (`HEALTH_LIMITS`): a flood of silent connections there must neither
//! exhaust the process's file descriptors nor keep probes from answering.
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The limits of the listener's connections (see the settings table).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// How long a new connection may take to send its first bytes.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open without a call in progress.
    pub idle_timeout: Duration,
}

/// The health listener's caps. A probe opens a connection or two at a time
/// (the kubelet, a load balancer's checker, a person with grpcurl), so 64 in
/// total and 16 per peer leave room for every real prober while bounding
/// what a flood can hold.
pub const HEALTH_MAX_CONNECTIONS: usize = 64;
pub const HEALTH_MAX_CONNECTIONS_PER_PEER: usize = 16;

/// Counts the open connections and admits new ones under the caps.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Counts>,
}

/// How often refusals at the caps are reported at most.
const REFUSAL_REPORT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Counts {
    limits: ConnectionLimits,
    open: Mutex<Open>,
    /// Refusals since the last report, and when (seconds since `started`,
    /// 0 for never) that report was written.
    refused: AtomicU64,
    last_report: AtomicU64,
    started: Instant,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            inner: Arc::new(Counts {
                limits,
                open: Mutex::new(Open::default()),
                refused: AtomicU64::new(0),
                last_report: AtomicU64::new(0),
                started: Instant::now(),
            }),
        }
    }

    /// The connection, tracked, if the caps allow it; `None` closes it (the
    /// stream is dropped).
    pub fn admit(&self, stream: TcpStream) -> Option<Tracked<TcpStream>> {
        let peer = stream.peer_addr().ok()?.ip();
        let limits = self.inner.limits;
        {
            // Held only for a counter update; a poisoned lock still counts.
            let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
            let from_peer = open.per_peer.get(&peer).copied().unwrap_or(0);
            let refusal = if open.total >= limits.max_connections {
                Some("max_connections")
            } else if from_peer >= limits.max_connections_per_peer {
                Some("max_connections_per_peer")
            } else {
                None
            };
            if let Some(cap) = refusal {
                self.report_refusal(cap, peer, open.total);
                return None;
            }
            open.total += 1;
            open.per_peer.insert(peer, from_peer + 1);
        }
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
        });
        Some(Tracked {
            io: stream,
            _slot: Slot {
                counts: self.inner.clone(),
                peer,
            },
            activity,
            deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            got_bytes: false,
            idle_timeout: limits.idle_timeout,
        })
    }

    /// Says that connections are being refused, at most once per
    /// `REFUSAL_REPORT_INTERVAL` (a flood must not flood the log too), with
    /// the number refused since the last report.
    fn report_refusal(&self, cap: &'static str, peer: IpAddr, open: usize) {
        let refused = self.inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.inner.started.elapsed().as_secs();
        let last = self.inner.last_report.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + REFUSAL_REPORT_INTERVAL.as_secs();
        if due
            && self
                .inner
                .last_report
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.inner.refused.store(0, Ordering::Relaxed);
            tracing::warn!(cap, %peer, open, refused, "connections refused at the cap");
        }
    }
}

/// A connection's place under the caps, given back when it closes.
#[derive(Debug)]
struct Slot {
    counts: Arc<Counts>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

/// The calls in progress on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
}

impl Activity {
    /// Marks a call in progress until the guard is dropped (when its
    /// response, streams included, has been sent).
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    fn last_active(&self) -> Instant {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A call in progress on a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the middleware learns of a connection: its addresses, and its
/// activity to mark calls on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    pub activity: Arc<Activity>,
}

/// An admitted connection: closes itself when its first bytes are late or
/// when it has been idle too long.
#[derive(Debug)]
pub struct Tracked<T> {
    io: T,
    _slot: Slot,
    activity: Arc<Activity>,
    /// When to look again: the handshake deadline first, then the idle one.
    deadline: Pin<Box<Sleep>>,
    got_bytes: bool,
    idle_timeout: Duration,
}

impl<T> Tracked<T> {
    /// `Ready(error)` when the connection must close; `Pending` (with the
    /// timer armed) otherwise.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            if !self.got_bytes {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no handshake within handshake_timeout",
                ));
            }
            let now = Instant::now();
            let next = if self.activity.in_flight.load(Ordering::Acquire) > 0 {
                now + self.idle_timeout
            } else {
                let idle_until = self.activity.last_active() + self.idle_timeout;
                if idle_until <= now {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle for idle_connection_timeout",
                    ));
                }
                idle_until
            };
            self.deadline.as_mut().reset(next);
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && !self.got_bytes {
                    // Handshake begun: from now on the idle deadline.
                    self.got_bytes = true;
                    let idle_until = self.activity.last_active() + self.idle_timeout;
                    self.deadline.as_mut().reset(idle_until);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_deadline(cx) {
                Poll::Ready(e) => {
                    tracing::debug!(reason = %e, "closing a connection");
                    Poll::Ready(Err(e))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Tracked<TcpStream> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            tcp: self.io.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

/// A response body that keeps its call marked in progress until the body
/// ends (a stream's last message), so a long stream is never idle.
pub struct GuardedBody {
    inner: Body,
    _guard: CallGuard,
}

impl GuardedBody {
    pub fn wrap(inner: Body, guard: CallGuard) -> Body {
        Body::new(Self {
            inner,
            _guard: guard,
        })
    }
}

impl http_body::Body for GuardedBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Marks each call on a tracked connection in progress until its response
/// ends, for a listener without `RpcLayer` (which does the same as one of
/// its steps): the health listener's `Watch` streams are never idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct MarkCallsLayer;

impl<S> tower::Layer<S> for MarkCallsLayer {
    type Service = MarkCalls<S>;

    fn layer(&self, inner: S) -> MarkCalls<S> {
        MarkCalls(inner)
    }
}

/// See `MarkCallsLayer`.
#[derive(Debug, Clone)]
pub struct MarkCalls<S>(S);

impl<S> tower::Service<http::Request<Body>> for MarkCalls<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| info.activity.begin());
        let call = self.0.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| GuardedBody::wrap(body, guard)),
                None => response,
            })
        })
    }
}
