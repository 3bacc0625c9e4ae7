//! Logs and metrics: the subscriber and its JSON format, the metric names,
//! the Prometheus recorder. The request span and the request's log line are
//! `http::trace`'s.

mod json_lines;

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber: `RUST_LOG` filter, pretty on a terminal,
/// JSON elsewhere (span fields at the top level of each line, see
/// `json_lines`), written to stderr (stdout is for command output) by
/// `tracing-appender`'s non-blocking writer: a request only queues its line
/// (at most `LOG_BUFFER_LINES` wait); when the queue is full the line is
/// dropped and counted ([`LOG_LINES_DROPPED`]), never waited for. Keep the
/// returned guard until the process ends: its drop writes out what is still
/// queued.
pub fn init(args: &LogArgs) -> Result<LogGuard, String> {
    let (targets, env) = log_filter(&args.filter)?;
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
    let registry = tracing_subscriber::registry().with(targets).with(env);
    let result = match format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Json => registry.with(json_lines::layer(writer)).try_init(),
    };
    result.map_err(|err| format!("cannot install the logger: {err}"))?;
    // Only the installed writer's count is worth reporting.
    let _ = DROPPED_LOG_LINES.set(dropped);
    Ok(LogGuard { _worker: worker })
}

/// The `RUST_LOG` filter, as two optional layers of which one is set. A
/// filter of targets and levels only (`info`, `warn,llm_feedback=debug`:
/// nearly every real one) is a [`Targets`], decided per callsite once; one
/// with span or field directives (`[request{tenant=t1}]=debug`) needs an
/// [`EnvFilter`], which also tracks every span it might match as it is
/// entered and left: 2,600 instructions of a `GET`'s 100,000 (callgrind).
type LogFilter = (Option<Targets>, Option<EnvFilter>);

fn log_filter(text: &str) -> Result<LogFilter, String> {
    // `Targets` would take `[request]` for a target name.
    let names_spans = text.contains(['[', ']', '{', '}']);
    if !names_spans && let Ok(targets) = text.parse::<Targets>() {
        return Ok((Some(targets), None));
    }
    EnvFilter::try_new(text)
        .map(|env| (None, Some(env)))
        .map_err(|err| format!("invalid RUST_LOG {text:?}: {err}"))
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

/// Webhook delivery attempts, by `outcome` (`delivered`, `retried`,
/// `failed`, `disabled`).
pub const WEBHOOK_DELIVERIES: &str = "webhook_deliveries_total";
/// Webhook deliveries still pending (all replicas), refreshed every 5 s.
pub const WEBHOOK_QUEUE_DEPTH: &str = "webhook_queue_depth";
/// Time of one delivery attempt's HTTP exchange, in seconds.
pub const WEBHOOK_DELIVERY_SECONDS: &str = "webhook_delivery_seconds";

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
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(WEBHOOK_DELIVERY_SECONDS.to_owned()),
                    LATENCY_BUCKETS,
                )
            })
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
    metrics::describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts, by outcome (delivered, retried, failed, disabled)"
    );
    metrics::describe_gauge!(
        WEBHOOK_QUEUE_DEPTH,
        "Webhook deliveries still pending, all replicas"
    );
    metrics::describe_histogram!(
        WEBHOOK_DELIVERY_SECONDS,
        metrics::Unit::Seconds,
        "Time of one webhook delivery attempt's HTTP exchange"
    );
    metrics::describe_gauge!(
        DB_POOL_MAX_CONNECTIONS,
        "The most connections each database pool may open"
    );
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn targets_and_levels_make_a_targets_filter() {
        for text in [
            "info",
            "warn,llm_feedback=debug",
            "off",
            "llm_feedback::http=trace",
        ] {
            assert!(matches!(log_filter(text), Ok((Some(_), None))), "{text}");
        }
    }

    #[test]
    fn span_and_field_directives_make_an_env_filter() {
        for text in ["[request]=debug", "info,[request{tenant=t1}]=trace"] {
            assert!(matches!(log_filter(text), Ok((None, Some(_)))), "{text}");
        }
    }

    #[test]
    fn a_bad_filter_is_refused_with_its_text() {
        let Err(message) = log_filter("llm_feedback=loud[") else {
            panic!("accepted a bad filter");
        };
        assert!(message.contains("invalid RUST_LOG"), "{message}");
    }
}
