//! `llm-feedback migrate` and `llm-feedback keys ...`, run as the real binary
//! against the database of a running app.

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestStorage};

both_stores!(
    keys_create_prints_only_the_secret_and_the_secret_authenticates,
    keys_list_json_describes_each_key_without_its_secret,
    keys_list_table_shows_each_key_without_its_secret,
    keys_list_tenant_shows_only_that_tenants_keys,
    keys_revoke_marks_the_key_revoked_and_the_running_app_rejects_it_within_5_seconds,
    revoking_an_unknown_key_id_fails_with_a_message_on_stderr,
    migrate_applies_every_migration_once_and_is_idempotent,
);

/// How long any one command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Variables the binary reads; every test sets the ones it needs.
const SERVICE_VARIABLES: &[&str] = &[
    "WORKER_THREADS",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "DATABASE_ACQUIRE_TIMEOUT_MS",
    "BOOTSTRAP_API_KEY",
    "BOOTSTRAP_TENANT",
    "LISTEN_ADDR",
    "RUST_LOG",
    "LOG_FORMAT",
    "LOG_BUFFER_LINES",
    "SHUTDOWN_TIMEOUT_SECS",
    "EXPORT_MAX_ROWS",
    "REQUEST_TIMEOUT_MS",
    "MAX_CONCURRENT_REQUESTS",
    "RATE_LIMIT_PER_SECOND",
    "RATE_LIMIT_BURST",
    "CORS_ALLOWED_ORIGINS",
    "HEADER_READ_TIMEOUT_MS",
    "IDLE_TIMEOUT_SECS",
    "MAX_CONNECTIONS",
    "WEBHOOK_ALLOW_PRIVATE_TARGETS",
    "WEBHOOK_RETRY_SCHEDULE",
    "WEBHOOK_TIMEOUT_MS",
    "WEBHOOK_DELIVERY",
];

/// The real binary, with none of the service's variables inherited.
pub(crate) fn llm_feedback() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llm-feedback"));
    for variable in SERVICE_VARIABLES {
        command.env_remove(variable);
    }
    command.stdin(Stdio::null());
    command
}

/// The binary, pointed at `database_url`.
pub(crate) fn llm_feedback_on(database_url: &str) -> Command {
    let mut command = llm_feedback();
    command.env("DATABASE_URL", database_url);
    command
}

/// A command that ran to its end.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// Panics, showing what the command printed, unless it exited 0.
    pub(crate) fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "exit {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The non-empty lines of stderr.
    pub(crate) fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs `command` to completion (killing it after `timeout`), capturing
/// stdout and stderr, without blocking the async runtime.
pub(crate) async fn run(command: Command, timeout: Duration) -> Finished {
    tokio::task::spawn_blocking(move || run_blocking(command, timeout))
        .await
        .expect("the command runner panicked")
        .unwrap_or_else(|failure| panic!("{failure}"))
}

fn run_blocking(mut command: Command, timeout: Duration) -> Result<Finished, String> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot start {command:?}: {err}"))?;
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|err| err.to_string())? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{command:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    Ok(Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed,
    })
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `keys create --tenant T --name N` on the app's database: the secret.
async fn create_key(app: &TestApp, tenant: &str, name: &str) -> String {
    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "create", "--tenant", tenant, "--name", name]);
    let finished = run(command, COMMAND_TIMEOUT).await;
    finished.assert_success();
    finished.stdout.trim_end().to_owned()
}

/// `keys list --json [ARGS]`, one parsed object per line.
pub(crate) async fn list_keys_json(database_url: &str, args: &[&str]) -> Vec<Value> {
    let mut command = llm_feedback_on(database_url);
    command.args(["keys", "list", "--json"]).args(args);
    let finished = run(command, COMMAND_TIMEOUT).await;
    finished.assert_success();
    finished
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line:?}"))
        })
        .collect()
}

fn parse_rfc3339(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("not RFC 3339 ({err}): {text:?}"))
}

