//! The embedded SQLite store: the default when no `DATABASE_URL` is set.
//!
//! SQLite allows one writer at a time. Rather than let connections fight over
//! the write lock (and surface `database is locked`), every write goes through
//! a pool of exactly one connection, so writers queue in the pool, bounded by
//! the acquire timeout; readers use their own pool and, in WAL mode, never
//! wait for the writer.
//!
//! Writes with `returning` are stepped until SQLite says they are done
//! (`fetch_all`). `fetch_optional` stops at the first row and resets the
//! statement: the write still commits, but SQLite runs its WAL
//! auto-checkpoint only from a step that finishes, so under a steady stream
//! of such writes the WAL grew without bound (gigabytes in a minute of load,
//! every write slower than the last) until shutdown.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteQueryResult, SqliteSynchronous, SqliteTypeInfo,
    SqliteValueRef,
};
use sqlx::{Sqlite, SqliteConnection};
use tokio::sync::watch;

use super::backend::Backend;
use super::pool::{Pool, PoolConfig};
use super::{ConnectError, PoolStats, StoreError, StoreOptions, StoreResult, Timestamp};
use crate::feedback::OutputId;

/// How long a connection waits for another process's write lock (the CLI
/// writing keys while the server runs) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Entries stored in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Pool<SqliteConnection>,
    readers: Pool<SqliteConnection>,
    /// Sees [`ENQUEUES`] move: the delivery worker's wake-up.
    webhooks_enqueued: Arc<tokio::sync::Mutex<watch::Receiver<u64>>>,
}

/// Counts writes of this process that enqueued webhook deliveries. Moved
/// inside the write's transaction: the worker's claim needs the one writer
/// connection, so it runs after the commit. Process-wide (a process may hold
/// several stores, as the test suite does): a store whose worker wakes for
/// another's write just finds nothing due.
static ENQUEUES: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

impl SqliteStore {
    /// Opens (creating if needed) the file and applies pending migrations.
    pub async fn connect(path: &Path, options: &StoreOptions) -> Result<Self, ConnectError> {
        let url = options.redacted_url.clone();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ConnectError::CreateDir {
                url: url.clone(),
                source,
            })?;
        }
        // WAL: readers never block the writer nor the writer readers.
        // synchronous=NORMAL: in WAL mode a commit survives a crash of the
        // process; only an OS crash or power loss may lose the last commits.
        let connect_options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Deleted rows are overwritten with zeros, so that an erased
            // description is gone from the file, not only unlinked.
            .pragma("secure_delete", "on");
        let connect_error = |source| ConnectError::Connect {
            url: url.clone(),
            source,
        };
        // Local connections do not die between uses: no ping before each one.
        let writer: Pool<SqliteConnection> = Pool::new(PoolConfig {
            connect: connect_options.clone(),
            max_connections: 1,
            acquire_timeout: options.acquire_timeout,
            ping_if_idle_for: None,
            // Takes the write lock at once: a deferred transaction that reads
            // first and writes later can fail with SQLITE_BUSY when another
            // process (the CLI) wrote in between, whatever the busy timeout.
            begin: Some("BEGIN IMMEDIATE"),
        });
        let mut conn = writer.acquire().await.map_err(connect_error)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut *conn)
            .await
            .map_err(|source| ConnectError::Migrate {
                url: url.clone(),
                source,
            })?;
        conn.release();
        // 1 MiB of page cache per reader (SQLite's default is 2 MiB): the OS
        // page cache holds the file anyway.
        let readers: Pool<SqliteConnection> = Pool::new(PoolConfig {
            connect: connect_options
                .read_only(true)
                .pragma("cache_size", "-1024"),
            max_connections: options.max_connections,
            acquire_timeout: options.acquire_timeout,
            ping_if_idle_for: None,
            begin: None,
        });
        // Opens one reader now, so that a file that cannot be read fails the
        // start rather than the first request.
        readers.acquire().await.map_err(connect_error)?.release();
        Ok(Self {
            writer,
            readers,
            webhooks_enqueued: Arc::new(tokio::sync::Mutex::new(ENQUEUES.subscribe())),
        })
    }
}

fn from_millis(millis: i64) -> sqlx::Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp {millis} out of range").into()))
}

impl sqlx::Type<Sqlite> for Timestamp {
    fn type_info() -> SqliteTypeInfo {
        <i64 as sqlx::Type<Sqlite>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, Sqlite> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as sqlx::Encode<'q, Sqlite>>::encode_by_ref(&self.0.timestamp_millis(), buf)
    }
}

impl<'r> sqlx::Decode<'r, Sqlite> for Timestamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let millis = <i64 as sqlx::Decode<'r, Sqlite>>::decode(value)?;
        Ok(Self(from_millis(millis)?))
    }
}

impl Backend for SqliteStore {
    type Database = Sqlite;
    type Connection = SqliteConnection;
    /// A JSON array: one statement for any number of ids.
    type OutputIds<'a> = String;

    fn readers(&self) -> &Pool<SqliteConnection> {
        &self.readers
    }

    /// The one writer connection: SQLite writes go nowhere else.
    fn writer(&self) -> &Pool<SqliteConnection> {
        &self.writer
    }

    fn output_ids(ids: &[OutputId]) -> StoreResult<String> {
        let ids: Vec<&str> = ids.iter().map(OutputId::as_str).collect();
        serde_json::to_string(&ids)
            .map_err(|err| StoreError::Corrupt(format!("cannot encode ids: {err}")))
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    /// Every entry a reader sees is settled: creates take their position
    /// under the write lock, in commit order.
    async fn settled_horizon(&self) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(None)
    }

    fn deliveries_enqueued() {
        ENQUEUES.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// After a timeout the worker claims anyway (retries fall due without
    /// a write): the claim is one statement on the local writer.
    async fn wait_for_deliveries(&self, timeout: Duration) -> bool {
        let mut enqueues = self.webhooks_enqueued.lock().await;
        let _ = tokio::time::timeout(timeout, enqueues.changed()).await;
        true
    }

    /// The WAL still holds the pages as they were before the erasure:
    /// folds it into the (zeroed) file and truncates it.
    async fn scrub(&self) -> StoreResult<()> {
        run!(self.writer, |conn| sqlx::query(
            "pragma wal_checkpoint(truncate)"
        )
        .execute(conn))?;
        Ok(())
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        vec![self.writer.stats("writer"), self.readers.stats("readers")]
    }

    async fn close(&self) {
        self.readers.close().await;
        // Fold the WAL back into the database file so that the file alone is
        // a complete copy after shutdown.
        let checkpoint: StoreResult<()> = async {
            run!(self.writer, |conn| sqlx::query(
                "pragma wal_checkpoint(truncate)"
            )
            .execute(conn))?;
            Ok(())
        }
        .await;
        if let Err(err) = checkpoint {
            tracing::warn!(error = %err, "could not checkpoint the SQLite WAL");
        }
        self.writer.close().await;
    }
}
