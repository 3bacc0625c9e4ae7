//! The one implementation of the store traits, over any [`Backend`].
//!
//! A backend brings its pools, its dialect ([`Dialect`]) and the few steps
//! that truly differ; the binds, the row decoding and the outcomes are
//! written here once and monomorphised for each database, so each backend
//! runs exactly the code it would run if it were written out for it.

use std::collections::BTreeMap;
use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::changes::{ChangeRow, ChangesPage, NewChange};
use super::export::{
    ExportJob, ExportJobRow, ExportReader, ExportRow, ExportRowRow, ExportStore, JobEnd,
    JobProgress, JobStart, JobStatus, STALE_JOB_ERROR,
};
use super::pool::Pool;
use super::sql::{self, ChangesDialect, Dialect, HistoryDialect, WebhookDialect, scoped_query};
use super::webhooks::{ClaimedRow, DeliveryRow, EndpointRow};
use super::writes::{KeptRow, RevisionRow};
use super::{
    ActiveApiKey, Actor, ApiKeyRecord, ApiKeyRow, ChangeParams, CountsRow, Deletion, Erasure,
    Expected, ExpiredRow, FeedbackRow, FeedbackStore, IdempotentCreate, IdempotentRequest,
    Insertion, KeptResponse, KeyInsertion, KeyStore, NewApiKey, PoolStats, Revision, Revocation,
    Store, StoreError, StoreResult, Timestamp, Update, add_counts, into_active_keys, into_page,
    into_position,
};
use super::{
    AttemptOutcome, ClaimedDelivery, NewWebhookEndpoint, WebhookAttempt, WebhookDelivery,
    WebhookEndpoint, WebhookStore,
};
use crate::feedback::stats::{Counts, DayCounts, RangePlan, StatsFilter, day_of_millis};
use crate::feedback::{
    Change, ChangeType, ChangesRequest, Description, EndUserId, Feedback, FeedbackChanges,
    FeedbackFilter, FeedbackKey, ModelName, NewFeedback, OutputId, OutputKind, PageRequest,
    Position, Rating, Scope, SortOrder, TenantId, entry_json,
};

/// What one database adds to the shared implementation.
pub(super) trait Backend: Send + Sync + 'static {
    /// The sqlx database, with its dialect.
    type Database: Dialect
        + HistoryDialect
        + ChangesDialect<Connection = Self::Connection>
        + WebhookDialect;
    /// Its connection type.
    type Connection: sqlx::Connection<Database = Self::Database> + 'static;
    /// The output ids of a batch lookup as `FIND_FEEDBACK_BATCH` binds `$3`.
    type OutputIds<'a>: sqlx::Encode<'a, Self::Database> + sqlx::Type<Self::Database> + Send + 'a;

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

    /// A write is enqueueing webhook deliveries (called in its transaction):
    /// wakes this process's delivery workers where the database does not.
    fn deliveries_enqueued();

    /// Completes when deliveries may have been enqueued (PostgreSQL: a
    /// commit on any replica; SQLite: a write of this process), or after
    /// `timeout`; `false`: nothing is due.
    fn wait_for_deliveries(
        &self,
        timeout: std::time::Duration,
    ) -> impl Future<Output = bool> + Send;

    /// After an erasure: moves what the database still holds of deleted rows
    /// out of side files (SQLite: checkpoints the WAL into the file, where
    /// `secure_delete` has zeroed them).
    fn scrub(&self) -> impl Future<Output = StoreResult<()>> + Send;
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
            for<'q> Option<Timestamp>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'q> Option<String>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'q> Option<i64>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'r> EndpointRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> DeliveryRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> ClaimedRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> RevisionRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> KeptRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> ExpiredRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> ChangeRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> FeedbackRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> ApiKeyRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> (Timestamp, i64): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> (i64,): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> (String,): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> CountsRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> (String, String, Option<String>):
                sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'q> Option<i64>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
            for<'r> ExportJobRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
            for<'r> ExportRowRow: sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
        $methods
    )*};
}

/// The create of `insert_feedback`, on `$tx`: the entry and its revision.
macro_rules! insert_in {
    ($tx:ident, $scope:expr, $new:expr, $actor:expr) => {{
        let (scope, new): (&Scope, &NewFeedback) = ($scope, $new);
        let mut rows: Vec<FeedbackRow> = sqlx::query_as(<B::Database as Dialect>::INSERT_FEEDBACK)
            .bind(scope.tenant.as_str())
            .bind(new.key.kind.as_str())
            .bind(new.key.id.as_str())
            .bind(scope.end_user.as_ref().map(EndUserId::as_str))
            .bind(new.rating.map(Rating::as_str))
            .bind(new.description.as_ref().map(Description::as_str))
            .bind(new.model.as_ref().map(ModelName::as_str))
            .fetch_all(&mut **$tx)
            .await?;
        match rows.pop() {
            Some(row) => {
                // The entry, its counters, change and revision in one transaction.
                let counter = CounterChange::of(None, Some(&row));
                match Feedback::try_from(row) {
                    Ok(entry) => {
                        record_entry_change::<B>(
                            $tx,
                            scope.tenant.as_str(),
                            ChangeType::Created,
                            &entry,
                            counter,
                            $actor,
                        )
                        .await?;
                        Ok(Insertion::Inserted(entry))
                    }
                    Err(err) => Err(err),
                }
            }
            None => Ok(Insertion::AlreadyExists),
        }
    }};
}

