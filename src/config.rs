//! Command line and environment: every setting is a flag and a variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::{Database, StoreOptions};
use crate::webhook::RetrySchedule;

/// Records end users' thumbs up/down and comments on LLM outputs.
#[derive(Debug, Parser)]
#[command(
    name = "llm-feedback",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Database settings, for every command.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Log settings, for every command.
    #[command(flatten)]
    pub log: LogArgs,
    /// Threads serving requests; default: one per CPU. Where the database
    /// shares the machine, fewer leave it more CPU.
    #[arg(long, env = "WORKER_THREADS", global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

impl Cli {
    /// The command to run, `serve` by default.
    #[must_use]
    pub fn into_command(self) -> (Command, DatabaseArgs) {
        (
            self.command.unwrap_or(Command::Serve(self.serve)),
            self.database,
        )
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start-up and moved once; a box would buy nothing"
)]
pub enum Command {
    /// Apply pending migrations, then serve HTTP until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Apply pending migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List and remove webhook endpoints.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Exit 0 if the server on LISTEN_ADDR answers `GET /healthz` with 200
    /// (for container health checks; needs no curl in the image).
    Healthcheck {
        /// Where the server listens; `0.0.0.0` is checked on `127.0.0.1`.
        #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
        listen_addr: SocketAddr,
    },
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key; prints the secret, alone, on stdout.
    Create {
        /// The tenant the key acts for.
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        tenant: Option<String>,
        /// An admin key instead: no tenant, only the admin export (all tenants).
        #[arg(long)]
        admin: bool,
        /// A label for humans.
        #[arg(long)]
        name: Option<String>,
    },
    /// List API keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object a line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key; every server stops accepting it within 5 seconds.
    Revoke {
        /// The key's id, as `keys list` shows it.
        key_id: String,
    },
}

/// `webhooks` subcommands (endpoints are created through the API, which
/// shows the secret once).
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List webhook endpoints (never their secrets).
    List {
        /// Only this tenant's endpoints.
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object a line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a webhook endpoint and its deliveries; nothing more is sent to it.
    Remove {
        /// The endpoint's id (`wh_…`), as `webhooks list` shows it.
        endpoint_id: String,
    },
}

/// Settings of the HTTP server.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where to listen.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// Provision exactly this API key at start if it is not there yet.
    #[arg(long, env = "BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub bootstrap_api_key: Option<Secret>,
    /// The tenant of `BOOTSTRAP_API_KEY`.
    #[arg(long, env = "BOOTSTRAP_TENANT", default_value = "default")]
    pub bootstrap_tenant: String,
    /// The most rows one CSV export holds (`X-Export-Truncated: true` beyond).
    #[arg(long, env = "EXPORT_MAX_ROWS", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub export_max_rows: u64,
    /// A request not answered within this time gets 503 unavailable.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,
    /// API requests served at once; beyond, requests are answered 503 at once.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_requests: u32,
    /// Requests per second allowed per API key (token bucket); unset: no limit.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_per_second: Option<u32>,
    /// Requests an API key may make in a burst; default: one second's worth.
    #[arg(long, env = "RATE_LIMIT_BURST", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_burst: Option<u32>,
    /// Requests per minute allowed per feedback token (its own bucket of
    /// that size, per replica).
    #[arg(long, env = "TOKEN_RATE_LIMIT_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub token_rate_limit_per_minute: u32,
    /// Browser origins allowed to call the API (comma-separated), or `*`; unset: CORS off.
    /// Each must be an origin as browsers send it (`https://app.example.com`).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = CorsOrigin::parse)]
    pub cors_allowed_origins: Vec<CorsOrigin>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout_secs: u64,
    /// A request head must be complete within this time of its first byte (of
    /// the accept, for a connection's first request), else the connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection that sends no complete request head this long
    /// after a response is closed.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_secs: u64,
    /// Connections open at once; beyond it new ones wait in the kernel's
    /// listen backlog until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// How long the outcome of a create with an `Idempotency-Key` is kept
    /// (and replayed); expired outcomes are purged in the background.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idempotency_ttl_secs: u64,
    /// Delete entries (and their histories) created longer ago than this
    /// many days, checked hourly; unset: keep for ever.
    #[arg(long, env = "RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub retention_days: Option<u32>,
    /// The admin export's settings (EXPORT_*).
    #[command(flatten)]
    pub export: ExportArgs,
    /// Keep changes (the changes feed's, webhook events') this many days,
    /// purged hourly, one replica at a time; an older cursor is `410`.
    #[arg(long, env = "CHANGE_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub change_retention_days: u32,
    /// Webhook delivery settings.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// Settings of webhook delivery (API.md, "Webhooks").
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Allow webhook targets in loopback, private, link-local and metadata
    /// ranges, and `http://` URLs (development and tests only).
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_TARGETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private_targets: bool,
    /// Waits between attempts of a failed delivery, comma-separated (`ms`,
    /// `s`, `m`, `h`); after the last one the delivery is `failed`.
    #[arg(long, env = "WEBHOOK_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,14h,20h,24h", value_parser = RetrySchedule::parse)]
    pub webhook_retry_schedule: RetrySchedule,
    /// How long a receiver has to answer an attempt (API.md: 10 seconds);
    /// shorter only for tests.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub webhook_timeout_ms: u64,
    /// Run the webhook delivery worker in this replica (`false`: this
    /// replica only enqueues; others deliver).
    #[arg(long, env = "WEBHOOK_DELIVERY", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook_delivery: bool,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        Self {
            webhook_allow_private_targets: false,
            webhook_retry_schedule: RetrySchedule::default(),
            webhook_timeout_ms: 10_000,
            webhook_delivery: true,
        }
    }
}

