//! Logs: the subscriber, request ids, and one line per request.

use std::io::IsTerminal;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
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
    let mut response = next.run(request).instrument(span.clone()).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    let status = response.status().as_u16();
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    if let Some(ErrorCause(cause)) = response.extensions().get::<ErrorCause>() {
        tracing::error!(parent: &span, status, latency_ms, error.cause = %cause, "request failed");
    } else {
        tracing::info!(parent: &span, status, latency_ms, "request");
    }
    response
}

/// Route-level middleware: records the matched route template (never the raw
/// path, which holds ids) in the request span.
pub(crate) async fn record_route(request: Request, next: Next) -> Response {
    if let Some(route) = request.extensions().get::<MatchedPath>() {
        tracing::Span::current().record("route", route.as_str());
    }
    next.run(request).await
}
