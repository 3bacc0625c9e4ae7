//! Logs: the subscriber, request ids, and one line per request.

mod json_lines;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::auth::KeyIdentity;
use crate::config::{LogArgs, LogFormat};
use crate::http::ErrorCause;
use json_lines::JsonLines;
pub(crate) use json_lines::RequestContext;

/// The request id header, kept from the caller when sane, else generated.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Installs the global subscriber: `RUST_LOG` filter, pretty on a terminal,
/// JSON elsewhere, written to stderr (stdout is for command output) by
/// `tracing-appender`'s non-blocking writer: a request only queues its line
/// (at most `LOG_BUFFER_LINES` wait); when the queue is full the line is
/// dropped and counted ([`LOG_LINES_DROPPED`]), never waited for. Keep the
/// returned guard until the process ends: its drop writes out what is still
/// queued.
pub fn init(args: &LogArgs) -> Result<LogGuard, String> {
    let filter = EnvFilter::try_new(&args.filter)
        .map_err(|err| format!("invalid RUST_LOG {:?}: {err}", args.filter))?;
    let format = args
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(args.log_buffer_lines)
        .thread_name("log-writer")
        // The writer thread drains the queue, then flushes: buffered, a burst
        // of lines is one write(2) instead of one per line.
        .finish(std::io::BufWriter::with_capacity(
            LOG_WRITE_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
    result.map_err(|err| format!("cannot install the logger: {err}"))?;
    // Only the installed writer's count is worth reporting.
    let _ = DROPPED_LOG_LINES.set(dropped);
    Ok(LogGuard { _worker: worker })
}

/// What the log writer thread buffers before writing to stderr; it writes
/// out sooner whenever its queue runs empty.
const LOG_WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The drop count of the installed log writer.
static DROPPED_LOG_LINES: OnceLock<ErrorCounter> = OnceLock::new();

/// Publishes [`LOG_LINES_DROPPED`] (0 while no writer is installed); called
/// when `/metrics` is scraped.
pub(crate) fn publish_dropped_log_lines() {
    let dropped = DROPPED_LOG_LINES
        .get()
        .map_or(0, ErrorCounter::dropped_lines);
    metrics::counter!(LOG_LINES_DROPPED).absolute(u64::try_from(dropped).unwrap_or(u64::MAX));
}

/// Writes out the queued log lines when dropped (waiting at most about a
/// second if stderr does not take them).
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// 1 to 128 characters from `A-Z a-z 0-9 . _ : -` (API.md).
fn is_sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A random (v4) UUID from the thread's userspace generator: `Uuid::new_v4`
/// asks the kernel for every id, a system call per request.
fn generate_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut text = [0_u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut text).as_bytes())
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// Outermost middleware: settles the request id, opens the request span that
/// inner layers record into (`route`, `tenant`), and writes one line when the
/// response is ready. Never logs headers or bodies.
pub(crate) async fn trace_request(mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|value| is_sane_request_id(value))
        .cloned()
        .unwrap_or_else(generate_request_id);
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.clone());
    let method = request.method().clone();
    let context = RequestContext::new(request_id.clone(), method.clone());
    let mut response = context.scope(next.run(request)).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    // Unmatched paths share one label: raw paths would let clients create
    // unbounded series.
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let (requests, duration) = request_series(&method, route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    // Written outside the request's scope: the line carries every field
    // itself.
    let tenant = response
        .extensions()
        .get::<Arc<KeyIdentity>>()
        .map(|key| key.tenant.as_str());
    let request_id = response
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    let method = method.as_str();
    if let Some(ErrorCause(cause)) = response.extensions().get::<ErrorCause>() {
        tracing::error!(
            parent: None, request_id, method, route, tenant, status, latency_ms,
            error.cause = %cause, "request failed"
        );
    } else {
        tracing::info!(parent: None, request_id, method, route, tenant, status, latency_ms, "request");
    }
    response
}

