//! The PostgreSQL store: production.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgConnectOptions, PgTypeInfo, PgValueRef};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::pool::{Pool, PoolConfig};
use super::{
    ActiveApiKey, ApiKeyRecord, ApiKeyRow, ChangeParams, ConnectError, FEEDBACK_COLUMNS,
    FeedbackRow, Insertion, NewApiKey, PoolStats, Revocation, Store, StoreOptions, StoreResult,
    Timestamp, Update, count_query, into_active_keys, into_page, into_position, order_sql,
    push_list_conditions, scoped_query, sql,
};
use crate::feedback::{
    Description, EndUserId, Feedback, FeedbackChanges, FeedbackFilter, FeedbackKey, ModelName,
    NewFeedback, OutputId, OutputKind, PageRequest, Position, Rating, Scope, SortOrder, TenantId,
};

/// Connections idle at least this long are pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

// Ascending pages never skip (API.md, list). Pages run in (created_at, seq)
// order, but PostgreSQL commits concurrent creates in any order: a create
// that took its position first may commit last, behind a cursor that an
// ascending reader has already passed. Serialising creates would make commit
// order the position order, at the price of group commit (a lock held to
// commit: 440 against 2,100 inserts/s in a pgbench run on this machine).
// Instead, each create announces a lower bound of its position before taking
// it, and an ascending page shows only entries below every bound still
// announced:
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
// them finish (milliseconds). Only creates take the lock, so no other
// transaction, however long, holds anything back. The changes feed can use
// the same pair: announce in the write, `settled_horizon` in the read.

/// The `with` clause of a create, giving `position.created_at`: announces a
/// lower bound of the position in `pg_locks`, then reads the clock again
/// (materialized CTEs run in that order: `position` reads rows of `held`).
/// The lock key is `19526 << 48 | milliseconds since the epoch`; 19526
/// (`0x4C46`, "LF") tags these locks.
macro_rules! announce_position {
    () => {
        "with announced as materialized (
             select date_trunc('milliseconds', clock_timestamp()) as lower_bound
         ), held as materialized (
             select lower_bound,
                    pg_advisory_xact_lock_shared(
                        (19526::bigint << 48) + (extract(epoch from lower_bound) * 1000)::bigint)
             from announced
         ), position as (
             select greatest(date_trunc('milliseconds', clock_timestamp()), lower_bound) as created_at
             from held
         ) "
    };
}

/// The horizon of ascending pages: no create still running can land below
/// it. Decodes the keys of `announce_position!` (tag 19526) in this database.
const SETTLED_HORIZON_SQL: &str = "select least(
        date_trunc('milliseconds', statement_timestamp()),
        (select timestamptz 'epoch'
                + min(((classid::bigint & 65535) << 32) | objid::bigint) * interval '1 millisecond'
         from pg_locks
         where locktype = 'advisory' and objsubid = 1 and (classid::bigint >> 16) = 19526
           and database = (select oid from pg_database where datname = current_database())))";

/// Reads the horizon of ascending pages (see above); must run before the
/// page's statement.
async fn settled_horizon(pool: &Pool<PgConnection>) -> StoreResult<DateTime<Utc>> {
    let (horizon,): (DateTime<Utc>,) = run!(pool, |conn| sqlx::query_as(SETTLED_HORIZON_SQL)
        .fetch_one(conn))?;
    Ok(horizon)
}

/// Entries stored through a PostgreSQL connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool<PgConnection>,
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
        Ok(Self { pool })
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

