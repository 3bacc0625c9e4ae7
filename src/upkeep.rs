//! Background upkeep of safe writes (issue 13): expired idempotent outcomes
//! are purged, entries older than `RETENTION_DAYS` deleted, and changes
//! older than `CHANGE_RETENTION_DAYS` purged. All work in bounded batches
//! (one short transaction each), so that none holds locks for long; all log their errors and carry on at the next round
//! (clients see nothing of a late purge; `/readyz` already watches the
//! database).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::store::{Store, StoreError};
use crate::worker::{WorkerContext, WorkerResult};

/// Rows one batch deletes at most.
pub const BATCH_ROWS: u32 = 500;
/// How often expired idempotent outcomes are purged.
pub const IDEMPOTENCY_PURGE_INTERVAL: Duration = Duration::from_secs(600);
/// How often retention runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// The pause between two batches of one round, so that requests get the
/// writer in between (SQLite has one).
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// Purges outcomes kept longer than `ttl`, every [`IDEMPOTENCY_PURGE_INTERVAL`].
pub async fn purge_idempotency_keys(
    store: Arc<dyn Store>,
    ttl: Duration,
    context: WorkerContext,
) -> WorkerResult {
    // The first purge after one interval: nothing is expired at start that
    // cannot wait, and start-up stays light.
    every(IDEMPOTENCY_PURGE_INTERVAL, false, &context, || {
        let store = Arc::clone(&store);
        async move {
            let before = Utc::now() - ttl;
            let purged = store.purge_idempotency_keys(before, BATCH_ROWS).await?;
            Ok(Some(purged))
        }
    })
    .await
}

/// Deletes entries created more than `days` days ago (with their
/// histories), every [`RETENTION_INTERVAL`]; on PostgreSQL one replica at a
/// time (an advisory lock per batch: a replica that finds it taken leaves
/// the round to the holder).
pub async fn enforce_retention(
    store: Arc<dyn Store>,
    days: u32,
    context: WorkerContext,
) -> WorkerResult {
    every(RETENTION_INTERVAL, true, &context, || {
        let store = Arc::clone(&store);
        async move {
            let before = Utc::now() - chrono::Duration::days(i64::from(days));
            store.delete_expired_feedback(before, BATCH_ROWS).await
        }
    })
    .await
}

/// Purges changes that occurred more than `days` days ago (the changes
/// feed's retention), every [`RETENTION_INTERVAL`]; on PostgreSQL one
/// replica at a time, as retention. The first round one interval after
/// start, like the idempotency purge: start-up stays light.
pub async fn purge_changes(
    store: Arc<dyn Store>,
    days: u32,
    context: WorkerContext,
) -> WorkerResult {
    every(RETENTION_INTERVAL, false, &context, || {
        let store = Arc::clone(&store);
        async move {
            let before = Utc::now() - chrono::Duration::days(i64::from(days));
            store.purge_changes(before, BATCH_ROWS).await
        }
    })
    .await
}

/// Runs rounds of `batch` (rows deleted, `None`: another replica is at it)
/// every `interval` (the first at once if `at_start`), each round until a
/// batch deletes fewer than [`BATCH_ROWS`], until shutdown.
async fn every<F, Fut>(
    interval: Duration,
    at_start: bool,
    context: &WorkerContext,
    batch: F,
) -> WorkerResult
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Option<u64>, StoreError>>,
{
    let first = tokio::time::Instant::now() + if at_start { Duration::ZERO } else { interval };
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = context.stopping() => return Ok(()),
        }
        let mut total = 0_u64;
        loop {
            match batch().await {
                Ok(Some(rows)) => {
                    total += rows;
                    if rows < u64::from(BATCH_ROWS) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(worker = context.name(), error = %err, "upkeep batch failed; retrying next round");
                    break;
                }
            }
            if context.is_stopping() {
                return Ok(());
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        if total > 0 {
            tracing::info!(worker = context.name(), rows = total, "upkeep deleted rows");
        }
    }
}
