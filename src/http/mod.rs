//! The HTTP layer: router, layers, fallbacks.

mod connection;
mod error;
mod export;
mod extract;
mod feedback;
mod list;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

pub use error::{AppError, ErrorCause, Result};
pub use feedback::format_timestamp;

use crate::auth::{self, Authenticator};
use crate::store::Store;
use crate::telemetry;

/// Bodies up to this many bytes are read; larger ones are 413.
pub const BODY_LIMIT_BYTES: usize = 65_536;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Where entries live.
    pub store: Arc<dyn Store>,
    /// Verifies API keys.
    pub authenticator: Authenticator,
    /// The most rows one CSV export holds.
    pub export_max_rows: u64,
}

/// The whole service: every route, with its layers.
pub fn router(state: AppState) -> Router {
    let feedback = Router::new()
        .route(
            "/api/v1/llm/feedback/{kind}",
            post(feedback::create_feedback).get(list::list_feedback),
        )
        .route(
            "/api/v1/llm/feedback/{kind}/{id}",
            get(feedback::get_feedback).put(feedback::update_feedback),
        )
        // Static segments win over `{id}`: GET and PUT here address the entry
        // named `batch`, POST is batch get.
        .route(
            "/api/v1/llm/feedback/{kind}/batch",
            post(list::batch_get_feedback)
                .get(feedback::get_feedback)
                .put(feedback::update_feedback),
        )
        .route(
            "/api/v1/llm/feedback/export/{kind}",
            get(export::export_feedback),
        );
    Router::new()
        .merge(feedback)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn(telemetry::record_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        // Outside routing: authentication guards unknown `/api/v1` paths too.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        .layer(middleware::from_fn(connection::close_if_body_unread))
        .layer(middleware::from_fn(telemetry::trace_request))
        .with_state(state)
}

/// `GET /healthz`: the process is up; never touches the database.
async fn healthz() -> &'static str {
    "ok"
}

/// How long `/readyz` waits for the database.
const READINESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /readyz`: 200 when the database answers within a second, else 503.
async fn readyz(axum::extract::State(app): axum::extract::State<AppState>) -> Result<&'static str> {
    match tokio::time::timeout(READINESS_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => Ok("ready"),
        Ok(Err(err)) => Err(AppError::Unavailable(format!("readiness: {err}"))),
        Err(_) => Err(AppError::Unavailable(
            "readiness: the database did not answer within 1 s".to_owned(),
        )),
    }
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route")
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
