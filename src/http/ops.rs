//! Operational endpoints: no key needed, never under `/api/v1`.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::openapi::OpenApiDocumentSchema;
use super::{AppError, AppState, Result};
use crate::telemetry::{self, DB_POOL_CONNECTIONS, DB_POOL_MAX_CONNECTIONS};

/// How long `/readyz` waits for the database.
const READINESS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one readiness outcome is served again: however often `/readyz`
/// is called, the database is asked at most once in this time.
const READINESS_REUSED_FOR: Duration = Duration::from_secs(1);

/// The last readiness outcome and when it was known. Callers that find it
/// too old queue on the lock, so that concurrent callers share one ping.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    async fn check(&self, store: &dyn crate::store::Store) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((known_at, outcome)) = &*last {
            if known_at.elapsed() < READINESS_REUSED_FOR {
                return outcome.clone();
            }
        }
        let outcome = match tokio::time::timeout(READINESS_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("readiness: {err}")),
            Err(_) => Err("readiness: the database did not answer within 1 s".to_owned()),
        };
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }
}

/// `GET /healthz`: the process is up; never touches the database.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process runs (never touches the database)",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String, example = "ok"))
)]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when no background worker is failing (see
/// `crate::worker`) and the database answers within a second, else 503; an
/// outcome of the database check is reused for a second (see [`Readiness`]).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the database answers within a second",
    responses((status = 200, description = "Ready", content_type = "text/plain", body = String, example = "ready"))
)]
pub(crate) async fn readyz(State(app): State<AppState>) -> Result<&'static str> {
    if let Some(failing) = app.workers.failing() {
        return Err(AppError::Unavailable(format!("readiness: {failing}")));
    }
    app.readiness
        .check(app.store.as_ref())
        .await
        .map(|()| "ready")
        .map_err(AppError::Unavailable)
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String))
)]
pub(crate) async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    for pool in app.store.pool_stats() {
        let open = f64::from(pool.open);
        let idle = f64::from(pool.idle);
        metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => pool.pool, "state" => "idle").set(idle);
        metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => pool.pool, "state" => "in_use")
            .set(open - idle);
        metrics::gauge!(DB_POOL_MAX_CONNECTIONS, "pool" => pool.pool).set(f64::from(pool.max));
    }
    telemetry::publish_dropped_log_lines();
    let handle = telemetry::metrics_handle();
    handle.run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
}

/// `GET /openapi.json`: this service's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "The OpenAPI 3.1 document of every route",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = inline(OpenApiDocumentSchema)))
)]
pub(crate) async fn openapi_json(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/json")],
        app.openapi_json.to_string(),
    )
}