async fn keys_create_prints_only_the_secret_and_the_secret_authenticates(app: TestApp) {
    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "create", "--tenant", "tenant-b", "--name", "ci"]);

    let finished = run(command, COMMAND_TIMEOUT).await;

    finished.assert_success();
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {:?}", finished.stdout);
    let secret = lines[0];
    assert_eq!(
        finished.stdout,
        format!("{secret}\n"),
        "stdout holds more than the secret"
    );
    assert!(secret.starts_with("lfk_"), "secret: {secret:?}");
    assert!(
        secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_graphic()),
        "secret: {secret:?}"
    );
    let caller = app.as_caller(secret, None);
    let created = caller
        .create_ok(
            "responses",
            json!({"id": "resp-cli", "rating": "thumbs_up"}),
        )
        .await;
    // The key acts for its own tenant: tenant-a does not see the entry.
    assert_eq!(app.get("responses", "resp-cli").await.status, 404);
    assert_eq!(caller.get("responses", "resp-cli").await.body, created);
}

async fn keys_list_json_describes_each_key_without_its_secret(app: TestApp) {
    let started = chrono::Utc::now();
    let secret = create_key(&app, "tenant-b", "ci-key").await;

    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "list", "--json"]);
    let finished = run(command, COMMAND_TIMEOUT).await;

    finished.assert_success();
    for hidden in [&secret, &app.api_key] {
        assert!(
            !finished.stdout.contains(hidden.as_str())
                && !finished.stderr.contains(hidden.as_str()),
            "a secret appears in the listing:\n{}{}",
            finished.stdout,
            finished.stderr
        );
    }
    let keys: Vec<Value> = finished
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect();
    // The app's key, the new one, and on SQLite the first-run key.
    assert!(keys.len() >= 2, "stdout: {}", finished.stdout);
    let ids: HashSet<&str> = keys.iter().filter_map(|key| key["id"].as_str()).collect();
    assert_eq!(ids.len(), keys.len(), "ids repeat: {}", finished.stdout);
    for key in &keys {
        let object = key.as_object().expect("a JSON object");
        let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["created_at", "id", "name", "prefix", "revoked_at", "tenant"]
        );
        assert!(key["id"].is_string(), "{key}");
        let created_at = parse_rfc3339(&key["created_at"]);
        let slack = chrono::Duration::minutes(5);
        assert!(
            created_at > started - slack && created_at < chrono::Utc::now() + slack,
            "created_at {created_at} is not about now"
        );
        assert_eq!(key["revoked_at"], Value::Null, "{key}");
    }
    let ours = keys
        .iter()
        .find(|key| key["id"] == TestApp::key_id(&secret).as_str())
        .unwrap_or_else(|| panic!("the new key is not listed: {keys:?}"));
    assert_eq!(ours["tenant"], "tenant-b");
    assert_eq!(ours["name"], "ci-key");
    let prefix = ours["prefix"].as_str().expect("prefix is a string");
    assert!(
        !prefix.is_empty() && prefix.len() < secret.len() && secret.starts_with(prefix),
        "prefix {prefix:?} of {secret:?}"
    );
    let theirs = keys
        .iter()
        .find(|key| key["id"] == TestApp::key_id(&app.api_key).as_str())
        .unwrap_or_else(|| panic!("the app's key is not listed: {keys:?}"));
    assert_eq!(theirs["tenant"], "tenant-a");
    assert_eq!(theirs["name"], Value::Null);
}

async fn keys_list_table_shows_each_key_without_its_secret(app: TestApp) {
    let secret = create_key(&app, "tenant-b", "ci-key").await;

    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "list"]);
    let finished = run(command, COMMAND_TIMEOUT).await;

    finished.assert_success();
    let output = format!("{}{}", finished.stdout, finished.stderr);
    assert!(!output.contains(&secret), "{output}");
    assert!(!output.contains(&app.api_key), "{output}");
    for id in [TestApp::key_id(&secret), TestApp::key_id(&app.api_key)] {
        assert_eq!(
            finished
                .stdout
                .lines()
                .filter(|line| line.contains(&id))
                .count(),
            1,
            "key {id} should be on exactly one line:\n{}",
            finished.stdout
        );
    }
    let row = finished
        .stdout
        .lines()
        .find(|line| line.contains(&TestApp::key_id(&secret)))
        .expect("the new key's row");
    assert!(row.contains("tenant-b") && row.contains("ci-key"), "{row}");
}

