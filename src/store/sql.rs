//! Every statement the store runs, written once for both databases.
//!
//! sqlx binds `$N` on SQLite too, `cast($n as text)` reads the same in both,
//! and both decode the same row types. Where the dialects do differ, the
//! statement is `concat!`ed at compile time from the fragments that
//! `dialect!` names, both dialects side by side at the end of this file.

/// The columns of a feedback entry, as `FeedbackRow` reads them.
macro_rules! feedback_columns {
    () => {
        "seq, output_id, kind, rating, description, model, end_user, created_at, updated_at, revision"
    };
}

/// The entry under key `($2, $3)` of tenant `$1`, if end user `$4` (or any,
/// when `$4` is null) may see it.
macro_rules! in_scope {
    () => {
        " where tenant = $1 and kind = $2 and output_id = $3
            and (cast($4 as text) is null or end_user = $4)"
    };
}

use chrono::{DateTime, Utc};
use sqlx::Arguments as _;
use sqlx::error::BoxDynError;

use super::Timestamp;
use crate::feedback::stats::StatsFilter;
use crate::feedback::{
    ChangesRequest, EndUserId, FeedbackFilter, FeedbackKey, PageRequest, Position, Scope,
    SortOrder, TenantId,
};

pub(super) const FIND_FEEDBACK: &str = concat!(
    "select ",
    feedback_columns!(),
    " from feedback",
    in_scope!()
);
pub(super) const FIND_POSITION: &str = concat!("select created_at, seq from feedback", in_scope!());
/// The start of a listing or an export chunk; `push_list_conditions` adds the rest.
pub(super) const LIST_FEEDBACK: &str = concat!("select ", feedback_columns!(), " from feedback");
pub(super) const FIND_API_KEY: &str = "select id, tenant, name, prefix, created_at, revoked_at
     from api_keys where secret_hash = $1";
pub(super) const ACTIVE_API_KEYS: &str =
    "select secret_hash, id, tenant from api_keys where revoked_at is null";
pub(super) const LIST_API_KEYS: &str = "select id, tenant, name, prefix, created_at, revoked_at
     from api_keys where cast($1 as text) is null or tenant = $1
     order by created_at, id";
/// Whether key `$1` exists (after `REVOKE_API_KEY` changed nothing).
pub(super) const API_KEY_EXISTS: &str = "select count(*) from api_keys where id = $1";
/// Key `$1`, by its public id (a feedback token names its minting key so).
pub(super) const FIND_API_KEY_BY_ID: &str =
    "select id, tenant, name, prefix, created_at, revoked_at
     from api_keys where id = $1";
/// Stores `$1` as the token signing secret unless one is there: of replicas
/// starting at once, the first insert wins and the others change nothing.
pub(super) const INSERT_TOKEN_SIGNING_SECRET: &str =
    "insert into token_signing_key (id, secret) values (1, $1) on conflict (id) do nothing";
/// The token signing secret.
pub(super) const TOKEN_SIGNING_SECRET: &str = "select secret from token_signing_key where id = 1";
pub(super) const PING: &str = "select 1";
/// The end of an insert into `feedback_counters`: a row that exists gets
/// the new row's counts added to its own.
macro_rules! add_to_existing_counters {
    () => {
        " on conflict (tenant, kind, day, model, shard) do update set
             total = feedback_counters.total + excluded.total,
             thumbs_up = feedback_counters.thumbs_up + excluded.thumbs_up,
             thumbs_down = feedback_counters.thumbs_down + excluded.thumbs_down,
             unrated = feedback_counters.unrated + excluded.unrated,
             with_description = feedback_counters.with_description + excluded.with_description"
    };
}

/// Adds the counts `$5..$9` to the counters of tenant `$1`, kind `$2`,
/// model `$3`, day `$4`, shard `$10` (see `remove_from_counters` in backend.rs).
pub(super) const ADJUST_COUNTERS: &str = concat!(
    "insert into feedback_counters
         (tenant, kind, model, day, total, thumbs_up, thumbs_down, unrated, with_description, shard)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    add_to_existing_counters!()
);
/// The counters of whole days, their shards summed; `Statement::stats_counters`
/// adds the conditions and the grouping.
const STATS_COUNTERS: &str = "select model, day, cast(sum(total) as bigint) as total,
         cast(sum(thumbs_up) as bigint) as thumbs_up,
         cast(sum(thumbs_down) as bigint) as thumbs_down,
         cast(sum(unrated) as bigint) as unrated,
         cast(sum(with_description) as bigint) as with_description
     from feedback_counters";

/// The columns of an export job, as `ExportJobRow` reads them.
macro_rules! export_job_columns {
    () => {
        "id, status, owner, started_at, heartbeat_at, closed_at, stage, message, completion_count,
         response_count, parquet_bytes, output_path, completions_file, responses_file, duration_ms, error"
    };
}
/// Closes running jobs whose heartbeat is older than `$3` as failed with error `$1` at `$2`.
pub(super) const FAIL_STALE_EXPORT_JOBS: &str = "update export_jobs
     set status = 'FAILED', stage = 'failed', message = 'export failed', error = $1, closed_at = $2
     where status = 'RUNNING' and heartbeat_at < $3";
/// Job `$1` of owner `$2`, started at `$3`, unless one is running (the partial unique index).
pub(super) const INSERT_EXPORT_JOB: &str = "insert into export_jobs
     (id, status, owner, started_at, heartbeat_at, stage, message)
     values ($1, 'RUNNING', $2, $3, $3, 'starting', 'export started') on conflict do nothing";
