//! `llm-feedback serve` stopping on SIGTERM, as the real binary: it stops
//! accepting, lets requests in flight finish (for at most
//! `SHUTDOWN_TIMEOUT_SECS`), exits 0, and loses no write it acknowledged.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::binary::{STOP_TIMEOUT, Server, free_port};
use crate::cli::llm_feedback_on;
use crate::helpers::{Backend, TestDatabase, TestStorage};

/// Clients creating entries at once.
const LOAD_CLIENTS: usize = 8;
/// How long they run before SIGTERM.
const LOAD_BEFORE_SIGTERM: Duration = Duration::from_secs(1);
/// How long after SIGTERM the clients may still be getting answers.
const CLIENTS_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a blocked request may take to be seen waiting for its lock.
const LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of the ids the load creates.
const LOAD_PREFIX: &str = "resp-load-";

/// A `BOOTSTRAP_API_KEY` of the right length, unique to the test.
fn bootstrap_secret() -> String {
    format!(
        "lfk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `llm-feedback serve` on `database_url`, on a free port, with `secret`
/// provisioned; returns the server and its base URL once it listens.
async fn serve(database_url: &str, secret: &str, env: &[(&str, &str)]) -> (Server, String) {
    let mut command: Command = llm_feedback_on(database_url);
    command.arg("serve").envs([
        ("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()).as_str()),
        ("BOOTSTRAP_API_KEY", secret),
        ("DATABASE_MAX_CONNECTIONS", "4"),
    ]);
    command.envs(env.iter().copied());
    let mut server = Server::start(command);
    let base = server.wait_until_listening().await;
    (server, base)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// What became of one create.
#[derive(Debug)]
enum Outcome {
    /// An answer was read whole.
    Answered {
        id: String,
        status: u16,
        body: String,
        at: Instant,
    },
    /// No answer: the connection failed or closed.
    Failed {
        id: String,
        /// Could not even connect (the listener is closed).
        is_connect: bool,
        error: String,
    },
}

/// The error and its sources on one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One client: creates `resp-load-{client}-{n}` one after another, on a
/// keep-alive connection, until a request fails (or `deadline`).
async fn create_until_refused(
    client_no: usize,
    base: String,
    secret: String,
    deadline: Instant,
) -> Vec<Outcome> {
    let client = client();
    let mut outcomes = Vec::new();
    for n in 0.. {
        if Instant::now() > deadline {
            break;
        }
        let id = format!("{LOAD_PREFIX}{client_no}-{n}");
        let sent = client
            .post(format!("{base}/api/v1/llm/feedback/responses"))
            .bearer_auth(&secret)
            .json(&json!({"id": id, "rating": "thumbs_up", "description": "under load"}))
            .send()
            .await;
        let answer = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                response.text().await.map(|body| (status, body))
            }
            Err(err) => Err(err),
        };
        match answer {
            Ok((status, body)) => outcomes.push(Outcome::Answered {
                id,
                status,
                body,
                at: Instant::now(),
            }),
            Err(err) => {
                outcomes.push(Outcome::Failed {
                    id,
                    is_connect: err.is_connect(),
                    error: error_chain(&err),
                });
                break;
            }
        }
    }
    outcomes
}

/// The output ids starting with `prefix` that are stored, read with SQL.
async fn stored_ids(storage: &TestStorage, prefix: &str) -> HashSet<String> {
    let sql = format!("select output_id from feedback where output_id like '{prefix}%'");
    let rows: Vec<(String,)> = match storage {
        TestStorage::Postgres(database) => {
            let mut conn = PgConnection::connect(&database.url)
                .await
                .expect("connect to the test database");
            sqlx::query_as(&sql).fetch_all(&mut conn).await
        }
        TestStorage::Sqlite(_) => {
            let mut conn = sqlx::SqliteConnection::connect(&storage.url())
                .await
                .expect("open the test database");
            sqlx::query_as(&sql).fetch_all(&mut conn).await
        }
    }
    .expect("select the stored ids");
    rows.into_iter().map(|(id,)| id).collect()
}

per_store!(
    sigterm_under_load_exits_0_answers_requests_in_flight_and_keeps_every_acknowledged_create
);

async fn sigterm_under_load_exits_0_answers_requests_in_flight_and_keeps_every_acknowledged_create(
    backend: Backend,
) {
    let storage = TestStorage::new(backend).await;
    let secret = bootstrap_secret();
    let (mut server, base) = serve(&storage.url(), &secret, &[]).await;
    let deadline = Instant::now() + LOAD_BEFORE_SIGTERM + CLIENTS_TIMEOUT;
    let clients: Vec<_> = (0..LOAD_CLIENTS)
        .map(|n| {
            tokio::spawn(create_until_refused(
                n,
                base.clone(),
                secret.clone(),
                deadline,
            ))
        })
        .collect();
    tokio::time::sleep(LOAD_BEFORE_SIGTERM).await;

    let sigterm_at = Instant::now();
    server.signal("TERM");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;
    let exited_after = sigterm_at.elapsed();
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(client.await.expect("a client panicked"));
    }

    assert_eq!(
        status.code(),
        Some(0),
        "exit after {exited_after:?}:\n{}",
        server.seen.join("\n")
    );
    let mut acknowledged = HashSet::new();
    let mut unanswered = HashSet::new();
    let (mut answered_after_sigterm, mut refused, mut others) = (0, 0, Vec::new());
    for outcome in &outcomes {
        match outcome {
            Outcome::Answered {
                id,
                status,
                body,
                at,
            } => {
                assert_eq!(*status, 201, "{id}: {body}");
                acknowledged.insert(id.clone());
                if *at >= sigterm_at {
                    answered_after_sigterm += 1;
                }
            }
            Outcome::Failed {
                id,
                is_connect,
                error,
            } => {
                unanswered.insert(id.clone());
                if *is_connect {
                    refused += 1;
                } else {
                    others.push(format!("{id}: {error}"));
                }
            }
        }
    }
    let summary = format!(
        "{} created, {answered_after_sigterm} answered after SIGTERM, {refused} refused, \
         {} other failures {others:?}; exit {exited_after:?} after SIGTERM",
        acknowledged.len(),
        others.len()
    );
    assert!(acknowledged.len() >= LOAD_CLIENTS, "{summary}");
    assert_eq!(
        unanswered.len(),
        LOAD_CLIENTS,
        "every client should end with a failed connection: {summary}"
    );
    assert!(
        answered_after_sigterm > 0,
        "no request in flight at SIGTERM got its answer: {summary}"
    );
    let stored = stored_ids(&storage, LOAD_PREFIX).await;
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not stored: {lost:?}; {summary}"
    );
    // A request that failed without an answer must not have been carried out:
    // otherwise a request in flight was cut off after its write.
    let cut_off: Vec<&String> = unanswered.intersection(&stored).collect();
    assert!(
        cut_off.is_empty(),
        "stored, but the client got no answer: {cut_off:?}; {summary}"
    );
}