impl ServeArgs {
    /// The drain deadline.
    #[must_use]
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The per-request deadline.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// How long a connection may take to send a request head.
    #[must_use]
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// How long a keep-alive connection may stay idle.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// One entry of `CORS_ALLOWED_ORIGINS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigin {
    /// `*`: any origin.
    Any,
    /// One origin, serialized as browsers send it in `Origin`
    /// (`scheme://host[:port]`, lower case, no path).
    Exact(String),
}

impl CorsOrigin {
    /// Parses `*` or an origin. A value that no browser would send as its
    /// `Origin` (a path, a trailing slash, upper case, a default port) is an
    /// error, not an entry that silently never matches.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed == "*" {
            return Ok(Self::Any);
        }
        let url = url::Url::parse(trimmed).map_err(|err| format!("not an origin ({err})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("not an origin: the scheme must be http or https".to_owned());
        }
        let origin = url.origin().ascii_serialization();
        if origin != trimmed {
            return Err(format!(
                "not an origin as browsers send it; did you mean {origin}?"
            ));
        }
        Ok(Self::Exact(origin))
    }
}

/// Settings of the admin export (`POST /export`).
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Where the Parquet files go: a directory, or `s3://bucket/prefix` (with
    /// the usual `AWS_*` variables; `AWS_ENDPOINT_URL` for S3-compatible stores).
    #[arg(long, env = "EXPORT_LOCATION", default_value = "./data/exports", value_parser = ExportLocation::parse)]
    pub export_location: ExportLocation,
    /// A running export whose replica sent no heartbeat for this long is
    /// reported `FAILED` (its process died); heartbeats go every quarter of it.
    #[arg(long, env = "EXPORT_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub export_lease_secs: u64,
    /// Entries read from the database per query (each a keyset page).
    #[arg(long, env = "EXPORT_BATCH_ROWS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub export_batch_rows: u32,
    /// The nice value of the export's thread (Linux: 0 to 19, higher is
    /// lower priority), so that API requests get the CPU first.
    #[arg(long, env = "EXPORT_NICE", default_value_t = 19, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub export_nice: u8,
}

impl ExportArgs {
    /// See `export_lease_secs`.
    #[must_use]
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.export_lease_secs)
    }
}

/// Where the admin export writes (`EXPORT_LOCATION`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLocation {
    /// A local directory (created if missing).
    Local(std::path::PathBuf),
    /// An S3 (or S3-compatible) bucket and key prefix (no leading or trailing `/`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix; may be empty.
        prefix: String,
    },
}

impl ExportLocation {
    /// A directory path, `file:///path`, or `s3://bucket[/prefix]`; any
    /// other scheme is refused (start-up stops with this one line).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(
                "EXPORT_LOCATION is empty: give a directory or s3://bucket/prefix".to_owned(),
            );
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "EXPORT_LOCATION {text:?} names no bucket: use s3://bucket/prefix"
                ));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(Self::Local(path.into()));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!(
                "EXPORT_LOCATION scheme {scheme:?} is not supported: use a directory path or s3://bucket/prefix"
            ));
        }
        Ok(Self::Local(text.into()))
    }
}

impl fmt::Display for ExportLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Database settings.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `postgres://...` (production) or `sqlite://PATH` (embedded, the default).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/feedback.db", hide_env_values = true, value_parser = DatabaseUrl::parse, global = true)]
    pub database_url: DatabaseUrl,
    /// The most database connections this process opens.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub database_max_connections: u32,
    /// How long a request waits for a database connection before it gets 503.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 1500, value_parser = clap::value_parser!(u64).range(1..=60_000), global = true)]
    pub database_acquire_timeout_ms: u64,
}

