//! The request span, the request id, and one log line and two metric series
//! per request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use metrics::SharedString;
use tracing::Instrument as _;
use tracing::field::Empty;
use uuid::Uuid;

use super::ErrorCause;
use crate::telemetry::{HTTP_REQUEST_DURATION, HTTP_REQUESTS};

/// The request id header, kept from the caller when sane, else generated.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// 1 to 128 characters from `A-Z a-z 0-9 . _ : -` (API.md).
fn is_sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The caller's request id when sane, else a random (v4) UUID.
fn request_id(request: &Request) -> HeaderValue {
    if let Some(id) = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|value| is_sane_request_id(value))
    {
        return id.clone();
    }
    let mut text = [0_u8; uuid::fmt::Hyphenated::LENGTH];
    let id = Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Outermost middleware: settles the request id, runs the rest of the
/// request inside the `request` span (`request_id`, `method`; `route` and
/// `tenant` recorded by inner layers once known), and writes one line in that
/// span when the response is ready. Never logs headers or bodies.
///
/// The span is at level `ERROR` so that `RUST_LOG=warn` (or `error`) keeps
/// it: it carries context, not an event of its own, and the warnings and
/// errors inside a request are the lines that most need its request id.
pub(crate) async fn trace_request(mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    let request_id = request_id(&request);
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.clone());
    let method = request.method().clone();
    let span = tracing::error_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        method = method.as_str(),
        route = Empty,
        tenant = Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    // Unmatched paths share one label: raw paths would let clients create
    // unbounded series.
    let route = response.extensions().get::<MatchedPath>();
    if route.is_none() {
        span.record("route", "unmatched");
    }
    let route = route.map_or("unmatched", MatchedPath::as_str);
    let labels = [
        ("method", SharedString::from(method_label(&method))),
        ("route", SharedString::from(route.to_owned())),
        ("status", SharedString::from(status.to_string())),
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

/// The `method` label: methods are the client's choice, so unusual ones
/// share one label.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
