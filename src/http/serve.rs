//! The accept loop: hyper's HTTP/1 server with its timer, at most
//! `MAX_CONNECTIONS` open connections, a header-read timeout, an idle
//! keep-alive timeout, and a graceful shutdown that does not wait for idle
//! connections.
//!
//! `axum::serve` hides hyper's builder and installs no timer, so hyper's
//! header-read timeout never fires there. hyper-util's `auto::Builder` would
//! wait for ever while it detects the protocol of a silent connection
//! (hyperium/hyper#3962); this service speaks HTTP/1 only, so it uses
//! `hyper::server::conn::http1::Builder` directly.
//!
//! The two timeouts follow Go's `net/http`: `IDLE_TIMEOUT_SECS` runs from the
//! end of a response until the next request arrives, `HEADER_READ_TIMEOUT_MS`
//! from the first byte of a request head (or, for a connection's first
//! request, from the accept) until the head is complete. hyper has one timer
//! for both: its `header_read_timeout` starts whenever the connection waits
//! for a head (hyper 1.x, `proto/h1/conn.rs` `poll_read_head`, restarted by
//! `State::idle` once a response is written), so the wait between keep-alive
//! requests counts against it; its maintainers describe it so, and leave a
//! separate idle timeout "as in Go" for later (hyperium/hyper PR #3828). Set
//! to 10 s, it would close every idle keep-alive connection after 10 s, and
//! load balancers that keep backend connections for longer (AWS ALB: 60 s)
//! would get resets for the requests they send on them. So one timer is ours:
//!
//! - hyper's `header_read_timeout` is set to `IDLE_TIMEOUT_SECS`: it then is
//!   the idle timeout (from the end of a response until the next head is
//!   complete), and a backstop for the first head;
//! - our own timer (see `poll_serving`) enforces `HEADER_READ_TIMEOUT_MS`:
//!   [`WatchedStream`] notes the first read that returns bytes while no
//!   request is in progress, and a head not dispatched within the timeout of
//!   it drops the connection, as hyper's timeout would. A connection that
//!   sends nothing at all is closed `HEADER_READ_TIMEOUT_MS` after its accept.
//!
//! A head must therefore be complete within `HEADER_READ_TIMEOUT_MS` of its
//! first byte and, on a keep-alive connection, within `IDLE_TIMEOUT_SECS` of
//! the previous response, whichever comes first. The cost per request is one
//! atomic load per read and two stores; the timer is armed only while a head
//! is incomplete after a read.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long the accept loop pauses after a failed `accept` (e.g. `EMFILE`):
/// the pending connection stays in the backlog, and retrying at once would
/// spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Settings of connections, as opposed to requests.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// A request head must be complete within this time of its first byte
    /// (of the accept, for a connection's first request); else the
    /// connection is dropped.
    pub header_read_timeout: Duration,
    /// A keep-alive connection must send its next complete request head
    /// within this time of the end of the previous response; else it is
    /// closed. A request in progress is never idle.
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it the listener is not polled, so
    /// new connections wait in the kernel's backlog.
    pub max_connections: u32,
    /// After `shutdown`, how long requests in flight may take to finish.
    pub shutdown_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting, closes idle connections at once, lets requests in flight finish
/// for at most `settings.shutdown_timeout`, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &ConnectionSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    // hyper's header-read timer is our idle timeout (see the module docs).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.idle_timeout);
    let builder = Arc::new(builder);
    // One permit per open connection: held by its task until it ends.
    let permits = Arc::new(Semaphore::new(settings.max_connections as usize));
    let (closing, closing_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut accept_errors = AcceptErrors::default();
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never closed; were it, no connection could be served.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    accept_errors.recovered();
                    stream
                }
                Err(err) => {
                    accept_errors.failed(&err).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            Arc::clone(&builder),
            closing_rx.clone(),
            permit,
            settings.header_read_timeout,
        ));
    }
    // New connections are refused from here on.
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    closing.send_replace(());
    let every_connection_closed = permits.acquire_many(settings.max_connections);
    if tokio::time::timeout(settings.shutdown_timeout, every_connection_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_secs = settings.shutdown_timeout.as_secs(),
            "drain timeout reached; closing remaining connections"
        );
    }
}