pub(super) const RUNNING_EXPORT_JOB: &str = concat!(
    "select ",
    export_job_columns!(),
    " from export_jobs where status = 'RUNNING'"
);
pub(super) const LATEST_EXPORT_JOB: &str = concat!(
    "select ",
    export_job_columns!(),
    " from export_jobs order by started_at desc, id desc limit 1"
);
/// Heartbeat `$2` and progress `$3..$7` of job `$1`, while it runs.
pub(super) const HEARTBEAT_EXPORT_JOB: &str = "update export_jobs
     set heartbeat_at = $2, stage = $3, message = $4, completion_count = $5, response_count = $6,
         parquet_bytes = $7
     where id = $1 and status = 'RUNNING'";
/// Closes running job `$1` with status `$2` at `$3` and its final fields.
pub(super) const FINISH_EXPORT_JOB: &str = "update export_jobs
     set status = $2, closed_at = $3, heartbeat_at = $3, stage = $4, message = $5,
         completion_count = $6, response_count = $7, parquet_bytes = $8, output_path = $9,
         completions_file = $10, responses_file = $11, duration_ms = $12, error = $13
     where id = $1 and status = 'RUNNING'";
pub(super) const MAX_FEEDBACK_SEQ: &str = "select coalesce(max(seq), 0) from feedback";
/// Every tenant's entries with `$1 < seq <= $2`, at most `$3`, by `seq` (the primary key).
pub(super) const EXPORT_ROWS: &str =
    "select seq, tenant, kind, output_id, model, rating, description,
         end_user, created_at, updated_at
     from feedback where seq > $1 and seq <= $2 order by seq limit $3";

/// A shared statement about one entry, with the scope and key bound as
/// `$1..$4` (see `in_scope!`); more binds may follow.
pub(super) fn scoped_query<'q, DB, O>(
    sql: &'q str,
    scope: &'q Scope,
    key: &'q FeedbackKey,
) -> sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    O: for<'r> sqlx::FromRow<'r, DB::Row>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query_as(sql)
        .bind(scope.tenant.as_str())
        .bind(key.kind.as_str())
        .bind(key.id.as_str())
        .bind(scope.end_user.as_ref().map(EndUserId::as_str))
}

/// A statement built at run time: its text and its arguments, each bind
/// written as the database's placeholder, as `sqlx::QueryBuilder` does. But
/// this one can be taken apart to run: a `QueryBuilder` over a generic
/// database cannot be borrowed to run and dropped after (its arguments type
/// is a projection, which the drop check must assume still borrowed).
pub(super) struct Statement<'q, DB: sqlx::Database> {
    sql: String,
    arguments: Result<DB::Arguments<'q>, BoxDynError>,
}

impl<'q, DB: sqlx::Database> Statement<'q, DB> {
    /// A statement that starts with `sql`.
    pub(super) fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_owned(),
            arguments: Ok(DB::Arguments::default()),
        }
    }

    /// Appends SQL text.
    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder and binds `value` to it; an encoding error is
    /// kept for [`into_parts`](Self::into_parts).
    pub(super) fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        if let Ok(arguments) = &mut self.arguments {
            let bound = arguments.add(value).and_then(|()| {
                arguments
                    .format_placeholder(&mut self.sql)
                    .map_err(BoxDynError::from)
            });
            if let Err(err) = bound {
                self.arguments = Err(err);
            }
        }
        self
    }

    /// The text and the arguments, for `sqlx::query_as_with(&sql, arguments)`.
    pub(super) fn into_parts(self) -> sqlx::Result<(String, DB::Arguments<'q>)> {
        Ok((self.sql, self.arguments.map_err(sqlx::Error::Encode)?))
    }
}

