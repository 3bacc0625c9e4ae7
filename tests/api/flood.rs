//! Floods from clients without a valid key. Bad credentials (API.md,
//! "Details"): random well-formed keys from 64 connections for 10 s never
//! starve a valid caller of database connections or in-flight slots, nor
//! grow the server's memory without bound; the server is the real binary in
//! a process of its own, so that its resident memory is its own (the load
//! generator lives in the test process). Readiness probes: `/readyz` asks
//! the database at most once a second however often it is called.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::binary::free_port;
use crate::cli::llm_feedback_on;
use crate::helpers::{Backend, Reply, TestStorage, admin_database_url, spawn_app};

/// How long the flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(10);
/// How long the valid caller runs alone first.
const CALM_FOR: Duration = Duration::from_secs(3);
/// Connections sending random keys at once.
const FLOOD_CONNECTIONS: usize = 64;
/// The issue's bound on the valid caller's 99th percentile.
const P99_BOUND: Duration = Duration::from_millis(100);
/// The issue's bound on the server's resident memory growth.
const RSS_GROWTH_BOUND_KIB: u64 = 50 * 1024;
/// Small on purpose: a flood that needed a database connection, or held an
/// in-flight slot while waiting for one, would leave the valid caller
/// without (503 or a slow answer).
const POOL_CONNECTIONS: &str = "4";
const MAX_CONCURRENT_REQUESTS: &str = "8";

/// However often `/readyz` is called, the database is asked at most once a
/// second. PostgreSQL counts the transactions of each database
/// (`pg_stat_database.xact_commit`), which every ping is; SQLite keeps no
/// such count, so this runs on PostgreSQL only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_asks_the_database_at_most_once_a_second_however_often_it_is_called() {
    let app = spawn_app(Backend::Postgres).await;
    let database = url::Url::parse(&app.database_url).expect("a URL").path()[1..].to_owned();
    let mut admin = PgConnection::connect(&admin_database_url())
        .await
        .expect("admin connection");
    // Autovacuum's visits to the new database (a transaction per table it
    // analyzes) count too, and came to some 30 in a full run: none here.
    let mut owner = PgConnection::connect(&app.database_url)
        .await
        .expect("connect to the app's database");
    let tables: Vec<String> = sqlx::query_scalar(
        "select format('alter table %I set (autovacuum_enabled = false, toast.autovacuum_enabled = false)', tablename)
         from pg_tables where schemaname = 'public'",
    )
    .fetch_all(&mut owner)
    .await
    .expect("list the tables");
    for statement in tables {
        sqlx::raw_sql(&statement)
            .execute(&mut owner)
            .await
            .expect("autovacuum off");
    }
    owner.close().await.expect("close");
    // The start's own transactions (migrations, bootstrap key, workers'
    // first rounds) are reported when each backend goes idle, up to 10 s
    // later (PGSTAT_IDLE_INTERVAL): wait for them, so that `before` holds them.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let before = committed_transactions(&mut admin, &database).await;
    let started = Instant::now();
    let calls = AtomicU64::new(0);
    // 16 callers at once, for 3 s: at least hundreds of calls.
    futures::future::join_all((0..16).map(|_| async {
        while started.elapsed() < Duration::from_secs(3) {
            let reply = app.send(app.client.get(app.url("/readyz"))).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            calls.fetch_add(1, Ordering::Relaxed);
        }
    }))
    .await;
    let window = started.elapsed();
    // A backend reports its counts when it goes idle, at most once a second
    // and at the latest 10 s later (PGSTAT_IDLE_INTERVAL).
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let after = committed_transactions(&mut admin, &database).await;

    let span = started.elapsed();
    let calls = calls.into_inner();
    let transactions = after - before;
    // At most one ping a second while called, and the key set's reload every
    // 2 s throughout; each may come with the pool's own ping of a connection
    // idle for a second; the idle webhook worker's question, once a second on
    // its LISTEN session, whether a delivery is due (counted twice: the
    // session's own statements); and a margin for anything else a replica
    // does.
    let secs = |d: Duration| i64::try_from(d.as_secs()).expect("seconds") + 1;
    let bound = 2 * secs(window) + 2 * (secs(span) / 2 + 1) + 2 * secs(span) + 20;
    eprintln!(
        "/readyz: {calls} calls in {window:?}, {transactions} transactions in the database \
         in {span:?} (bound {bound})"
    );
    assert!(calls >= 200, "only {calls} calls in {window:?}");
    assert!(
        transactions <= bound,
        "{calls} calls to /readyz in {window:?} made {transactions} transactions"
    );
}

/// `xact_commit` of `database`, as this session sees it now.
async fn committed_transactions(admin: &mut PgConnection, database: &str) -> i64 {
    // Statistics are read once per transaction and cached in it: start afresh.
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&mut *admin)
        .await
        .expect("clear the statistics snapshot");
    sqlx::query_scalar("select xact_commit from pg_stat_database where datname = $1")
        .bind(database)
        .fetch_one(&mut *admin)
        .await
        .expect("pg_stat_database")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    a_flood_of_random_keys_leaves_a_valid_caller_fast_and_memory_bounded(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    a_flood_of_random_keys_leaves_a_valid_caller_fast_and_memory_bounded(Backend::Sqlite).await;
}

