//! The request log of the real binary: one line per request with its id,
//! route template, tenant, status and latency; never a key or a body; the
//! format and filter settings.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::binary::{Server, free_port};
use crate::cli::llm_feedback_on;
use crate::helpers::{Reply, TestDatabase};

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The tenant of the bootstrap key of every server here.
const TENANT: &str = "acme-logs";

/// What one served-and-stopped server left behind.
struct Run {
    /// Every stderr line.
    lines: Vec<String>,
    /// The answer to the create.
    created: Reply,
    /// The key the requests used.
    secret: String,
    /// A string that was only ever sent inside a description.
    marker: String,
}

impl Run {
    fn stderr(&self) -> String {
        self.lines.join("\n")
    }

    /// The JSON objects among the lines.
    fn events(&self) -> Vec<Value> {
        self.lines
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }
}

/// A field of a JSON log event: its own, or one of its span's.
fn field<'a>(event: &'a Value, name: &str) -> Option<&'a Value> {
    event
        .get(name)
        .or_else(|| event.get("fields").and_then(|fields| fields.get(name)))
        .or_else(|| event.get("span").and_then(|span| span.get(name)))
        .or_else(|| {
            event
                .get("spans")
                .and_then(Value::as_array)
                .and_then(|spans| spans.iter().rev().find_map(|span| span.get(name)))
        })
}

/// Waits until `GET /healthz` answers 200 (the `listening` line may be
/// filtered out or not be JSON).
async fn wait_until_healthy(server: &mut Server, base: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await {
            if response.status().as_u16() == 200 {
                return;
            }
        }
        if Instant::now() > deadline {
            server.signal("KILL");
            let _ = server.wait_for_exit(STOP_TIMEOUT).await;
            panic!(
                "{base} did not become healthy in {START_TIMEOUT:?}:\n{}",
                server.seen.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves on `database_url` with these log settings, creates one entry with
/// `x-request-id: {request_id}` and a description holding a unique marker,
/// reads it back, stops the server with SIGTERM and returns what it logged.
async fn serve_create_and_stop(
    database_url: &str,
    log_format: &str,
    rust_log: &str,
    request_id: &str,
) -> Run {
    let secret = format!(
        "lfk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = llm_feedback_on(database_url);
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", format!("127.0.0.1:{port}").as_str()),
        ("BOOTSTRAP_API_KEY", secret.as_str()),
        ("BOOTSTRAP_TENANT", TENANT),
        ("DATABASE_MAX_CONNECTIONS", "3"),
        ("LOG_FORMAT", log_format),
        ("RUST_LOG", rust_log),
    ]);
    let mut server = Server::start(command);
    wait_until_healthy(&mut server, &base).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let created = Reply::read(
        client
            .request(
                Method::POST,
                format!("{base}/api/v1/llm/feedback/responses"),
            )
            .bearer_auth(&secret)
            .header("x-request-id", request_id)
            .header("X-On-Behalf-Of", "user-logs")
            .json(&json!({
                "id": "resp-logged",
                "rating": "thumbs_down",
                "description": format!("private words {marker}"),
            }))
            .send()
            .await
            .expect("create"),
    )
    .await;
    let read = Reply::read(
        client
            .get(format!("{base}/api/v1/llm/feedback/responses/resp-logged"))
            .bearer_auth(&secret)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text);
    server.signal("TERM");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "{}", server.seen.join("\n"));

    Run {
        lines: server.seen.clone(),
        created,
        secret,
        marker,
    }
}

/// The JSON request line: every field the telemetry section of STYLE.md
/// names, and no secret or body anywhere in stderr.
async fn a_json_request_line_names_the_request_and_nothing_secret(database_url: &str) {
    let run = serve_create_and_stop(database_url, "json", "info", "test-req-123").await;

    assert_eq!(run.created.status, 201, "{}", run.created.text);
    assert_eq!(run.created.header("x-request-id"), Some("test-req-123"));
    let stderr = run.stderr();
    for line in run.lines.iter().filter(|line| !line.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            "a line that is not a JSON object: {line:?}\n{stderr}"
        );
    }
    let lines: Vec<Value> = run
        .events()
        .into_iter()
        .filter(|event| {
            field(event, "request_id").and_then(Value::as_str) == Some("test-req-123")
                && event["message"] == "request"
        })
        .collect();
    assert_eq!(lines.len(), 1, "request lines of test-req-123:\n{stderr}");
    let line = &lines[0];
    assert_eq!(field(line, "method"), Some(&json!("POST")), "{line}");
    assert_eq!(
        field(line, "route"),
        Some(&json!("/api/v1/llm/feedback/{kind}")),
        "{line}"
    );
    assert_eq!(field(line, "tenant"), Some(&json!(TENANT)), "{line}");
    assert_eq!(field(line, "status"), Some(&json!(201)), "{line}");
    assert!(
        field(line, "latency_ms")
            .and_then(Value::as_f64)
            .is_some_and(|ms| (0.0..10_000.0).contains(&ms)),
        "{line}"
    );
    assert_eq!(line["level"], "INFO", "{line}");
    for (what, secret) in [
        ("the API key", run.secret.as_str()),
        ("the description", run.marker.as_str()),
    ] {
        assert!(
            !stderr.contains(secret),
            "{what} ({secret}) was logged:\n{stderr}"
        );
    }
    // Each request has its line; ids the service generated are UUIDs.
    let request_lines = run
        .events()
        .into_iter()
        .filter(|event| event["message"] == "request")
        .count();
    assert!(request_lines >= 3, "healthz, create and get:\n{stderr}");
}

#[tokio::test]
async fn json_request_lines_name_request_route_tenant_status_and_latency_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    a_json_request_line_names_the_request_and_nothing_secret(&url).await;
}

#[tokio::test]
async fn json_request_lines_name_request_route_tenant_status_and_latency_on_postgres() {
    let database = TestDatabase::create().await;
    a_json_request_line_names_the_request_and_nothing_secret(&database.url).await;
}

#[tokio::test]
async fn log_format_pretty_writes_lines_for_humans_not_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());

    let run = serve_create_and_stop(&url, "pretty", "info", "test-req-pretty").await;

    assert_eq!(run.created.status, 201, "{}", run.created.text);
    let stderr = run.stderr();
    let lines: Vec<&String> = run
        .lines
        .iter()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "nothing was logged");
    for line in &lines {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a JSON line in pretty mode: {line}"
        );
    }
    assert!(
        lines.iter().any(|line| line.contains("test-req-pretty")),
        "no line names the request id:\n{stderr}"
    );
    assert!(!stderr.contains(&run.secret), "{stderr}");
    assert!(!stderr.contains(&run.marker), "{stderr}");
}

#[tokio::test]
async fn rust_log_warn_leaves_out_the_per_request_info_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());

    let run = serve_create_and_stop(&url, "json", "warn", "test-req-warn").await;

    assert_eq!(run.created.status, 201, "{}", run.created.text);
    assert_eq!(run.created.header("x-request-id"), Some("test-req-warn"));
    let stderr = run.stderr();
    assert!(
        !stderr.contains("test-req-warn"),
        "a request line at RUST_LOG=warn:\n{stderr}"
    );
    for event in run.events() {
        assert!(
            matches!(event["level"].as_str(), Some("WARN" | "ERROR")),
            "below warn: {event}"
        );
        assert_ne!(event["message"], "request", "{event}");
    }
}
