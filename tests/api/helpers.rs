//! `spawn_app`: the production `Application` on a fresh database, and a client.

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use llm_feedback::Application;
use llm_feedback::auth::generate_key;
use llm_feedback::config::{DatabaseArgs, DatabaseUrl, ExportArgs, ExportLocation, ServeArgs};
use llm_feedback::feedback::TenantId;
use llm_feedback::store::{KeyInsertion, Store};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, SqliteConnection};

/// Which store a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Postgres,
    Sqlite,
}

/// Prefix of every database the suite creates; stale ones are swept by age.
const TEST_DB_PREFIX: &str = "llm_feedback_test_";
/// Test databases older than this are left over from aborted runs.
const STALE_AFTER_SECS: u64 = 3 * 3600;

/// The server the suite creates its databases on (see scripts/test.sh).
pub(crate) fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Replaces the database name of a PostgreSQL URL.
fn with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("TEST_DATABASE_URL is not a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs()
}

/// A fresh database on the test server, dropped (even on panic) when the
/// guard is.
pub(crate) struct TestDatabase {
    pub(crate) name: String,
    pub(crate) url: String,
}

impl TestDatabase {
    pub(crate) async fn create() -> Self {
        sweep_stale_databases().await;
        let name = format!(
            "{TEST_DB_PREFIX}{}_{}",
            unix_now(),
            uuid::Uuid::new_v4().simple()
        );
        let mut admin = PgConnection::connect(&admin_database_url())
            .await
            .expect("cannot reach the test PostgreSQL: run the suite with scripts/test.sh");
        sqlx::query(&format!(r#"create database "{name}""#))
            .execute(&mut admin)
            .await
            .expect("cannot create a test database");
        let url = with_database(&admin_database_url(), &name);
        Self { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context: a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
                    let _ =
                        sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#))
                            .execute(&mut admin)
                            .await;
                }
            });
        })
        .join();
    }
}

/// Drops test databases left behind by aborted runs (older than a few hours,
/// so that concurrent runs never lose theirs). Once per process.
async fn sweep_stale_databases() {
    static SWEEP: Once = Once::new();
    let mut first = false;
    SWEEP.call_once(|| first = true);
    if !first {
        return;
    }
    let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await else {
        return;
    };
    let names: Vec<(String,)> =
        sqlx::query_as("select datname from pg_database where datname like $1")
            .bind(format!("{TEST_DB_PREFIX}%"))
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
    let cutoff = unix_now().saturating_sub(STALE_AFTER_SECS);
    for (name,) in names {
        let created = name
            .strip_prefix(TEST_DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created < cutoff) {
            let _ = sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#))
                .execute(&mut admin)
                .await;
        }
    }
}

/// Where a test's data lives; removed when the test ends.
pub(crate) enum TestStorage {
    Postgres(TestDatabase),
    Sqlite(tempfile::TempDir),
}

impl TestStorage {
    pub(crate) async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::Postgres(TestDatabase::create().await),
            Backend::Sqlite => Self::Sqlite(tempfile::tempdir().expect("cannot create a temp dir")),
        }
    }

    /// The `DATABASE_URL` of this storage.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Postgres(db) => db.url.clone(),
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("feedback.db").display()),
        }
    }
}

/// A running service, its store (for provisioning keys as the CLI does) and
/// a key of tenant `tenant-a`.
pub(crate) struct TestApp {
    pub(crate) backend: Backend,
    /// `http://127.0.0.1:PORT`
    pub(crate) address: String,
    pub(crate) client: reqwest::Client,
    /// A key of tenant `tenant-a`.
    pub(crate) api_key: String,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) database_url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    // Last: dropped after the server is told to stop. `None` when the
    // caller owns the database (`spawn_app_on`).
    _storage: Option<TestStorage>,
}