/// Locks the `feedback` row of `id` from a connection of the test's own, as
/// a slow transaction would.
async fn lock_row(database: &TestDatabase, id: &str) -> PgConnection {
    let mut locker = PgConnection::connect(&database.url)
        .await
        .expect("connect to the test database");
    sqlx::query("begin")
        .execute(&mut locker)
        .await
        .expect("begin");
    let rows = sqlx::query("select * from feedback where output_id = $1 for update")
        .bind(id)
        .fetch_all(&mut locker)
        .await
        .expect("select ... for update");
    assert_eq!(rows.len(), 1, "no row {id} to lock");
    locker
}

/// Waits until one of the service's connections waits for a row lock.
async fn wait_until_a_request_waits_for_the_lock(database: &TestDatabase) {
    let mut observer = PgConnection::connect(&database.url)
        .await
        .expect("connect to the test database");
    let started = Instant::now();
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "select count(*) from pg_stat_activity
             where datname = current_database() and application_name = 'llm-feedback'
               and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(
            started.elapsed() < LOCK_WAIT_TIMEOUT,
            "no request waits for the row lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server with entry `resp-slow` and a `PUT` of it blocked behind a row
/// lock held by the test.
struct BlockedPut {
    database: TestDatabase,
    server: Server,
    base: String,
    /// Holds the lock while its transaction is open.
    locker: PgConnection,
    /// The `PUT`: its status and body, or why it got none.
    put: tokio::task::JoinHandle<Result<(u16, Value), String>>,
}

const SLOW_ID: &str = "resp-slow";

async fn block_a_put(env: &[(&str, &str)]) -> BlockedPut {
    let database = TestDatabase::create().await;
    let secret = bootstrap_secret();
    let (server, base) = serve(&database.url, &secret, env).await;
    let created = client()
        .post(format!("{base}/api/v1/llm/feedback/responses"))
        .bearer_auth(&secret)
        .json(&json!({"id": SLOW_ID, "rating": "thumbs_up", "description": "before"}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status().as_u16(), 201);
    let locker = lock_row(&database, SLOW_ID).await;
    let url = format!("{base}/api/v1/llm/feedback/responses/{SLOW_ID}");
    let put = tokio::spawn(async move {
        let response = client()
            .put(url)
            .bearer_auth(&secret)
            .json(&json!({"rating": "thumbs_down", "description": "written while draining"}))
            .send()
            .await
            .map_err(|err| error_chain(&err))?;
        let status = response.status().as_u16();
        let body = response
            .json::<Value>()
            .await
            .map_err(|err| error_chain(&err))?;
        Ok((status, body))
    });
    wait_until_a_request_waits_for_the_lock(&database).await;
    BlockedPut {
        database,
        server,
        base,
        locker,
        put,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_in_flight_at_sigterm_is_answered_before_the_process_exits_0() {
    let BlockedPut {
        database,
        mut server,
        base,
        mut locker,
        put,
    } = block_a_put(&[]).await;

    server.signal("TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "exited while a request was in flight:\n{}",
        server.seen.join("\n")
    );
    assert!(
        !put.is_finished(),
        "the PUT finished while the row was locked"
    );
    let refused = client().get(format!("{base}/healthz")).send().await;
    assert!(
        refused.as_ref().is_err_and(reqwest::Error::is_connect),
        "new connections should be refused while draining: {refused:?}"
    );
    sqlx::query("rollback")
        .execute(&mut locker)
        .await
        .expect("release the lock");
    let answer = tokio::time::timeout(Duration::from_secs(10), put)
        .await
        .expect("the PUT got no answer 10 s after the lock was released")
        .expect("the PUT task panicked");
    let (status, body) = answer.unwrap_or_else(|err| panic!("the PUT got no answer: {err}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rating"], "thumbs_down", "{body}");
    assert_eq!(body["description"], "written while draining", "{body}");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "{}", server.seen.join("\n"));
    let (rating, description): (String, String) =
        sqlx::query_as("select rating, description from feedback where output_id = $1")
            .bind(SLOW_ID)
            .fetch_one(&mut locker)
            .await
            .expect("the entry");
    assert_eq!(
        (rating.as_str(), description.as_str()),
        ("thumbs_down", "written while draining")
    );
    drop(database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shutdown_timeout_secs_1_a_request_blocked_longer_does_not_hold_up_the_exit() {
    let BlockedPut {
        database,
        mut server,
        locker,
        put,
        ..
    } = block_a_put(&[("SHUTDOWN_TIMEOUT_SECS", "1")]).await;

    let sigterm_at = Instant::now();
    server.signal("TERM");
    let status = server.wait_for_exit(Duration::from_secs(3)).await;
    let exited_after = sigterm_at.elapsed();

    assert_eq!(status.code(), Some(0), "{}", server.seen.join("\n"));
    assert!(
        exited_after >= Duration::from_millis(900),
        "exited {exited_after:?} after SIGTERM, without waiting for the request in flight"
    );
    // The lock is still held: the PUT cannot have succeeded.
    drop(locker);
    let answer = tokio::time::timeout(Duration::from_secs(10), put)
        .await
        .expect("the PUT neither failed nor got an answer")
        .expect("the PUT task panicked");
    if let Ok((status, body)) = answer {
        assert_eq!(status, 503, "{body}");
    }
    drop(database);
}

/// The `message`s of the JSON log events among `lines`, each with its
/// `worker` field (empty when it has none).
fn log_events(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|event| {
            let field = |name: &str| event[name].as_str().unwrap_or_default().to_owned();
            (field("message"), field("worker"))
        })
        .collect()
}

#[tokio::test]
async fn sigterm_stops_the_background_workers_after_the_drain_the_last_started_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("feedback.db").display());
    let (mut server, base) = serve(&url, &bootstrap_secret(), &[]).await;
    // Once a request is answered, the signal handler is surely installed
    // (it is set up as serving starts, just after the `listening` line).
    let health = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);

    server.signal("TERM");
    let status = server.wait_for_exit(STOP_TIMEOUT).await;

    let seen = server.seen.join("\n");
    assert_eq!(status.code(), Some(0), "{seen}");
    let events = log_events(&server.seen);
    let workers = |message: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|(m, _)| m == message)
            .map(|(_, worker)| worker.as_str())
            .collect()
    };
    assert_eq!(
        workers("worker started"),
        [
            "metrics-upkeep",
            "key-set-reloader",
            "admin-export",
            "idempotency-purge",
            "change-purge",
            "webhook-delivery"
        ],
        "{seen}"
    );
    assert_eq!(
        workers("worker stopped"),
        [
            "webhook-delivery",
            "change-purge",
            "idempotency-purge",
            "admin-export",
            "key-set-reloader",
            "metrics-upkeep"
        ],
        "{seen}"
    );
    let position = |message: &str| {
        events
            .iter()
            .position(|(m, _)| m == message)
            .unwrap_or_else(|| panic!("no {message:?} line: {seen}"))
    };
    let last_worker_stopped = events
        .iter()
        .rposition(|(m, _)| m == "worker stopped")
        .unwrap_or_default();
    assert!(
        position("shutting down: draining in-flight requests") < position("worker stopped"),
        "{seen}"
    );
    assert!(last_worker_stopped < position("stopped"), "{seen}");
}