fn into_feedback(row: Option<FeedbackRow>) -> StoreResult<Option<Feedback>> {
    row.map(Feedback::try_from).transpose()
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_feedback(&self, scope: &Scope, new: &NewFeedback) -> StoreResult<Insertion> {
        // One statement: of concurrent creates of one key exactly one inserts,
        // the others see the conflict and get no row back. It announces its
        // position before taking it (see `settled_horizon`).
        const SQL: &str = concat!(
            announce_position!(),
            "insert into feedback
                 (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
             select $1, $2, $3, $4, $5, $6, $7, position.created_at, position.created_at
             from position
             on conflict (tenant, kind, output_id) do nothing
             returning ",
            feedback_columns!()
        );
        let row = run!(self.pool, |conn| sqlx::query_as::<_, FeedbackRow>(SQL)
            .bind(scope.tenant.as_str())
            .bind(new.key.kind.as_str())
            .bind(new.key.id.as_str())
            .bind(scope.end_user.as_ref().map(EndUserId::as_str))
            .bind(new.rating.map(Rating::as_str))
            .bind(new.description.as_ref().map(Description::as_str))
            .bind(new.model.as_ref().map(ModelName::as_str))
            .fetch_optional(conn))?;
        Ok(into_feedback(row)?.map_or(Insertion::AlreadyExists, Insertion::Inserted))
    }

    async fn update_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
        changes: &FeedbackChanges,
    ) -> StoreResult<Update> {
        // One statement, each column written only when its field was present:
        // the row lock makes concurrent updates of different fields compose.
        const SQL: &str = concat!(
            "update feedback set
                 rating = case when $5 then $6 else rating end,
                 description = case when $7 then $8 else description end,
                 updated_at = greatest(date_trunc('milliseconds', now()), updated_at)
             where tenant = $1 and kind = $2 and output_id = $3
               and ($4::text is null or end_user = $4)
             returning ",
            feedback_columns!()
        );
        let params = ChangeParams::from(changes);
        let row = run!(self.pool, |conn| sqlx::query_as::<_, FeedbackRow>(SQL)
            .bind(scope.tenant.as_str())
            .bind(key.kind.as_str())
            .bind(key.id.as_str())
            .bind(scope.end_user.as_ref().map(EndUserId::as_str))
            .bind(params.set_rating)
            .bind(params.rating)
            .bind(params.set_description)
            .bind(params.description)
            .fetch_optional(conn))?;
        Ok(into_feedback(row)?.map_or(Update::NotFound, Update::Updated))
    }

    async fn find_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
    ) -> StoreResult<Option<Feedback>> {
        let query = scoped_query::<_, FeedbackRow>(sql::FIND_FEEDBACK, scope, key);
        into_feedback(run!(self.pool, |conn| query.fetch_optional(conn))?)
    }

    async fn find_position(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
    ) -> StoreResult<Option<Position>> {
        let query = scoped_query(sql::FIND_POSITION, scope, key);
        Ok(into_position(
            run!(self.pool, |conn| query.fetch_optional(conn))?
        ))
    }

    async fn list_feedback(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> StoreResult<Vec<(Position, Feedback)>> {
        let (direction, beyond) = order_sql(page);
        // Read before the page's own statement takes its snapshot: that
        // order is what the argument of `settled_horizon` needs.
        let horizon = if page.settled_only && page.order == SortOrder::Asc {
            Some(settled_horizon(&self.pool).await?)
        } else {
            None
        };
        let mut query = QueryBuilder::new(format!("select {FEEDBACK_COLUMNS} from feedback"));
        push_list_conditions(&mut query, scope, page.filter, page.until);
        if let Some(horizon) = horizon {
            query.push(" and created_at < ");
            query.push_bind(horizon);
        }
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
        let rows = run!(self.pool, |conn| query
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
        let (count,): (i64,) = run!(self.pool, |conn| query.build_query_as().fetch_one(conn))?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn find_feedback_batch(
        &self,
        scope: &Scope,
        kind: OutputKind,
        ids: &[OutputId],
    ) -> StoreResult<Vec<Feedback>> {
        const SQL: &str = concat!(
            "select ",
            feedback_columns!(),
            " from feedback
             where tenant = $1 and kind = $2 and output_id = any($3)
               and ($4::text is null or end_user = $4)"
        );
        let ids: Vec<&str> = ids.iter().map(OutputId::as_str).collect();
        let rows = run!(self.pool, |conn| sqlx::query_as::<_, FeedbackRow>(SQL)
            .bind(scope.tenant.as_str())
            .bind(kind.as_str())
            .bind(&ids)
            .bind(scope.end_user.as_ref().map(EndUserId::as_str))
            .fetch_all(conn))?;
        rows.into_iter().map(Feedback::try_from).collect()
    }

    async fn insert_api_key(&self, key: &NewApiKey) -> StoreResult<bool> {
        let result = run!(self.pool, |conn| sqlx::query(
            "insert into api_keys (id, tenant, name, prefix, secret_hash, created_at)
             values ($1, $2, $3, $4, $5, date_trunc('milliseconds', now()))
             on conflict do nothing",
        )
        .bind(&key.id)
        .bind(key.tenant.as_str())
        .bind(key.name.as_deref())
        .bind(&key.prefix)
        .bind(&key.secret_hash)
        .execute(conn))?;
        Ok(result.rows_affected() == 1)
    }

    async fn find_api_key(&self, secret_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = run!(self.pool, |conn| sqlx::query_as::<_, ApiKeyRow>(
            sql::FIND_API_KEY
        )
        .bind(secret_hash)
        .fetch_optional(conn))?;
        row.map(ApiKeyRecord::try_from).transpose()
    }

    async fn active_api_keys(&self) -> StoreResult<Vec<ActiveApiKey>> {
        let rows = run!(self.pool, |conn| sqlx::query_as(sql::ACTIVE_API_KEYS)
            .fetch_all(conn))?;
        into_active_keys(rows)
    }

    async fn list_api_keys(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>> {
        let rows = run!(self.pool, |conn| sqlx::query_as::<_, ApiKeyRow>(
            sql::LIST_API_KEYS
        )
        .bind(tenant.map(TenantId::as_str))
        .fetch_all(conn))?;
        rows.into_iter().map(ApiKeyRecord::try_from).collect()
    }

    async fn revoke_api_key(&self, id: &str) -> StoreResult<Revocation> {
        let previous: Option<(Option<DateTime<Utc>>,)> = run!(self.pool, |conn| {
            sqlx::query_as(
            "with old as (select id, revoked_at from api_keys where id = $1 for update)
             update api_keys k set revoked_at = coalesce(old.revoked_at, date_trunc('milliseconds', now()))
             from old where k.id = old.id
             returning old.revoked_at",
        )
        .bind(id)
        .fetch_optional(conn)
        })?;
        Ok(match previous {
            None => Revocation::NotFound,
            Some((None,)) => Revocation::Revoked,
            Some((Some(_),)) => Revocation::AlreadyRevoked,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        run!(self.pool, |conn| sqlx::query("select 1").execute(conn))?;
        Ok(())
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        vec![self.pool.stats("main")]
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
