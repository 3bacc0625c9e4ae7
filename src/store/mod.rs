//! Persistence: one interface, one implementation for both databases.
//!
//! Handlers only ever see `dyn Store`. Every method takes the caller's
//! [`Scope`] where entries are concerned, so no query can forget the tenant or
//! the end user. A write is one SQL statement where it can be (the database,
//! not the application, arbitrates concurrent requests), else one
//! transaction (`transaction!`).
//!
//! The methods are written once, in backend.rs, over a `Backend`
//! (pools, dialect, the steps that truly differ); their SQL is in sql.rs;
//! postgres.rs and sqlite.rs hold only what is their own.

/// Runs one statement on a connection of `$pool` and gives the connection
/// back: `run!(self.pool, |conn| query.fetch_one(conn))?`.
macro_rules! run {
    ($pool:expr, |$conn:ident| $statement:expr) => {{
        let mut $conn = $pool.acquire().await?;
        let result = {
            let $conn = &mut *$conn;
            $statement.await
        };
        $conn.settle(result)
    }};
}

/// Runs `$body` in a transaction on a connection of `$pool`, commits, and
/// gives the connection back: the one way a write that touches several rows
/// or tables is done. `$body` sees `$tx: &mut Transaction` and may return
/// early with `?` (the transaction is then rolled back). `transaction!(self.pool, |tx| { ...; value })?`.
macro_rules! transaction {
    ($pool:expr, |$tx:ident| $body:block) => {{
        let mut conn = $pool.acquire().await?;
        let result: sqlx::Result<_> = async {
            let mut transaction = conn.begin().await?;
            let outcome: sqlx::Result<_> = async {
                let $tx = &mut transaction;
                Ok($body)
            }
            .await;
            match outcome {
                Ok(value) => {
                    transaction.commit().await?;
                    Ok(value)
                }
                Err(err) => {
                    // Rolled back here rather than on drop, so that the
                    // connection is clean when it goes back to the pool.
                    transaction.rollback().await?;
                    Err(err)
                }
            }
        }
        .await;
        conn.settle(result)
    }};
}

mod backend;
mod changes;
mod export;
mod pool;
mod postgres;
mod sql;
mod sqlite;
mod webhooks;
mod writes;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::feedback::stats::{Counts, DayCounts, StatsFilter};
use crate::feedback::{
    ChangesRequest, Description, EndUserId, Feedback, FeedbackChanges, FeedbackFilter, FeedbackKey,
    ModelName, NewFeedback, OutputId, OutputKind, PageRequest, Position, Rating, Scope, TenantId,
};

pub use changes::ChangesPage;
pub use export::{
    ExportJob, ExportReader, ExportRow, ExportStore, JobEnd, JobFiles, JobProgress, JobStart,
    JobStatus,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use webhooks::{
    AttemptOutcome, ClaimedDelivery, DeliveredChange, NewWebhookEndpoint, WebhookAttempt,
    WebhookDelivery, WebhookEndpoint,
};
pub use writes::{
    Actor, Deletion, Erasure, Expected, IdempotentCreate, IdempotentRequest, KeptResponse, Revision,
};

/// What can go wrong in a store, in storage terms.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now (pool timeout, I/O, restart).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A row in the database breaks a domain rule (should never happen).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Other(err)
        }
    }
}

/// Errors that mean "the database is not there right now", as opposed to
/// "this statement is wrong".
fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // PostgreSQL: 08 connection exception, 57P0x shutdown / cannot
            // connect now, 53 insufficient resources. SQLite: 5 busy, 6 locked.
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "5"
                || code == "6"
        }),
        _ => false,
    }
}

/// A store-level result.
pub type StoreResult<T> = Result<T, StoreError>;

/// A new API key as it is persisted: only the hash of the secret.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Public identifier, used to revoke the key.
    pub id: String,
    /// The tenant the key acts for; `None` for an admin key.
    pub tenant: Option<TenantId>,
    /// A label for humans.
    pub name: Option<String>,
    /// The first characters of the secret, to recognise it in listings.
    pub prefix: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
}