/// The statements that listings and counts build at run time.
impl<'q, DB> Statement<'q, DB>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Timestamp: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    /// One page of entries in scope (see `FeedbackStore::list_feedback`),
    /// only entries created before `horizon` if there is one.
    pub(super) fn list(scope: &Scope, page: &PageRequest, horizon: Option<DateTime<Utc>>) -> Self {
        // The direction, and the comparison that continues after a cursor in it.
        let (direction, beyond) = match page.order {
            SortOrder::Asc => ("asc", ">"),
            SortOrder::Desc => ("desc", "<"),
        };
        let mut query = Self::new(LIST_FEEDBACK);
        query.push_list_conditions(scope, page.filter, page.until);
        if let Some(horizon) = horizon {
            query.push(" and created_at < ");
            query.push_bind(Timestamp(horizon));
        }
        if let Some(after) = page.after {
            query.push(" and (created_at, seq) ");
            query.push(beyond);
            query.push(" (");
            query.push_bind(Timestamp(after.created_at));
            query.push(", ");
            query.push_bind(after.seq);
            query.push(")");
        }
        query.push(" order by created_at ");
        query.push(direction);
        query.push(", seq ");
        query.push(direction);
        query.push(" limit ");
        query.push_bind(i64::from(page.limit));
        query
    }

    /// How many entries match, at most `at_most`, at or before `until`.
    pub(super) fn count(
        scope: &Scope,
        filter: FeedbackFilter,
        until: Position,
        at_most: u64,
    ) -> Self {
        let mut query = Self::new("select count(*) from (select 1 from feedback");
        query.push_list_conditions(scope, filter, Some(until));
        query.push(" limit ");
        query.push_bind(i64::try_from(at_most).unwrap_or(i64::MAX));
        query.push(") as capped");
        query
    }

    /// The counters of the days `[from, to)` (see `FeedbackStore::feedback_stats`).
    pub(super) fn stats_counters(
        tenant: &TenantId,
        filter: &StatsFilter,
        (from, to): (Option<i64>, Option<i64>),
    ) -> Self {
        let mut query = Self::new(STATS_COUNTERS);
        query.push(" where tenant = ");
        query.push_bind(tenant.as_str().to_owned());
        query.push(" and kind = ");
        query.push_bind(filter.kind.as_str());
        query.push_stats_conditions("day", from, to, filter);
        query.push(" group by model, day");
        query
    }

    /// The entries' counts per model and day among those created in
    /// `[from, to)` (milliseconds), starting from the dialect's `STATS_ENTRIES`.
    pub(super) fn stats_entries(
        start: &str,
        scope: &Scope,
        filter: &StatsFilter,
        (from, to): (Option<i64>, Option<i64>),
    ) -> Self {
        let mut query = Self::new(start);
        query.push_list_conditions(
            scope,
            FeedbackFilter {
                kind: filter.kind,
                rating: None,
            },
            None,
        );
        let at =
            |millis: i64| Timestamp(DateTime::from_timestamp_millis(millis).unwrap_or_default());
        if let Some(from) = from {
            query.push(" and created_at >= ");
            query.push_bind(at(from));
        }
        if let Some(to) = to {
            query.push(" and created_at < ");
            query.push_bind(at(to));
        }
        query.push_stats_conditions("created_at", None, None, filter);
        query.push(" group by 1, 2");
        query
    }

    /// `column >= from`, `column < to` and the model filter.
    fn push_stats_conditions(
        &mut self,
        column: &str,
        from: Option<i64>,
        to: Option<i64>,
        filter: &StatsFilter,
    ) {
        if let Some(from) = from {
            self.push(" and ").push(column).push(" >= ");
            self.push_bind(from);
        }
        if let Some(to) = to {
            self.push(" and ").push(column).push(" < ");
            self.push_bind(to);
        }
        if let Some(model) = &filter.model {
            self.push(" and model = ");
            self.push_bind(model.as_str().to_owned());
        }
    }

    /// `where` conditions shared by listings and counts: scope, filter,
    /// snapshot. Conditions are left out rather than written `$n is null or
    /// ...`, so that each combination gets a plan that uses its index.
    fn push_list_conditions(
        &mut self,
        scope: &Scope,
        filter: FeedbackFilter,
        until: Option<Position>,
    ) {
        self.push(" where tenant = ");
        self.push_bind(scope.tenant.as_str().to_owned());
        self.push(" and kind = ");
        self.push_bind(filter.kind.as_str());
        if let Some(user) = &scope.end_user {
            self.push(" and end_user = ");
            self.push_bind(user.as_str().to_owned());
        }
        if let Some(rating) = filter.rating {
            self.push(" and rating = ");
            self.push_bind(rating.as_str());
        }
        if let Some(until) = until {
            self.push(" and (created_at, seq) <= (");
            self.push_bind(Timestamp(until.created_at));
            self.push(", ");
            self.push_bind(until.seq);
            self.push(")");
        }
    }
}

/// The statements whose text differs between the two databases.
pub(super) trait Dialect: sqlx::Database {
    /// Creates entry `($2, $3)` of tenant `$1` for end user `$4` with rating
    /// `$5`, description `$6`, model `$7`, unless its key exists; returns it.
    const INSERT_FEEDBACK: &'static str;
    /// The entries in scope of kind `$2` among the output ids `$3`.
    const FIND_FEEDBACK_BATCH: &'static str;
    /// Stores key `$1` of tenant `$2`, named `$3`, prefix `$4`, hash `$5`,
    /// unless the id or the hash exists.
    const INSERT_API_KEY: &'static str;
    /// Revokes key `$1` if it is active (one row affected).
    const REVOKE_API_KEY: &'static str;
    /// The entry in scope (see `in_scope!`), locked until the transaction ends.
    const FIND_FEEDBACK_FOR_UPDATE: &'static str;
    /// The start of the entries' counts per model and day; `Statement::stats_entries`
    /// adds the conditions and the grouping.
    const STATS_ENTRIES: &'static str;
}

/// Writes `impl Dialect` for one database from its fragments:
///
/// - `clock`: now, truncated to the millisecond, as a timestamp column holds it;
/// - `position`: the `with` clause before a create and the table it selects
///   its `created_at` from (`position.created_at`);
/// - `in_output_ids`: the condition that `output_id` is among `$3`;
/// - `lock_row`: what follows a `select` to lock its row until the transaction ends;
/// - `day_of_created_at`: the UTC day of `created_at`, whole days since the epoch.
macro_rules! dialect {
    ($database:ty {
        clock: $clock:expr,
        position: ($position_with:expr, $position_from:expr),
        in_output_ids: $in_output_ids:expr,
        lock_row: $lock_row:expr,
        day_of_created_at: $day_of_created_at:expr $(,)?
    }) => {
        impl Dialect for $database {
            const INSERT_FEEDBACK: &'static str = concat!(
                $position_with,
                "insert into feedback
                     (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at,
                      revision)
                 select $1, $2, $3, $4, $5, $6, $7, position.created_at, position.created_at,
                     -- After the last revision of the id's history: a create after a delete continues it.
                     (select coalesce(max(revision), 0) + 1 from feedback_revisions
                      where tenant = $1 and kind = $2 and output_id = $3)
                 from ",
                $position_from,
                " on conflict (tenant, kind, output_id) do nothing
                 returning ",
                feedback_columns!()
            );
            const FIND_FEEDBACK_BATCH: &'static str = concat!(
                "select ",
                feedback_columns!(),
                " from feedback
                 where tenant = $1 and kind = $2 and output_id ",
                $in_output_ids,
                " and (cast($4 as text) is null or end_user = $4)"
            );
            const INSERT_API_KEY: &'static str = concat!(
                "insert into api_keys (id, tenant, name, prefix, secret_hash, created_at)
                 values ($1, $2, $3, $4, $5, ",
                $clock,
                ") on conflict do nothing"
            );
            const REVOKE_API_KEY: &'static str = concat!(
                "update api_keys set revoked_at = ",
                $clock,
                " where id = $1 and revoked_at is null"
            );
            const FIND_FEEDBACK_FOR_UPDATE: &'static str = concat!(
                "select ",
                feedback_columns!(),
                " from feedback",
                in_scope!(),
                $lock_row
            );
            const STATS_ENTRIES: &'static str = concat!(
                "select coalesce(model, '') as model, ",
                $day_of_created_at,
                " as day, count(*) as total,
                 count(case when rating = 'thumbs_up' then 1 end) as thumbs_up,
                 count(case when rating = 'thumbs_down' then 1 end) as thumbs_down,
                 count(*) - count(rating) as unrated,
                 count(description) as with_description
                 from feedback"
            );
        }
    };
}