/// Serve settings for tests: port 0, no bootstrap key.
pub(crate) fn test_serve_args() -> ServeArgs {
    ServeArgs {
        listen_addr: "127.0.0.1:0".parse().expect("valid address"),
        bootstrap_api_key: None,
        bootstrap_tenant: "default".to_owned(),
        export_max_rows: 50_000,
        request_timeout_ms: 10_000,
        max_concurrent_requests: 1024,
        rate_limit_per_second: None,
        rate_limit_burst: None,
        token_rate_limit_per_minute: 30,
        cors_allowed_origins: Vec::new(),
        shutdown_timeout_secs: 5,
        header_read_timeout_ms: 10_000,
        idle_timeout_secs: 60,
        max_connections: 10_000,
        idempotency_ttl_secs: 86_400,
        retention_days: None,
        export: test_export_args(),
        webhooks: llm_feedback::config::WebhookArgs::default(),
        change_retention_days: 30,
    }
}

/// Admin export settings for tests: a fresh directory under the system's
/// temporary one, a 1 s lease (a dead replica's export is judged so within
/// about a second).
pub(crate) fn test_export_args() -> ExportArgs {
    let dir = std::env::temp_dir()
        .join("llm-feedback-test-exports")
        .join(uuid_like());
    ExportArgs {
        export_location: ExportLocation::Local(dir),
        export_lease_secs: 1,
        export_batch_rows: 1_000,
        export_nice: 19,
    }
}

/// A unique enough name for a test folder.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// Database settings for tests: small pools (the server allows ~100
/// connections for every test running at once).
pub(crate) fn test_database_args(url: &str) -> DatabaseArgs {
    DatabaseArgs {
        database_url: DatabaseUrl::parse(url).expect("valid database URL"),
        database_max_connections: 4,
        database_acquire_timeout_ms: 5_000,
    }
}

/// Starts the production application on a fresh database.
pub(crate) async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the application with adjusted settings (e.g. a small export cap).
pub(crate) async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut ServeArgs),
) -> TestApp {
    let storage = TestStorage::new(backend).await;
    let database_url = storage.url();
    let mut serve = test_serve_args();
    configure(&mut serve);
    start_app(
        backend,
        serve,
        &test_database_args(&database_url),
        Some(storage),
        |_| {},
    )
    .await
}

/// Starts the application with more background workers, registered by
/// `register` before it serves.
pub(crate) async fn spawn_app_with_workers(
    backend: Backend,
    register: impl FnOnce(&mut Application),
) -> TestApp {
    let storage = TestStorage::new(backend).await;
    let database_url = storage.url();
    start_app(
        backend,
        test_serve_args(),
        &test_database_args(&database_url),
        Some(storage),
        register,
    )
    .await
}

/// Starts the application on a database the caller owns (e.g. a throwaway
/// cluster, or one database shared by several replicas).
pub(crate) async fn spawn_app_on(database: &DatabaseArgs) -> TestApp {
    spawn_app_on_with(database, |_| {}).await
}

/// [`spawn_app_on`] with adjusted settings (a replica with `RETENTION_DAYS`).
pub(crate) async fn spawn_app_on_with(
    database: &DatabaseArgs,
    configure: impl FnOnce(&mut ServeArgs),
) -> TestApp {
    let backend = match database.database_url {
        DatabaseUrl::Sqlite(_) => Backend::Sqlite,
        DatabaseUrl::Postgres(_) => Backend::Postgres,
    };
    let mut serve = test_serve_args();
    configure(&mut serve);
    start_app(backend, serve, database, None, |_| {}).await
}

async fn start_app(
    backend: Backend,
    serve: ServeArgs,
    database: &DatabaseArgs,
    storage: Option<TestStorage>,
    register: impl FnOnce(&mut Application),
) -> TestApp {
    init_test_logs();
    let database_url = match &database.database_url {
        DatabaseUrl::Postgres(url) => url.clone(),
        DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
    };
    let mut app = Application::build(serve, database)
        .await
        .expect("the application failed to start");
    register(&mut app);
    let address = format!("http://{}", app.local_addr().expect("bound address"));
    let store = app.store();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let mut test_app = TestApp {
        backend,
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client"),
        api_key: String::new(),
        store,
        database_url,
        _shutdown: shutdown,
        _storage: storage,
    };
    test_app.api_key = test_app.new_key("tenant-a").await;
    test_app
}