/// `expected` as the JSON array the conditional statements bind.
fn expected_json(expected: Expected<'_>) -> Option<String> {
    expected.map(|revisions| {
        let listed: Vec<String> = revisions.iter().map(ToString::to_string).collect();
        format!("[{}]", listed.join(","))
    })
}

/// The counts an entry in that state adds (`None`: none, it does not exist).
fn counts_of(row: Option<&FeedbackRow>) -> Counts {
    row.map_or_else(Counts::default, |row| {
        let rating = row
            .rating
            .as_deref()
            .and_then(|raw| Rating::parse(raw).ok());
        Counts::of(rating, row.description.is_some())
    })
}

/// How many counter rows share one (tenant, kind, model, day): concurrent
/// writes of one day and model take one of their row locks each until they
/// commit, so with one row they would commit one at a time (PostgreSQL,
/// `bench/perf.sh`'s 32 clients: 353 creates/s instead of 3,300). GET /stats
/// sums the shards.
const COUNTER_SHARDS: i64 = 16;

/// The counter row an entry of `tenant` counts in: tenant, kind, model, day
/// and shard. An entry's model, kind, `created_at` and seq never change, so
/// every write of it moves counts within this one row.
fn counter_of<'a>(tenant: &'a str, entry: &'a FeedbackRow) -> CounterKey<'a> {
    (
        tenant,
        entry.kind.as_str(),
        entry.model.as_deref().unwrap_or_default(),
        day_of_millis(entry.created_at.0.timestamp_millis()),
        entry.seq.rem_euclid(COUNTER_SHARDS),
    )
}

/// A counter row's key: tenant, kind, model, day, shard.
type CounterKey<'a> = (&'a str, &'a str, &'a str, i64, i64);

/// A write's change to the one counter row its entry counts in (an
/// entry's model, kind, `created_at` and seq never change): the entry as it
/// was (`None`: it did not exist) and as it is now (`None`: it is gone).
/// Create: `(None, Some)`; update: `(Some, Some)`; delete: `(Some, None)`.
/// (Its kind is the change's.)
struct CounterChange {
    model: String,
    day: i64,
    shard: i64,
    delta: Counts,
}

impl CounterChange {
    fn of(before: Option<&FeedbackRow>, after: Option<&FeedbackRow>) -> Option<Self> {
        let entry = after.or(before)?;
        let (_, _, model, day, shard) = counter_of("", entry);
        Some(Self {
            model: model.to_owned(),
            day,
            shard,
            delta: counts_of(after).minus(&counts_of(before)),
        })
    }
}

/// The revision a write of one entry records.
struct RevisionRecord<'a> {
    revision: i64,
    rating: Option<&'a str>,
    description: Option<&'a str>,
    deleted: bool,
    /// `None`: now.
    recorded_at: Option<Timestamp>,
}

impl<'a> RevisionRecord<'a> {
    /// The revision of an entry as a create or an update wrote it.
    fn of(entry: &'a Feedback) -> Self {
        Self {
            revision: entry.revision,
            rating: entry.rating.map(Rating::as_str),
            description: entry.description.as_ref().map(Description::as_str),
            deleted: false,
            recorded_at: Some(Timestamp(entry.updated_at)),
        }
    }

    /// The revision that records the delete of `gone`.
    fn deletion(gone: &FeedbackRow) -> Self {
        Self {
            revision: gone.revision + 1,
            rating: None,
            description: None,
            deleted: true,
            recorded_at: None,
        }
    }
}

/// Everything a create, update or delete of one entry of `tenant` records
/// beside the entry, in its transaction: its change (and the webhook
/// deliveries of it), its counter row's change, its revision.
struct EntryWrite<'a> {
    tenant: &'a str,
    change: NewChange<'a>,
    counter: Option<CounterChange>,
    revision: RevisionRecord<'a>,
    actor: &'a Actor,
}