/// PostgreSQL's `with` clause that announces a lower bound of a position
/// and then takes it (`position.created_at`): a create's, a change's.
macro_rules! pg_announced_position {
    () => {
        concat!("with ", pg_position_ctes!(), " ")
    };
}

/// The common table expressions of [`pg_announced_position!`], to list
/// among others in a `with` clause.
macro_rules! pg_position_ctes {
    () => {
        "announced as materialized (
             select date_trunc('milliseconds', clock_timestamp()) as lower_bound
         ), held as materialized (
             select lower_bound,
                    pg_advisory_xact_lock_shared(
                        (19526::bigint << 48) + (extract(epoch from lower_bound) * 1000)::bigint)
             from announced
         ), position as (
             select greatest(date_trunc('milliseconds', clock_timestamp()), lower_bound) as created_at
             from held
         )"
    };
}

dialect!(sqlx::Postgres {
    clock: "date_trunc('milliseconds', now())",
    // Announces a lower bound of the position in `pg_locks` before taking it
    // (see `settled_horizon` in postgres.rs, which decodes these locks), then
    // reads the clock again: materialized CTEs run in that order, `position`
    // reads rows of `held`. The lock key is `19526 << 48 | milliseconds since
    // the epoch`; 19526 (`0x4C46`, "LF") tags these locks.
    position: (pg_announced_position!(), "position"),
    in_output_ids: "= any($3)",
    lock_row: " for update",
    day_of_created_at: "cast(floor(extract(epoch from created_at) / 86400) as bigint)",
});

/// SQLite's clock: integer milliseconds since the epoch.
macro_rules! sqlite_now_millis {
    () => {
        "cast(round(unixepoch('subsec') * 1000) as integer)"
    };
}

dialect!(sqlx::Sqlite {
    clock: sqlite_now_millis!(),
    // The statement holds SQLite's write lock from its first step to its
    // commit, so positions follow commit order and created_at never goes
    // back within a tenant's kind, even if the clock does. (`where true`:
    // SQLite's parser needs it before `on conflict` in `insert ... select`.)
    position: (
        "",
        concat!(
            "(select max(",
            sqlite_now_millis!(),
            ", coalesce((select max(created_at) from feedback where tenant = $1 and kind = $2), 0)
           ) as created_at) as position
             where true"
        )
    ),
    // The ids travel as one JSON array.
    in_output_ids: "in (select value from json_each($3))",
    // The writer's transactions are `BEGIN IMMEDIATE`: the row is as good as locked.
    lock_row: "",
    day_of_created_at: "(created_at / 86400000)",
});

// Issue 13, safe writes: revisions, conditional writes, delete, erasure,
// idempotent creates, retention.

/// The columns of a revision, as `RevisionRow` reads them.
macro_rules! revision_columns {
    () => {
        "revision, rating, description, deleted, actor_type, actor_key_id, end_user, recorded_at"
    };
}