/// A key that authenticates: its hash and what it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveApiKey {
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Public identifier.
    pub id: String,
    /// The tenant it acts for; `None` for an admin key.
    pub tenant: Option<TenantId>,
}

/// A stored tenant column: `None` for an admin key.
fn parse_key_tenant(tenant: Option<String>) -> StoreResult<Option<TenantId>> {
    tenant
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// `(secret_hash, id, tenant)` rows as both backends read them.
fn into_active_keys(rows: Vec<(String, String, Option<String>)>) -> StoreResult<Vec<ActiveApiKey>> {
    rows.into_iter()
        .map(|(secret_hash, id, tenant)| {
            Ok(ActiveApiKey {
                secret_hash,
                id,
                tenant: parse_key_tenant(tenant)?,
            })
        })
        .collect()
}

/// An API key as listed (never the secret, never the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public identifier.
    pub id: String,
    /// The tenant the key acts for; `None` for an admin key.
    pub tenant: Option<TenantId>,
    /// A label for humans.
    pub name: Option<String>,
    /// The first characters of the secret.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// Whether the key no longer authenticates.
    #[must_use]
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// The state of one connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Which pool (`main`; SQLite: `writer` and `readers`).
    pub pool: &'static str,
    /// Connections open now.
    pub open: u32,
    /// Of those, idle.
    pub idle: u32,
    /// The most it may open.
    pub max: u32,
}

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insertion {
    /// The entry was stored, as it now reads.
    Inserted(Feedback),
    /// An entry with that `(tenant, kind, id)` existed: nothing was changed.
    AlreadyExists,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The entry was changed, as it now reads.
    Updated(Feedback),
    /// No entry is visible in scope under that key: nothing was changed.
    NotFound,
    /// The entry exists but not at a revision the caller named (`If-Match`):
    /// nothing was changed.
    PreconditionFailed,
}

/// What storing a new API key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyInsertion {
    /// The key was stored.
    Inserted,
    /// A key with that id or that secret existed: nothing was changed.
    AlreadyExists,
}

/// What revoking a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The key was active and is now revoked.
    Revoked,
    /// The key had been revoked before.
    AlreadyRevoked,
    /// There is no key with that id.
    NotFound,
}

/// The persistence interface, in domain words: the entries, the keys, and
/// the database as a whole.
#[async_trait]
pub trait Store:
    FeedbackStore + KeyStore + ExportStore + WebhookStore + Send + Sync + 'static
{
    /// Answers when the database does.
    async fn ping(&self) -> StoreResult<()>;

    /// Connection counts of each pool, for metrics.
    fn pool_stats(&self) -> Vec<PoolStats>;

    /// Closes every connection (checkpointing where the database has one).
    async fn close(&self);
}

/// Feedback entries, always within a caller's [`Scope`].
#[async_trait]
pub trait FeedbackStore: Send + Sync {
    /// Creates an entry, unless `(tenant, kind, id)` already exists, and
    /// records its revision in the same transaction.
    async fn insert_feedback(
        &self,
        scope: &Scope,
        new: &NewFeedback,
        actor: &Actor,
    ) -> StoreResult<Insertion>;

