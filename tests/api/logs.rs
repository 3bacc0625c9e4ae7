//! The request log of the real binary: one line per request with its id,
//! route template, tenant, status and latency; never a key or a body; the
//! request's fields on every event inside it, also on the export's errors
//! logged after its handler returned; the format and filter settings.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::binary::{Server, free_port};
use crate::cli::llm_feedback_on;
use crate::helpers::{
    Backend, Reply, SlowExport, TestDatabase, execute_directly, insert_long_completions,
};

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

/// Serves on `database_url` with a bootstrap key `secret` of `tenant` and
/// these log settings, until `/healthz` answers; the server and its base URL.
async fn serve(
    database_url: &str,
    (tenant, secret): (&str, &str),
    log_format: &str,
    rust_log: &str,
) -> (Server, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = llm_feedback_on(database_url);
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", format!("127.0.0.1:{port}").as_str()),
        ("BOOTSTRAP_API_KEY", secret),
        ("BOOTSTRAP_TENANT", tenant),
        ("DATABASE_MAX_CONNECTIONS", "3"),
        ("LOG_FORMAT", log_format),
        ("RUST_LOG", rust_log),
    ]);
    let mut server = Server::start(command);
    wait_until_healthy(&mut server, &base).await;
    (server, base)
}

/// A fresh bootstrap key.
fn new_secret() -> String {
    format!(
        "lfk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
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
    let secret = new_secret();
    let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
    let (mut server, base) = serve(database_url, (TENANT, &secret), log_format, rust_log).await;

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

/// The tenant of the entries `insert_long_completions` writes.
const EXPORT_TENANT: &str = "tenant-a";
/// The route template of exports.
const EXPORT_ROUTE: &str = "/api/v1/llm/feedback/export/{kind}";

/// Serves on `database_url`, opens an export of `SLOW_EXPORT_ROWS` long rows
/// with `x-request-id: {request_id}` read by a slow client, renames the table
/// away once the head has arrived (the handler has returned; the body is
/// still being queried chunk by chunk), reads what is left, stops the server
/// and returns its stderr lines.
async fn export_failing_mid_stream(
    backend: Backend,
    database_url: &str,
    log_format: &str,
    request_id: &str,
) -> Vec<String> {
    let secret = new_secret();
    let (mut server, base) =
        serve(database_url, (EXPORT_TENANT, &secret), log_format, "info").await;
    insert_long_completions(backend, database_url).await;

    let export =
        SlowExport::open_at(&base, &secret, &format!("x-request-id: {request_id}\r\n")).await;
    assert_eq!(export.status(), "200", "{}", export.head);
    // The next chunk query fails: no such table.
    let rename = "alter table feedback rename to feedback_gone";
    execute_directly(backend, database_url, rename, rename)
        .await
        .expect("rename the feedback table");
    let (body, is_complete) = export.read_rest().await;

    assert!(
        !is_complete,
        "the export ended cleanly ({} bytes) without its table",
        body.len()
    );
    server.signal("TERM");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "{}", server.seen.join("\n"));
    server.seen.clone()
}

/// The export's error, logged after its handler returned, carries the
/// request's fields like every event inside the request.
async fn an_export_error_after_the_head_names_its_request(backend: Backend, database_url: &str) {
    let lines = export_failing_mid_stream(backend, database_url, "json", "export-req-1").await;

    let stderr = lines.join("\n");
    let errors: Vec<Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| {
            event["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("export stopped"))
        })
        .collect();
    assert_eq!(errors.len(), 1, "export errors:\n{stderr}");
    let error = &errors[0];
    assert_eq!(error["level"], "ERROR", "{error}");
    assert_eq!(error["request_id"], "export-req-1", "{error}");
    assert_eq!(error["method"], "GET", "{error}");
    assert_eq!(error["route"], EXPORT_ROUTE, "{error}");
    assert_eq!(error["tenant"], EXPORT_TENANT, "{error}");
}

#[tokio::test]
async fn an_export_error_after_the_head_names_its_request_on_postgres() {
    let database = TestDatabase::create().await;
    an_export_error_after_the_head_names_its_request(Backend::Postgres, &database.url).await;
}

#[tokio::test]
async fn an_export_error_after_the_head_names_its_request_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    an_export_error_after_the_head_names_its_request(Backend::Sqlite, &url).await;
}

/// In the pretty format too, events inside a request name it: the span's
/// fields lead the line.
#[tokio::test]
async fn pretty_lines_inside_a_request_show_its_fields() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());

    let lines = export_failing_mid_stream(Backend::Sqlite, &url, "pretty", "export-req-2").await;

    let stderr = lines.join("\n");
    let error = lines
        .iter()
        .find(|line| line.contains("export stopped"))
        .unwrap_or_else(|| panic!("no export error:\n{stderr}"));
    for field in [
        "request_id=\"export-req-2\"".to_owned(),
        "method=\"GET\"".to_owned(),
        format!("route=\"{EXPORT_ROUTE}\""),
        format!("tenant=\"{EXPORT_TENANT}\""),
    ] {
        assert!(error.contains(&field), "{field} missing from: {error}");
    }
    let request_line = lines
        .iter()
        .find(|line| line.contains("export-req-2") && line.contains("status=200"))
        .unwrap_or_else(|| panic!("no request line:\n{stderr}"));
    assert!(request_line.contains("latency_ms="), "{request_line}");
}