/// Logs stay silent unless `TEST_LOG=1`.
pub(crate) fn init_test_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let logs = llm_feedback::telemetry::init(&llm_feedback::config::LogArgs {
                filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
                log_format: None,
                log_buffer_lines: 16_384,
            });
            // The writer thread lives as long as the test process.
            if let Ok(guard) = logs {
                std::mem::forget(guard);
            }
        }
    });
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    /// The body as JSON (`Value::Null` if it was not JSON).
    pub(crate) body: Value,
    pub(crate) text: String,
}

impl Reply {
    pub(crate) async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    /// `error.code` of an error envelope.
    pub(crate) fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Percent-encodes an output id for use as a path segment.
pub(crate) fn encode_id(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}

impl TestApp {
    /// A new key for `tenant`, provisioned exactly as `keys create` does.
    pub(crate) async fn new_key(&self, tenant: &str) -> String {
        self.provision(generate_key(
            TenantId::parse(tenant).expect("valid tenant"),
            None,
        ))
        .await
    }

    /// A new admin key (no tenant), provisioned as `keys create --admin` does.
    pub(crate) async fn new_admin_key(&self) -> String {
        self.provision(llm_feedback::auth::generate_admin_key(None))
            .await
    }

    /// Stores a generated key; its secret.
    async fn provision(&self, key: llm_feedback::auth::GeneratedKey) -> String {
        assert_eq!(
            self.store
                .insert_api_key(&key.record)
                .await
                .expect("insert key"),
            KeyInsertion::Inserted
        );
        key.secret
    }

    /// The key id of a secret, as `keys list` shows it.
    pub(crate) fn key_id(secret: &str) -> String {
        llm_feedback::auth::key_record(secret, TenantId::parse("x").expect("tenant"), None).id
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A request with this app's key.
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.api_key)
    }

    /// Sends and reads a request.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        Reply::read(request.send().await.expect("request failed")).await
    }

    /// Sends `method path` with `key` (and a JSON body) and reads the answer.
    pub(crate) async fn send_as(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// `POST /api/v1/llm/feedback/{kind}` with a JSON body.
    pub(crate) async fn create(&self, kind: &str, body: Value) -> Reply {
        self.send(
            self.request(Method::POST, &format!("/api/v1/llm/feedback/{kind}"))
                .json(&body),
        )
        .await
    }

    /// `PUT /api/v1/llm/feedback/{kind}/{id}` with a JSON body.
    pub(crate) async fn update(&self, kind: &str, id: &str, body: Value) -> Reply {
        self.send(
            self.request(
                Method::PUT,
                &format!("/api/v1/llm/feedback/{kind}/{}", encode_id(id)),
            )
            .json(&body),
        )
        .await
    }

    /// Creates an entry, asserts the `201`, returns the created entry.
    pub(crate) async fn create_ok(&self, kind: &str, body: Value) -> Value {
        let reply = self.create(kind, body).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.body
    }

    /// Updates an entry, asserts the `200`, returns the updated entry.
    pub(crate) async fn update_ok(&self, kind: &str, id: &str, body: Value) -> Value {
        let reply = self.update(kind, id, body).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.body
    }

    /// `GET /api/v1/llm/feedback/{kind}/{id}`.
    pub(crate) async fn get(&self, kind: &str, id: &str) -> Reply {
        self.send(self.request(
            Method::GET,
            &format!("/api/v1/llm/feedback/{kind}/{}", encode_id(id)),
        ))
        .await
    }

    /// `GET /api/v1/llm/feedback/{kind}?{query}` (query already encoded).
    pub(crate) async fn list(&self, kind: &str, query: &str) -> Reply {
        self.send(self.request(Method::GET, &format!("/api/v1/llm/feedback/{kind}?{query}")))
            .await
    }

    /// `POST /api/v1/llm/feedback/{kind}/batch`.
    pub(crate) async fn batch_get(&self, kind: &str, body: Value) -> Reply {
        self.send(
            self.request(Method::POST, &format!("/api/v1/llm/feedback/{kind}/batch"))
                .json(&body),
        )
        .await
    }

    /// `GET /api/v1/llm/feedback/export/{kind}?{query}`: the body is in `text`.
    pub(crate) async fn export(&self, kind: &str, query: &str) -> Reply {
        self.send(self.request(
            Method::GET,
            &format!("/api/v1/llm/feedback/export/{kind}?{query}"),
        ))
        .await
    }

    /// The same operations as another caller: any key, optional end user.
    pub(crate) fn as_caller(&self, api_key: &str, end_user: Option<&str>) -> Caller<'_> {
        Caller {
            app: self,
            api_key: api_key.to_owned(),
            end_user: end_user.map(str::to_owned),
        }
    }
}

