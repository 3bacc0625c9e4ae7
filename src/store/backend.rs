//! The one implementation of the store traits, over any [`Backend`].
//!
//! A backend brings its pools, its dialect ([`Dialect`]) and the few steps
//! that truly differ; the binds, the row decoding and the outcomes are
//! written here once and monomorphised for each database, so each backend
//! runs exactly the code it would run if it were written out for it.

use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::export::{
    ExportJob, ExportJobRow, ExportRow, ExportRowRow, ExportStore, JobEnd, JobProgress, JobStart,
    JobStatus, STALE_JOB_ERROR,
};
use super::pool::Pool;
use super::sql::{self, Dialect, scoped_query};
use super::{
    ActiveApiKey, ApiKeyRecord, ApiKeyRow, ChangeParams, FeedbackRow, FeedbackStore, Insertion,
    KeyInsertion, KeyStore, NewApiKey, PoolStats, Revocation, Store, StoreError, StoreResult,
    Timestamp, Update, into_active_keys, into_page, into_position,
};
use crate::feedback::{
    Description, EndUserId, Feedback, FeedbackChanges, FeedbackFilter, FeedbackKey, ModelName,
    NewFeedback, OutputId, OutputKind, PageRequest, Position, Rating, Scope, SortOrder, TenantId,
};

/// What one database adds to the shared implementation.
pub(super) trait Backend: Send + Sync + 'static {
    /// The sqlx database, with its dialect.
    type Database: Dialect<Connection = Self::Connection>;
    /// Its connection type.
    type Connection: sqlx::Connection<Database = Self::Database> + 'static;
    /// The output ids of a batch lookup as `FIND_FEEDBACK_BATCH` binds `$3`.
    type OutputIds<'a>: sqlx::Encode<'a, Self::Database> + sqlx::Type<Self::Database> + Send + 'a;

    /// Whether a write's `returning` rows are read to the end (SQLite, see
    /// sqlite.rs) rather than up to the first.
    const READS_WRITES_TO_END: bool;

    /// Where reads run.
    fn readers(&self) -> &Pool<Self::Connection>;

    /// Where writes run.
    fn writer(&self) -> &Pool<Self::Connection>;

    /// `ids` as one parameter.
    fn output_ids(ids: &[OutputId]) -> StoreResult<Self::OutputIds<'_>>;

    /// How many rows a write changed.
    fn rows_affected(result: &<Self::Database as sqlx::Database>::QueryResult) -> u64;

    /// The time before which an ascending page that asks for settled entries
    /// shows them (read before the page's statement); `None`: every entry
    /// visible is settled.
    fn settled_horizon(&self) -> impl Future<Output = StoreResult<Option<DateTime<Utc>>>> + Send;

    /// Connection counts of each pool.
    fn pool_stats(&self) -> Vec<PoolStats>;

    /// Closes every connection (checkpointing where the database has one).
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Implements store traits for every [`Backend`], under the one set of
/// bounds that sqlx needs to run the shared statements on its database.
macro_rules! for_every_backend {
    ($(impl $store:ident $methods:tt)*) => {$(
        #[async_trait]
        impl<B> $store for B
        where
            B: Backend,
            for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B::Database>,
            for<'q> <B::Database as sqlx::Database>::Arguments<'q>:
                sqlx::IntoArguments<'q, B::Database>,
            for<'q> &'q str: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'q> Option<&'q str>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'q> String: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'q> bool: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'q> i64: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'q> Timestamp: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'r> FeedbackRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> ApiKeyRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> (Timestamp, i64): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> (i64,): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> (String,): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> (String, String, Option<String>):
                sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'q> Option<i64>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'r> ExportJobRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> ExportRowRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
        $methods
    )*};
}

/// Runs a write that returns at most one entry on the writer.
async fn write_one<'q, B>(
    backend: &B,
    write: sqlx::query::QueryAs<
        'q,
        B::Database,
        FeedbackRow,
        <B::Database as sqlx::Database>::Arguments<'q>,
    >,
) -> StoreResult<Option<Feedback>>
where
    B: Backend,
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B::Database>,
    <B::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, B::Database>,
    for<'r> FeedbackRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
{
    let row = if B::READS_WRITES_TO_END {
        run!(backend.writer(), |conn| write.fetch_all(conn))?.pop()
    } else {
        run!(backend.writer(), |conn| write.fetch_optional(conn))?
    };
    row.map(Feedback::try_from).transpose()
}