/// Records `write` in the write's transaction `tx`, in one call
/// (`RECORD_ENTRY_WRITE`).
async fn record_entry_write<B>(
    tx: &mut sqlx::Transaction<'_, B::Database>,
    write: &EntryWrite<'_>,
) -> sqlx::Result<()>
where
    B: Backend,
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B::Database>,
    for<'q> <B::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, B::Database>,
    for<'q> &'q str: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> i64: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> bool: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> Option<Timestamp>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'r> (i64,): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
{
    let EntryWrite {
        tenant,
        change,
        counter,
        revision,
        actor,
    } = write;
    let counted = counter.as_ref().filter(|counter| !counter.delta.is_zero());
    let delta = counted.map(|counter| counter.delta).unwrap_or_default();
    // `fetch_all`: SQLite steps a write to its end only so (see sqlite.rs).
    let rows: Vec<(i64,)> = sqlx::query_as(<B::Database as ChangesDialect>::RECORD_ENTRY_WRITE)
        .bind(*tenant)
        .bind(change.kind)
        .bind(change.output_id)
        .bind(change.end_user)
        .bind(change.change_type.as_str())
        .bind(change.entry)
        .bind(counted.map_or("", |counter| counter.model.as_str()))
        .bind(counted.map_or(0, |counter| counter.day))
        .bind(counted.map_or(0, |counter| counter.shard))
        .bind(delta.total)
        .bind(delta.thumbs_up)
        .bind(delta.thumbs_down)
        .bind(delta.unrated)
        .bind(delta.with_description)
        .bind(counted.is_some())
        .bind(revision.revision)
        .bind(revision.rating)
        .bind(revision.description)
        .bind(revision.deleted)
        .bind(actor.kind())
        .bind(actor.key_id())
        .bind(revision.recorded_at)
        .fetch_all(&mut **tx)
        .await?;
    let (enqueued,) = rows.last().copied().ok_or(sqlx::Error::RowNotFound)?;
    if enqueued > 0 {
        B::deliveries_enqueued();
    }
    Ok(())
}

/// The counters' side of removing entries (delete, erasure, retention), in
/// the removing transaction: `removed` are the entries as they were, each
/// with its tenant. One statement per counter row they counted in, taken in
/// key order (so that concurrent removals lock counter rows in one order).
pub(super) async fn remove_from_counters<'a, B>(
    tx: &mut sqlx::Transaction<'_, B::Database>,
    removed: impl IntoIterator<Item = (&'a str, &'a FeedbackRow)>,
) -> sqlx::Result<()>
where
    B: Backend,
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B::Database>,
    for<'q> <B::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, B::Database>,
    for<'q> &'q str: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> i64: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
{
    let mut counters: BTreeMap<CounterKey<'_>, Counts> = BTreeMap::new();
    for (tenant, entry) in removed {
        counters
            .entry(counter_of(tenant, entry))
            .or_default()
            .add(&counts_of(Some(entry)));
    }
    for (counter, counts) in counters {
        add_to_counter::<B>(tx, counter, &Counts::default().minus(&counts)).await?;
    }
    Ok(())
}

/// Adds `delta` (negative counts take away) to one counter row.
async fn add_to_counter<B>(
    tx: &mut sqlx::Transaction<'_, B::Database>,
    (tenant, kind, model, day, shard): CounterKey<'_>,
    delta: &Counts,
) -> sqlx::Result<()>
where
    B: Backend,
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B::Database>,
    for<'q> <B::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, B::Database>,
    for<'q> &'q str: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> i64: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
{
    if delta.is_zero() {
        return Ok(());
    }
    sqlx::query(sql::ADJUST_COUNTERS)
        .bind(tenant)
        .bind(kind)
        .bind(model)
        .bind(day)
        .bind(delta.total)
        .bind(delta.thumbs_up)
        .bind(delta.thumbs_down)
        .bind(delta.unrated)
        .bind(delta.with_description)
        .bind(shard)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records `change` of an entry of `tenant` in the outbox, in the write's
/// transaction `tx`; returns its `seq`. Every write of an entry (create,
/// update, delete, erasure, retention) calls this once per entry it changed.
pub(super) async fn record_change<B>(
    tx: &mut sqlx::Transaction<'_, B::Database>,
    tenant: &str,
    change: &NewChange<'_>,
) -> sqlx::Result<i64>
where
    B: Backend,
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B::Database>,
    for<'q> <B::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, B::Database>,
    for<'q> &'q str: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> i64: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'r> (i64,): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
{
    // `fetch_all`: SQLite steps a write to its end only so (see sqlite.rs).
    let rows: Vec<(i64,)> = sqlx::query_as(<B::Database as ChangesDialect>::INSERT_CHANGE)
        .bind(tenant)
        .bind(change.kind)
        .bind(change.output_id)
        .bind(change.end_user)
        .bind(change.change_type.as_str())
        .bind(change.entry)
        .fetch_all(&mut **tx)
        .await?;
    let seq = rows
        .first()
        .map(|(seq,)| *seq)
        .ok_or(sqlx::Error::RowNotFound)?;
    // Webhooks: a delivery of change `seq` to every subscribed endpoint,
    // in the same transaction.
    let enqueued = sqlx::query(<B::Database as WebhookDialect>::ENQUEUE_WEBHOOK_DELIVERIES)
        .bind(tenant)
        .bind(seq)
        .bind(change.change_type.as_str())
        .execute(&mut **tx)
        .await?;
    if B::rows_affected(&enqueued) > 0 {
        B::deliveries_enqueued();
    }
    Ok(seq)
}

/// [`record_entry_write`] of a create or an update: `entry` as it now
/// reads, `counter` what the write changed of its counter row.
async fn record_entry_change<B>(
    tx: &mut sqlx::Transaction<'_, B::Database>,
    tenant: &str,
    change_type: ChangeType,
    entry: &Feedback,
    counter: Option<CounterChange>,
    actor: &Actor,
) -> sqlx::Result<()>
where
    B: Backend,
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B::Database>,
    for<'q> <B::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, B::Database>,
    for<'q> &'q str: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> i64: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> bool: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> Option<Timestamp>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'r> (i64,): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
{
    let json = entry_json(entry);
    let write = EntryWrite {
        tenant,
        change: NewChange {
            change_type,
            kind: entry.kind.as_str(),
            output_id: entry.id.as_str(),
            end_user: entry.end_user.as_ref().map(EndUserId::as_str),
            entry: Some(&json),
        },
        counter,
        revision: RevisionRecord::of(entry),
        actor,
    };
    record_entry_write::<B>(tx, &write).await
}

/// [`record_change`] of a removal (delete, erasure, retention): `gone` is
/// the entry as it was; the change carries no entry.
async fn record_deletion<B>(
    tx: &mut sqlx::Transaction<'_, B::Database>,
    tenant: &str,
    gone: &FeedbackRow,
) -> sqlx::Result<i64>
where
    B: Backend,
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B::Database>,
    for<'q> <B::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, B::Database>,
    for<'q> &'q str: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'q> i64: sqlx::Encode<'q, B::Database> + sqlx::Type<B::Database>,
    for<'r> (i64,): sqlx::FromRow<'r, <B::Database as sqlx::Database>::Row>,
{
    record_change::<B>(tx, tenant, &deletion_change(gone)).await
}

/// The change that records the removal of `gone`: it carries no entry.
fn deletion_change(gone: &FeedbackRow) -> NewChange<'_> {
    NewChange {
        change_type: ChangeType::Deleted,
        kind: gone.kind.as_str(),
        output_id: gone.output_id.as_str(),
        end_user: gone.end_user.as_deref(),
        entry: None,
    }
}