async fn keys_list_tenant_shows_only_that_tenants_keys(app: TestApp) {
    let b1 = create_key(&app, "tenant-b", "one").await;
    let b2 = create_key(&app, "tenant-b", "two").await;
    let c = create_key(&app, "tenant-c", "three").await;

    let listed = list_keys_json(&app.database_url, &["--tenant", "tenant-b"]).await;

    let mut ids: Vec<&str> = listed
        .iter()
        .map(|key| key["id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    let mut expected = [TestApp::key_id(&b1), TestApp::key_id(&b2)];
    expected.sort_unstable();
    assert_eq!(ids, expected, "{listed:?}");
    assert!(listed.iter().all(|key| key["tenant"] == "tenant-b"));
    let only_c = list_keys_json(&app.database_url, &["--tenant", "tenant-c"]).await;
    assert_eq!(only_c.len(), 1, "{only_c:?}");
    assert_eq!(only_c[0]["id"], TestApp::key_id(&c).as_str());
    let none = list_keys_json(&app.database_url, &["--tenant", "tenant-z"]).await;
    assert!(none.is_empty(), "{none:?}");
}

async fn keys_revoke_marks_the_key_revoked_and_the_running_app_rejects_it_within_5_seconds(
    app: TestApp,
) {
    let secret = create_key(&app, "tenant-b", "doomed").await;
    let other = create_key(&app, "tenant-b", "survivor").await;
    let key_id = TestApp::key_id(&secret);
    let probe = |secret: String| {
        let request = app
            .client
            .request(
                Method::GET,
                app.url("/api/v1/llm/feedback/responses/resp-x"),
            )
            .bearer_auth(secret);
        app.send(request)
    };
    // Authenticated once, so the running app has the key in its cache.
    assert_eq!(probe(secret.clone()).await.status, 404);

    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "revoke", &key_id]);
    let finished = run(command, COMMAND_TIMEOUT).await;

    finished.assert_success();
    let revoked_at = Instant::now();
    let keys = list_keys_json(&app.database_url, &[]).await;
    let listed = keys
        .iter()
        .find(|key| key["id"] == key_id.as_str())
        .unwrap_or_else(|| panic!("{key_id} not listed: {keys:?}"));
    assert!(
        parse_rfc3339(&listed["revoked_at"]) >= parse_rfc3339(&listed["created_at"]),
        "{listed}"
    );
    let survivor = keys
        .iter()
        .find(|key| key["id"] == TestApp::key_id(&other).as_str())
        .expect("the other key is listed");
    assert_eq!(survivor["revoked_at"], Value::Null);
    loop {
        let reply = probe(secret.clone()).await;
        if reply.status == 401 {
            assert_eq!(reply.error_code(), "unauthorized");
            break;
        }
        assert_eq!(reply.status, 404, "{}", reply.text);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the revoked key still works after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        probe(other).await.status,
        404,
        "another key stopped working"
    );
}

async fn revoking_an_unknown_key_id_fails_with_a_message_on_stderr(app: TestApp) {
    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "revoke", "key_0000000000000000"]);

    let finished = run(command, COMMAND_TIMEOUT).await;

    assert!(!finished.status.success(), "{finished:?}");
    assert_eq!(finished.stdout, "");
    let lines = finished.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("key_0000000000000000")),
        "stderr should name the id: {:?}",
        finished.stderr
    );
    // Nothing was revoked by accident.
    assert_eq!(app.get("responses", "resp-x").await.status, 404);
}