/// `RECORD_ENTRY_WRITE`'s revision: `$16` of entry `($2, $3)` of tenant
/// `$1`, end user `$4`, rating `$17`, description `$18`, deleted `$19`,
/// actor `$20` (key `$21`), at `$22` or now (`$clock`) when null.
macro_rules! insert_entry_revision {
    ($clock:expr) => {
        concat!(
            "insert into feedback_revisions (tenant, kind, output_id, revision, end_user, rating,
                 description, deleted, actor_type, actor_key_id, recorded_at)
             values ($1, $2, $3, $16, $4, $17, $18, $19, $20, $21, coalesce($22, ",
            $clock,
            "))"
        )
    };
}

/// `RECORD_ENTRY_WRITE`'s counter row: counts `$10..$14` added to the row
/// of tenant `$1`, kind `$2`, model `$7`, day `$8`, shard `$9`, if `$15`.
macro_rules! add_entry_counts {
    () => {
        concat!(
            "insert into feedback_counters
                 (tenant, kind, model, day, total, thumbs_up, thumbs_down, unrated, with_description,
                  shard)
             select $1, $2, $7, $8, $10, $11, $12, $13, $14, $9 where $15",
            add_to_existing_counters!()
        )
    };
}

/// Webhook deliveries of change `$seq` of type `$type` to each active
/// endpoint `e` of tenant `$1` subscribed to that type, due now (`$clock`),
/// each with a new event id; `$from` names `webhook_endpoints e` and
/// whatever else the statement needs (`ENQUEUE_WEBHOOK_DELIVERIES`,
/// `RECORD_ENTRY_WRITE`).
macro_rules! enqueue_deliveries {
    ($clock:expr, $event_id:expr, $seq:expr, $type:expr, $from:expr) => {
        concat!(
            "insert into webhook_deliveries
                 (endpoint_id, change_seq, event_id, event_type, status, attempts, next_attempt_at,
                  created_at)
             select e.id, ",
            $seq,
            ", ",
            $event_id,
            ", ",
            $type,
            ", 'pending', 0, ",
            $clock,
            ", ",
            $clock,
            " from ",
            $from,
            " where e.tenant = $1 and e.disabled_at is null
                 and (',' || e.events || ',') like ('%,' || ",
            $type,
            " || ',%')"
        )
    };
}

/// A change of entry `($2, $3)` of tenant `$1`, end user `$4`, type `$5`,
/// entry `$6`, at `position.created_at` from `$position_from`
/// (`INSERT_CHANGE`, `RECORD_ENTRY_WRITE`).
macro_rules! insert_change {
    ($position_from:expr) => {
        concat!(
            "insert into changes (tenant, kind, output_id, end_user, type, entry, occurred_at)
             select $1, $2, $3, $4, $5, $6, position.created_at from ",
            $position_from
        )
    };
}

/// Revisions of the entry in scope (see `in_scope!`) after revision `$5`,
/// oldest first, at most `$6`.
pub(super) const LIST_REVISIONS: &str = concat!(
    "select ",
    revision_columns!(),
    " from feedback_revisions",
    in_scope!(),
    " and revision > $5 order by revision limit $6"
);
/// Whether the entry in scope has any revision (a page past its end is empty).
pub(super) const HAS_REVISIONS: &str = concat!(
    "select count(*) from (select 1 from feedback_revisions",
    in_scope!(),
    " limit 1) as any_revision"
);
/// Whether the entry in scope exists (after a conditional write changed nothing).
pub(super) const ENTRY_EXISTS: &str = concat!("select count(*) from feedback", in_scope!());
/// Erasure: the entries of tenant `$1` recorded for end user `$2`, as they were.
pub(super) const ERASE_ENTRIES: &str = concat!(
    "delete from feedback where tenant = $1 and end_user = $2 returning ",
    feedback_columns!()
);
/// Erasure: every revision recorded for end user `$2` of tenant `$1`.
pub(super) const ERASE_REVISIONS: &str =
    "delete from feedback_revisions where tenant = $1 and end_user = $2";
/// Erasure: every kept idempotent outcome of end user `$2` of tenant `$1`.
pub(super) const ERASE_IDEMPOTENCY_KEYS: &str =
    "delete from idempotency_keys where tenant = $1 and end_user = $2";
/// The kept outcome under key `$2` of tenant `$1`, if kept since `$3`.
pub(super) const FIND_IDEMPOTENCY_KEY: &str =
    "select fingerprint, status, body, etag, created_at >= $3 as live
     from idempotency_keys where tenant = $1 and idempotency_key = $2";
/// Forgets the (expired) outcome under key `$2` of tenant `$1`.
pub(super) const FORGET_IDEMPOTENCY_KEY: &str =
    "delete from idempotency_keys where tenant = $1 and idempotency_key = $2";
/// Purges at most `$2` outcomes kept before `$1`.
pub(super) const PURGE_IDEMPOTENCY_KEYS: &str =
    "delete from idempotency_keys where (tenant, idempotency_key) in (
         select tenant, idempotency_key from idempotency_keys where created_at < $1 limit $2)";
/// Retention: at most `$2` entries created before `$1`, as they were, with
/// their tenants.
pub(super) const EXPIRE_ENTRIES: &str = concat!(
    "delete from feedback where seq in (
         select seq from feedback where created_at < $1 order by created_at limit $2)
     returning tenant, ",
    feedback_columns!()
);
/// Retention: the history of entry `($2, $3)` of tenant `$1`.
pub(super) const EXPIRE_REVISIONS: &str =
    "delete from feedback_revisions where tenant = $1 and kind = $2 and output_id = $3";
/// Retention: at most `$2` revisions recorded before `$1` of entries that
/// no longer exist (histories of deleted entries).
pub(super) const EXPIRE_ORPHAN_REVISIONS: &str =
    "delete from feedback_revisions where (tenant, kind, output_id, revision) in (
         select r.tenant, r.kind, r.output_id, r.revision from feedback_revisions r
         where r.recorded_at < $1 and not exists (
             select 1 from feedback f
             where f.tenant = r.tenant and f.kind = r.kind and f.output_id = r.output_id)
         limit $2)";

/// The statements of safe writes whose text differs between the databases.
pub(super) trait HistoryDialect: sqlx::Database {
    /// Sets rating `$6` if `$5`, description `$8` if `$7`, of the entry in
    /// scope (see `in_scope!`), and counts its revision up, only if the
    /// revision is among the JSON array `$9` (any when null); returns it.
    const UPDATE_FEEDBACK_IF: &'static str;
    /// Deletes the entry in scope if its revision is among the JSON array
    /// `$5` (any when null); returns it as it was.
    const DELETE_FEEDBACK_IF: &'static str;
    /// `1` if this transaction may work on key `$2` of tenant `$1` (no other
    /// one does), else `0`.
    const TRY_LOCK_IDEMPOTENCY_KEY: &'static str;
    /// `1` if this transaction is the one replica's retention run, else `0`.
    const TRY_LOCK_RETENTION: &'static str;
    /// Keeps outcome `$4` `$5` `$6` of key `$2` of tenant `$1` for end user
    /// `$7` with fingerprint `$3`, kept from now.
    const KEEP_IDEMPOTENCY_KEY: &'static str;
}