impl DatabaseArgs {
    /// Settings for `store::connect`.
    #[must_use]
    pub fn store_options(&self) -> StoreOptions {
        let database = match &self.database_url {
            DatabaseUrl::Postgres(url) => Database::Postgres(url.clone()),
            DatabaseUrl::Sqlite(path) => Database::Sqlite(path.clone()),
        };
        StoreOptions {
            database,
            redacted_url: self.database_url.redacted(),
            max_connections: self.database_max_connections,
            acquire_timeout: Duration::from_millis(self.database_acquire_timeout_ms),
        }
    }
}

/// Log settings.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter, in `tracing` `EnvFilter` syntax.
    #[arg(
        long = "log-filter",
        env = "RUST_LOG",
        default_value = "info",
        global = true
    )]
    pub filter: String,
    /// `pretty` or `json`; by default pretty on a terminal, JSON elsewhere.
    #[arg(long, env = "LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Log lines that may wait for stderr; beyond, lines are dropped (and
    /// counted in `log_lines_dropped_total`) rather than waited for.
    #[arg(long, env = "LOG_BUFFER_LINES", default_value_t = 16_384, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000), global = true)]
    pub log_buffer_lines: usize,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured.
    Pretty,
    /// One JSON object a line.
    Json,
}

/// Which database, parsed from `DATABASE_URL`; `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://` or `postgresql://`.
    Postgres(String),
    /// `sqlite://PATH` or `sqlite:PATH`: the embedded store's file.
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Parses a URL by its scheme.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_owned()));
        }
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                return Err("sqlite URLs must name a file, e.g. sqlite://data/feedback.db".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        Err("expected a postgres://... or sqlite://... URL".into())
    }

    /// The URL as given, password included: only for the driver.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Postgres(url) => url,
            Self::Sqlite(path) => path.to_str().unwrap_or_default(),
        }
    }

    /// The URL with any password (user-info or `?password=`) replaced by
    /// `***`, fit for logs and errors.
    #[must_use]
    pub fn redacted(&self) -> String {
        match self {
            Self::Postgres(raw) => redact_postgres_url(raw),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }
}

