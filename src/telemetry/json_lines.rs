//! The JSON log format, and the request fields every event inside a request
//! carries.
//!
//! One object per line, its own fields at the top level:
//! `{"timestamp":…,"level":…,"message":…,<fields>,<request fields>,"target":…}`.
//! Events inside a request add `request_id`, `method`, and, once known,
//! `route` and `tenant`, from a task-local [`RequestContext`] rather than a
//! `tracing` span: a span per request, with fields recorded into it as the
//! request goes, cost a few microseconds per request in the JSON formatter
//! (it stores span fields as JSON text and re-parses them on every record),
//! a fifth of the service's own CPU per read.

use std::cell::OnceCell;
use std::fmt;
use std::sync::Arc;

use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Method};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::auth::KeyIdentity;

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// The request an event belongs to: set by the outermost middleware, filled
/// in by routing (`route`) and authentication (`tenant`).
#[derive(Debug)]
pub(crate) struct RequestContext {
    request_id: HeaderValue,
    method: Method,
    route: OnceCell<MatchedPath>,
    tenant: OnceCell<Arc<KeyIdentity>>,
}

impl RequestContext {
    pub(crate) fn new(request_id: HeaderValue, method: Method) -> Self {
        Self {
            request_id,
            method,
            route: OnceCell::new(),
            tenant: OnceCell::new(),
        }
    }

    /// Runs `future` with this context for the events it emits.
    pub(crate) async fn scope<F: Future>(self, future: F) -> F::Output {
        REQUEST.scope(self, future).await
    }

    /// Records the matched route template of the current request, if any.
    pub(crate) fn record_route(route: &MatchedPath) {
        let _ = REQUEST.try_with(|request| request.route.set(route.clone()));
    }

    /// Records the authenticated key of the current request, if any.
    pub(crate) fn record_tenant(key: &Arc<KeyIdentity>) {
        let _ = REQUEST.try_with(|request| request.tenant.set(Arc::clone(key)));
    }

    fn write_fields(&self, out: &mut Writer<'_>) -> fmt::Result {
        if let Ok(id) = self.request_id.to_str() {
            write_string(out, "request_id", id)?;
        }
        write_string(out, "method", self.method.as_str())?;
        if let Some(route) = self.route.get() {
            write_string(out, "route", route.as_str())?;
        }
        if let Some(key) = self.tenant.get() {
            write_string(out, "tenant", key.tenant.as_str())?;
        }
        Ok(())
    }
}

/// The JSON event format (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut out: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        out.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut out)?;
        write!(out, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = FieldWriter {
            out: &mut out,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        let _ = REQUEST.try_with(|request| request.write_fields(&mut out));
        write_string(&mut out, "target", meta.target())?;
        out.write_str("}\n")
    }
}

/// Writes `,"name":"value"` with the value escaped as JSON.
fn write_string(out: &mut Writer<'_>, name: &str, value: &str) -> fmt::Result {
    write!(out, ",\"{name}\":")?;
    serde_json::to_writer(FmtWrite(out), value).map_err(|_| fmt::Error)
}

/// Writes each field of an event as `,"name":value`.
struct FieldWriter<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl FieldWriter<'_, '_> {
    fn number(&mut self, field: &Field, value: impl fmt::Display) {
        if self.result.is_ok() {
            self.result = write!(self.out, ",\"{}\":{value}", field.name());
        }
    }
}

impl Visit for FieldWriter<'_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.number(field, value);
        } else {
            self.number(field, "null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.number(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = write_string(self.out, field.name(), value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// `serde_json` writes bytes; the formatter takes text. serde_json only ever
/// writes whole UTF-8 sequences, so the check never fails in practice.
struct FmtWrite<'a, 'w>(&'a mut Writer<'w>);

impl std::io::Write for FmtWrite<'_, '_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(bytes)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
        self.0.write_str(text).map_err(std::io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;
    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what the formatter writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// The lines `emit` logs, as written.
    fn raw_lines(emit: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().expect("lock").clone();
        let text = String::from_utf8(bytes).expect("UTF-8");
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines().map(str::to_owned).collect()
    }

    /// The lines `emit` logs, parsed.
    fn lines(emit: impl FnOnce()) -> Vec<Value> {
        raw_lines(emit)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
            .collect()
    }

    #[test]
    fn an_event_is_one_flat_object_with_typed_fields() {
        let lines = lines(|| {
            tracing::warn!(
                count = 3_u64,
                delta = -2_i64,
                ratio = 0.5,
                infinite = f64::INFINITY,
                ok = true,
                name = "a \"quoted\"\nline",
                shown = %"display",
                "something {} happened",
                "odd"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "something odd happened");
        assert_eq!(line["count"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["infinite"], Value::Null);
        assert_eq!(line["ok"], true);
        assert_eq!(line["name"], "a \"quoted\"\nline");
        assert_eq!(line["shown"], "display");
        assert_eq!(line["target"], module_path!());
        assert!(line.get("request_id").is_none(), "{line}");
        let timestamp = line["timestamp"].as_str().expect("timestamp");
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "{timestamp}"
        );
    }

    #[test]
    fn a_line_starts_with_the_timestamp_and_level_and_ends_with_the_target() {
        let lines = raw_lines(|| tracing::info!(status = 201_u16, "request"));
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert!(line.starts_with("{\"timestamp\":\""), "{line}");
        assert!(
            line.contains("Z\",\"level\":\"INFO\",\"message\":\"request\",\"status\":201,"),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(",\"target\":\"{}\"}}", module_path!())),
            "{line}"
        );
    }

    #[test]
    fn events_inside_a_request_carry_its_fields() {
        use tower::ServiceExt as _;

        const ROUTE: &str = "/api/v1/llm/feedback/{kind}/{id}";
        let router = axum::Router::new().route(
            ROUTE,
            axum::routing::put(|route: MatchedPath| async move {
                tracing::warn!("before the route is recorded");
                RequestContext::record_route(&route);
                tracing::warn!("after");
            }),
        );
        let request = axum::http::Request::put("/api/v1/llm/feedback/responses/x")
            .body(axum::body::Body::empty())
            .expect("request");
        let lines = lines(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let context = RequestContext::new(HeaderValue::from_static("req-42"), Method::PUT);
            let response = runtime
                .block_on(context.scope(router.oneshot(request)))
                .expect("response");
            assert_eq!(response.status(), 200);
            tracing::warn!("outside");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["request_id"], "req-42");
        assert_eq!(lines[0]["method"], "PUT");
        assert!(lines[0].get("route").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["request_id"], "req-42");
        assert_eq!(lines[1]["route"], ROUTE);
        assert!(lines[2].get("request_id").is_none(), "{}", lines[2]);
    }

    proptest! {
        #[test]
        fn any_string_field_round_trips_through_the_line(value in any::<String>()) {
            let lines = lines(|| tracing::info!(value = value.as_str(), "x"));
            prop_assert_eq!(lines.len(), 1);
            prop_assert_eq!(lines[0]["value"].as_str(), Some(value.as_str()));
        }
    }
}