/// The server process, killed when dropped; its log goes to a file.
struct ServerProcess {
    child: Child,
    log: tempfile::NamedTempFile,
    /// `http://127.0.0.1:PORT`
    base: String,
}

impl ServerProcess {
    /// `llm-feedback serve` on `database_url` with `secret` provisioned for
    /// `tenant-a`, a small pool and a small in-flight bound; returns once
    /// it answers `/healthz`.
    async fn start(database_url: &str, secret: &str) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut command: Command = llm_feedback_on(database_url);
        command
            .arg("serve")
            .envs([
                ("LISTEN_ADDR", format!("127.0.0.1:{port}").as_str()),
                ("BOOTSTRAP_API_KEY", secret),
                ("BOOTSTRAP_TENANT", "tenant-a"),
                ("DATABASE_MAX_CONNECTIONS", POOL_CONNECTIONS),
                ("MAX_CONCURRENT_REQUESTS", MAX_CONCURRENT_REQUESTS),
                ("WORKER_THREADS", "2"),
                ("LOG_FORMAT", "json"),
            ])
            .stdout(Stdio::null())
            .stderr(log.reopen().map(Stdio::from).expect("log file handle"));
        let server = Self {
            child: command.spawn().expect("cannot start llm-feedback"),
            log,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = client.get(format!("{}/healthz", server.base)).send().await {
                if reply.status() == 200 {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server did not come up:\n{}",
                server.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the entry the valid caller reads and updates.
    async fn create_entry(&self, secret: &str) {
        let created = Reply::read(
            reqwest::Client::new()
                .post(format!("{}/api/v1/llm/feedback/completions", self.base))
                .bearer_auth(secret)
                .json(&json!({"id": "chatcmpl-flood", "rating": "thumbs_up"}))
                .send()
                .await
                .expect("create"),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text);
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log about something going wrong (or the last
    /// lines, if none is), for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|line| {
                line.contains(r#""status":5"#)
                    || line.contains(r#""level":"WARN""#)
                    || line.contains(r#""level":"ERROR""#)
            })
            .collect();
        if lines.is_empty() {
            lines = text.lines().collect();
        }
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status (the test needs Linux)");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// CPU time a process has used (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after `)`.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A well-formed key that no one provisioned: `lfk_` and 40 alphanumerics.
fn random_key() -> String {
    let random: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("lfk_{random}")
}

async fn a_flood_of_random_keys_leaves_a_valid_caller_fast_and_memory_bounded(backend: Backend) {
    let storage = TestStorage::new(backend).await;
    let secret = random_key();
    let server = ServerProcess::start(&storage.url(), &secret).await;
    let entry = format!(
        "{}/api/v1/llm/feedback/completions/chatcmpl-flood",
        server.base
    );
    server.create_entry(&secret).await;
    // The same caller without a flood, as a yardstick for the figures (this
    // machine may be busy with other work); it also warms the server up
    // before the memory baseline.
    let mut calm = run_valid_caller(&entry, &secret, server.pid(), CALM_FOR).await;
    let rss_before = rss_kib(server.pid());
    let cpu_before = cpu_ticks(server.pid());

    let flood = Flood::start(
        server.base.trim_start_matches("http://"),
        "/api/v1/llm/feedback/completions/chatcmpl-flood",
    );
    let started = Instant::now();
    let mut during = run_valid_caller(&entry, &secret, server.pid(), FLOOD_FOR).await;
    let flood = flood.stop().await;
    let flood_for = started.elapsed();
    let rss_after = rss_kib(server.pid());
    let server_cpu = Duration::from_millis((cpu_ticks(server.pid()) - cpu_before) * 10);

    let (p50, p99, max) = during.percentiles();
    let (calm_p50, calm_p99, _) = calm.percentiles();
    let growth_kib = during
        .rss_peak_kib
        .max(rss_after)
        .saturating_sub(rss_before);
    let figures = format!(
        "{backend:?}: flood {} requests in {flood_for:?} ({} 401, {} 5xx) from \
         {FLOOD_CONNECTIONS} connections; server CPU {server_cpu:?}; valid caller {} requests, \
         {} not 200, p50 {p50:?}, p99 {p99:?}, max {max:?}; RSS {rss_before} KiB before, \
         {rss_after} KiB after, peak growth {growth_kib} KiB; without the flood: {} requests, \
         p50 {calm_p50:?}, p99 {calm_p99:?}",
        flood.sent,
        flood.unauthorized,
        flood.failed,
        during.latencies.len(),
        during.failures.len(),
        calm.latencies.len(),
    );
    eprintln!("{figures}");
    assert!(
        during.failures.is_empty(),
        "{figures}\nthe valid caller got: {:?}\nserver log:\n{}",
        &during.failures[..during.failures.len().min(5)],
        server.log_tail()
    );
    assert!(
        p99 < P99_BOUND,
        "{figures}\nserver log:\n{}",
        server.log_tail()
    );
    assert!(growth_kib < RSS_GROWTH_BOUND_KIB, "{figures}");
    // Still a flood: the random keys were answered, and 401.
    assert!(flood.unauthorized > 1000, "{figures}");
}

/// One keep-alive `GET` with a new random key on a connection of its own:
/// hand-written HTTP/1.1, so that the load generator spends as little of
/// the machine's CPU as it can (the server gets the rest).
async fn get_with_random_key(
    stream: &mut BufStream<TcpStream>,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\n\r\n",
        random_key()
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
    let mut length = 0;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(std::io::Error::other)?;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What the flood saw.
struct FloodCounts {
    sent: u64,
    unauthorized: u64,
    failed: u64,
}

/// [`FLOOD_CONNECTIONS`] keep-alive connections sending `GET` with a new
/// random key each time, each waiting for its answer before the next.
struct Flood {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    /// `addr` is `127.0.0.1:PORT`, `path` what to `GET`.
    fn start(addr: &str, path: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let tasks = (0..FLOOD_CONNECTIONS)
            .map(|_| {
                let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
                let (addr, path) = (addr.to_owned(), path.to_owned());
                tokio::spawn(async move {
                    let [sent, unauthorized, failed] = &*counts;
                    let mut connection = None;
                    while !stop.load(Ordering::Relaxed) {
                        if connection.is_none() {
                            connection = TcpStream::connect(&addr).await.ok().map(BufStream::new);
                        }
                        let Some(stream) = connection.as_mut() else {
                            continue;
                        };
                        let Ok((status, body)) = get_with_random_key(stream, &path).await else {
                            connection = None;
                            continue;
                        };
                        sent.fetch_add(1, Ordering::Relaxed);
                        match status {
                            401 => {
                                unauthorized.fetch_add(1, Ordering::Relaxed);
                            }
                            500.. => {
                                if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("a random key got {status}: {body}");
                                }
                            }
                            other => panic!("a random key got {other}: {body}"),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            counts,
            tasks,
        }
    }

    async fn stop(self) -> FloodCounts {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a flooder panicked");
        }
        let [sent, unauthorized, failed] = &*self.counts;
        FloodCounts {
            sent: sent.load(Ordering::Relaxed),
            unauthorized: unauthorized.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
        }
    }
}

/// What the valid caller saw.
struct ValidCaller {
    latencies: Vec<Duration>,
    /// Answers other than 200.
    failures: Vec<String>,
    /// The server's highest `VmRSS` sampled meanwhile.
    rss_peak_kib: u64,
}

impl ValidCaller {
    /// p50, p99 and the slowest.
    fn percentiles(&mut self) -> (Duration, Duration, Duration) {
        self.latencies.sort_unstable();
        let at = |per_cent: usize| {
            self.latencies[(self.latencies.len() * per_cent / 100).min(self.latencies.len() - 1)]
        };
        (at(50), at(99), at(100))
    }
}

/// The valid caller: one connection, GET and PUT in turn, for `how_long`;
/// on a thread and runtime of its own, so that its latencies are the
/// server's and not the flooders' scheduling in this process.
async fn run_valid_caller(entry: &str, secret: &str, pid: u32, how_long: Duration) -> ValidCaller {
    let (entry, secret) = (entry.to_owned(), secret.to_owned());
    let caller = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(valid_caller(&entry, &secret, pid, how_long))
    });
    tokio::task::spawn_blocking(move || caller.join().expect("the valid caller panicked"))
        .await
        .expect("join")
}

async fn valid_caller(entry: &str, secret: &str, pid: u32, how_long: Duration) -> ValidCaller {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let mut seen = ValidCaller {
        latencies: Vec::new(),
        failures: Vec::new(),
        rss_peak_kib: rss_kib(pid),
    };
    // Connected before the clock starts; its answer counts all the same.
    let warm = Reply::read(
        client
            .get(entry)
            .bearer_auth(secret)
            .send()
            .await
            .expect("GET"),
    )
    .await;
    if warm.status != 200 {
        seen.failures.push(format!("{} {}", warm.status, warm.text));
    }
    let started = Instant::now();
    let mut n = 0_u64;
    while started.elapsed() < how_long {
        n += 1;
        let request = if n % 2 == 0 {
            client.get(entry)
        } else {
            let rating = if n % 4 == 1 {
                "thumbs_down"
            } else {
                "thumbs_up"
            };
            client.put(entry).json(&json!({"rating": rating}))
        };
        let sent_at = Instant::now();
        let reply = Reply::read(request.bearer_auth(secret).send().await.expect("request")).await;
        seen.latencies.push(sent_at.elapsed());
        if reply.status != 200 {
            seen.failures
                .push(format!("{} {}", reply.status, reply.text));
        }
        if n % 100 == 0 {
            seen.rss_peak_kib = seen.rss_peak_kib.max(rss_kib(pid));
        }
    }
    seen
}
