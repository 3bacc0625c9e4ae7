//! `llm-feedback serve` as a process: the embedded default store and its
//! first-run key, `BOOTSTRAP_API_KEY`, start-up failures, signals.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::cli::{list_keys_json, llm_feedback, llm_feedback_on, run};
use crate::helpers::{Reply, TestApp, TestDatabase};

/// How long a server may take to come up or go down.
pub(crate) const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM/SIGINT when idle.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `llm-feedback` process, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    /// stderr, line by line, as it is written.
    lines: UnboundedReceiver<String>,
    /// Every stderr line received so far.
    pub(crate) seen: Vec<String>,
}

impl Server {
    /// Starts `command` with stderr captured.
    pub(crate) fn start(mut command: Command) -> Self {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot start llm-feedback");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stderr line, `None` once stderr is closed.
    pub(crate) async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Ok(None) => None,
            Err(elapsed) => panic!(
                "no stderr line in time ({elapsed}); so far:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Waits for the `listening` log line: `http://ADDR`.
    pub(crate) async fn wait_until_listening(&mut self) -> String {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while let Some(line) = self.next_line(deadline).await {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                let addr = event["addr"].as_str().expect("addr in the listening line");
                return format!("http://{addr}");
            }
        }
        panic!(
            "the server exited before listening ({:?}):\n{}",
            self.child.try_wait(),
            self.seen.join("\n")
        );
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends a signal by name (`TERM`, `INT`) with kill(1).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, reading the rest of stderr.
    pub(crate) async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.next_line(deadline).await.is_some() {}
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "still running {timeout:?} later; stderr:\n{}",
                self.seen.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

async fn create_entry(client: &reqwest::Client, base: &str, key: &str, id: &str) -> Reply {
    let request = client
        .request(
            Method::POST,
            format!("{base}/api/v1/llm/feedback/responses"),
        )
        .bearer_auth(key)
        .json(&json!({"id": id, "rating": "thumbs_up", "description": "kept"}));
    Reply::read(request.send().await.expect("request failed")).await
}

async fn get_entry(client: &reqwest::Client, base: &str, key: &str, id: &str) -> Reply {
    let request = client
        .request(
            Method::GET,
            format!("{base}/api/v1/llm/feedback/responses/{id}"),
        )
        .bearer_auth(key);
    Reply::read(request.send().await.expect("request failed")).await
}

/// The binary in `dir` with no `DATABASE_URL`: the embedded default store.
fn serve_in(dir: &Path, port: u16) -> Command {
    let mut command = llm_feedback();
    command
        .current_dir(dir)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    command
}

/// The secret shown in a first-run banner, if any line shows one alone.
fn banner_key(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .map(|line| line.trim())
        .find(|line| line.starts_with("lfk_") && !line.contains(' '))
        .map(str::to_owned)
}

#[tokio::test]
async fn first_start_without_database_url_creates_the_embedded_store_and_shows_a_key_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let client = client();
    let port = free_port();
    let mut first = Server::start(serve_in(dir.path(), port));
    let base = first.wait_until_listening().await;

    assert!(
        dir.path().join("data").join("feedback.db").is_file(),
        "./data/feedback.db was not created"
    );
    let key = banner_key(&first.seen)
        .unwrap_or_else(|| panic!("no key in the banner:\n{}", first.seen.join("\n")));
    let curl = first
        .seen
        .iter()
        .find(|line| line.trim_start().starts_with("curl "))
        .unwrap_or_else(|| panic!("no curl line in the banner:\n{}", first.seen.join("\n")));
    assert!(
        curl.contains(&format!(
            "http://127.0.0.1:{port}/api/v1/llm/feedback/responses"
        )),
        "{curl}"
    );
    assert!(
        first
            .seen
            .iter()
            .any(|line| line.contains(&format!("Bearer {key}"))),
        "the curl example does not use the key:\n{}",
        first.seen.join("\n")
    );
    let created = create_entry(&client, &base, &key, "resp-before-restart").await;
    assert_eq!(created.status, 201, "{}", created.text);

    first.signal("TERM");
    let status = first.wait_for_exit(STOP_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "{}", first.seen.join("\n"));

    let mut second = Server::start(serve_in(dir.path(), free_port()));
    let base = second.wait_until_listening().await;
    assert!(
        second
            .seen
            .iter()
            .all(|line| !line.contains("lfk_") && !line.contains("curl")),
        "a banner was shown again:\n{}",
        second.seen.join("\n")
    );
    let stored = get_entry(&client, &base, &key, "resp-before-restart").await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(stored.body, created.body);
    second.signal("TERM");
    assert_eq!(second.wait_for_exit(STOP_TIMEOUT).await.code(), Some(0));

    // `keys list` in the same folder reads the same default store.
    let mut list = llm_feedback();
    list.current_dir(dir.path())
        .args(["keys", "list", "--json"]);
    let listed = run(list, PROCESS_TIMEOUT).await;
    listed.assert_success();
    let keys: Vec<Value> = listed
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["id"], TestApp::key_id(&key).as_str());
    assert_eq!(keys[0]["tenant"], "default");
}

#[tokio::test]
async fn three_servers_starting_together_with_one_bootstrap_key_share_one_key_row() {
    let database = TestDatabase::create().await;
    let client = client();
    let secret = format!(
        "lfk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut servers: Vec<Server> = (0..3)
        .map(|_| {
            let mut command = llm_feedback_on(&database.url);
            command.args(["serve"]).envs([
                ("LISTEN_ADDR", "127.0.0.1:0"),
                ("BOOTSTRAP_API_KEY", secret.as_str()),
                ("BOOTSTRAP_TENANT", "acme"),
                ("DATABASE_MAX_CONNECTIONS", "3"),
            ]);
            Server::start(command)
        })
        .collect();

    let mut bases = Vec::new();
    for server in &mut servers {
        bases.push(server.wait_until_listening().await);
    }

    for server in &servers {
        assert!(
            server
                .seen
                .iter()
                .all(|line| !line.contains(r#""level":"ERROR""#) && !line.contains("WARN")),
            "a server complained while starting:\n{}",
            server.seen.join("\n")
        );
        assert!(
            server.seen.iter().all(|line| !line.contains(&secret)),
            "the secret was logged:\n{}",
            server.seen.join("\n")
        );
    }
    for (i, base) in bases.iter().enumerate() {
        let created = create_entry(&client, base, &secret, &format!("resp-{i}")).await;
        assert_eq!(created.status, 201, "server {i}: {}", created.text);
    }
    // One database behind all three.
    for base in &bases {
        for i in 0..3 {
            let stored = get_entry(&client, base, &secret, &format!("resp-{i}")).await;
            assert_eq!(stored.status, 200, "{base} resp-{i}: {}", stored.text);
        }
    }
    let keys = list_keys_json(&database.url, &[]).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["id"], TestApp::key_id(&secret).as_str());
    assert_eq!(keys[0]["tenant"], "acme");
    assert_eq!(keys[0]["revoked_at"], Value::Null);
}

#[tokio::test]
async fn postgres_without_bootstrap_key_creates_no_key_and_shows_no_banner() {
    let database = TestDatabase::create().await;
    let mut command = llm_feedback_on(&database.url);
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("DATABASE_MAX_CONNECTIONS", "3"),
    ]);
    let mut server = Server::start(command);

    let base = server.wait_until_listening().await;

    assert!(
        server
            .seen
            .iter()
            .all(|line| !line.contains("lfk_") && !line.contains("curl")),
        "a first-run banner was shown:\n{}",
        server.seen.join("\n")
    );
    let keys = list_keys_json(&database.url, &[]).await;
    assert!(keys.is_empty(), "{keys:?}");
    let health = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
}

/// The lines of stderr that are not JSON log events.
fn non_log_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| serde_json::from_str::<Value>(line).map_or(true, |v| !v.is_object()))
        .collect()
}

