//! Logs: the subscriber, request ids, and one line per request.

use std::io::IsTerminal;
use std::time::Instant;

use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{Instrument, field};
use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};
use crate::http::ErrorCause;

/// The request id header, kept from the caller when sane, else generated.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Installs the global subscriber: `RUST_LOG` filter, pretty on a terminal,
/// JSON elsewhere, written to stderr (stdout is for command output).
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = EnvFilter::try_new(&args.filter)
        .map_err(|err| format!("invalid RUST_LOG {:?}: {err}", args.filter))?;
    let format = args
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|err| format!("cannot install the logger: {err}"))
}

/// 1 to 128 characters from `A-Z a-z 0-9 . _ : -` (API.md).
fn is_sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
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
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or(HeaderValue::from_static("unknown"))
        });
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.clone());
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        method = %request.method(),
        route = field::Empty,
        tenant = field::Empty,
    );
    let method = request.method().clone();
    let mut response = next.run(request).instrument(span.clone()).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    // Unmatched paths share one label: raw paths would let clients create
    // unbounded series.
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
    if let Some(ErrorCause(cause)) = response.extensions().get::<ErrorCause>() {
        tracing::error!(parent: &span, status, latency_ms, error.cause = %cause, "request failed");
    } else {
        tracing::info!(parent: &span, status, latency_ms, "request");
    }
    response
}

/// Route-level middleware: records the matched route template (never the raw
/// path, which holds ids) in the request span, and hands it to
/// `trace_request` for the metrics labels.
pub(crate) async fn record_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    if let Some(route) = &route {
        tracing::Span::current().record("route", route.as_str());
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
/// Requests refused by the per-key rate limit.
pub const RATE_LIMITED: &str = "rate_limited_total";
/// Requests shed because `MAX_CONCURRENT_REQUESTS` were in flight.
pub const REQUESTS_SHED: &str = "requests_shed_total";
/// Requests answered 503 because they ran past `REQUEST_TIMEOUT_MS`.
pub const REQUEST_TIMEOUTS: &str = "request_timeouts_total";
/// Database pool connections, by `pool` and `state` (`idle`, `in_use`).
pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";
/// The most connections each database pool may open, by `pool`.
pub const DB_POOL_MAX_CONNECTIONS: &str = "db_pool_max_connections";

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
    metrics::describe_counter!(RATE_LIMITED, "Requests refused by the per-key rate limit");
    metrics::describe_counter!(
        REQUESTS_SHED,
        "Requests shed because the concurrency limit was reached"
    );
    metrics::describe_counter!(
        REQUEST_TIMEOUTS,
        "Requests answered 503 after the request timeout"
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
