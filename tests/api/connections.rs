//! Slow and idle clients (API.md, "Details"): stalled request heads, silent
//! and idle keep-alive connections are closed, `MAX_CONNECTIONS` holds new
//! connections back, and shutdown does not wait for idle connections.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::{STOP_TIMEOUT, Server};
use crate::cli::llm_feedback_on;
use crate::helpers::{Backend, TestApp, spawn_app_with};

per_store!(stalled_request_heads_never_delay_health_or_api_requests_and_are_closed_after_the_header_read_timeout);

/// Half a request head: the blank line that would end it never comes.
const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
/// A whole keep-alive request.
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
/// Connections that stall in the middle of their head.
const STALLED: usize = 2000;
/// Connections that send nothing at all.
const SILENT: usize = 50;
/// The header-read timeout of the stall test.
const SHORT_HEADER_READ_TIMEOUT_MS: u64 = 3_000;
const SHORT_HEADER_READ_TIMEOUT: Duration = Duration::from_millis(SHORT_HEADER_READ_TIMEOUT_MS);
/// How late after its timeout a connection may be closed.
const CLOSE_SLACK: Duration = Duration::from_secs(1);
/// How long a request may take while the stalled connections are open.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// Opens a connection to `addr` (`127.0.0.1:PORT`) and sends `bytes`.
async fn connect_and_send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    if !bytes.is_empty() {
        stream.write_all(bytes).await.expect("send");
    }
    stream
}