for_every_backend! {
    impl FeedbackStore {
        async fn insert_feedback(
            &self,
            scope: &Scope,
            new: &NewFeedback,
            actor: &Actor,
        ) -> StoreResult<Insertion> {
            // Of concurrent creates of one key exactly one inserts (the
            // statement's `on conflict`), the others see the conflict and get
            // no row back; the revision commits with the entry.
            let outcome: StoreResult<Insertion> =
                transaction!(self.writer(), |tx| { insert_in!(tx, scope, new, actor) })?;
            outcome
        }

        async fn insert_feedback_idempotent(
            &self,
            scope: &Scope,
            new: &NewFeedback,
            actor: &Actor,
            request: &IdempotentRequest<'_>,
            render: &(dyn for<'e> Fn(&'e Insertion) -> KeptResponse + Send + Sync),
        ) -> StoreResult<IdempotentCreate> {
            let tenant = scope.tenant.as_str();
            let outcome: StoreResult<IdempotentCreate> = transaction!(self.writer(), |tx| {
                // PostgreSQL: a transaction-scoped advisory lock on the key,
                // so that a replica seeing it held answers "in progress" at
                // once; SQLite's one writer is always alone.
                let (free,): (i64,) =
                    sqlx::query_as(<B::Database as HistoryDialect>::TRY_LOCK_IDEMPOTENCY_KEY)
                        .bind(tenant)
                        .bind(request.key)
                        .fetch_one(&mut **tx)
                        .await?;
                if free == 0 {
                    Ok(IdempotentCreate::InProgress)
                } else {
                    let kept: Option<KeptRow> = sqlx::query_as(sql::FIND_IDEMPOTENCY_KEY)
                        .bind(tenant)
                        .bind(request.key)
                        .bind(Timestamp(request.kept_since))
                        .fetch_optional(&mut **tx)
                        .await?;
                    match kept {
                        Some(kept) if kept.live => {
                            if kept.fingerprint == request.fingerprint {
                                Ok(IdempotentCreate::Replayed(KeptResponse {
                                    status: u16::try_from(kept.status).unwrap_or(500),
                                    body: kept.body,
                                    etag: kept.etag,
                                }))
                            } else {
                                Ok(IdempotentCreate::KeyReused)
                            }
                        }
                        expired => {
                            if expired.is_some() {
                                sqlx::query(sql::FORGET_IDEMPOTENCY_KEY)
                                    .bind(tenant)
                                    .bind(request.key)
                                    .execute(&mut **tx)
                                    .await?;
                            }
                            let insertion: StoreResult<Insertion> = insert_in!(tx, scope, new, actor);
                            match insertion {
                                Ok(insertion) => {
                                    let response = render(&insertion);
                                    sqlx::query(<B::Database as HistoryDialect>::KEEP_IDEMPOTENCY_KEY)
                                        .bind(tenant)
                                        .bind(request.key)
                                        .bind(request.fingerprint.as_str())
                                        .bind(i64::from(response.status))
                                        .bind(response.body.as_str())
                                        .bind(response.etag.as_deref())
                                        .bind(scope.end_user.as_ref().map(EndUserId::as_str))
                                        .execute(&mut **tx)
                                        .await?;
                                    Ok(IdempotentCreate::Processed(response))
                                }
                                Err(err) => Err(err),
                            }
                        }
                    }
                }
            })?;
            outcome
        }

        async fn update_feedback(
            &self,
            scope: &Scope,
            key: &FeedbackKey,
            changes: &FeedbackChanges,
            actor: &Actor,
            expected: Expected<'_>,
        ) -> StoreResult<Update> {
            // The entry is read first, locked, so that its counters move
            // from the buckets it leaves to those it enters; then one
            // statement writes each field present, only at an expected
            // revision (`If-Match`): of concurrent updates naming one
            // revision exactly one matches. Counters and revision row
            // commit with it.
            let params = ChangeParams::from(changes);
            let expected = expected_json(expected);
            let outcome: StoreResult<Update> = transaction!(self.writer(), |tx| {
                let before: Option<FeedbackRow> = scoped_query(
                    <B::Database as Dialect>::FIND_FEEDBACK_FOR_UPDATE,
                    scope,
                    key,
                )
                .fetch_optional(&mut **tx)
                .await?;
                match before {
                    None => Ok(Update::NotFound),
                    Some(before) => {
                        let mut rows: Vec<FeedbackRow> = scoped_query(
                            <B::Database as HistoryDialect>::UPDATE_FEEDBACK_IF,
                            scope,
                            key,
                        )
                        .bind(params.set_rating)
                        .bind(params.rating)
                        .bind(params.set_description)
                        .bind(params.description)
                        .bind(expected.as_deref())
                        .fetch_all(&mut **tx)
                        .await?;
                        match rows.pop() {
                            None => Ok(Update::PreconditionFailed),
                            Some(after) => {
                                let counter = CounterChange::of(Some(&before), Some(&after));
                                match Feedback::try_from(after) {
                                    Ok(entry) => {
                                        record_entry_change::<B>(
                                            tx,
                                            scope.tenant.as_str(),
                                            ChangeType::Updated,
                                            &entry,
                                            counter,
                                            actor,
                                        )
                                        .await?;
                                        Ok(Update::Updated(entry))
                                    }
                                    Err(err) => Err(err),
                                }
                            }
                        }
                    }
                }
            })?;
            outcome
        }

        async fn delete_feedback(
            &self,
            scope: &Scope,
            key: &FeedbackKey,
            actor: &Actor,
            expected: Expected<'_>,
        ) -> StoreResult<Deletion> {
            let expected = expected_json(expected);
            let conditional = expected.is_some();
            let outcome = transaction!(self.writer(), |tx| {
                let mut rows: Vec<FeedbackRow> = scoped_query(
                    <B::Database as HistoryDialect>::DELETE_FEEDBACK_IF,
                    scope,
                    key,
                )
                .bind(expected.as_deref())
                .fetch_all(&mut **tx)
                .await?;
                if let Some(gone) = rows.pop() {
                    let write = EntryWrite {
                        tenant: scope.tenant.as_str(),
                        change: deletion_change(&gone),
                        counter: CounterChange::of(Some(&gone), None),
                        revision: RevisionRecord::deletion(&gone),
                        actor,
                    };
                    record_entry_write::<B>(tx, &write).await?;
                    Deletion::Deleted
                } else if conditional {
                    let (exists,): (i64,) = scoped_query(sql::ENTRY_EXISTS, scope, key)
                        .fetch_one(&mut **tx)
                        .await?;
                    if exists == 0 { Deletion::NotFound } else { Deletion::PreconditionFailed }
                } else {
                    Deletion::NotFound
                }
            })?;
            Ok(outcome)
        }

        async fn list_revisions(
            &self,
            scope: &Scope,
            key: &FeedbackKey,
            after: i64,
            limit: u32,
        ) -> StoreResult<Option<Vec<Revision>>> {
            let query = scoped_query::<_, RevisionRow>(sql::LIST_REVISIONS, scope, key)
                .bind(after)
                .bind(i64::from(limit));
            let rows = run!(self.readers(), |conn| query.fetch_all(conn))?;
            if rows.is_empty() {
                let query = scoped_query::<_, (i64,)>(sql::HAS_REVISIONS, scope, key);
                let (any,) = run!(self.readers(), |conn| query.fetch_one(conn))?;
                if any == 0 {
                    return Ok(None);
                }
            }
            rows.into_iter()
                .map(Revision::try_from)
                .collect::<StoreResult<Vec<_>>>()
                .map(Some)
        }

        async fn erase_end_user(
            &self,
            tenant: &TenantId,
            end_user: &EndUserId,
        ) -> StoreResult<Erasure> {
            // One transaction: a table that later holds an end user's text
            // (an outbox, webhook payloads) adds its statement here.
            let erasure = transaction!(self.writer(), |tx| {
                let erased: Vec<FeedbackRow> = sqlx::query_as(sql::ERASE_ENTRIES)
                    .bind(tenant.as_str())
                    .bind(end_user.as_str())
                    .fetch_all(&mut **tx)
                    .await?;
                remove_from_counters::<B>(tx, erased.iter().map(|entry| (tenant.as_str(), entry)))
                    .await?;
                // Earlier changes of the end user keep their type, kind and
                // id but lose their entry (API.md, "Delete and end-user erasure").
                for statement in [sql::ERASE_REVISIONS, sql::ERASE_IDEMPOTENCY_KEYS, sql::STRIP_CHANGES] {
                    sqlx::query(statement)
                        .bind(tenant.as_str())
                        .bind(end_user.as_str())
                        .execute(&mut **tx)
                        .await?;
                }
                for entry in &erased {
                    record_deletion::<B>(tx, tenant.as_str(), entry).await?;
                }
                let mut erasure = Erasure::default();
                for entry in &erased {
                    match OutputKind::parse(&entry.kind) {
                        Some(OutputKind::Completions) => erasure.completions += 1,
                        Some(OutputKind::Responses) => erasure.responses += 1,
                        None => {}
                    }
                }
                erasure
            })?;
            self.scrub().await?;
            Ok(erasure)
        }

        async fn purge_idempotency_keys(
            &self,
            before: DateTime<Utc>,
            batch: u32,
        ) -> StoreResult<u64> {
            let write = sqlx::query(sql::PURGE_IDEMPOTENCY_KEYS)
                .bind(Timestamp(before))
                .bind(i64::from(batch));
            let result = run!(self.writer(), |conn| write.execute(conn))?;
            Ok(B::rows_affected(&result))
        }

        async fn delete_expired_feedback(
            &self,
            before: DateTime<Utc>,
            batch: u32,
        ) -> StoreResult<Option<u64>> {
            let outcome = transaction!(self.writer(), |tx| {
                let (free,): (i64,) =
                    sqlx::query_as(<B::Database as HistoryDialect>::TRY_LOCK_RETENTION)
                        .fetch_one(&mut **tx)
                        .await?;
                if free == 0 {
                    None
                } else {
                    let expired: Vec<ExpiredRow> = sqlx::query_as(sql::EXPIRE_ENTRIES)
                        .bind(Timestamp(before))
                        .bind(i64::from(batch))
                        .fetch_all(&mut **tx)
                        .await?;
                    remove_from_counters::<B>(
                        tx,
                        expired.iter().map(|gone| (gone.tenant.as_str(), &gone.entry)),
                    )
                    .await?;
                    for gone in &expired {
                        sqlx::query(sql::EXPIRE_REVISIONS)
                            .bind(gone.tenant.as_str())
                            .bind(gone.entry.kind.as_str())
                            .bind(gone.entry.output_id.as_str())
                            .execute(&mut **tx)
                            .await?;
                        record_deletion::<B>(tx, gone.tenant.as_str(), &gone.entry).await?;
                    }
                    let orphans = sqlx::query(sql::EXPIRE_ORPHAN_REVISIONS)
                        .bind(Timestamp(before))
                        .bind(i64::from(batch))
                        .execute(&mut **tx)
                        .await?;
                    Some(expired.len() as u64 + B::rows_affected(&orphans))
                }
            })?;
            Ok(outcome)
        }

        async fn list_changes(
            &self,
            scope: &Scope,
            request: &ChangesRequest,
        ) -> StoreResult<ChangesPage> {
            if let Some(after) = request.after {
                let query = sqlx::query_as::<_, (i64,)>(sql::CHANGE_EXISTS)
                    .bind(scope.tenant.as_str())
                    .bind(after.seq)
                    .bind(Timestamp(after.occurred_at));
                let (exists,) = run!(self.readers(), |conn| query.fetch_one(conn))?;
                if exists == 0 {
                    return Ok(ChangesPage::UnknownCursor);
                }
            }
            // Read before the page's own statement takes its snapshot: the
            // ascending list's no-skip rule (postgres.rs), over changes.
            let horizon = self.settled_horizon().await?;
            let (sql, arguments) = sql::Statement::changes(scope, request, horizon).into_parts()?;
            let query = sqlx::query_as_with::<_, ChangeRow, _>(&sql, arguments);
            let rows = run!(self.readers(), |conn| query.fetch_all(conn))?;
            rows.into_iter()
                .map(Change::try_from)
                .collect::<StoreResult<Vec<_>>>()
                .map(ChangesPage::Changes)
        }

        async fn purge_changes(
            &self,
            before: DateTime<Utc>,
            batch: u32,
        ) -> StoreResult<Option<u64>> {
            let outcome = transaction!(self.writer(), |tx| {
                let (free,): (i64,) =
                    sqlx::query_as(<B::Database as ChangesDialect>::TRY_LOCK_CHANGE_PURGE)
                        .fetch_one(&mut **tx)
                        .await?;
                if free == 0 {
                    None
                } else {
                    let purged = sqlx::query(sql::PURGE_CHANGES)
                        .bind(Timestamp(before))
                        .bind(i64::from(batch))
                        .execute(&mut **tx)
                        .await?;
                    Some(B::rows_affected(&purged))
                }
            })?;
            Ok(outcome)
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

        async fn feedback_stats(&self, scope: &Scope, filter: &StatsFilter) -> StoreResult<DayCounts> {
            // The counters are tenant-wide; an end user's entries are few and
            // read through their index.
            let plan = if scope.end_user.is_some() {
                RangePlan {
                    days: None,
                    entries: vec![(filter.from_millis, filter.to_millis)],
                }
            } else {
                RangePlan::split(filter.from_millis, filter.to_millis)
            };
            let mut counts = DayCounts::new();
            if let Some(days) = plan.days {
                let (sql, arguments) =
                    sql::Statement::stats_counters(&scope.tenant, filter, days).into_parts()?;
                let query = sqlx::query_as_with::<_, CountsRow, _>(&sql, arguments);
                add_counts(&mut counts, run!(self.readers(), |conn| query.fetch_all(conn))?);
            }
            for range in plan.entries {
                let (sql, arguments) = sql::Statement::stats_entries(
                    <B::Database as Dialect>::STATS_ENTRIES,
                    scope,
                    filter,
                    range,
                )
                .into_parts()?;
                let query = sqlx::query_as_with::<_, CountsRow, _>(&sql, arguments);
                add_counts(&mut counts, run!(self.readers(), |conn| query.fetch_all(conn))?);
            }
            Ok(counts)
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

        async fn export_reader(&self) -> StoreResult<Box<dyn ExportReader>> {
            let conn = self.readers().open_detached().await?;
            Ok(Box::new(DetachedReader { conn }))
        }
    }

    impl WebhookStore {
        async fn insert_webhook_endpoint(
            &self,
            endpoint: &NewWebhookEndpoint,
        ) -> StoreResult<WebhookEndpoint> {
            let write =
                sqlx::query_as::<_, EndpointRow>(<B::Database as WebhookDialect>::INSERT_WEBHOOK_ENDPOINT)
                    .bind(endpoint.id.as_str())
                    .bind(endpoint.tenant.as_str())
                    .bind(endpoint.url.as_str())
                    .bind(endpoint.events.as_str())
                    .bind(endpoint.secret.as_str());
            // `fetch_all`: SQLite steps a write with `returning` to the end.
            let mut rows = run!(self.writer(), |conn| write.fetch_all(conn))?;
            let row = rows
                .pop()
                .ok_or_else(|| super::StoreError::Corrupt("insert returned no endpoint".into()))?;
            WebhookEndpoint::try_from(row)
        }

        async fn list_webhook_endpoints(
            &self,
            tenant: Option<&TenantId>,
        ) -> StoreResult<Vec<WebhookEndpoint>> {
            let query = sqlx::query_as::<_, EndpointRow>(sql::LIST_WEBHOOK_ENDPOINTS)
                .bind(tenant.map(TenantId::as_str));
            let rows = run!(self.readers(), |conn| query.fetch_all(conn))?;
            rows.into_iter().map(WebhookEndpoint::try_from).collect()
        }

        async fn delete_webhook_endpoint(
            &self,
            tenant: Option<&TenantId>,
            id: &str,
        ) -> StoreResult<bool> {
            let write = sqlx::query(sql::DELETE_WEBHOOK_ENDPOINT)
                .bind(id)
                .bind(tenant.map(TenantId::as_str));
            let result = run!(self.writer(), |conn| write.execute(conn))?;
            Ok(B::rows_affected(&result) > 0)
        }

        async fn list_webhook_deliveries(
            &self,
            tenant: &TenantId,
            endpoint_id: &str,
            limit: u32,
        ) -> StoreResult<Option<Vec<WebhookDelivery>>> {
            let exists = sqlx::query_as::<_, (i64,)>(sql::WEBHOOK_ENDPOINT_EXISTS)
                .bind(endpoint_id)
                .bind(tenant.as_str());
            let (count,) = run!(self.readers(), |conn| exists.fetch_one(conn))?;
            if count == 0 {
                return Ok(None);
            }
            let query = sqlx::query_as::<_, DeliveryRow>(sql::LIST_WEBHOOK_DELIVERIES)
                .bind(endpoint_id)
                .bind(i64::from(limit));
            let rows = run!(self.readers(), |conn| query.fetch_all(conn))?;
            Ok(Some(rows.into_iter().map(WebhookDelivery::from).collect()))
        }

        async fn claim_webhook_deliveries(
            &self,
            now: DateTime<Utc>,
            lease_until: DateTime<Utc>,
            lease_token: &str,
            batch: u32,
        ) -> StoreResult<Vec<ClaimedDelivery>> {
            let claim = sqlx::query(<B::Database as WebhookDialect>::CLAIM_WEBHOOK_DELIVERIES)
                .bind(Timestamp(now))
                .bind(Timestamp(lease_until))
                .bind(lease_token)
                .bind(i64::from(batch));
            let claimed = run!(self.writer(), |conn| claim.execute(conn))?;
            if B::rows_affected(&claimed) == 0 {
                return Ok(Vec::new());
            }
            // Read on the writer: a reader might not see the claim yet.
            let query = sqlx::query_as::<_, ClaimedRow>(sql::CLAIMED_DELIVERIES).bind(lease_token);
            let rows = run!(self.writer(), |conn| query.fetch_all(conn))?;
            Ok(rows.into_iter().map(ClaimedDelivery::from).collect())
        }

        async fn record_webhook_attempt(&self, attempt: &WebhookAttempt<'_>) -> StoreResult<()> {
            let (status, code, error, next) = match &attempt.outcome {
                AttemptOutcome::Delivered { status_code } => {
                    ("delivered", Some(i64::from(*status_code)), None, None)
                }
                AttemptOutcome::Retry { status_code, error, next_attempt_at } => (
                    "pending",
                    status_code.map(i64::from),
                    Some(error.clone()),
                    Some(Timestamp(*next_attempt_at)),
                ),
                AttemptOutcome::Failed { status_code, error } => {
                    ("failed", status_code.map(i64::from), Some(error.clone()), None)
                }
                AttemptOutcome::Gone => (
                    "failed",
                    Some(410),
                    Some("the receiver answered 410: endpoint disabled".to_owned()),
                    None,
                ),
            };
            let delivery = attempt.delivery;
            if attempt.outcome != AttemptOutcome::Gone {
                // One statement: no transaction needed.
                let write = sqlx::query(sql::RECORD_WEBHOOK_ATTEMPT)
                    .bind(delivery.id)
                    .bind(attempt.lease_token)
                    .bind(status)
                    .bind(code)
                    .bind(error)
                    .bind(next);
                run!(self.writer(), |conn| write.execute(conn))?;
                return Ok(());
            }
            // A 410: the attempt, the endpoint disabled and its pending
            // deliveries failed, together.
            transaction!(self.writer(), |tx| {
                let recorded = sqlx::query(sql::RECORD_WEBHOOK_ATTEMPT)
                    .bind(delivery.id)
                    .bind(attempt.lease_token)
                    .bind(status)
                    .bind(code)
                    .bind(error)
                    .bind(next)
                    .execute(&mut **tx)
                    .await?;
                if B::rows_affected(&recorded) == 1 {
                    sqlx::query(sql::DISABLE_WEBHOOK_ENDPOINT)
                        .bind(delivery.endpoint_id.as_str())
                        .bind(Timestamp(attempt.at))
                        .execute(&mut **tx)
                        .await?;
                    sqlx::query(sql::FAIL_PENDING_WEBHOOK_DELIVERIES)
                        .bind(delivery.endpoint_id.as_str())
                        .execute(&mut **tx)
                        .await?;
                }
            })?;
            Ok(())
        }

        async fn wait_for_deliveries(&self, timeout: std::time::Duration) -> bool {
            Backend::wait_for_deliveries(self, timeout).await
        }

        async fn webhook_queue_depth(&self) -> StoreResult<u64> {
            let query = sqlx::query_as::<_, (i64,)>(sql::WEBHOOK_QUEUE_DEPTH);
            let (depth,) = run!(self.readers(), |conn| query.fetch_one(conn))?;
            Ok(u64::try_from(depth).unwrap_or_default())
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

/// The admin export's [`ExportReader`]: a connection of its own.
struct DetachedReader<C> {
    conn: C,
}

#[async_trait]
impl<C> ExportReader for DetachedReader<C>
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    for<'q> <C::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'r> (i64,): sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> ExportRowRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    async fn max_seq(&mut self) -> StoreResult<i64> {
        let (seq,) = sqlx::query_as::<_, (i64,)>(sql::MAX_FEEDBACK_SEQ)
            .fetch_one(&mut self.conn)
            .await?;
        Ok(seq)
    }

    async fn rows(&mut self, after: i64, upto: i64, limit: i64) -> StoreResult<Vec<ExportRow>> {
        let rows = sqlx::query_as::<_, ExportRowRow>(sql::EXPORT_ROWS)
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(&mut self.conn)
            .await?;
        Ok(rows.into_iter().map(ExportRow::from).collect())
    }

    async fn close(self: Box<Self>) {
        if let Err(err) = self.conn.close().await {
            tracing::debug!(error = %err, "closing the export's connection");
        }
    }
}