/// A server whose stderr is a pipe nobody reads: once the pipe's 64 KiB are
/// full, every write to it blocks. Killed when dropped.
struct UnreadStderr {
    child: std::process::Child,
    /// Held open, never read.
    _stderr: std::process::ChildStderr,
    base: String,
}

impl UnreadStderr {
    /// Serves with `LOG_BUFFER_LINES=queue_lines` and a bootstrap key, until
    /// `/healthz` answers.
    async fn start(secret: &str, queue_lines: &str, database_url: &str) -> Self {
        let port = free_port();
        let mut command = llm_feedback_on(database_url);
        command
            .args(["serve"])
            .envs([
                ("LISTEN_ADDR", format!("127.0.0.1:{port}").as_str()),
                ("BOOTSTRAP_API_KEY", secret),
                ("BOOTSTRAP_TENANT", TENANT),
                ("DATABASE_MAX_CONNECTIONS", "3"),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "info"),
                ("LOG_BUFFER_LINES", queue_lines),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("cannot start llm-feedback");
        let stderr = child.stderr.take().expect("piped stderr");
        let server = Self {
            child,
            _stderr: stderr,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        while !client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "{} did not come up", server.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// SIGTERM, then the time until the process exited with status 0.
    async fn stop(&mut self) -> Duration {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success());
        let stopping = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                assert_eq!(exit.code(), Some(0));
                return stopping.elapsed();
            }
            assert!(
                stopping.elapsed() < STOP_TIMEOUT,
                "still running {STOP_TIMEOUT:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for UnreadStderr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests driven while stderr is stuck: at about 350 bytes a line, many
/// times the pipe and the log queue, and more than the 4 MiB a writer of
/// ours once buffered before making request threads write themselves.
const STUCK_STDERR_REQUESTS: usize = 20_000;
/// Clients sending them at once.
const STUCK_STDERR_CLIENTS: usize = 16;

/// `requests` requests from `STUCK_STDERR_CLIENTS` clients at once, half
/// `/healthz`, half an authenticated get of `resp-stuck`, each with a long
/// request id (long lines fill the pipe and the queue sooner). Returns the
/// slowest answer; panics on any failure.
async fn drive_requests(client: &reqwest::Client, base: &str, secret: &str) -> Duration {
    let workers: Vec<_> = (0..STUCK_STDERR_CLIENTS)
        .map(|worker| {
            let (client, base, secret) = (client.clone(), base.to_owned(), secret.to_owned());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for i in 0..STUCK_STDERR_REQUESTS / STUCK_STDERR_CLIENTS {
                    let request_id = format!("{worker:03}-{i:06}-{}", "r".repeat(117));
                    let request = if i % 2 == 0 {
                        client.get(format!("{base}/healthz"))
                    } else {
                        client
                            .get(format!("{base}/api/v1/llm/feedback/responses/resp-stuck"))
                            .bearer_auth(&secret)
                    };
                    let sent = Instant::now();
                    let response = request
                        .header("x-request-id", request_id)
                        .send()
                        .await
                        .unwrap_or_else(|err| panic!("request {worker}/{i} failed: {err}"));
                    assert_eq!(response.status().as_u16(), 200, "request {worker}/{i}");
                    let _ = response.bytes().await;
                    slowest = slowest.max(sent.elapsed());
                }
                slowest
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for worker in workers {
        slowest = slowest.max(worker.await.expect("a client failed"));
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_never_stalls_requests_and_dropped_lines_are_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    let secret = format!("lfk_{}", "s".repeat(40));
    let mut server = UnreadStderr::start(&secret, "1000", &url).await;
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let created = client
        .post(format!("{base}/api/v1/llm/feedback/responses"))
        .bearer_auth(&secret)
        .json(&json!({"id": "resp-stuck", "rating": "thumbs_up"}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status().as_u16(), 201);

    let started = Instant::now();
    let slowest = drive_requests(&client, &base, &secret).await;

    eprintln!(
        "{STUCK_STDERR_REQUESTS} requests with stderr stuck: {:?}, slowest {slowest:?}",
        started.elapsed()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?} while stderr was stuck"
    );
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let dropped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("log_lines_dropped_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no log_lines_dropped_total in:\n{metrics}"));
    eprintln!("log_lines_dropped_total {dropped}");
    assert!(dropped > 0, "no line was dropped");
    // Exit does not wait for ever on the stuck pipe either.
    let stopped_in = server.stop().await;
    eprintln!("exited {stopped_in:?} after SIGTERM with stderr stuck");
}
