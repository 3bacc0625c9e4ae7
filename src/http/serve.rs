//! The accept loop: hyper's HTTP/1 server with its timer, at most
//! `MAX_CONNECTIONS` open connections, an idle keep-alive timeout, and a
//! graceful shutdown that does not wait for idle connections.
//!
//! `axum::serve` hides hyper's builder and installs no timer, so hyper's
//! header-read timeout never fires there. hyper-util's `auto::Builder` would
//! wait for ever while it detects the protocol of a silent connection
//! (hyperium/hyper#3962); this service speaks HTTP/1 only, so it uses
//! `hyper::server::conn::http1::Builder` directly.
//!
//! What hyper's `header_read_timeout` covers (hyper 1.x,
//! `proto/h1/conn.rs` `poll_read_head` and `State::idle`): the timer starts
//! when the connection first waits for a request head, so a connection that
//! sends nothing at all is closed too, and it starts again as soon as a
//! response has been written, so the wait between keep-alive requests counts
//! against it as well. hyper has no separate idle timeout: the one here (see
//! `serve_connection`) closes a connection with no request in progress for
//! `IDLE_TIMEOUT_SECS`, which matters when it is shorter than the header-read
//! timeout.

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// How long the accept loop pauses after a failed `accept` (e.g. `EMFILE`):
/// the pending connection stays in the backlog, and retrying at once would
/// spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Settings of connections, as opposed to requests.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// A connection must send a whole request head within this time
    /// (counted from when it opened, or from the end of the previous response).
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
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
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
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
            settings.idle_timeout,
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

/// Serves one connection until it closes, the idle timeout passes, or the
/// server shuts down.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    builder: Arc<http1::Builder>,
    mut closing: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
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
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut closing_down = false;
    loop {
        // The idle timeout is a timer of our own, since hyper has none; while
        // a request is in progress it only schedules the next look.
        let next_look = activity
            .idle_deadline(idle_timeout)
            .unwrap_or_else(|| Instant::now() + idle_timeout);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    // Header-read timeouts, resets, malformed heads: the
                    // client's doing, not worth a log line each.
                    tracing::debug!(error = %err, "connection closed with an error");
                }
                return;
            }
            _ = closing.changed(), if !closing_down => {}
            () = tokio::time::sleep_until(next_look), if !closing_down => {
                if activity.idle_deadline(idle_timeout).is_none_or(|due| due > Instant::now()) {
                    continue;
                }
            }
        }
        // Shutting down, or idle for too long.
        if activity.requests_started() == 0 {
            // Nothing was ever dispatched (at most part of a head arrived),
            // and hyper would wait for the header-read timeout before it
            // gave up on a head it has begun to read: drop it now.
            return;
        }
        // No new request on this connection; one in progress is finished
        // (and answered `Connection: close`), an idle one closes at once.
        connection.as_mut().graceful_shutdown();
        closing_down = true;
    }
}

/// Whether a connection has a request in progress, and since when not.
struct Activity {
    opened: Instant,
    /// Requests dispatched on the connection.
    started: AtomicU64,
    /// Requests whose response has not been sent whole yet.
    in_flight: AtomicUsize,
    /// When the last response was sent whole (or the connection opened),
    /// in milliseconds after `opened`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn requests_started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    /// When the connection will have been idle for `idle_timeout`; `None`
    /// while a request is in progress.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened + idle_since + idle_timeout)
    }
}

/// A request in progress: from its dispatch until its response body is done.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let elapsed = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.store(elapsed, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
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