/// Writes `impl HistoryDialect` for one database from its fragments:
/// `clock` and `greatest` (as in `dialect!`), `revision_in_N` (the condition that
/// `revision` is among the JSON array bound at `$N`), the two try-locks.
macro_rules! history_dialect {
    ($database:ty {
        clock: $clock:expr,
        greatest: $greatest:expr,
        revision_in_9: $revision_in_9:expr,
        revision_in_5: $revision_in_5:expr,
        try_lock_key: $try_lock_key:expr,
        try_lock_retention: $try_lock_retention:expr $(,)?
    }) => {
        impl HistoryDialect for $database {
            const UPDATE_FEEDBACK_IF: &'static str = concat!(
                "update feedback set
                     rating = case when $5 then $6 else rating end,
                     description = case when $7 then $8 else description end,
                     revision = revision + 1,
                     updated_at = ",
                $greatest,
                "(",
                $clock,
                ", updated_at)",
                in_scope!(),
                " and (cast($9 as text) is null or ",
                $revision_in_9,
                ") returning ",
                feedback_columns!()
            );
            const DELETE_FEEDBACK_IF: &'static str = concat!(
                "delete from feedback",
                in_scope!(),
                " and (cast($5 as text) is null or ",
                $revision_in_5,
                ") returning ",
                feedback_columns!()
            );
            const TRY_LOCK_IDEMPOTENCY_KEY: &'static str = $try_lock_key;
            const TRY_LOCK_RETENTION: &'static str = $try_lock_retention;
            const KEEP_IDEMPOTENCY_KEY: &'static str = concat!(
                "insert into idempotency_keys
                     (tenant, idempotency_key, fingerprint, status, body, etag, end_user, created_at)
                 values ($1, $2, $3, $4, $5, $6, $7, ",
                $clock,
                ")"
            );
        }
    };
}

history_dialect!(sqlx::Postgres {
    clock: "date_trunc('milliseconds', now())",
    greatest: "greatest",
    revision_in_9: "revision in (select value::bigint from json_array_elements_text(cast($9 as json)))",
    revision_in_5: "revision in (select value::bigint from json_array_elements_text(cast($5 as json)))",
    // Two-key advisory locks (objsubid 2): `settled_horizon` reads only the
    // one-key ones. 19527 tags idempotency keys, 19528 the retention run.
    try_lock_key: "select cast(pg_try_advisory_xact_lock(19527, hashtext($1 || ':' || $2)) as integer)::bigint",
    try_lock_retention: "select cast(pg_try_advisory_xact_lock(19528, 0) as integer)::bigint",
});

history_dialect!(sqlx::Sqlite {
    clock: sqlite_now_millis!(),
    greatest: "max",
    revision_in_9: "revision in (select value from json_each($9))",
    revision_in_5: "revision in (select value from json_each($5))",
    // One writer, `BEGIN IMMEDIATE`: a transaction is always alone.
    try_lock_key: "select coalesce(1, $1, $2)",
    try_lock_retention: "select 1",
});

/// A new webhook event id on PostgreSQL: `msg_` and 32 hex digits.
macro_rules! pg_event_id {
    () => {
        "'msg_' || replace(cast(gen_random_uuid() as text), '-', '')"
    };
}

// Issue 14: the outbox and the changes feed.

/// The columns of a change, as `ChangeRow` reads them.
const CHANGE_COLUMNS: &str = "seq, kind, output_id, end_user, type, entry, occurred_at";

/// Erasure: strips the entry from every change of end user `$2` of tenant `$1`.
pub(super) const STRIP_CHANGES: &str =
    "update changes set entry = null where tenant = $1 and end_user = $2 and entry is not null";
/// Whether change `$2` at `$3` of tenant `$1` exists (a cursor names it).
pub(super) const CHANGE_EXISTS: &str =
    "select count(*) from changes where seq = $2 and occurred_at = $3 and tenant = $1";
/// Purges at most `$2` changes that occurred before `$1`.
pub(super) const PURGE_CHANGES: &str = "delete from changes where seq in (
         select seq from changes where occurred_at < $1 order by occurred_at limit $2)";

/// The statements of the outbox whose text differs between the databases.
pub(super) trait ChangesDialect: sqlx::Database {
    /// Records a change of entry `($2, $3)` of tenant `$1`, end user `$4`,
    /// type `$5`, entry `$6`; returns its `seq`. It takes its `occurred_at`
    /// so that no change can later land before a position the feed showed.
    const INSERT_CHANGE: &'static str;
    /// `1` if this transaction is the one replica's change purge, else `0`.
    const TRY_LOCK_CHANGE_PURGE: &'static str;
    /// Everything a create, update or delete of one entry records beside
    /// the entry, in one call: entry `($2, $3)` of tenant `$1`, end user
    /// `$4`: its change of type `$5` with entry `$6` and the webhook
    /// deliveries of that change (`enqueue_deliveries!`), its counter
    /// row's counts (`add_entry_counts!`), its revision
    /// (`insert_entry_revision!`). One row: whether any delivery was
    /// enqueued (`0` or more).
    const RECORD_ENTRY_WRITE: &'static str;
}

