//! The PostgreSQL store: production.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgConnectOptions, PgListener, PgPoolOptions, PgQueryResult, PgTypeInfo, PgValueRef,
};
use sqlx::{PgConnection, Postgres};

use super::backend::Backend;
use super::pool::{Pool, PoolConfig};
use super::{ConnectError, PoolStats, StoreOptions, StoreResult, Timestamp};
use crate::feedback::OutputId;

/// Connections idle at least this long are pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

// Ascending pages never skip (API.md, list). Pages run in (created_at, seq)
// order, but PostgreSQL commits concurrent creates in any order: a create
// that took its position first may commit last, behind a cursor that an
// ascending reader has already passed. Serialising creates would make commit
// order the position order, at the price of group commit (a lock held to
// commit: 440 against 2,100 inserts/s in a pgbench run on this machine).
// Instead, each create announces a lower bound of its position before taking
// it (the `position` fragment of PostgreSQL's dialect in sql.rs), and an
// ascending page shows only entries below every bound still announced:
//
// - A create reads the clock (L), takes a shared transaction-level advisory
//   lock whose key encodes L, and only then takes its position: created_at =
//   greatest(clock, L) ≥ L, and its seq. `pg_locks` lists the lock as soon as
//   it is granted; PostgreSQL drops it only after the transaction's row has
//   become visible (or was rolled back).
// - A reader computes the horizon H = least(its statement's start, the lowest
//   L listed) and then, in a later statement (so a later snapshot), shows only
//   entries with created_at < H (strictly, so equal timestamps need no seq).
// - A create that the page's snapshot misses and that commits later was still
//   running when the locks were read. If it held its lock then, H ≤ L ≤ its
//   created_at; if not, it read its created_at clock after that, so after the
//   reader's statement began: created_at ≥ H (the clock does not step back).
//   Either way it lands at or past H, never behind an entry the page showed.
//
// Held-back entries appear on a later page as soon as the creates before
// them finish (milliseconds). Only writes of entries take the lock, so no
// other transaction, however long, holds anything back.
//
// The changes feed (issue 14) is the same pair over the outbox: every change
// (create, update, delete, erasure, retention) announces a lower bound of its
// `occurred_at` with the same fragment (`INSERT_CHANGE` in sql.rs), and
// `list_changes` reads this horizon before its page and shows only changes
// that occurred before it, in (occurred_at, seq) order. A change of a
// transaction that commits late cannot land behind a cursor a reader holds.

/// The horizon of ascending pages: no create still running can land below
/// it. Decodes the keys that creates announce (sql.rs, tag 19526) in this database.
const SETTLED_HORIZON_SQL: &str = "select least(
        date_trunc('milliseconds', statement_timestamp()),
        (select timestamptz 'epoch'
                + min(((classid::bigint & 65535) << 32) | objid::bigint) * interval '1 millisecond'
         from pg_locks
         where locktype = 'advisory' and objsubid = 1 and (classid::bigint >> 16) = 19526
           and database = (select oid from pg_database where datname = current_database())))";

/// The channel on which committed webhook enqueues are announced.
const WEBHOOK_CHANNEL: &str = "llm_feedback_webhooks";
/// Whether a webhook delivery is due (what a claim would find), asked on the
/// `LISTEN` session.
const WEBHOOK_DELIVERY_DUE_SQL: &str = "select exists (
        select 1 from webhook_deliveries
        where status = 'pending' and next_attempt_at <= now()
          and (locked_until is null or locked_until < now()))";

/// Entries stored through a PostgreSQL connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool<PgConnection>,
    /// The delivery worker's `LISTEN` session (its own connection, opened
    /// on first wait, reopened after a loss).
    webhook_listener: Arc<tokio::sync::Mutex<Option<PgListener>>>,
    /// Where that session comes from: a pool of one, opened lazily (kept
    /// here: a listener whose pool is dropped stops listening).
    listen_pool: sqlx::PgPool,
}