/// Serves one connection until it closes, its request head is late, or the
/// server shuts down.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    builder: Arc<http1::Builder>,
    mut closing: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
    header_read_timeout: Duration,
) {
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_flight = InFlight::start(&activity);
            let router = router.clone();
            async move {
                let Ok(response) = router.oneshot(request.map(Body::new)).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    inner: body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let io = TokioIo::new(WatchedStream {
        stream,
        activity: Arc::clone(&activity),
    });
    let mut connection = pin!(builder.serve_connection(io, service));
    // The first head is due `header_read_timeout` after the accept.
    let mut head_timer = pin!(tokio::time::sleep_until(
        activity.opened + header_read_timeout
    ));
    let mut closing_down = false;
    loop {
        let serving = std::future::poll_fn(|cx| {
            poll_serving(
                connection.as_mut(),
                head_timer.as_mut(),
                &activity,
                header_read_timeout,
                cx,
            )
        });
        tokio::select! {
            served = serving => {
                match served {
                    Served::Closed(Err(err)) => {
                        // Idle timeouts, resets, malformed heads: the
                        // client's doing, not worth a log line each.
                        tracing::debug!(error = %err, "connection closed with an error");
                    }
                    Served::Closed(Ok(())) => {}
                    Served::HeadTooSlow => {
                        tracing::debug!("request head not complete in time; connection dropped");
                    }
                }
                return;
            }
            _ = closing.changed(), if !closing_down => {}
        }
        // Shutting down.
        if activity.requests_started() == 0 {
            // Nothing was ever dispatched (at most part of a head arrived),
            // and hyper would wait for its timeout before it gave up on a
            // head it has begun to read: drop it now.
            return;
        }
        // No new request on this connection; one in progress is finished
        // (and answered `Connection: close`), an idle one closes at once.
        connection.as_mut().graceful_shutdown();
        closing_down = true;
    }
}

/// How serving a connection ended.
enum Served {
    /// hyper is done with it (the client closed it, hyper's timer fired, or
    /// it broke).
    Closed(hyper::Result<()>),
    /// A request head was not complete within `HEADER_READ_TIMEOUT_MS`.
    HeadTooSlow,
}

/// Polls `connection`, then the head timer if a request head is on its way.
///
/// Every read of the connection happens inside `connection.poll`, in this
/// task, so once it returns the head state is up to date: no wake-up of our
/// own is needed, and the timer is only touched when a head is still
/// incomplete after a read (a head that arrives in one read is dispatched in
/// the same poll and never arms it).
fn poll_serving(
    connection: Pin<&mut impl Future<Output = hyper::Result<()>>>,
    mut head_timer: Pin<&mut Sleep>,
    activity: &Activity,
    header_read_timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<Served> {
    if let Poll::Ready(result) = connection.poll(cx) {
        return Poll::Ready(Served::Closed(result));
    }
    let Some(deadline) = activity.head_deadline(header_read_timeout) else {
        return Poll::Pending;
    };
    if head_timer.deadline() != deadline {
        head_timer.as_mut().reset(deadline);
    }
    if head_timer.poll(cx).is_ready() {
        return Poll::Ready(Served::HeadTooSlow);
    }
    Poll::Pending
}

/// [`Activity::head`]: no request in progress, and no byte of the next
/// head read yet.
const NO_HEAD: u64 = 0;
/// [`Activity::head`]: a request is in progress.
const REQUEST_IN_PROGRESS: u64 = u64::MAX;

/// Whether a connection has a request in progress, or one on its way.
///
/// Only the connection's own task touches it (the reads, the service call
/// and the response body all run inside hyper's connection future), so
/// relaxed atomics suffice; they are atomics because the service must be
/// `Send`.
struct Activity {
    opened: Instant,
    /// Requests dispatched on the connection.
    started: AtomicU64,
    /// Requests whose response has not been sent whole yet.
    in_flight: AtomicUsize,
    /// [`NO_HEAD`], [`REQUEST_IN_PROGRESS`], or when the first byte of the
    /// head being read arrived, in milliseconds after `opened`, plus one
    /// (so `1` is the accept, where the first head's clock starts).
    head: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head: AtomicU64::new(1),
        }
    }

    fn requests_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// A read returned bytes: if no request is in progress and no head has
    /// begun, a head begins now. One load per read; a store once per head.
    fn bytes_read(&self) {
        if self.head.load(Ordering::Relaxed) == NO_HEAD {
            let since_open = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            let head = since_open.saturating_add(1).min(REQUEST_IN_PROGRESS - 1);
            self.head.store(head, Ordering::Relaxed);
        }
    }

    /// When the head being read must be complete; `None` while a request is
    /// in progress or no byte of the next head has arrived (then hyper's
    /// timer, the idle timeout, is the only one running).
    fn head_deadline(&self, header_read_timeout: Duration) -> Option<Instant> {
        match self.head.load(Ordering::Relaxed) {
            NO_HEAD | REQUEST_IN_PROGRESS => None,
            began => Some(self.opened + Duration::from_millis(began - 1) + header_read_timeout),
        }
    }
}

/// The connection's socket, telling [`Activity`] when a read returns bytes.
struct WatchedStream {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A request in progress: from its dispatch until its response body is done.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head.store(REQUEST_IN_PROGRESS, Ordering::Relaxed);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // The next head's clock starts at its first byte.
            activity.head.store(NO_HEAD, Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as in progress until hyper
/// has taken its last frame (or dropped it).
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Failed accepts: one warning per burst, and a short pause after each.
#[derive(Default)]
struct AcceptErrors {
    /// Failures since the last successful accept.
    in_burst: u64,
}

impl AcceptErrors {
    async fn failed(&mut self, err: &io::Error) {
        // The peer gave up before its connection was accepted: nothing to
        // wait for.
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            return;
        }
        if self.in_burst == 0 {
            tracing::warn!(
                error = %err,
                backoff_ms = ACCEPT_BACKOFF.as_millis(),
                "cannot accept connections (out of file descriptors?); retrying after a pause"
            );
        }
        self.in_burst += 1;
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }

    fn recovered(&mut self) {
        if self.in_burst > 0 {
            tracing::info!(failures = self.in_burst, "accepting connections again");
            self.in_burst = 0;
        }
    }
}