/// The migration files of a backend.
fn migration_count(backend: Backend) -> i64 {
    let folder = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(folder);
    let count = std::fs::read_dir(&dir)
        .expect("migrations folder")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "sql"))
        .count();
    i64::try_from(count).expect("a few migrations")
}

/// Rows of `_sqlx_migrations`, and whether the `feedback` and `api_keys`
/// tables exist.
async fn applied_migrations(storage: &TestStorage) -> (i64, bool) {
    use sqlx::Connection;
    let url = storage.url();
    match storage {
        TestStorage::Postgres(_) => {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            let (applied,): (i64,) =
                sqlx::query_as("select count(*) from _sqlx_migrations where success")
                    .fetch_one(&mut conn)
                    .await
                    .expect("_sqlx_migrations");
            let (tables,): (i64,) = sqlx::query_as(
                "select count(*) from information_schema.tables
                 where table_name in ('feedback', 'api_keys')",
            )
            .fetch_one(&mut conn)
            .await
            .expect("tables");
            (applied, tables == 2)
        }
        TestStorage::Sqlite(_) => {
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            let (applied,): (i64,) =
                sqlx::query_as("select count(*) from _sqlx_migrations where success")
                    .fetch_one(&mut conn)
                    .await
                    .expect("_sqlx_migrations");
            let (tables,): (i64,) = sqlx::query_as(
                "select count(*) from sqlite_master
                 where type = 'table' and name in ('feedback', 'api_keys')",
            )
            .fetch_one(&mut conn)
            .await
            .expect("tables");
            (applied, tables == 2)
        }
    }
}

async fn migrate_applies_every_migration_once_and_is_idempotent(app: TestApp) {
    // A database of its own: the app's is migrated already.
    let storage = TestStorage::new(app.backend).await;
    let expected = migration_count(app.backend);
    assert!(expected > 0);

    for attempt in 1..=2 {
        let mut command = llm_feedback_on(&storage.url());
        command.arg("migrate");
        let finished = run(command, COMMAND_TIMEOUT).await;

        finished.assert_success();
        assert_eq!(finished.stdout, "", "attempt {attempt}");
        assert_eq!(
            applied_migrations(&storage).await,
            (expected, true),
            "attempt {attempt}"
        );
    }
    let keys = list_keys_json(&storage.url(), &[]).await;
    assert!(keys.is_empty(), "{keys:?}");
}

/// A PostgreSQL nobody listens on, with a password that must never be shown.
const UNREACHABLE_POSTGRES: &str = "postgres://postgres:pw@127.0.0.1:1/x";

/// Runs `args` against [`UNREACHABLE_POSTGRES`] and checks the failure.
async fn assert_fails_naming_the_unreachable_url(args: &[&str]) {
    let mut command = llm_feedback_on(UNREACHABLE_POSTGRES);
    command
        .env("DATABASE_ACQUIRE_TIMEOUT_MS", "1000")
        .args(args);

    let finished = run(command, Duration::from_secs(30)).await;

    assert!(!finished.status.success(), "{finished:?}");
    assert!(
        finished.elapsed < Duration::from_secs(10),
        "took {:?}",
        finished.elapsed
    );
    assert_eq!(finished.stdout, "");
    let lines = finished.stderr_lines();
    assert_eq!(lines.len(), 1, "stderr: {:?}", finished.stderr);
    assert!(
        lines[0].contains("postgres://postgres:***@127.0.0.1:1/x"),
        "the line should name the URL without its password: {:?}",
        lines[0]
    );
    assert!(!finished.stderr.contains(":pw@"), "{:?}", finished.stderr);
}

#[tokio::test]
async fn keys_list_with_an_unreachable_postgres_fails_fast_naming_the_url_without_its_password() {
    assert_fails_naming_the_unreachable_url(&["keys", "list"]).await;
}

#[tokio::test]
async fn migrate_with_an_unreachable_postgres_fails_fast_naming_the_url_without_its_password() {
    assert_fails_naming_the_unreachable_url(&["migrate"]).await;
}