#[tokio::test]
async fn a_too_short_bootstrap_key_stops_serve_with_one_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    let mut command = llm_feedback_on(&url);
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("BOOTSTRAP_API_KEY", "tooshort-7q2x"),
    ]);

    let finished = run(command, PROCESS_TIMEOUT).await;

    assert!(!finished.status.success(), "{finished:?}");
    let errors = non_log_lines(&finished.stderr);
    assert_eq!(errors.len(), 1, "stderr: {}", finished.stderr);
    assert!(errors[0].contains("BOOTSTRAP_API_KEY"), "{}", errors[0]);
    assert!(
        !finished.stderr.contains("tooshort-7q2x"),
        "the rejected secret was echoed: {}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .lines()
            .all(|line| !line.contains("\"listening\"")),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn serve_with_an_unreachable_postgres_fails_naming_the_url_without_its_password() {
    let mut command = llm_feedback_on("postgres://postgres:pw@127.0.0.1:1/x");
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
    ]);

    let finished = run(command, PROCESS_TIMEOUT).await;

    assert!(!finished.status.success(), "{finished:?}");
    assert!(
        finished.elapsed < Duration::from_secs(10),
        "took {:?}",
        finished.elapsed
    );
    let errors = non_log_lines(&finished.stderr);
    assert_eq!(errors.len(), 1, "stderr: {}", finished.stderr);
    assert!(
        errors[0].contains("postgres://postgres:***@127.0.0.1:1/x"),
        "{}",
        errors[0]
    );
    assert!(!finished.stderr.contains(":pw@"), "{}", finished.stderr);
}