/// Requests with a given key and `X-On-Behalf-Of`.
pub(crate) struct Caller<'a> {
    app: &'a TestApp,
    api_key: String,
    end_user: Option<String>,
}

impl Caller<'_> {
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(&self.api_key);
        match &self.end_user {
            Some(user) => builder.header("X-On-Behalf-Of", user),
            None => builder,
        }
    }

    pub(crate) async fn create(&self, kind: &str, body: Value) -> Reply {
        self.app
            .send(
                self.request(Method::POST, &format!("/api/v1/llm/feedback/{kind}"))
                    .json(&body),
            )
            .await
    }

    /// Creates an entry, asserts the `201`, returns the created entry.
    pub(crate) async fn create_ok(&self, kind: &str, body: Value) -> Value {
        let reply = self.create(kind, body).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.body
    }

    pub(crate) async fn update(&self, kind: &str, id: &str, body: Value) -> Reply {
        self.app
            .send(
                self.request(
                    Method::PUT,
                    &format!("/api/v1/llm/feedback/{kind}/{}", encode_id(id)),
                )
                .json(&body),
            )
            .await
    }

    pub(crate) async fn get(&self, kind: &str, id: &str) -> Reply {
        self.app
            .send(self.request(
                Method::GET,
                &format!("/api/v1/llm/feedback/{kind}/{}", encode_id(id)),
            ))
            .await
    }
}

impl TestApp {
    /// Inserts tenant-wide `completions` entries `{prefix}-1` ... `{prefix}-{count}`
    /// of `tenant-a` straight into the database, bypassing the API: in that
    /// insertion order, all with one `created_at`/`updated_at`, and a rating
    /// that cycles with `n % 3`: 1 `thumbs_up`, 2 `thumbs_down`, 0 none.
    pub(crate) async fn insert_completions_directly(&self, prefix: &str, count: i64) {
        insert_completions(self.backend, &self.database_url, prefix, count).await;
    }
}

/// [`TestApp::insert_completions_directly`] into the database at
/// `database_url` (that of a server started as a process, for one).
pub(crate) async fn insert_completions(
    backend: Backend,
    database_url: &str,
    prefix: &str,
    count: i64,
) {
    match backend {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(database_url)
                .await
                .expect("connect to the test database");
            sqlx::query(
                "insert into feedback (tenant, kind, output_id, rating, created_at, updated_at)
                 select 'tenant-a', 'completions', $1 || '-' || g,
                        case g % 3 when 1 then 'thumbs_up' when 2 then 'thumbs_down' end,
                        date_trunc('milliseconds', now()), date_trunc('milliseconds', now())
                 from generate_series(1, $2) g
                 order by g",
            )
            .bind(prefix)
            .bind(count)
            .execute(&pool)
            .await
            .expect("direct insert");
            pool.close().await;
        }
        Backend::Sqlite => {
            // The SQLite schema keeps timestamps as integer milliseconds.
            let pool = sqlx::SqlitePool::connect(database_url)
                .await
                .expect("open the test database");
            sqlx::query(
                "with recursive g(n) as (select 1 union all select n + 1 from g where n < ?2)
                 insert into feedback (tenant, kind, output_id, rating, created_at, updated_at)
                 select 'tenant-a', 'completions', ?1 || '-' || n,
                        case n % 3 when 1 then 'thumbs_up' when 2 then 'thumbs_down' end,
                        ?3, ?3
                 from g order by n",
            )
            .bind(prefix)
            .bind(count)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&pool)
            .await
            .expect("direct insert");
            pool.close().await;
        }
    }
}