/// Reads until the server closes the connection (end of stream or reset);
/// `None` if it is still open after `limit`.
async fn wait_for_close(stream: &mut TcpStream, limit: Duration) -> Option<Instant> {
    let mut buffer = [0_u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Reads one `/healthz` response (a head and the 2-byte body `ok`).
async fn read_healthz_response(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 1024];
    tokio::time::timeout(limit, async {
        while !received.ends_with(b"\r\n\r\nok") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

/// The address of an app, without the scheme.
fn socket_addr(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// A client that opens a new connection for every request.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

async fn stalled_request_heads_never_delay_health_or_api_requests_and_are_closed_after_the_header_read_timeout(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |serve| {
        serve.header_read_timeout_ms = SHORT_HEADER_READ_TIMEOUT_MS;
    })
    .await;
    app.create_ok(
        "responses",
        json!({"id": "resp-stall", "rating": "thumbs_up"}),
    )
    .await;
    let addr = socket_addr(&app);

    let opening = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED + SILENT);
    for n in 0..STALLED + SILENT {
        let bytes = if n < STALLED { HALF_HEAD } else { b"" };
        let stream = connect_and_send(&addr, bytes).await;
        stalled.push((Instant::now(), stream));
    }
    let opened_in = opening.elapsed();

    // While every one of them is open: new connections are answered at once.
    let client = fresh_client();
    let (mut health_latencies, mut get_latencies) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        let health = client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("GET /healthz");
        assert_eq!(health.status().as_u16(), 200);
        health_latencies.push(started.elapsed());
        let started = Instant::now();
        let entry = client
            .get(app.url("/api/v1/llm/feedback/responses/resp-stall"))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .expect("GET of an entry");
        assert_eq!(entry.status().as_u16(), 200);
        get_latencies.push(started.elapsed());
    }
    let checked_at = Instant::now();

    let closes: Vec<_> = stalled
        .into_iter()
        .map(|(opened, mut stream)| {
            tokio::spawn(async move {
                let limit = SHORT_HEADER_READ_TIMEOUT + CLOSE_SLACK + Duration::from_secs(5);
                let closed =
                    wait_for_close(&mut stream, limit.saturating_sub(opened.elapsed())).await;
                closed.map(|closed| closed - opened)
            })
        })
        .collect();
    let mut open_for = Vec::with_capacity(closes.len());
    for close in closes {
        open_for.push(close.await.expect("a reader panicked"));
    }
    let still_open = open_for.iter().filter(|closed| closed.is_none()).count();
    let mut open_for: Vec<Duration> = open_for.into_iter().flatten().collect();
    open_for.sort();
    let figures = format!(
        "{STALLED} half heads + {SILENT} silent connections opened in {opened_in:?}; \
         /healthz {health_latencies:?}, GET entry {get_latencies:?} (checked {:?} after the \
         first connection); closed after {:?} .. {:?} ({still_open} still open)",
        checked_at - opening,
        open_for.first(),
        open_for.last(),
    );
    println!("{figures}");
    for latency in health_latencies.iter().chain(&get_latencies) {
        assert!(*latency < ANSWER_WITHIN, "{figures}");
    }
    assert_eq!(still_open, 0, "{figures}");
    // Each was open while the requests above were answered...
    assert!(
        opening + *open_for.first().expect("closed connections") >= checked_at,
        "a stalled connection closed before the checks ended: {figures}"
    );
    // ...and closed within the header-read timeout (from its connect) and a second.
    assert!(
        *open_for.last().expect("closed connections") <= SHORT_HEADER_READ_TIMEOUT + CLOSE_SLACK,
        "{figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout_secs_and_a_busy_one_stays_open()
{
    // The header-read timeout is far longer than the idle timeout: only the
    // idle timeout (hyper's timer between keep-alive requests) can close the
    // idle connection in time.
    let app = spawn_app_with(Backend::Sqlite, |serve| {
        serve.idle_timeout_secs = 1;
        serve.header_read_timeout_ms = 20_000;
    })
    .await;
    let addr = socket_addr(&app);
    let idle_timeout = Duration::from_secs(1);

    let busy = {
        let addr = addr.clone();
        tokio::spawn(async move {
            // One request every 400 ms for 3 s, all on one connection.
            let mut stream = connect_and_send(&addr, b"").await;
            for n in 0..8 {
                stream.write_all(HEALTHZ).await.expect("send");
                let answer = read_healthz_response(&mut stream, Duration::from_secs(5)).await;
                assert!(
                    answer
                        .as_deref()
                        .is_some_and(|answer| answer.starts_with("HTTP/1.1 200")),
                    "request {n} on the busy connection: {answer:?}"
                );
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    let mut idle = connect_and_send(&addr, HEALTHZ).await;
    let answer = read_healthz_response(&mut idle, Duration::from_secs(5)).await;
    let answered_at = Instant::now();
    assert!(
        answer
            .as_deref()
            .is_some_and(|answer| answer.starts_with("HTTP/1.1 200")),
        "{answer:?}"
    );
    let closed = wait_for_close(&mut idle, Duration::from_secs(10))
        .await
        .map(|closed| closed - answered_at);
    println!("idle keep-alive connection closed {closed:?} after its answer");
    let closed = closed.expect("the idle connection is still open 10 s later");
    assert!(
        closed >= idle_timeout.saturating_sub(Duration::from_millis(100)),
        "closed after {closed:?}"
    );
    assert!(
        closed <= idle_timeout + CLOSE_SLACK,
        "closed after {closed:?}"
    );
    busy.await.expect("the busy connection was closed");
}

/// Settings of the keep-alive tests: a short header-read timeout and a
/// longer idle timeout, as in production (10 s and 60 s).
const KEEP_ALIVE_HEADER_READ_TIMEOUT_MS: u64 = 1_000;
const KEEP_ALIVE_IDLE_TIMEOUT_SECS: u64 = 4;

/// An app with the keep-alive tests' settings.
async fn spawn_keep_alive_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |serve| {
        serve.header_read_timeout_ms = KEEP_ALIVE_HEADER_READ_TIMEOUT_MS;
        serve.idle_timeout_secs = KEEP_ALIVE_IDLE_TIMEOUT_SECS;
    })
    .await
}

/// Sends `/healthz` on `stream` and checks that it is answered `200`.
async fn healthz_on(stream: &mut TcpStream, what: &str) {
    let sent = stream.write_all(HEALTHZ).await;
    assert!(sent.is_ok(), "{what}: cannot send: {sent:?}");
    let answer = read_healthz_response(stream, Duration::from_secs(5)).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|answer| answer.starts_with("HTTP/1.1 200")),
        "{what}: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_longer_than_the_header_read_timeout_is_reused_until_idle_timeout_secs()
 {
    let app = spawn_keep_alive_app().await;
    let addr = socket_addr(&app);
    let header_read_timeout = Duration::from_millis(KEEP_ALIVE_HEADER_READ_TIMEOUT_MS);
    let idle_timeout = Duration::from_secs(KEEP_ALIVE_IDLE_TIMEOUT_SECS);
    let idle_for = Duration::from_millis(2_500);
    assert!(header_read_timeout < idle_for && idle_for < idle_timeout);

    let mut stream = connect_and_send(&addr, b"").await;
    healthz_on(&mut stream, "first request").await;
    // Idle for longer than the header-read timeout: only the idle timeout
    // applies between requests.
    tokio::time::sleep(idle_for).await;
    healthz_on(
        &mut stream,
        "second request on the same connection, after 2.5 s idle",
    )
    .await;
    let answered_at = Instant::now();
    let closed = wait_for_close(&mut stream, idle_timeout + Duration::from_secs(10))
        .await
        .map(|closed| closed - answered_at);
    println!(
        "keep-alive connection reused after {idle_for:?} idle, then closed {closed:?} after its last answer"
    );
    let closed = closed.expect("the idle connection is still open 14 s after its last answer");
    assert!(
        closed >= idle_timeout.saturating_sub(Duration::from_millis(100)),
        "closed after {closed:?}"
    );
    assert!(
        closed <= idle_timeout + CLOSE_SLACK,
        "closed after {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_keep_alive_connection_a_head_must_be_complete_within_the_header_read_timeout_of_its_first_byte()
 {
    let app = spawn_keep_alive_app().await;
    let addr = socket_addr(&app);
    let header_read_timeout = Duration::from_millis(KEEP_ALIVE_HEADER_READ_TIMEOUT_MS);

    let mut stream = connect_and_send(&addr, b"").await;
    healthz_on(&mut stream, "first request").await;
    let answered_at = Instant::now();
    // Idle for longer than the header-read timeout, then half a head.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let sent = stream.write_all(HALF_HEAD).await;
    let first_byte_at = Instant::now();
    assert!(
        sent.is_ok(),
        "closed while idle, {:?} after its answer: {sent:?}",
        first_byte_at - answered_at
    );
    let closed = wait_for_close(&mut stream, Duration::from_secs(10))
        .await
        .map(|closed| closed - first_byte_at);
    println!(
        "half a head sent {:?} after the answer; closed {closed:?} after its first byte",
        first_byte_at - answered_at
    );
    let closed = closed.expect("the connection is still open 10 s after half a head");
    assert!(
        closed >= header_read_timeout.saturating_sub(Duration::from_millis(100)),
        "closed after {closed:?}"
    );
    // Well before the idle timeout (4 s after the answer, 2.5 s after the
    // first byte) would have closed it.
    assert!(
        closed <= header_read_timeout + CLOSE_SLACK,
        "closed after {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_a_new_connection_is_served_only_once_another_closes() {
    const MAX: u32 = 4;
    let app = spawn_app_with(Backend::Sqlite, |serve| {
        serve.max_connections = MAX;
        serve.header_read_timeout_ms = 60_000;
    })
    .await;
    let addr = socket_addr(&app);
    let mut holders = Vec::new();
    for _ in 0..MAX {
        holders.push(connect_and_send(&addr, HALF_HEAD).await);
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The kernel completes the handshake; the server does not accept it.
    let mut extra = connect_and_send(&addr, HEALTHZ).await;
    let early = read_healthz_response(&mut extra, Duration::from_secs(1)).await;
    assert!(early.is_none(), "answered over MAX_CONNECTIONS: {early:?}");
    let freed_at = Instant::now();
    drop(holders.pop());
    let answer = read_healthz_response(&mut extra, Duration::from_secs(3)).await;
    println!("served {:?} after a connection closed", freed_at.elapsed());
    assert!(
        answer
            .as_deref()
            .is_some_and(|answer| answer.starts_with("HTTP/1.1 200")),
        "not served once a connection closed: {answer:?}"
    );

    // The process is fine: with connections free again, it serves as usual.
    drop(extra);
    drop(holders);
    let health = fresh_client()
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200);
}

/// `llm-feedback serve` on a fresh SQLite store, on a free port.
async fn serve_sqlite(dir: &tempfile::TempDir, env: &[(&str, &str)]) -> (Server, String) {
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    let mut command: Command = llm_feedback_on(&url);
    command.arg("serve").envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("BOOTSTRAP_API_KEY", &format!("lfk_{}", "c".repeat(40))),
    ]);
    command.envs(env.iter().copied());
    let mut server = Server::start(command);
    let base = server.wait_until_listening().await;
    (server, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_100_idle_connections_exits_at_once_without_waiting_for_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Defaults: a 10 s header-read timeout, a 60 s idle timeout and a 30 s
    // drain; none of them may hold the exit up.
    let (mut server, base) = serve_sqlite(&dir, &[]).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let mut connections = Vec::new();
    for _ in 0..40 {
        connections.push(connect_and_send(&addr, b"").await);
    }
    for _ in 0..30 {
        connections.push(connect_and_send(&addr, HALF_HEAD).await);
    }
    for _ in 0..30 {
        let mut stream = connect_and_send(&addr, HEALTHZ).await;
        let answer = read_healthz_response(&mut stream, Duration::from_secs(5)).await;
        assert!(answer.is_some(), "no answer before SIGTERM");
        connections.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let sigterm_at = Instant::now();
    server.signal("TERM");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;
    let exited_after = sigterm_at.elapsed();
    println!("exited {exited_after:?} after SIGTERM with 100 idle connections open");
    assert_eq!(status.code(), Some(0), "{}", server.seen.join("\n"));
    assert!(
        exited_after < Duration::from_secs(3),
        "exited {exited_after:?} after SIGTERM"
    );
    drop(connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_pauses_accepting_logs_once_and_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    // The binary under a low open-files limit, with the variables the
    // suite's command sets.
    let template = llm_feedback_on(&url);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -n 128 && exec "$0" serve"#)
        .arg(template.get_program());
    for (name, value) in template.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command.envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("DATABASE_MAX_CONNECTIONS", "2"),
        ("HEADER_READ_TIMEOUT_MS", "60000"),
    ]);
    let mut server = Server::start(command);
    let base = server.wait_until_listening().await;
    let addr = base.trim_start_matches("http://").to_owned();

    // More connections than the server has descriptors left.
    let mut connections = Vec::new();
    for _ in 0..200 {
        connections.push(connect_and_send(&addr, HALF_HEAD).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "the server exited: {}",
        server.seen.join("\n")
    );
    drop(connections);

    // Descriptors free again: it accepts (and answers) as before.
    let health = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(response) = fresh_client().get(format!("{base}/healthz")).send().await {
                return response.status().as_u16();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no answer after the connections closed");
    assert_eq!(health, 200);

    server.signal("TERM");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "{}", server.seen.join("\n"));
    let warnings: Vec<&String> = server
        .seen
        .iter()
        .filter(|line| line.contains("cannot accept connections"))
        .collect();
    let recovered = server
        .seen
        .iter()
        .filter(|line| line.contains("accepting connections again"))
        .count();
    println!("{warnings:?}; recovered lines: {recovered}");
    assert!(
        !warnings.is_empty() && warnings.len() <= 2,
        "expected one warning per burst of failed accepts: {warnings:?}"
    );
    assert!(recovered >= 1, "{}", server.seen.join("\n"));
}
