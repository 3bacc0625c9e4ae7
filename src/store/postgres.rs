//! The PostgreSQL store: production.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{FromRow, Row};

use super::{
    ApiKeyRecord, ApiKeyRow, ChangeParams, ConnectError, FeedbackRow, NewApiKey, Revocation, Store,
    StoreOptions, StoreResult,
};
use crate::feedback::{
    Description, EndUserId, Feedback, FeedbackChanges, FeedbackKey, ModelName, NewFeedback, Rating,
    Scope, TenantId,
};

/// Columns of a feedback entry, in `FeedbackRow` order.
const FEEDBACK_COLUMNS: &str =
    "output_id, kind, rating, description, model, end_user, created_at, updated_at";

/// Entries stored through a PostgreSQL connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects and applies pending migrations (an advisory lock keeps
    /// replicas that start together from migrating twice).
    pub async fn connect(options: &StoreOptions) -> Result<Self, ConnectError> {
        let url = options.url.redacted();
        let connect_options = PgConnectOptions::from_str(options.url.as_str())
            .map_err(|source| ConnectError::Connect {
                url: url.clone(),
                source,
            })?
            .application_name("llm-feedback");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options)
            .await
            .map_err(|source| ConnectError::Connect {
                url: url.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|source| ConnectError::Migrate { url, source })?;
        Ok(Self { pool })
    }

    /// The pool, for metrics and tests.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl<'r> FromRow<'r, PgRow> for FeedbackRow {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            output_id: row.try_get("output_id")?,
            kind: row.try_get("kind")?,
            rating: row.try_get("rating")?,
            description: row.try_get("description")?,
            model: row.try_get("model")?,
            end_user: row.try_get("end_user")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

impl<'r> FromRow<'r, PgRow> for ApiKeyRow {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            name: row.try_get("name")?,
            prefix: row.try_get("prefix")?,
            created_at: row.try_get("created_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

fn into_feedback(row: Option<FeedbackRow>) -> StoreResult<Option<Feedback>> {
    row.map(Feedback::try_from).transpose()
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_feedback(
        &self,
        scope: &Scope,
        new: &NewFeedback,
    ) -> StoreResult<Option<Feedback>> {
        // One statement: of concurrent creates of one key exactly one inserts,
        // the others see the conflict and get no row back.
        let sql = format!(
            "insert into feedback
                 (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
             values ($1, $2, $3, $4, $5, $6, $7,
                     date_trunc('milliseconds', now()), date_trunc('milliseconds', now()))
             on conflict (tenant, kind, output_id) do nothing
             returning {FEEDBACK_COLUMNS}"
        );
        let row = sqlx::query_as::<_, FeedbackRow>(&sql)
            .bind(scope.tenant.as_str())
            .bind(new.key.kind.as_str())
            .bind(new.key.id.as_str())
            .bind(scope.end_user.as_ref().map(EndUserId::as_str))
            .bind(new.rating.map(Rating::as_str))
            .bind(new.description.as_ref().map(Description::as_str))
            .bind(new.model.as_ref().map(ModelName::as_str))
            .fetch_optional(&self.pool)
            .await?;
        into_feedback(row)
    }

    async fn update_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
        changes: &FeedbackChanges,
    ) -> StoreResult<Option<Feedback>> {
        // One statement, each column written only when its field was present:
        // the row lock makes concurrent updates of different fields compose.
        let sql = format!(
            "update feedback set
                 rating = case when $5 then $6 else rating end,
                 description = case when $7 then $8 else description end,
                 updated_at = greatest(date_trunc('milliseconds', now()), updated_at)
             where tenant = $1 and kind = $2 and output_id = $3
               and ($4::text is null or end_user = $4)
             returning {FEEDBACK_COLUMNS}"
        );
        let params = ChangeParams::from(changes);
        let row = sqlx::query_as::<_, FeedbackRow>(&sql)
            .bind(scope.tenant.as_str())
            .bind(key.kind.as_str())
            .bind(key.id.as_str())
            .bind(scope.end_user.as_ref().map(EndUserId::as_str))
            .bind(params.set_rating)
            .bind(params.rating)
            .bind(params.set_description)
            .bind(params.description)
            .fetch_optional(&self.pool)
            .await?;
        into_feedback(row)
    }

    async fn find_feedback(
        &self,
        scope: &Scope,
        key: &FeedbackKey,
    ) -> StoreResult<Option<Feedback>> {
        let sql = format!(
            "select {FEEDBACK_COLUMNS} from feedback
             where tenant = $1 and kind = $2 and output_id = $3
               and ($4::text is null or end_user = $4)"
        );
        let row = sqlx::query_as::<_, FeedbackRow>(&sql)
            .bind(scope.tenant.as_str())
            .bind(key.kind.as_str())
            .bind(key.id.as_str())
            .bind(scope.end_user.as_ref().map(EndUserId::as_str))
            .fetch_optional(&self.pool)
            .await?;
        into_feedback(row)
    }

    async fn insert_api_key(&self, key: &NewApiKey) -> StoreResult<bool> {
        let result = sqlx::query(
            "insert into api_keys (id, tenant, name, prefix, secret_hash, created_at)
             values ($1, $2, $3, $4, $5, date_trunc('milliseconds', now()))
             on conflict do nothing",
        )
        .bind(&key.id)
        .bind(key.tenant.as_str())
        .bind(key.name.as_deref())
        .bind(&key.prefix)
        .bind(&key.secret_hash)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn find_api_key(&self, secret_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sqlx::query_as::<_, ApiKeyRow>(
            "select id, tenant, name, prefix, created_at, revoked_at
             from api_keys where secret_hash = $1",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ApiKeyRecord::try_from).transpose()
    }

    async fn list_api_keys(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>> {
        let rows = sqlx::query_as::<_, ApiKeyRow>(
            "select id, tenant, name, prefix, created_at, revoked_at
             from api_keys where $1::text is null or tenant = $1
             order by created_at, id",
        )
        .bind(tenant.map(TenantId::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ApiKeyRecord::try_from).collect()
    }

    async fn revoke_api_key(&self, id: &str) -> StoreResult<Revocation> {
        let previous: Option<(Option<chrono::DateTime<chrono::Utc>>,)> = sqlx::query_as(
            "with old as (select id, revoked_at from api_keys where id = $1 for update)
             update api_keys k set revoked_at = coalesce(old.revoked_at, date_trunc('milliseconds', now()))
             from old where k.id = old.id
             returning old.revoked_at",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match previous {
            None => Revocation::NotFound,
            Some((None,)) => Revocation::Revoked,
            Some((Some(_),)) => Revocation::AlreadyRevoked,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