/// Writes `impl ChangesDialect` for one database from its fragments:
/// `position` (the `with` clause and the table `position.created_at` comes
/// from, as in `dialect!`) and the purge's try-lock.
macro_rules! changes_dialect {
    ($database:ty {
        position: ($position_with:expr, $position_from:expr),
        try_lock_purge: $try_lock_purge:expr,
        record_entry_write: $record_entry_write:expr $(,)?
    }) => {
        impl ChangesDialect for $database {
            const INSERT_CHANGE: &'static str = concat!(
                $position_with,
                insert_change!($position_from),
                " returning seq"
            );
            const TRY_LOCK_CHANGE_PURGE: &'static str = $try_lock_purge;
            const RECORD_ENTRY_WRITE: &'static str = $record_entry_write;
        }
    };
}

changes_dialect!(sqlx::Postgres {
    // The create's own mechanism (see `SETTLED_HORIZON_SQL` in postgres.rs):
    // the lock announces a lower bound of `occurred_at` until the commit.
    position: (pg_announced_position!(), "position"),
    // Two-key (objsubid 2): not one of the announced positions.
    try_lock_purge: "select cast(pg_try_advisory_xact_lock(19528, 1) as integer)::bigint",
    // One round trip instead of four: data-modifying CTEs all run, to the
    // end, whether the final `select` reads them or not. The change takes
    // its position as `INSERT_CHANGE` does; `NOTIFY` as in
    // `ENQUEUE_WEBHOOK_DELIVERIES`.
    record_entry_write: concat!(
        "with counted as (",
        add_entry_counts!(),
        "), revised as (",
        insert_entry_revision!("date_trunc('milliseconds', now())"),
        "), ",
        pg_position_ctes!(),
        ", changed as (",
        insert_change!("position"),
        " returning seq
         ), enqueued as (",
        enqueue_deliveries!(
            "date_trunc('milliseconds', now())",
            pg_event_id!(),
            "changed.seq",
            "$5",
            "webhook_endpoints e cross join changed"
        ),
        " returning 1
         )
         select count(*) from (
             select pg_notify('llm_feedback_webhooks', '')
             from (select 1 from enqueued limit 1) as any_enqueued) as notified"
    ),
});

/// SQLite's position of a new change, under the one writer's lock: never
/// before the last change, so that (occurred_at, seq) order is commit order
/// even if the clock steps back.
macro_rules! sqlite_change_position {
    () => {
        concat!(
            "(select max(",
            sqlite_now_millis!(),
            ", coalesce((select occurred_at from changes order by seq desc limit 1), 0)
           ) as created_at) as position"
        )
    };
}

/// A new webhook event id on SQLite: `msg_` and 32 hex digits.
macro_rules! sqlite_event_id {
    () => {
        "'msg_' || lower(hex(randomblob(16)))"
    };
}

changes_dialect!(sqlx::Sqlite {
    position: ("", sqlite_change_position!()),
    try_lock_purge: "select 1",
    // No data-modifying CTEs in SQLite: the four statements and a `select`
    // in one call (sqlx runs them in turn, binding each `$N` by number), so
    // that the writer connection's thread is handed the write once. The
    // one writer makes the newest change this one.
    record_entry_write: concat!(
        add_entry_counts!(),
        "; ",
        insert_entry_revision!(sqlite_now_millis!()),
        "; ",
        insert_change!(sqlite_change_position!()),
        "; ",
        enqueue_deliveries!(
            sqlite_now_millis!(),
            sqlite_event_id!(),
            "(select max(seq) from changes)",
            "$5",
            "webhook_endpoints e"
        ),
        "; select changes()"
    ),
});

/// The statements of the changes feed built at run time.
impl<'q, DB> Statement<'q, DB>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Timestamp: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    /// One page of the feed in scope, in (occurred_at, seq) order, only
    /// changes that occurred before `horizon` if there is one.
    pub(super) fn changes(
        scope: &Scope,
        request: &ChangesRequest,
        horizon: Option<DateTime<Utc>>,
    ) -> Self {
        let mut query = Self::new("select ");
        query.push(CHANGE_COLUMNS);
        query.push(" from changes where tenant = ");
        query.push_bind(scope.tenant.as_str().to_owned());
        if let Some(user) = &scope.end_user {
            query.push(" and end_user = ");
            query.push_bind(user.as_str().to_owned());
        }
        if let Some(kind) = request.kind {
            query.push(" and kind = ");
            query.push_bind(kind.as_str());
        }
        if let Some(horizon) = horizon {
            query.push(" and occurred_at < ");
            query.push_bind(Timestamp(horizon));
        }
        if let Some(after) = request.after {
            query.push(" and (occurred_at, seq) > (");
            query.push_bind(Timestamp(after.occurred_at));
            query.push(", ");
            query.push_bind(after.seq);
            query.push(")");
        }
        query.push(" order by occurred_at, seq limit ");
        query.push_bind(i64::from(request.limit));
        query
    }
}

// Issue 14, webhooks: endpoints, and a delivery per (endpoint, change)
// enqueued in the change's transaction.

/// The columns of an endpoint, as `EndpointRow` reads them.
macro_rules! endpoint_columns {
    () => {
        "id, tenant, url, events, created_at, disabled_at"
    };
}

/// The endpoints of tenant `$1`, or all when `$1` is null, oldest first.
pub(super) const LIST_WEBHOOK_ENDPOINTS: &str = concat!(
    "select ",
    endpoint_columns!(),
    " from webhook_endpoints where cast($1 as text) is null or tenant = $1
     order by created_at, id"
);
/// Removes endpoint `$1` of tenant `$2` (any tenant when `$2` is null), and
/// with it its deliveries (`on delete cascade`).
pub(super) const DELETE_WEBHOOK_ENDPOINT: &str =
    "delete from webhook_endpoints where id = $1 and (cast($2 as text) is null or tenant = $2)";
