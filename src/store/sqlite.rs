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
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::query::QueryAs;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous, SqliteTypeInfo,
    SqliteValueRef,
};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::pool::{Pool, PoolConfig};
use super::{
    ActiveApiKey, ApiKeyRecord, ApiKeyRow, ChangeParams, ConnectError, FEEDBACK_COLUMNS,
    FeedbackRow, Insertion, NewApiKey, PoolStats, Revocation, Store, StoreError, StoreOptions,
    StoreResult, Timestamp, Update, count_query, into_active_keys, into_page, into_position,
    order_sql, push_list_conditions, scoped_query, sql,
};
use crate::feedback::{
    Description, EndUserId, Feedback, FeedbackChanges, FeedbackFilter, FeedbackKey, ModelName,
    NewFeedback, OutputId, OutputKind, PageRequest, Position, Rating, Scope, TenantId,
};

/// How long a connection waits for another process's write lock (the CLI
/// writing keys while the server runs) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Entries stored in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Pool<SqliteConnection>,
    readers: Pool<SqliteConnection>,
}

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
            .foreign_keys(true);
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
        Ok(Self { writer, readers })
    }
}

/// The store's clock: UTC, truncated to the millisecond that is stored.
fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
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

fn into_feedback(row: Option<FeedbackRow>) -> StoreResult<Option<Feedback>> {
    row.map(Feedback::try_from).transpose()
}

