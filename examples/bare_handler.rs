//! The yardstick of `bench/perf.sh`: a bare axum + sqlx handler that runs
//! only the service's statements, with sqlx's default pool and nothing else:
//! no authentication, validation beyond serde, logs, metrics or limits.
//! The service should beat it while doing all of those.
//!
//! `DATABASE_URL` (a database the service has migrated), `LISTEN_ADDR`,
//! `WORKER_THREADS` as for the service; entries belong to tenant `default`.

use axum::Router;
use axum::extract::{Json, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

macro_rules! columns {
    () => {
        "output_id, rating, description, model, created_at, updated_at"
    };
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = std::env::var("WORKER_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        runtime.worker_threads(threads);
    }
    runtime.enable_all().build()?.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let pool = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8081".to_owned());
    let app = Router::new()
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/api/v1/llm/feedback/{kind}", post(create))
        .route("/api/v1/llm/feedback/{kind}/{id}", get(read).put(update))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[derive(Deserialize)]
struct NewEntry {
    id: String,
    rating: Option<String>,
    description: Option<String>,
    model: Option<String>,
}

#[derive(Deserialize)]
struct Changes {
    #[serde(default)]
    rating: Option<Value>,
    #[serde(default)]
    description: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rating: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    created_at: String,
    updated_at: String,
}

fn entry(row: &PgRow) -> Result<Entry, sqlx::Error> {
    let time = |column| -> Result<String, sqlx::Error> {
        let at: DateTime<Utc> = row.try_get(column)?;
        Ok(at.to_rfc3339_opts(SecondsFormat::Millis, true))
    };
    Ok(Entry {
        id: row.try_get("output_id")?,
        rating: row.try_get("rating")?,
        description: row.try_get("description")?,
        model: row.try_get("model")?,
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
    })
}

fn reply(status: StatusCode, row: Result<Option<PgRow>, sqlx::Error>) -> Response {
    match row.and_then(|row| row.as_ref().map(entry).transpose()) {
        Ok(Some(entry)) => (status, Json(entry)).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn create(
    State(pool): State<PgPool>,
    Path(kind): Path<String>,
    Json(new): Json<NewEntry>,
) -> Response {
    let row = sqlx::query(concat!(
        "insert into feedback
             (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
         values ('default', $1, $2, null, $3, $4, $5,
                 date_trunc('milliseconds', now()), date_trunc('milliseconds', now()))
         on conflict (tenant, kind, output_id) do nothing
         returning ",
        columns!()
    ))
    .bind(kind)
    .bind(new.id)
    .bind(new.rating)
    .bind(new.description)
    .bind(new.model)
    .fetch_optional(&pool)
    .await;
    reply(StatusCode::CREATED, row)
}

async fn update(
    State(pool): State<PgPool>,
    Path((kind, id)): Path<(String, String)>,
    Json(changes): Json<Changes>,
) -> Response {
    let text = |value: &Option<Value>| value.as_ref().and_then(Value::as_str).map(str::to_owned);
    let row = sqlx::query(concat!(
        "update feedback set
             rating = case when $3 then $4 else rating end,
             description = case when $5 then $6 else description end,
             updated_at = greatest(date_trunc('milliseconds', now()), updated_at)
         where tenant = 'default' and kind = $1 and output_id = $2
         returning ",
        columns!()
    ))
    .bind(kind)
    .bind(id)
    .bind(changes.rating.is_some())
    .bind(text(&changes.rating))
    .bind(changes.description.is_some())
    .bind(text(&changes.description))
    .fetch_optional(&pool)
    .await;
    reply(StatusCode::OK, row)
}

async fn read(State(pool): State<PgPool>, Path((kind, id)): Path<(String, String)>) -> Response {
    let row = sqlx::query(concat!(
        "select ",
        columns!(),
        " from feedback
         where tenant = 'default' and kind = $1 and output_id = $2"
    ))
    .bind(kind)
    .bind(id)
    .fetch_optional(&pool)
    .await;
    reply(StatusCode::OK, row)
}