#[tokio::test]
async fn serve_with_an_unreachable_postgres_never_shows_a_password_query_parameter() {
    let secret = "s3cret-in-the-query";
    let mut command = llm_feedback_on(&format!(
        "postgres://postgres@127.0.0.1:1/x?sslmode=disable&password={secret}"
    ));
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
    ]);

    let finished = run(command, PROCESS_TIMEOUT).await;

    assert!(!finished.status.success(), "{finished:?}");
    let errors = non_log_lines(&finished.stderr);
    assert_eq!(errors.len(), 1, "stderr: {}", finished.stderr);
    assert!(
        errors[0].contains("postgres://postgres@127.0.0.1:1/x?sslmode=disable&password=***"),
        "{}",
        errors[0]
    );
    assert!(!finished.stderr.contains(secret), "{}", finished.stderr);
}

#[tokio::test]
async fn an_invalid_cors_origin_stops_serve_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    let mut command = llm_feedback_on(&url);
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        (
            "CORS_ALLOWED_ORIGINS",
            "https://app.example.com,https://admin.example.com/",
        ),
    ]);

    let finished = run(command, PROCESS_TIMEOUT).await;

    assert!(!finished.status.success(), "{finished:?}");
    let errors: Vec<&str> = non_log_lines(&finished.stderr)
        .into_iter()
        .filter(|line| line.starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "stderr: {}", finished.stderr);
    assert!(
        errors[0].contains("'https://admin.example.com/'")
            && errors[0].contains("CORS_ALLOWED_ORIGINS")
            && errors[0].contains("did you mean https://admin.example.com?"),
        "{}",
        errors[0]
    );
    assert!(
        !finished.stderr.contains("\"listening\""),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn sigint_stops_the_server_with_exit_status_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    let secret = format!("lfk_{}", "k".repeat(40));
    let mut command = llm_feedback_on(&url);
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("BOOTSTRAP_API_KEY", secret.as_str()),
    ]);
    let mut server = Server::start(command);
    let base = server.wait_until_listening().await;
    let client = client();
    let created = create_entry(&client, &base, &secret, "resp-sigint").await;
    assert_eq!(created.status, 201, "{}", created.text);

    server.signal("INT");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;

    assert_eq!(status.code(), Some(0), "{}", server.seen.join("\n"));
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "still serving after exit"
    );
}

#[tokio::test]
async fn sigterm_during_start_up_exits_0_without_serving() {
    // A "PostgreSQL" that accepts connections and never answers: start-up
    // waits in the pool's acquire timeout (30 s here) when the signal comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a silent listener");
    let port = silent.local_addr().expect("its address").port();
    let mut command = llm_feedback_on(&format!("postgres://postgres@127.0.0.1:{port}/x"));
    command.args(["serve"]).envs([
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "30000"),
    ]);
    let mut server = Server::start(command);
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    while let Some(line) = server.next_line(deadline).await {
        if line.contains("\"starting\"") {
            break;
        }
    }
    // The start-up is now waiting for the silent server to answer.
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.signal("TERM");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;

    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}: {}",
        server.seen.join("\n")
    );
    assert!(
        server
            .seen
            .iter()
            .any(|line| line.contains("received before start-up finished")),
        "{}",
        server.seen.join("\n")
    );
    assert!(
        server
            .seen
            .iter()
            .all(|line| !line.contains("\"listening\"")),
        "{}",
        server.seen.join("\n")
    );
    drop(silent);
}