/// Rows of a `SlowExport`, each with a 1000-character description: some
/// 10 MB of CSV, far more than a 4 KiB receive window and the server's send
/// buffer (at most 4 MiB here) hold.
pub(crate) const SLOW_EXPORT_ROWS: i64 = 10_000;

/// Runs one statement (in the backend's dialect) straight on the database at
/// `database_url`, on a connection of its own; the rows it affected.
pub(crate) async fn execute_directly(
    backend: Backend,
    database_url: &str,
    postgres_sql: &str,
    sqlite_sql: &str,
) -> Result<u64, sqlx::Error> {
    match backend {
        Backend::Postgres => {
            let mut connection = PgConnection::connect(database_url).await?;
            let done = sqlx::query(postgres_sql).execute(&mut connection).await?;
            Ok(done.rows_affected())
        }
        Backend::Sqlite => {
            let mut connection = SqliteConnection::connect(database_url).await?;
            let done = sqlx::query(sqlite_sql).execute(&mut connection).await?;
            Ok(done.rows_affected())
        }
    }
}

/// `SLOW_EXPORT_ROWS` completions `bulk-1`... of `tenant-a` with long
/// descriptions, written straight into the database (through the API it
/// would take minutes).
pub(crate) async fn insert_long_completions(backend: Backend, database_url: &str) {
    insert_completions(backend, database_url, "bulk", SLOW_EXPORT_ROWS).await;
    let updated = execute_directly(
        backend,
        database_url,
        "update feedback set description = repeat('x', 1000)",
        "update feedback set description = replace(hex(zeroblob(500)), '0', 'x')",
    )
    .await
    .expect("set long descriptions");
    assert_eq!(updated, u64::try_from(SLOW_EXPORT_ROWS).expect("positive"));
}

/// `GET /export/completions` over a socket with a 4 KiB receive buffer,
/// after its head was read; the body is left unread until `finish`.
pub(crate) struct SlowExport {
    stream: tokio::net::TcpStream,
    pub(crate) head: String,
}

impl SlowExport {
    pub(crate) async fn open(app: &TestApp) -> Self {
        Self::open_at(&app.address, &app.api_key, "").await
    }

    /// The export of the server at `address` (`http://HOST:PORT`) with `key`,
    /// and `extra_headers` (`Name: value\r\n` lines).
    pub(crate) async fn open_at(address: &str, key: &str, extra_headers: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = address.trim_start_matches("http://");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut stream = socket
            .connect(addr.parse().expect("a socket address"))
            .await
            .expect("connect");
        let request = format!(
            "GET /api/v1/llm/feedback/export/completions HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {key}\r\n{extra_headers}Connection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut head = Vec::new();
        let mut byte = [0_u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte))
                .await
                .expect("no response head within 10 s");
            read.expect("read the response head");
            head.push(byte[0]);
        }
        Self {
            stream,
            head: String::from_utf8(head).expect("an ASCII head"),
        }
    }

    pub(crate) fn status(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or_default()
    }

    /// Reads the rest of the body; its size in bytes.
    pub(crate) async fn finish(self) -> usize {
        let (body, is_complete) = self.read_rest().await;
        assert!(is_complete, "the chunked body did not end cleanly");
        body.len()
    }

    /// The rest of the body until the server closes the connection, and
    /// whether it ended with the last chunk (else it was cut off).
    pub(crate) async fn read_rest(mut self) -> (Vec<u8>, bool) {
        use tokio::io::AsyncReadExt;
        let mut body = Vec::new();
        let mut buffer = vec![0_u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let read = tokio::time::timeout(left, self.stream.read(&mut buffer))
                .await
                .expect("the export did not end within 30 s");
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buffer[..n]),
            }
        }
        let is_complete = body.ends_with(b"0\r\n\r\n");
        (body, is_complete)
    }
}