for_every_backend! {
    impl FeedbackStore {
        async fn insert_feedback(&self, scope: &Scope, new: &NewFeedback) -> StoreResult<Insertion> {
            // One statement: of concurrent creates of one key exactly one
            // inserts, the others see the conflict and get no row back.
            let write = sqlx::query_as(<B::Database as Dialect>::INSERT_FEEDBACK)
                .bind(scope.tenant.as_str())
                .bind(new.key.kind.as_str())
                .bind(new.key.id.as_str())
                .bind(scope.end_user.as_ref().map(EndUserId::as_str))
                .bind(new.rating.map(Rating::as_str))
                .bind(new.description.as_ref().map(Description::as_str))
                .bind(new.model.as_ref().map(ModelName::as_str));
            let row = write_one(self, write).await?;
            Ok(row.map_or(Insertion::AlreadyExists, Insertion::Inserted))
        }

        async fn update_feedback(
            &self,
            scope: &Scope,
            key: &FeedbackKey,
            changes: &FeedbackChanges,
        ) -> StoreResult<Update> {
            // One statement, each column written only when its field was
            // present: the row lock makes concurrent updates of different
            // fields compose.
            let params = ChangeParams::from(changes);
            let write = scoped_query(<B::Database as Dialect>::UPDATE_FEEDBACK, scope, key)
                .bind(params.set_rating)
                .bind(params.rating)
                .bind(params.set_description)
                .bind(params.description);
            let row = write_one(self, write).await?;
            Ok(row.map_or(Update::NotFound, Update::Updated))
        }

        async fn find_feedback(
            &self,
            scope: &Scope,
            key: &FeedbackKey,
        ) -> StoreResult<Option<Feedback>> {
            let query = scoped_query::<_, FeedbackRow>(sql::FIND_FEEDBACK, scope, key);
            let row = run!(self.readers(), |conn| query.fetch_optional(conn))?;
            row.map(Feedback::try_from).transpose()
        }

        async fn find_position(
            &self,
            scope: &Scope,
            key: &FeedbackKey,
        ) -> StoreResult<Option<Position>> {
            let query = scoped_query(sql::FIND_POSITION, scope, key);
            Ok(into_position(
                run!(self.readers(), |conn| query.fetch_optional(conn))?,
            ))
        }

        async fn list_feedback(
            &self,
            scope: &Scope,
            page: &PageRequest,
        ) -> StoreResult<Vec<(Position, Feedback)>> {
            // Read before the page's own statement takes its snapshot.
            let horizon = if page.settled_only && page.order == SortOrder::Asc {
                self.settled_horizon().await?
            } else {
                None
            };
            let (sql, arguments) = sql::Statement::list(scope, page, horizon).into_parts()?;
            let query = sqlx::query_as_with::<_, FeedbackRow, _>(&sql, arguments);
            let rows = run!(self.readers(), |conn| query.fetch_all(conn))?;
            into_page(rows)
        }

        async fn count_feedback(
            &self,
            scope: &Scope,
            filter: FeedbackFilter,
            until: Position,
            at_most: u64,
        ) -> StoreResult<u64> {
            let (sql, arguments) = sql::Statement::count(scope, filter, until, at_most).into_parts()?;
            let query = sqlx::query_as_with::<_, (i64,), _>(&sql, arguments);
            let (count,) = run!(self.readers(), |conn| query.fetch_one(conn))?;
            Ok(u64::try_from(count).unwrap_or_default())
        }

        async fn find_feedback_batch(
            &self,
            scope: &Scope,
            kind: OutputKind,
            ids: &[OutputId],
        ) -> StoreResult<Vec<Feedback>> {
            let ids = B::output_ids(ids)?;
            let query =
                sqlx::query_as::<_, FeedbackRow>(<B::Database as Dialect>::FIND_FEEDBACK_BATCH)
                    .bind(scope.tenant.as_str())
                    .bind(kind.as_str())
                    .bind(ids)
                    .bind(scope.end_user.as_ref().map(EndUserId::as_str));
            let rows = run!(self.readers(), |conn| query.fetch_all(conn))?;
            rows.into_iter().map(Feedback::try_from).collect()
        }
    }

    impl KeyStore {
        async fn insert_api_key(&self, key: &NewApiKey) -> StoreResult<KeyInsertion> {
            let write = sqlx::query(<B::Database as Dialect>::INSERT_API_KEY)
                .bind(&key.id)
                .bind(key.tenant.as_ref().map(TenantId::as_str))
                .bind(key.name.as_deref())
                .bind(&key.prefix)
                .bind(&key.secret_hash);
            let result = run!(self.writer(), |conn| write.execute(conn))?;
            Ok(if B::rows_affected(&result) == 1 {
                KeyInsertion::Inserted
            } else {
                KeyInsertion::AlreadyExists
            })
        }

        async fn find_api_key(&self, secret_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
            let query = sqlx::query_as::<_, ApiKeyRow>(sql::FIND_API_KEY).bind(secret_hash);
            let row = run!(self.readers(), |conn| query.fetch_optional(conn))?;
            row.map(ApiKeyRecord::try_from).transpose()
        }

        async fn active_api_keys(&self) -> StoreResult<Vec<ActiveApiKey>> {
            let query = sqlx::query_as(sql::ACTIVE_API_KEYS);
            into_active_keys(run!(self.readers(), |conn| query.fetch_all(conn))?)
        }

        async fn list_api_keys(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>> {
            let query =
                sqlx::query_as::<_, ApiKeyRow>(sql::LIST_API_KEYS).bind(tenant.map(TenantId::as_str));
            let rows = run!(self.readers(), |conn| query.fetch_all(conn))?;
            rows.into_iter().map(ApiKeyRecord::try_from).collect()
        }

        async fn revoke_api_key(&self, id: &str) -> StoreResult<Revocation> {
            // Two statements, one transaction: the update tells `Revoked`
            // apart, the count the other two.
            let outcome = transaction!(self.writer(), |tx| {
                let revoked = sqlx::query(<B::Database as Dialect>::REVOKE_API_KEY)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                if B::rows_affected(&revoked) == 1 {
                    Revocation::Revoked
                } else {
                    let (keys,): (i64,) = sqlx::query_as(sql::API_KEY_EXISTS)
                        .bind(id)
                        .fetch_one(&mut **tx)
                        .await?;
                    if keys == 0 {
                        Revocation::NotFound
                    } else {
                        Revocation::AlreadyRevoked
                    }
                }
            })?;
            Ok(outcome)
        }

        async fn find_api_key_by_id(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
            let query = sqlx::query_as::<_, ApiKeyRow>(sql::FIND_API_KEY_BY_ID).bind(id);
            let row = run!(self.readers(), |conn| query.fetch_optional(conn))?;
            row.map(ApiKeyRecord::try_from).transpose()
        }

        async fn token_signing_secret(&self, candidate: &str) -> StoreResult<String> {
            // Insert-if-absent, then read: both on the writer, so the read
            // sees the row whichever replica's insert won.
            let write = sqlx::query(sql::INSERT_TOKEN_SIGNING_SECRET).bind(candidate);
            run!(self.writer(), |conn| write.execute(conn))?;
            let query = sqlx::query_as::<_, (String,)>(sql::TOKEN_SIGNING_SECRET);
            let (secret,) = run!(self.writer(), |conn| query.fetch_one(conn))?;
            Ok(secret)
        }
    }

    impl ExportStore {
        async fn start_export_job(
            &self,
            id: &str,
            owner: &str,
            now: DateTime<Utc>,
            stale_before: DateTime<Utc>,
        ) -> StoreResult<JobStart> {
            // A job that conflicted may have ended before the select below
            // saw it: then the insert is tried again.
            for _ in 0..3 {
            let outcome = transaction!(self.writer(), |tx| {
                sqlx::query(sql::FAIL_STALE_EXPORT_JOBS)
                    .bind(STALE_JOB_ERROR)
                    .bind(Timestamp(now))
                    .bind(Timestamp(stale_before))
                    .execute(&mut **tx)
                    .await?;
                let inserted = sqlx::query(sql::INSERT_EXPORT_JOB)
                    .bind(id)
                    .bind(owner)
                    .bind(Timestamp(now))
                    .execute(&mut **tx)
                    .await?;
                let started = B::rows_affected(&inserted) == 1;
                let running: Option<ExportJobRow> = sqlx::query_as(sql::RUNNING_EXPORT_JOB)
                    .fetch_optional(&mut **tx)
                    .await?;
                (started, running)
            })?;
            if let (started, Some(running)) = outcome {
                let job = ExportJob::try_from(running)?;
                return Ok(if started {
                    JobStart::Started(job)
                } else {
                    JobStart::AlreadyRunning(job)
                });
            }
            }
            Err(StoreError::Other(sqlx::Error::Protocol(
                "export jobs kept ending while one was being started".to_owned(),
            )))
        }

        async fn heartbeat_export_job(
            &self,
            id: &str,
            progress: &JobProgress,
            now: DateTime<Utc>,
        ) -> StoreResult<bool> {
            let write = sqlx::query(sql::HEARTBEAT_EXPORT_JOB)
                .bind(id)
                .bind(Timestamp(now))
                .bind(progress.stage.as_str())
                .bind(progress.message.as_str())
                .bind(progress.completion_count)
                .bind(progress.response_count)
                .bind(progress.parquet_bytes);
            let result = run!(self.writer(), |conn| write.execute(conn))?;
            Ok(B::rows_affected(&result) == 1)
        }

        async fn finish_export_job(
            &self,
            id: &str,
            end: &JobEnd,
            now: DateTime<Utc>,
        ) -> StoreResult<()> {
            let (status, progress, files, duration_ms, error) = match end {
                JobEnd::Completed { progress, files, duration_ms } => {
                    (JobStatus::Completed, progress, Some(files), Some(*duration_ms), None)
                }
                JobEnd::Failed { progress, error } => {
                    (JobStatus::Failed, progress, None, None, Some(error.as_str()))
                }
            };
            let write = sqlx::query(sql::FINISH_EXPORT_JOB)
                .bind(id)
                .bind(status.as_str())
                .bind(Timestamp(now))
                .bind(progress.stage.as_str())
                .bind(progress.message.as_str())
                .bind(progress.completion_count)
                .bind(progress.response_count)
                .bind(progress.parquet_bytes)
                .bind(files.map(|f| f.output_path.as_str()))
                .bind(files.map(|f| f.completions_file.as_str()))
                .bind(files.map(|f| f.responses_file.as_str()))
                .bind(duration_ms)
                .bind(error);
            run!(self.writer(), |conn| write.execute(conn))?;
            Ok(())
        }

        async fn latest_export_job(
            &self,
            now: DateTime<Utc>,
            stale_before: DateTime<Utc>,
        ) -> StoreResult<Option<ExportJob>> {
            let write = sqlx::query(sql::FAIL_STALE_EXPORT_JOBS)
                .bind(STALE_JOB_ERROR)
                .bind(Timestamp(now))
                .bind(Timestamp(stale_before));
            run!(self.writer(), |conn| write.execute(conn))?;
            // On the writer: sees the row the statement above may have closed.
            let query = sqlx::query_as::<_, ExportJobRow>(sql::LATEST_EXPORT_JOB);
            let row = run!(self.writer(), |conn| query.fetch_optional(conn))?;
            row.map(ExportJob::try_from).transpose()
        }

        async fn max_feedback_seq(&self) -> StoreResult<i64> {
            let query = sqlx::query_as::<_, (i64,)>(sql::MAX_FEEDBACK_SEQ);
            let (seq,) = run!(self.readers(), |conn| query.fetch_one(conn))?;
            Ok(seq)
        }

        async fn export_rows(&self, after: i64, upto: i64, limit: i64) -> StoreResult<Vec<ExportRow>> {
            let query = sqlx::query_as::<_, ExportRowRow>(sql::EXPORT_ROWS)
                .bind(after)
                .bind(upto)
                .bind(limit);
            let rows = run!(self.readers(), |conn| query.fetch_all(conn))?;
            Ok(rows.into_iter().map(ExportRow::from).collect())
        }
    }

    impl Store {
        async fn ping(&self) -> StoreResult<()> {
            run!(self.readers(), |conn| sqlx::query(sql::PING).execute(conn))?;
            Ok(())
        }

        fn pool_stats(&self) -> Vec<PoolStats> {
            Backend::pool_stats(self)
        }

        async fn close(&self) {
            Backend::close(self).await;
        }
    }
}
