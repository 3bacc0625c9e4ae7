//! The JSON log format: one object per line, an event's own fields and those
//! of the spans it happened in, innermost first, each in its declared order
//! (the request's `request_id`, `method`, `route`, `tenant`), all at the top
//! level:
//! `{"timestamp":…,"level":…,"message":…,<fields>,<span fields>,"target":…}`.
//!
//! tracing-subscriber's own JSON format keeps span fields as JSON text and
//! parses that text again for every event written inside the span, which
//! cost a fifth of the service's own CPU per read. Here [`SpanFields`]
//! keeps each span's fields as typed values in the span's extensions when
//! they are recorded, [`JsonLines`] writes them straight from there, and
//! [`NoSpanText`] spares the fmt layer formatting span fields into text
//! that nothing reads.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Keeps each span's fields, as recorded, for [`JsonLines`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpanFields;

impl<S> Layer<S> for SpanFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut values = FieldValues::with_room_for(attrs.metadata().fields().len());
        attrs.record(&mut values);
        span.extensions_mut().insert(values);
    }

    fn on_record(&self, id: &Id, record: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(values) = extensions.get_mut::<FieldValues>() {
            record.record(values);
        }
    }
}

/// A span's recorded fields, in the order the span declares them (fields
/// declared `Empty` are left out until recorded; a second record replaces
/// the value), by the field's index in its span's field set.
#[derive(Debug)]
struct FieldValues(Vec<Option<(&'static str, FieldValue)>>);

#[derive(Debug)]
enum FieldValue {
    Text(String),
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Bool(bool),
}

impl FieldValues {
    fn with_room_for(fields: usize) -> Self {
        Self(std::iter::repeat_with(|| None).take(fields).collect())
    }

    fn set(&mut self, field: &Field, value: FieldValue) {
        if let Some(slot) = self.0.get_mut(field.index()) {
            *slot = Some((field.name(), value));
        }
    }

    fn write(&self, out: &mut Writer<'_>) -> fmt::Result {
        for (name, value) in self.0.iter().flatten() {
            match value {
                FieldValue::Text(text) => write_string(out, name, text)?,
                FieldValue::Signed(n) => write_number(out, name, n)?,
                FieldValue::Unsigned(n) => write_number(out, name, n)?,
                FieldValue::Float(n) => write_float(out, name, *n)?,
                FieldValue::Bool(b) => write_number(out, name, b)?,
            }
        }
        Ok(())
    }
}

impl Visit for FieldValues {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, FieldValue::Float(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, FieldValue::Signed(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, FieldValue::Unsigned(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, FieldValue::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, FieldValue::Text(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field, FieldValue::Text(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, FieldValue::Text(format!("{value:?}")));
    }
}

/// Span fields for the fmt layer when [`JsonLines`] writes the events: none
/// (it reads [`SpanFields`]' values instead).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoSpanText;

impl<'writer> FormatFields<'writer> for NoSpanText {
    fn format_fields<R: RecordFields>(&self, _: Writer<'writer>, _: R) -> fmt::Result {
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
        ctx: &FmtContext<'_, S, N>,
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
        // Innermost span first; walking from the root would collect the
        // scope first.
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                if let Some(values) = span.extensions().get::<FieldValues>() {
                    values.write(&mut out)?;
                }
            }
        }
        write_string(&mut out, "target", meta.target())?;
        out.write_str("}\n")
    }
}

/// The JSON log layers: [`SpanFields`] and a fmt layer writing
/// [`JsonLines`] to `writer`.
pub(crate) fn layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    SpanFields.and_then(
        tracing_subscriber::fmt::layer()
            .fmt_fields(NoSpanText)
            .event_format(JsonLines)
            .with_writer(writer),
    )
}

/// Writes `,"name":"value"` with the value escaped as JSON.
fn write_string(out: &mut Writer<'_>, name: &str, value: &str) -> fmt::Result {
    write!(out, ",\"{name}\":")?;
    serde_json::to_writer(FmtWrite(out), value).map_err(|_| fmt::Error)
}

/// Writes `,"name":value` for a value whose `Display` is JSON.
fn write_number(out: &mut Writer<'_>, name: &str, value: impl fmt::Display) -> fmt::Result {
    write!(out, ",\"{name}\":{value}")
}

/// JSON has no infinities or NaN: they are written as `null`.
fn write_float(out: &mut Writer<'_>, name: &str, value: f64) -> fmt::Result {
    if value.is_finite() {
        write_number(out, name, value)
    } else {
        write_number(out, name, "null")
    }
}

/// Writes each field of an event as `,"name":value`.
struct FieldWriter<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl FieldWriter<'_, '_> {
    fn number(&mut self, field: &Field, value: impl fmt::Display) {
        if self.result.is_ok() {
            self.result = write_number(self.out, field.name(), value);
        }
    }
}

impl Visit for FieldWriter<'_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.result.is_ok() {
            self.result = write_float(self.out, field.name(), value);
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
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use serde_json::Value;
    use tracing_subscriber::layer::SubscriberExt as _;

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
        let subscriber = tracing_subscriber::registry().with(layer(captured.clone()));
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
    fn events_inside_a_span_carry_its_fields_once_recorded() {
        const ROUTE: &str = "/api/v1/llm/feedback/{kind}/{id}";
        let lines = lines(|| {
            let request = tracing::error_span!(
                "request",
                request_id = "req-42",
                method = "PUT",
                route = tracing::field::Empty,
                tenant = tracing::field::Empty,
            );
            request.in_scope(|| {
                tracing::warn!("before the route is recorded");
                tracing::Span::current().record("route", ROUTE);
                tracing::Span::current().record("tenant", "acme");
                tracing::warn!(status = 200_u16, "after");
                tracing::info_span!("worker", attempt = 2_u64, ok = true)
                    .in_scope(|| tracing::warn!("nested"));
            });
            tracing::warn!("outside");
        });
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0]["request_id"], "req-42");
        assert_eq!(lines[0]["method"], "PUT");
        assert!(lines[0].get("route").is_none(), "{}", lines[0]);
        assert!(lines[0].get("tenant").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["request_id"], "req-42");
        assert_eq!(lines[1]["route"], ROUTE);
        assert_eq!(lines[1]["tenant"], "acme");
        assert_eq!(lines[1]["status"], 200);
        assert_eq!(lines[2]["request_id"], "req-42");
        assert_eq!(lines[2]["attempt"], 2);
        assert_eq!(lines[2]["ok"], true);
        assert!(lines[3].get("request_id").is_none(), "{}", lines[3]);
    }

    #[test]
    fn span_fields_come_after_the_events_own_and_before_the_target() {
        let lines = raw_lines(|| {
            tracing::error_span!("request", request_id = "req-7", method = "GET")
                .in_scope(|| tracing::info!(status = 200_u16, latency_ms = 1.5, "request"));
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert!(
            line.contains(concat!(
                "\"message\":\"request\",\"status\":200,\"latency_ms\":1.5,",
                "\"request_id\":\"req-7\",\"method\":\"GET\",\"target\":"
            )),
            "{line}"
        );
    }

    #[test]
    fn span_fields_keep_their_declared_order_whatever_the_recording_order() {
        let raw = raw_lines(|| {
            let span = tracing::error_span!(
                "request",
                request_id = "r",
                route = tracing::field::Empty,
                tenant = tracing::field::Empty,
            );
            span.record("tenant", "acme");
            span.record("route", "/x");
            span.in_scope(|| tracing::warn!("x"));
        });
        assert_eq!(raw.len(), 1);
        assert!(
            raw[0].contains("\"request_id\":\"r\",\"route\":\"/x\",\"tenant\":\"acme\","),
            "{}",
            raw[0]
        );
    }

    #[test]
    fn a_span_field_recorded_twice_appears_once_with_its_last_value() {
        let raw = raw_lines(|| {
            let span = tracing::error_span!("request", route = tracing::field::Empty);
            span.record("route", "first");
            span.record("route", "second");
            span.in_scope(|| tracing::warn!("x"));
        });
        assert_eq!(raw.len(), 1);
        assert_eq!(raw[0].matches("\"route\"").count(), 1, "{}", raw[0]);
        let line: Value = serde_json::from_str(&raw[0]).expect("a JSON line");
        assert_eq!(line["route"], "second");
    }

    proptest! {
        #[test]
        fn any_string_field_round_trips_through_the_line(value in any::<String>()) {
            let lines = lines(|| tracing::info!(value = value.as_str(), "x"));
            prop_assert_eq!(lines.len(), 1);
            prop_assert_eq!(lines[0]["value"].as_str(), Some(value.as_str()));
        }

        #[test]
        fn any_string_span_field_round_trips_through_the_line(value in any::<String>()) {
            let lines = lines(|| {
                tracing::error_span!("request", tenant = value.as_str())
                    .in_scope(|| tracing::info!("x"));
            });
            prop_assert_eq!(lines.len(), 1);
            prop_assert_eq!(lines[0]["tenant"].as_str(), Some(value.as_str()));
        }
    }
}