impl SqliteStore {
    /// Runs a write that returns at most one entry on the writer, stepped to
    /// completion (`fetch_all`, not `fetch_optional`: see the module
    /// documentation).
    async fn write_one<'q>(
        &self,
        write: QueryAs<'q, Sqlite, FeedbackRow, SqliteArguments<'q>>,
    ) -> StoreResult<Option<Feedback>> {
        let mut rows = run!(self.writer, |conn| write.fetch_all(conn))?;
        into_feedback(rows.pop())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_feedback(&self, scope: &Scope, new: &NewFeedback) -> StoreResult<Insertion> {
        // The position is taken inside the statement, which holds SQLite's
        // write lock from its first step to its commit: positions follow
        // commit order, so a reader (whose snapshot holds a prefix of the
        // commits) never sees an entry behind which another can still land.
        // created_at never goes back within a tenant's kind, even if the
        // clock does. (`where true`: SQLite's parser needs it before `on
        // conflict` in `insert ... select`.)
        const SQL: &str = concat!(
            "insert into feedback
                 (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
             select ?1, ?2, ?3, ?4, ?5, ?6, ?7, position.created_at, position.created_at
             from (select max(
                       cast(round(unixepoch('subsec') * 1000) as integer),
                       coalesce((select max(created_at) from feedback where tenant = ?1 and kind = ?2), 0)
                   ) as created_at) as position
             where true
             on conflict (tenant, kind, output_id) do nothing
             returning ",
            feedback_columns!()
        );
        self.write_one(
            sqlx::query_as(SQL)
                .bind(scope.tenant.as_str())
                .bind(new.key.kind.as_str())
                .bind(new.key.id.as_str())
                .bind(scope.end_user.as_ref().map(EndUserId::as_str))
                .bind(new.rating.map(Rating::as_str))
                .bind(new.description.as_ref().map(Description::as_str))
                .bind(new.model.as_ref().map(ModelName::as_str)),
        )
        .await
        .map(|row| row.map_or(Insertion::AlreadyExists, Insertion::Inserted))
    }

    async fn update_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
        changes: &FeedbackChanges,
    ) -> StoreResult<Update> {
        const SQL: &str = concat!(
            "update feedback set
                 rating = case when ?5 then ?6 else rating end,
                 description = case when ?7 then ?8 else description end,
                 updated_at = max(?9, updated_at)
             where tenant = ?1 and kind = ?2 and output_id = ?3
               and (?4 is null or end_user = ?4)
             returning ",
            feedback_columns!()
        );
        let params = ChangeParams::from(changes);
        self.write_one(
            sqlx::query_as(SQL)
                .bind(scope.tenant.as_str())
                .bind(key.kind.as_str())
                .bind(key.id.as_str())
                .bind(scope.end_user.as_ref().map(EndUserId::as_str))
                .bind(params.set_rating)
                .bind(params.rating)
                .bind(params.set_description)
                .bind(params.description)
                .bind(now_millis()),
        )
        .await
        .map(|row| row.map_or(Update::NotFound, Update::Updated))
    }

    async fn find_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
    ) -> StoreResult<Option<Feedback>> {
        let query = scoped_query::<_, FeedbackRow>(sql::FIND_FEEDBACK, scope, key);
        into_feedback(run!(self.readers, |conn| query.fetch_optional(conn))?)
    }

    async fn find_position(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
    ) -> StoreResult<Option<Position>> {
        let query = scoped_query(sql::FIND_POSITION, scope, key);
        Ok(into_position(
            run!(self.readers, |conn| query.fetch_optional(conn))?
        ))
    }

    async fn list_feedback(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> StoreResult<Vec<(Position, Feedback)>> {
        let (direction, beyond) = order_sql(page);
        let mut query = QueryBuilder::new(format!("select {FEEDBACK_COLUMNS} from feedback"));
        push_list_conditions(&mut query, scope, page.filter, page.until);
        if let Some(after) = page.after {
            query.push(format!(" and (created_at, seq) {beyond} ("));
            query.push_bind(Timestamp(after.created_at));
            query.push(", ");
            query.push_bind(after.seq);
            query.push(")");
        }
        query.push(format!(
            " order by created_at {direction}, seq {direction} limit "
        ));
        query.push_bind(i64::from(page.limit));
        let rows = run!(self.readers, |conn| query
            .build_query_as::<FeedbackRow>()
            .fetch_all(conn))?;
        into_page(rows)
    }

    async fn count_feedback(
        &self,
        scope: &Scope,
        filter: FeedbackFilter,
        until: Position,
        at_most: u64,
    ) -> StoreResult<u64> {
        let mut query = count_query(scope, filter, until, at_most);
        let (count,): (i64,) = run!(self.readers, |conn| query.build_query_as().fetch_one(conn))?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn find_feedback_batch(
        &self,
        scope: &Scope,
        kind: OutputKind,
        ids: &[OutputId],
    ) -> StoreResult<Vec<Feedback>> {
        // One statement for any number of ids: they travel as a JSON array.
        const SQL: &str = concat!(
            "select ",
            feedback_columns!(),
            " from feedback
             where tenant = ?1 and kind = ?2
               and output_id in (select value from json_each(?3))
               and (?4 is null or end_user = ?4)"
        );
        let ids: Vec<&str> = ids.iter().map(OutputId::as_str).collect();
        let ids = serde_json::to_string(&ids)
            .map_err(|err| StoreError::Corrupt(format!("cannot encode ids: {err}")))?;
        let rows = run!(self.readers, |conn| sqlx::query_as::<_, FeedbackRow>(SQL)
            .bind(scope.tenant.as_str())
            .bind(kind.as_str())
            .bind(ids)
            .bind(scope.end_user.as_ref().map(EndUserId::as_str))
            .fetch_all(conn))?;
        rows.into_iter().map(Feedback::try_from).collect()
    }

    async fn insert_api_key(&self, key: &NewApiKey) -> StoreResult<bool> {
        let result = run!(self.writer, |conn| sqlx::query(
            "insert into api_keys (id, tenant, name, prefix, secret_hash, created_at)
             values (?1, ?2, ?3, ?4, ?5, ?6)
             on conflict do nothing",
        )
        .bind(&key.id)
        .bind(key.tenant.as_str())
        .bind(key.name.as_deref())
        .bind(&key.prefix)
        .bind(&key.secret_hash)
        .bind(now_millis())
        .execute(conn))?;
        Ok(result.rows_affected() == 1)
    }

    async fn find_api_key(&self, secret_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = run!(self.readers, |conn| sqlx::query_as::<_, ApiKeyRow>(
            sql::FIND_API_KEY
        )
        .bind(secret_hash)
        .fetch_optional(conn))?;
        row.map(ApiKeyRecord::try_from).transpose()
    }

    async fn active_api_keys(&self) -> StoreResult<Vec<ActiveApiKey>> {
        let rows = run!(self.readers, |conn| sqlx::query_as(sql::ACTIVE_API_KEYS)
            .fetch_all(conn))?;
        into_active_keys(rows)
    }

    async fn list_api_keys(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>> {
        let rows = run!(self.readers, |conn| sqlx::query_as::<_, ApiKeyRow>(
            sql::LIST_API_KEYS
        )
        .bind(tenant.map(TenantId::as_str))
        .fetch_all(conn))?;
        rows.into_iter().map(ApiKeyRecord::try_from).collect()
    }

    async fn revoke_api_key(&self, id: &str) -> StoreResult<Revocation> {
        let outcome = transaction!(self.writer, |tx| {
            let previous: Option<(Option<i64>,)> =
                sqlx::query_as("select revoked_at from api_keys where id = ?1")
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?;
            match previous {
                None => Revocation::NotFound,
                Some((Some(_),)) => Revocation::AlreadyRevoked,
                Some((None,)) => {
                    sqlx::query("update api_keys set revoked_at = ?2 where id = ?1")
                        .bind(id)
                        .bind(now_millis())
                        .execute(&mut **tx)
                        .await?;
                    Revocation::Revoked
                }
            }
        })?;
        Ok(outcome)
    }

    async fn ping(&self) -> StoreResult<()> {
        run!(self.readers, |conn| sqlx::query("select 1").execute(conn))?;
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