impl PostgresStore {
    /// Connects and applies pending migrations (an advisory lock keeps
    /// replicas that start together from migrating twice).
    pub async fn connect(database_url: &str, options: &StoreOptions) -> Result<Self, ConnectError> {
        let url = options.redacted_url.clone();
        let connect_options = PgConnectOptions::from_str(database_url)
            .map_err(|source| ConnectError::Connect {
                url: url.clone(),
                source,
            })?
            .application_name("llm-feedback");
        let listen_options = connect_options
            .clone()
            .application_name("llm-feedback-webhooks");
        let pool: Pool<PgConnection> = Pool::new(PoolConfig {
            connect: connect_options,
            max_connections: options.max_connections,
            acquire_timeout: options.acquire_timeout,
            ping_if_idle_for: Some(PING_IF_IDLE_FOR),
            begin: None,
        });
        let mut conn = pool
            .acquire()
            .await
            .map_err(|source| ConnectError::Connect {
                url: url.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&mut *conn)
            .await
            .map_err(|source| ConnectError::Migrate { url, source })?;
        conn.release();
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(listen_options);
        Ok(Self {
            pool,
            webhook_listener: Arc::default(),
            listen_pool,
        })
    }
}

impl sqlx::Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<Postgres>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, Postgres> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as sqlx::Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as sqlx::Decode<'r, Postgres>>::decode(value).map(Self)
    }
}

impl Backend for PostgresStore {
    type Database = Postgres;
    type Connection = PgConnection;
    type OutputIds<'a> = Vec<&'a str>;

    fn readers(&self) -> &Pool<PgConnection> {
        &self.pool
    }

    fn writer(&self) -> &Pool<PgConnection> {
        &self.pool
    }

    fn output_ids(ids: &[OutputId]) -> StoreResult<Vec<&str>> {
        Ok(ids.iter().map(OutputId::as_str).collect())
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    /// Reads the horizon of ascending pages (see above).
    async fn settled_horizon(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let (horizon,): (DateTime<Utc>,) =
            run!(self.pool, |conn| sqlx::query_as(SETTLED_HORIZON_SQL)
                .fetch_one(conn))?;
        Ok(Some(horizon))
    }

    /// `NOTIFY` in the enqueue statement does it, at commit.
    fn deliveries_enqueued() {}

    /// Waits for a notification on [`WEBHOOK_CHANNEL`], opening the
    /// `LISTEN` session first if there is none; at the deadline, asks on
    /// that session whether a delivery is due (a retry, a lease run out), so
    /// that an idle worker never takes a pooled connection. Without the
    /// session (it cannot be opened): `true` once `timeout` passed, and the
    /// worker polls through the pool.
    async fn wait_for_deliveries(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut listener = self.webhook_listener.lock().await;
        if listener.is_none() {
            let opened = tokio::time::timeout_at(deadline, async {
                let mut opened = PgListener::connect_with(&self.listen_pool).await?;
                opened.listen(WEBHOOK_CHANNEL).await?;
                Ok::<_, sqlx::Error>(opened)
            })
            .await;
            match opened {
                Ok(Ok(opened)) => *listener = Some(opened),
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "cannot listen for webhook deliveries");
                }
                Err(_) => return true,
            }
        }
        let Some(session) = listener.as_mut() else {
            tokio::time::sleep_until(deadline).await;
            return true;
        };
        match tokio::time::timeout_at(deadline, session.try_recv()).await {
            // A notification, or a lost session (it reconnects on the next
            // call): claim.
            Ok(Ok(_)) => true,
            Ok(Err(_)) => {
                *listener = None;
                true
            }
            Err(_) => {
                let due = sqlx::query_as::<_, (bool,)>(WEBHOOK_DELIVERY_DUE_SQL)
                    .fetch_one(&mut *session)
                    .await;
                if let Ok((due,)) = due {
                    due
                } else {
                    *listener = None;
                    true
                }
            }
        }
    }

    /// Deleted tuples stay in the heap until VACUUM reuses their space
    /// (README, "Safe writes"); nothing to do here.
    async fn scrub(&self) -> StoreResult<()> {
        Ok(())
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        vec![self.pool.stats("main")]
    }

    async fn close(&self) {
        *self.webhook_listener.lock().await = None;
        self.listen_pool.close().await;
        self.pool.close().await;
    }
}