/// Whether endpoint `$1` of tenant `$2` exists.
pub(super) const WEBHOOK_ENDPOINT_EXISTS: &str =
    "select count(*) from webhook_endpoints where id = $1 and tenant = $2";
/// The newest `$2` deliveries of endpoint `$1`, newest first.
pub(super) const LIST_WEBHOOK_DELIVERIES: &str = "select event_id, event_type, status, attempts,
         last_status_code, last_error, next_attempt_at
     from webhook_deliveries where endpoint_id = $1 order by id desc limit $2";
/// The deliveries of claim `$1`, with their endpoints and changes (`None`
/// columns: the change is no longer kept).
pub(super) const CLAIMED_DELIVERIES: &str = "select d.id, d.event_id, d.attempts, d.endpoint_id,
         e.url, e.secret, c.type as change_type, c.kind, c.output_id, c.end_user,
         cast(c.entry as text) as entry, c.occurred_at
     from webhook_deliveries d
     join webhook_endpoints e on e.id = d.endpoint_id
     left join changes c on c.seq = d.change_seq
     where d.lease_token = $1";
/// Records attempt of delivery `$1` under claim `$2`: status `$3`, answer
/// `$4`, error `$5`, next attempt `$6`; releases the claim. Nothing happens
/// if the claim ran out and was taken over.
pub(super) const RECORD_WEBHOOK_ATTEMPT: &str = "update webhook_deliveries set
         status = $3, attempts = attempts + 1, last_status_code = $4, last_error = $5,
         next_attempt_at = $6, locked_until = null, lease_token = null
     where id = $1 and lease_token = $2";
/// Disables endpoint `$1` at `$2` (its receiver answered `410`).
pub(super) const DISABLE_WEBHOOK_ENDPOINT: &str =
    "update webhook_endpoints set disabled_at = $2 where id = $1 and disabled_at is null";
/// Fails every pending delivery of endpoint `$1` (disabled).
pub(super) const FAIL_PENDING_WEBHOOK_DELIVERIES: &str = "update webhook_deliveries set
         status = 'failed', last_error = 'endpoint disabled: the receiver answered 410',
         next_attempt_at = null
     where endpoint_id = $1 and status = 'pending'";
/// Deliveries still to be made.
pub(super) const WEBHOOK_QUEUE_DEPTH: &str =
    "select count(*) from webhook_deliveries where status = 'pending'";

/// The webhook statements whose text differs between the databases.
pub(super) trait WebhookDialect: sqlx::Database {
    /// Stores endpoint `$1` of tenant `$2`: url `$3`, events `$4`, secret
    /// `$5`, created now; returns it.
    const INSERT_WEBHOOK_ENDPOINT: &'static str;
    /// In a change's transaction: a pending delivery of change `$2` (type
    /// `$3`) to each active endpoint of tenant `$1` subscribed to `$3`, due
    /// now, each with a new event id.
    const ENQUEUE_WEBHOOK_DELIVERIES: &'static str;
    /// Claims at most `$4` deliveries due at `$1` whose lease (if any) ran
    /// out: leased until `$2` under token `$3`.
    const CLAIM_WEBHOOK_DELIVERIES: &'static str;
}

/// Writes `impl WebhookDialect` for one database from its fragments:
/// `clock` (as in `dialect!`), `event_id` (a new `msg_…` id), `enqueue`
/// (what wraps the enqueue's insert: PostgreSQL tells the delivery workers
/// of every replica when it commits), `skip_locked` (what makes concurrent
/// claims pass each other's rows by).
macro_rules! webhook_dialect {
    ($database:ty {
        clock: $clock:expr,
        event_id: $event_id:expr,
        enqueue: ($enqueue_before:expr, $enqueue_after:expr),
        skip_locked: $skip_locked:expr $(,)?
    }) => {
        impl WebhookDialect for $database {
            const INSERT_WEBHOOK_ENDPOINT: &'static str = concat!(
                "insert into webhook_endpoints (id, tenant, url, events, secret, created_at)
                 values ($1, $2, $3, $4, $5, ",
                $clock,
                ") returning ",
                endpoint_columns!()
            );
            const ENQUEUE_WEBHOOK_DELIVERIES: &'static str = concat!(
                $enqueue_before,
                enqueue_deliveries!($clock, $event_id, "$2", "$3", "webhook_endpoints e"),
                $enqueue_after
            );
            const CLAIM_WEBHOOK_DELIVERIES: &'static str = concat!(
                "update webhook_deliveries set locked_until = $2, lease_token = $3
                 where id in (
                     select id from webhook_deliveries
                     where status = 'pending' and next_attempt_at <= $1
                       and (locked_until is null or locked_until < $1)
                     order by next_attempt_at limit $4",
                $skip_locked,
                ")"
            );
        }
    };
}

webhook_dialect!(sqlx::Postgres {
    clock: "date_trunc('milliseconds', now())",
    event_id: pg_event_id!(),
    // `NOTIFY` is delivered when (and only if) the transaction commits, to
    // every listening replica; only when something was enqueued.
    enqueue: (
        "with enqueued as (",
        " returning 1)
         select pg_notify('llm_feedback_webhooks', '') from (select 1 from enqueued limit 1) as any_enqueued"
    ),
    // Replicas claiming at once each lock different rows, none waits.
    skip_locked: " for update skip locked",
});

webhook_dialect!(sqlx::Sqlite {
    clock: sqlite_now_millis!(),
    event_id: sqlite_event_id!(),
    // The process's own writes wake its worker (`Backend::deliveries_enqueued`).
    enqueue: ("", ""),
    // One process, one writer: a claim is always alone.
    skip_locked: "",
});