/// The keys of a JSON object, sorted.
pub(crate) fn sorted_keys(body: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = body
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// An entry's timestamp keys: each timestamp under both spellings, camelCase
/// (MKA1's documentation) and snake_case (MKA1's SDK since 0.12.22).
pub(crate) const ENTRY_TIMESTAMPS: [&str; 4] =
    ["createdAt", "created_at", "updatedAt", "updated_at"];

/// Asserts that an entry carries all four timestamp keys as UTC millisecond
/// strings and that the two spellings of each are the same string (API.md,
/// "Resources").
pub(crate) fn assert_entry_timestamps(entry: &Value) {
    for key in ENTRY_TIMESTAMPS {
        let text = entry[key]
            .as_str()
            .unwrap_or_else(|| panic!("`{key}` is not a string: {entry}"));
        assert!(is_utc_millisecond_timestamp(text), "{key}: {text}");
    }
    assert_eq!(entry["createdAt"], entry["created_at"], "{entry}");
    assert_eq!(entry["updatedAt"], entry["updated_at"], "{entry}");
}

/// The keys of an entry other than its timestamps, sorted, after
/// [`assert_entry_timestamps`].
pub(crate) fn entry_fields(entry: &Value) -> Vec<&str> {
    assert_entry_timestamps(entry);
    sorted_keys(entry)
        .into_iter()
        .filter(|key| !ENTRY_TIMESTAMPS.contains(key))
        .collect()
}

/// `fields` (an entry without timestamps) with both spellings of both
/// timestamps set: the entry API.md says the service answers.
pub(crate) fn with_timestamps(mut fields: Value, created_at: &Value, updated_at: &Value) -> Value {
    for (key, value) in [
        ("createdAt", created_at),
        ("created_at", created_at),
        ("updatedAt", updated_at),
        ("updated_at", updated_at),
    ] {
        fields[key] = value.clone();
    }
    fields
}

/// `^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`
pub(crate) fn is_utc_millisecond_timestamp(text: &str) -> bool {
    text.len() == 24
        && text.bytes().enumerate().all(|(i, c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

pub(crate) fn timestamp(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().expect("a timestamp string");
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 timestamp")
        .with_timezone(&Utc)
}

/// A 400 `invalid_request` whose details name exactly these fields.
pub(crate) fn assert_invalid_fields(reply: &Reply, fields: &[&str]) {
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.error_code(), "invalid_request", "{}", reply.text);
    let mut named: Vec<&str> = reply.body["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details: {}", reply.text))
        .iter()
        .map(|item| item["field"].as_str().expect("a field name"))
        .collect();
    named.sort_unstable();
    let mut expected = fields.to_vec();
    expected.sort_unstable();
    assert_eq!(named, expected, "{}", reply.text);
}

/// Asserts the status and that the body is exactly API.md's envelope:
/// `{"error": {"code", "message", "details"?}}`, as JSON.
pub(crate) fn assert_error(reply: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{what}: content type {:?}",
        reply.header("content-type")
    );
    let body = reply
        .body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a JSON object: {:?}", reply.text));
    assert_eq!(
        body.keys().map(String::as_str).collect::<Vec<_>>(),
        ["error"],
        "{what}"
    );
    let error = body["error"].as_object().expect("`error` is an object");
    assert_eq!(error.get("code"), Some(&Value::from(code)), "{what}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{what}: {}",
        reply.text
    );
    for key in error.keys() {
        assert!(
            matches!(key.as_str(), "code" | "message" | "details"),
            "{what}: unexpected key {key}"
        );
    }
    if let Some(details) = error.get("details") {
        for detail in details.as_array().expect("`details` is an array") {
            let detail = detail.as_object().expect("a detail is an object");
            let mut keys: Vec<&str> = detail.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["field", "message"], "{what}");
            assert!(detail["field"].is_string() && detail["message"].is_string());
        }
    }
}