/// `raw` with the user-info password and every `password` query parameter
/// (the driver reads both) replaced by `***`.
fn redact_postgres_url(raw: &str) -> String {
    const MASK: &str = "***";
    let Ok(mut url) = url::Url::parse(raw) else {
        return "postgres://<unparsable URL>".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some(MASK));
    }
    // Keys are compared decoded: `pass%77ord=` is `password=` to the driver.
    let is_password = |key: &str| key.eq_ignore_ascii_case("password");
    if url.query_pairs().any(|(key, _)| is_password(&key)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_password(&key) {
                    MASK.to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A secret from the environment; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(raw: String) -> Self {
        Self(raw)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Self(raw.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_backend_and_hide_passwords() {
        let pg = DatabaseUrl::parse("postgres://app:hunter2@db:5432/feedback").unwrap();
        assert!(matches!(pg, DatabaseUrl::Postgres(_)));
        assert!(!pg.redacted().contains("hunter2"));
        assert!(!format!("{pg:?}").contains("hunter2"));
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/x.db").unwrap(),
            DatabaseUrl::Sqlite(PathBuf::from("data/x.db"))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap(),
            DatabaseUrl::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        assert!(DatabaseUrl::parse("sqlite::memory:").is_err());
    }

    #[test]
    fn a_password_query_parameter_is_hidden_like_the_user_info_one() {
        let url = DatabaseUrl::parse("postgres://app@db/feedback?sslmode=require&password=hunter2")
            .unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://app@db/feedback?sslmode=require&password=***"
        );
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        // The driver decodes keys: so does the mask.
        let encoded = DatabaseUrl::parse("postgres://db/x?pass%77ord=hunter2").unwrap();
        assert!(!encoded.redacted().contains("hunter2"), "{encoded}");
        let plain = DatabaseUrl::parse("postgres://app@db/feedback?sslmode=require").unwrap();
        assert_eq!(
            plain.redacted(),
            "postgres://app@db/feedback?sslmode=require"
        );
    }

    #[test]
    fn cors_origins_are_origins_as_browsers_send_them() {
        assert_eq!(CorsOrigin::parse("*"), Ok(CorsOrigin::Any));
        for good in [
            "https://app.example.com",
            "http://localhost:3000",
            " https://app.example.com ",
        ] {
            assert_eq!(
                CorsOrigin::parse(good),
                Ok(CorsOrigin::Exact(good.trim().to_owned())),
                "{good}"
            );
        }
        for (bad, hint) in [
            ("https://app.example.com/", Some("https://app.example.com")),
            (
                "https://app.example.com/path",
                Some("https://app.example.com"),
            ),
            ("https://App.example.com", Some("https://app.example.com")),
            (
                "https://app.example.com:443",
                Some("https://app.example.com"),
            ),
            ("app.example.com", None),
            ("", None),
            ("null", None),
            ("ftp://files.example.com", None),
        ] {
            let err = CorsOrigin::parse(bad).expect_err(bad);
            if let Some(hint) = hint {
                assert!(
                    err.contains(&format!("did you mean {hint}?")),
                    "{bad}: {err}"
                );
            }
        }
    }

    #[test]
    fn cors_allowed_origins_parse_as_a_comma_separated_list_and_reject_a_bad_entry() {
        let parsed = Cli::try_parse_from([
            "llm-feedback",
            "--cors-allowed-origins",
            "https://a.example,*",
        ])
        .unwrap();
        assert_eq!(
            parsed.serve.cors_allowed_origins,
            [
                CorsOrigin::Exact("https://a.example".to_owned()),
                CorsOrigin::Any
            ]
        );
        let err = Cli::try_parse_from([
            "llm-feedback",
            "--cors-allowed-origins",
            "https://a.example,https://b.example/",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("'https://b.example/'"), "{err}");
    }

    proptest::proptest! {
        /// Whatever the password, in the user info or in the query (encoded
        /// as a client would), the redacted URL does not hold it.
        #[test]
        fn no_password_survives_redaction(
            password in "[ -~]{6,40}",
            in_query in proptest::bool::ANY,
            other in "[0-9]{1,4}",
        ) {
            let encoded = percent_encoding::utf8_percent_encode(
                &password,
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string();
            let raw = if in_query {
                format!("postgres://app@db:5432/feedback?application_name={other}&password={encoded}")
            } else {
                format!("postgres://app:{encoded}@db:5432/feedback?application_name={other}")
            };
            let url = DatabaseUrl::parse(&raw).unwrap();
            let redacted = url.redacted();
            let parsed = url::Url::parse(&redacted).unwrap();
            let shown_password = if in_query {
                parsed
                    .query_pairs()
                    .find(|(key, _)| key == "password")
                    .map(|(_, value)| value.into_owned())
            } else {
                parsed.password().map(str::to_owned)
            };
            proptest::prop_assert_eq!(shown_password.as_deref(), Some("***"));
            let shown = format!("{url:?}");
            proptest::prop_assert!(!shown.contains(&encoded), "{}", shown);
            // Everything else is kept.
            proptest::prop_assert_eq!(parsed.host_str(), Some("db"));
            proptest::prop_assert!(
                parsed.query_pairs().any(|(key, value)| key == "application_name" && value == other.as_str())
            );
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    proptest::proptest! {
        #[test]
        fn export_locations_parse_to_what_they_name(
            bucket in "[a-z0-9][a-z0-9.-]{2,30}",
            prefix in "(/[a-z0-9_-]{1,10}){0,3}/?",
            dir in "(/|\\./)?[a-zA-Z0-9_.-][a-zA-Z0-9_. -]{0,19}(/[a-zA-Z0-9_.-]{1,10}){0,3}",
            scheme in "[a-z][a-z0-9+]{0,8}",
        ) {
            let s3 = ExportLocation::parse(&format!("s3://{bucket}{prefix}")).unwrap();
            let want = prefix.trim_matches('/').to_owned();
            proptest::prop_assert_eq!(&s3, &ExportLocation::S3 { bucket: bucket.clone(), prefix: want });
            // Displayed, it parses back to itself.
            proptest::prop_assert_eq!(ExportLocation::parse(&s3.to_string()).unwrap(), s3);
            let local = ExportLocation::parse(&dir).unwrap();
            proptest::prop_assert_eq!(local, ExportLocation::Local(dir.trim().into()));
            let other = ExportLocation::parse(&format!("{scheme}://{bucket}{prefix}"));
            if scheme == "s3" || scheme == "file" {
                proptest::prop_assert!(other.is_ok());
            } else {
                let err = other.unwrap_err();
                proptest::prop_assert!(err.contains(&scheme) && !err.contains('\n'), "{}", err);
            }
        }
    }

    #[test]
    fn an_s3_location_needs_a_bucket_and_an_empty_one_is_refused() {
        assert!(ExportLocation::parse("s3://").is_err());
        assert!(ExportLocation::parse("s3:///x").is_err());
        assert!(ExportLocation::parse("  ").is_err());
        assert_eq!(
            ExportLocation::parse("file:///var/exports").unwrap(),
            ExportLocation::Local("/var/exports".into())
        );
    }
}