    /// A create with an `Idempotency-Key`: the kept outcome, or the create
    /// and its outcome (`render`ed) kept in the same transaction.
    async fn insert_feedback_idempotent(
        &self,
        scope: &Scope,
        new: &NewFeedback,
        actor: &Actor,
        request: &IdempotentRequest<'_>,
        render: &(dyn for<'e> Fn(&'e Insertion) -> KeptResponse + Send + Sync),
    ) -> StoreResult<IdempotentCreate>;

    /// Applies the changes atomically to the entry visible in scope, if it
    /// is at one of the `expected` revisions, and records the revision.
    async fn update_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
        changes: &FeedbackChanges,
        actor: &Actor,
        expected: Expected<'_>,
    ) -> StoreResult<Update>;

    /// Deletes the entry visible in scope, if it is at one of the `expected`
    /// revisions, and records a `deleted` revision, in one transaction.
    async fn delete_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
        actor: &Actor,
        expected: Expected<'_>,
    ) -> StoreResult<Deletion>;

    /// The history of the entry in scope (also once deleted), oldest first,
    /// after revision `after`, at most `limit`; `None`: no such history.
    async fn list_revisions(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
        after: i64,
        limit: u32,
    ) -> StoreResult<Option<Vec<Revision>>>;

    /// Erases everything the tenant holds about one end user (entries,
    /// revisions, kept outcomes), in one transaction: every table holding an
    /// end user's text joins this one method.
    async fn erase_end_user(&self, tenant: &TenantId, end_user: &EndUserId)
    -> StoreResult<Erasure>;

    /// Forgets at most `batch` idempotent outcomes kept before `before`.
    async fn purge_idempotency_keys(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<u64>;

    /// Deletes at most `batch` entries created before `before`, with their
    /// histories (and histories of deleted entries recorded before it), in
    /// one transaction; `None`: another replica is doing it now.
    async fn delete_expired_feedback(
        &self,
        before: DateTime<Utc>,
        batch: u32,
    ) -> StoreResult<Option<u64>>;

    /// One page of the changes feed in scope, oldest first: only changes
    /// behind which no write still in flight can land (so a reader that
    /// follows the cursors sees each change once, in commit order).
    async fn list_changes(
        &self,
        scope: &Scope,
        request: &ChangesRequest,
    ) -> StoreResult<ChangesPage>;

    /// Purges at most `batch` changes that occurred before `before`, in one
    /// transaction; `None`: another replica is doing it now.
    async fn purge_changes(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<Option<u64>>;

    /// The entry visible in scope under that key.
    async fn find_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
    ) -> StoreResult<Option<Feedback>>;

    /// Where the entry visible in scope under that key stands in listings.
    async fn find_position(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
    ) -> StoreResult<Option<Position>>;

    /// One page of entries in scope, in the page's order, each with its
    /// position (the cursor of the next page).
    async fn list_feedback(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> StoreResult<Vec<(Position, Feedback)>>;

    /// How many entries match, counting no further than `at_most`, among
    /// those at or before `until`.
    async fn count_feedback(
        &self,
        scope: &Scope,
        filter: FeedbackFilter,
        until: Position,
        at_most: u64,
    ) -> StoreResult<u64>;

    /// The entries visible in scope among `ids`, in no particular order, in
    /// one query.
    async fn find_feedback_batch(
        &self,
        scope: &Scope,
        kind: OutputKind,
        ids: &[OutputId],
    ) -> StoreResult<Vec<Feedback>>;

    /// The counts of the entries in scope that match, per model and UTC day:
    /// whole days from the counters (tenant-wide scope), the rest from the
    /// entries, so the figures are exact.
    async fn feedback_stats(&self, scope: &Scope, filter: &StatsFilter) -> StoreResult<DayCounts>;
}

/// API keys (hashes only).
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key, unless a key with that id or hash already exists.
    async fn insert_api_key(&self, key: &NewApiKey) -> StoreResult<KeyInsertion>;

    /// The key whose secret hashes to `secret_hash`.
    async fn find_api_key(&self, secret_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;

    /// Every key that is not revoked, with its hash, in one query: what
    /// authentication checks bearer secrets against in memory.
    async fn active_api_keys(&self) -> StoreResult<Vec<ActiveApiKey>>;

    /// All keys, or those of one tenant, oldest first.
    async fn list_api_keys(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>>;

    /// Revokes the key with that id.
    async fn revoke_api_key(&self, id: &str) -> StoreResult<Revocation>;

    /// Key `id` (its public id), revoked or not.
    async fn find_api_key_by_id(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>>;

    /// The secret that signs feedback tokens: the stored one, or `candidate`
    /// once stored, when there was none. Concurrent first calls (replicas
    /// starting together) all get the one that was stored first.
    async fn token_signing_secret(&self, candidate: &str) -> StoreResult<String>;
}

/// Webhook endpoints and their deliveries (issue 14). Deliveries are
/// enqueued by the writes themselves, in the change's transaction.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a new endpoint; returns it as listed.
    async fn insert_webhook_endpoint(
        &self,
        endpoint: &NewWebhookEndpoint,
    ) -> StoreResult<WebhookEndpoint>;

    /// The endpoints of one tenant, or all (the CLI), oldest first.
    async fn list_webhook_endpoints(
        &self,
        tenant: Option<&TenantId>,
    ) -> StoreResult<Vec<WebhookEndpoint>>;

    /// Removes an endpoint of one tenant (any tenant: the CLI) with its
    /// deliveries; `false`: there was none.
    async fn delete_webhook_endpoint(
        &self,
        tenant: Option<&TenantId>,
        id: &str,
    ) -> StoreResult<bool>;

    /// The newest `limit` deliveries of an endpoint of `tenant`, newest
    /// first; `None`: no such endpoint.
    async fn list_webhook_deliveries(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        limit: u32,
    ) -> StoreResult<Option<Vec<WebhookDelivery>>>;

    /// Claims at most `batch` deliveries due at `now` (pending, not leased
    /// or with a lease that ran out) until `lease_until`, under
    /// `lease_token`; on PostgreSQL concurrent claims skip each other's rows.
    async fn claim_webhook_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        lease_token: &str,
        batch: u32,
    ) -> StoreResult<Vec<ClaimedDelivery>>;

    /// Records how an attempt ended and releases its claim (nothing, if the
    /// claim ran out and was taken over); a `410` disables the endpoint.
    async fn record_webhook_attempt(&self, attempt: &WebhookAttempt<'_>) -> StoreResult<()>;

    /// Deliveries still pending.
    async fn webhook_queue_depth(&self) -> StoreResult<u64>;

    /// Completes when deliveries may have been enqueued (PostgreSQL: a
    /// commit on any replica, through `LISTEN`; SQLite: a write of this
    /// process), or after `timeout`; `false`: nothing is due (PostgreSQL
    /// asks on its `LISTEN` session, so an idle worker holds no pooled
    /// connection), no need to claim.
    async fn wait_for_deliveries(&self, timeout: Duration) -> bool;
}

/// Which database, as the store needs it.
#[derive(Clone)]
pub enum Database {
    /// A PostgreSQL connection URL.
    Postgres(String),
    /// The embedded store's file.
    Sqlite(PathBuf),
}

/// How to connect: the database and the pool's limits.
#[derive(Clone)]
pub struct StoreOptions {
    /// Which database.
    pub database: Database,
    /// The database URL without its password, for messages.
    pub redacted_url: String,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503.
    pub acquire_timeout: Duration,
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL itself: it may carry a password.
        f.debug_struct("StoreOptions")
            .field("url", &self.redacted_url)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish_non_exhaustive()
    }
}

/// Opens the store the URL names and applies pending migrations.
pub async fn connect(options: &StoreOptions) -> Result<Arc<dyn Store>, ConnectError> {
    let store: Arc<dyn Store> = match &options.database {
        Database::Postgres(url) => Arc::new(PostgresStore::connect(url, options).await?),
        Database::Sqlite(path) => Arc::new(SqliteStore::connect(path, options).await?),
    };
    Ok(store)
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The database could not be reached or opened.
    #[error("cannot connect to the database at {url}: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The migrations failed.
    #[error("cannot migrate the database at {url}: {source}")]
    Migrate {
        /// The URL, without its password.
        url: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The SQLite file's folder could not be created.
    #[error("cannot create the folder for {url}: {source}")]
    CreateDir {
        /// The URL.
        url: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The position a `find_position` row stands for.
fn into_position(row: Option<(Timestamp, i64)>) -> Option<Position> {
    row.map(|(created_at, seq)| Position {
        created_at: created_at.0,
        seq,
    })
}

/// Entries are read in chunks of at most this many rows per query.
pub const MAX_PAGE_ROWS: u32 = 1000;

/// A point in time as a column holds it: `timestamptz` in PostgreSQL,
/// integer milliseconds since the epoch in SQLite. Each backend file decodes
/// its own, so that the row types below are derived once for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timestamp(DateTime<Utc>);

/// A feedback row as both backends read it, before it is checked.
#[derive(Debug, sqlx::FromRow)]
struct FeedbackRow {
    seq: i64,
    output_id: String,
    kind: String,
    rating: Option<String>,
    description: Option<String>,
    model: Option<String>,
    end_user: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
    revision: i64,
}

/// An entry removed by retention, with its tenant.
#[derive(Debug, sqlx::FromRow)]
struct ExpiredRow {
    tenant: String,
    #[sqlx(flatten)]
    entry: FeedbackRow,
}

impl FeedbackRow {
    fn position(&self) -> Position {
        Position {
            created_at: self.created_at.0,
            seq: self.seq,
        }
    }
}

/// Rows of a listing, with the position of each.
fn into_page(rows: Vec<FeedbackRow>) -> StoreResult<Vec<(Position, Feedback)>> {
    rows.into_iter()
        .map(|row| Ok((row.position(), Feedback::try_from(row)?)))
        .collect()
}

impl TryFrom<FeedbackRow> for Feedback {
    type Error = StoreError;

    fn try_from(row: FeedbackRow) -> Result<Self, Self::Error> {
        let corrupt = |err: crate::feedback::FieldError| StoreError::Corrupt(err.to_string());
        Ok(Self {
            kind: OutputKind::parse(&row.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("kind {:?}", row.kind)))?,
            id: OutputId::parse(row.output_id).map_err(corrupt)?,
            rating: row
                .rating
                .as_deref()
                .map(Rating::parse)
                .transpose()
                .map_err(corrupt)?,
            description: row
                .description
                .map(Description::parse)
                .transpose()
                .map_err(corrupt)?,
            model: row
                .model
                .map(ModelName::parse)
                .transpose()
                .map_err(corrupt)?,
            end_user: row
                .end_user
                .map(EndUserId::parse)
                .transpose()
                .map_err(corrupt)?,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
            revision: row.revision,
        })
    }
}

/// The SQL parameters of a partial update: for each field, whether to write
/// it and the value to write (`NULL` clears).
struct ChangeParams<'a> {
    set_rating: bool,
    rating: Option<&'static str>,
    set_description: bool,
    description: Option<&'a str>,
}

impl<'a> From<&'a FeedbackChanges> for ChangeParams<'a> {
    fn from(changes: &'a FeedbackChanges) -> Self {
        let rating = changes.rating.as_change();
        let description = changes.description.as_change();
        Self {
            set_rating: rating.is_some(),
            rating: rating.flatten().map(|r| r.as_str()),
            set_description: description.is_some(),
            description: description.flatten().map(Description::as_str),
        }
    }
}

/// Counts of one model and day, as both the counters and the entries' counts read.
#[derive(Debug, sqlx::FromRow)]
struct CountsRow {
    model: String,
    day: i64,
    total: i64,
    thumbs_up: i64,
    thumbs_down: i64,
    unrated: i64,
    with_description: i64,
}

/// Adds rows of counts into `into`, per `(model, day)`.
fn add_counts(into: &mut DayCounts, rows: Vec<CountsRow>) {
    for row in rows {
        into.entry((row.model, row.day)).or_default().add(&Counts {
            total: row.total,
            thumbs_up: row.thumbs_up,
            thumbs_down: row.thumbs_down,
            unrated: row.unrated,
            with_description: row.with_description,
        });
    }
}

/// An API key row as both backends read it.
#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: String,
    tenant: Option<String>,
    name: Option<String>,
    prefix: String,
    created_at: Timestamp,
    revoked_at: Option<Timestamp>,
}

impl TryFrom<ApiKeyRow> for ApiKeyRecord {
    type Error = StoreError;

    fn try_from(row: ApiKeyRow) -> Result<Self, Self::Error> {
        Ok(Self {
            id: row.id,
            tenant: parse_key_tenant(row.tenant)?,
            name: row.name,
            prefix: row.prefix,
            created_at: row.created_at.0,
            revoked_at: row.revoked_at.map(|at| at.0),
        })
    }
}