/// Route-level middleware: records the matched route template (never the raw
/// path, which holds ids) in the request span, and hands it to
/// `trace_request` for the metrics labels.
pub(crate) async fn record_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    if let Some(route) = &route {
        RequestContext::record_route(route);
    }
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Requests served, by `method`, `route` (template) and `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Time to the response head, in seconds, by `method`, `route` and `status`.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// Entries created, by `kind` and `rating` (`none` when unset).
pub const FEEDBACK_CREATED: &str = "feedback_created_total";
/// Entries updated, by `kind` and the `rating` after the update.
pub const FEEDBACK_UPDATED: &str = "feedback_updated_total";
/// Requests refused by authentication, by `reason`.
pub const AUTH_FAILURES: &str = "auth_failures_total";
/// Database lookups of keys missing from the in-memory key set, by outcome.
pub const KEY_LOOKUPS: &str = "api_key_lookups_total";
/// Requests refused by the per-key rate limit.
pub const RATE_LIMITED: &str = "rate_limited_total";
/// Requests shed because `MAX_CONCURRENT_REQUESTS` were in flight.
pub const REQUESTS_SHED: &str = "requests_shed_total";
/// Requests answered 503 because they ran past `REQUEST_TIMEOUT_MS`.
pub const REQUEST_TIMEOUTS: &str = "request_timeouts_total";
/// Log lines dropped because the log queue was full (stderr too slow).
pub const LOG_LINES_DROPPED: &str = "log_lines_dropped_total";
/// Database pool connections, by `pool` and `state` (`idle`, `in_use`).
pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";
/// The most connections each database pool may open, by `pool`.
pub const DB_POOL_MAX_CONNECTIONS: &str = "db_pool_max_connections";

/// The `method` label of requests with an unusual method.
static OTHER_METHOD: std::sync::LazyLock<Method> =
    std::sync::LazyLock::new(|| Method::from_bytes(b"OTHER").unwrap_or(Method::GET));

/// The request count and latency series of one (method, route, status),
/// registered once and then reused: building labelled keys costs several
/// allocations and a registry lookup per request.
fn request_series(method: &Method, route: &str, status: u16) -> (Counter, Histogram) {
    type Series = HashMap<Box<str>, Vec<(Method, u16, Counter, Histogram)>>;
    static SERIES: OnceLock<RwLock<Series>> = OnceLock::new();
    // Methods are the client's choice: unusual ones share one label.
    let method = match *method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD
        | Method::OPTIONS => method,
        _ => &OTHER_METHOD,
    };
    let series = SERIES.get_or_init(RwLock::default);
    let find = |series: &Series| {
        series.get(route).and_then(|of_route| {
            of_route
                .iter()
                .find(|(m, s, _, _)| m == method && *s == status)
                .map(|(_, _, count, latency)| (count.clone(), latency.clone()))
        })
    };
    if let Some(found) = find(&series.read().unwrap_or_else(PoisonError::into_inner)) {
        return found;
    }
    let mut series = series.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = find(&series) {
        return found;
    }
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    let count = metrics::counter!(HTTP_REQUESTS, &labels);
    let latency = metrics::histogram!(HTTP_REQUEST_DURATION, &labels);
    series.entry(route.into()).or_default().push((
        method.clone(),
        status,
        count.clone(),
        latency.clone(),
    ));
    (count, latency)
}

/// How often histogram samples are folded into their buckets (by the
/// application's `metrics-upkeep` worker, and at every scrape).
pub const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Latency buckets (seconds): from well under a millisecond to the default
/// request timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use. Every
/// `Application` of a process (tests run several) reports into it.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full(HTTP_REQUEST_DURATION.to_owned()),
                LATENCY_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        describe_metrics();
        handle
    })
}

fn describe_metrics() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by method, route template and status"
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to the response head, by method, route template and status"
    );
    metrics::describe_counter!(
        FEEDBACK_CREATED,
        "Feedback entries created, by kind and rating"
    );
    metrics::describe_counter!(
        FEEDBACK_UPDATED,
        "Feedback entries updated, by kind and rating after the update"
    );
    metrics::describe_counter!(
        AUTH_FAILURES,
        "Requests refused by authentication, by reason"
    );
    metrics::describe_counter!(
        KEY_LOOKUPS,
        "Database lookups of API keys missing from the in-memory key set, by outcome (over_budget: not looked up)"
    );
    metrics::describe_counter!(RATE_LIMITED, "Requests refused by the per-key rate limit");
    metrics::describe_counter!(
        REQUESTS_SHED,
        "Requests shed because the concurrency limit was reached"
    );
    metrics::describe_counter!(
        REQUEST_TIMEOUTS,
        "Requests answered 503 after the request timeout"
    );
    metrics::describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because the log queue was full (stderr too slow)"
    );
    metrics::describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections, by pool and state (idle, in_use)"
    );
    metrics::describe_gauge!(
        DB_POOL_MAX_CONNECTIONS,
        "The most connections each database pool may open"
    );
}
