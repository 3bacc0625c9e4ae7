//! The HTTP layer: router, layers, fallbacks.

mod connection;
mod error;
mod export;
mod extract;
mod feedback;
mod limits;
mod list;
mod openapi;
mod ops;
mod serve;
mod widget;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{AppError, ErrorCause, Result};
pub use feedback::format_timestamp;
pub use limits::KeyRateLimiter;
use limits::Limits;
pub use serve::{ConnectionSettings, serve};

use crate::auth::{self, Authenticator};
use crate::config::CorsOrigin;
use crate::store::Store;
use crate::telemetry;
use crate::worker::WorkerHealth;

/// Bodies up to this many bytes are read; larger ones are 413.
pub const BODY_LIMIT_BYTES: usize = 65_536;

/// What every handler can reach. Every middleware and handler clones it,
/// so it is one `Arc`: a clone is one atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<AppServices>);

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

/// The services behind `AppState`.
pub struct AppServices {
    /// Where entries live.
    pub store: Arc<dyn Store>,
    /// Verifies API keys.
    pub authenticator: Authenticator,
    /// The per-key rate limit, when configured.
    pub rate_limiter: Option<Arc<KeyRateLimiter>>,
    /// The most rows one CSV export holds.
    pub export_max_rows: u64,
    /// Exports streaming at once, and their chunk deadline.
    pub(crate) exports: export::ExportLimits,
    /// The OpenAPI document, serialized once.
    pub openapi_json: Arc<str>,
    /// The last `/readyz` outcome.
    pub(crate) readiness: ops::Readiness,
    /// The background workers' health, part of `/readyz`.
    pub(crate) workers: WorkerHealth,
}

/// Settings of the layers around the routes.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// API requests in flight at once before shedding.
    pub max_concurrent_requests: usize,
    /// Deadline of each request.
    pub request_timeout: std::time::Duration,
    /// Browser origins allowed (`*` for any); empty: CORS off.
    pub cors_allowed_origins: Vec<CorsOrigin>,
}

/// Every route, each with its OpenAPI annotation: what is served is what is
/// documented.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(feedback::create_feedback, list::list_feedback))
        .routes(routes!(feedback::get_feedback, feedback::update_feedback))
        // Static segments win over `{id}`: GET and PUT here address the entry
        // named `batch`, POST is batch get.
        .routes(routes!(
            list::batch_get_feedback,
            feedback::get_feedback_named_batch,
            feedback::update_feedback_named_batch
        ))
        .routes(routes!(export::export_feedback))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
        .routes(routes!(widget::widget_js))
}

/// The OpenAPI document of every route, as served.
#[must_use]
pub fn openapi_document() -> serde_json::Value {
    routes_and_document().1
}

fn routes_and_document() -> (Router<AppState>, serde_json::Value) {
    let (service_routes, document) = routes().split_for_parts();
    (service_routes, openapi::finish(document))
}

/// The whole service: every route, with its layers.
pub fn router(
    store: Arc<dyn Store>,
    authenticator: Authenticator,
    workers: WorkerHealth,
    rate_limiter: Option<Arc<KeyRateLimiter>>,
    export_max_rows: u64,
    settings: &HttpSettings,
) -> Router {
    let (service_routes, document) = routes_and_document();
    let openapi_json = document.to_string();
    let state = AppState(Arc::new(AppServices {
        authenticator,
        store,
        rate_limiter,
        export_max_rows,
        exports: export::ExportLimits::new(settings.request_timeout),
        openapi_json: openapi_json.into(),
        readiness: ops::Readiness::default(),
        workers,
    }));
    let limits = Limits::new(settings.max_concurrent_requests, settings.request_timeout);
    let layered = service_routes
        .route_layer(middleware::from_fn(telemetry::record_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        // Outside routing: authentication guards unknown `/api/v1` paths too.
        .layer(middleware::from_fn_with_state(
            Guards {
                limits,
                state: state.clone(),
            },
            guard,
        ));
    // CORS outside authentication: preflights carry no credentials.
    let layered = match cors_layer(&settings.cors_allowed_origins) {
        Some(cors) => layered.layer(cors),
        None => layered,
    };
    layered
        // A panic in a handler still gets the 500 envelope, and its log line.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(telemetry::trace_request))
        .with_state(state)
}

/// What the guard layer needs.
#[derive(Clone)]
struct Guards {
    limits: Limits,
    state: AppState,
}

/// The API's guards, outermost first: `Connection: close` for unread
/// bodies, authentication, then load shedding and the request deadline.
/// Authentication comes before the in-flight bound so that refused
/// credentials never hold a slot (API.md: floods of bad credentials). One
/// layer rather than three: every `from_fn` layer costs a clone of the inner
/// service and two boxes per request.
async fn guard(
    State(Guards { limits, state }): State<Guards>,
    request: Request,
    next: Next,
) -> Response {
    connection::close_if_body_unread(request, move |request| async move {
        auth::require_api_key(&state, request, move |request| async move {
            limits::enforce_limits(&limits, request, move |request| next.run(request)).await
        })
        .await
        .into_response()
    })
    .await
}

/// CORS for browser frontends, when origins are configured.
fn cors_layer(origins: &[CorsOrigin]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.contains(&CorsOrigin::Any) {
        AllowOrigin::any()
    } else {
        // `CorsOrigin::parse` let only ASCII origins through: each is a valid
        // header value.
        AllowOrigin::list(origins.iter().filter_map(|origin| match origin {
            CorsOrigin::Exact(origin) => HeaderValue::from_str(origin).ok(),
            CorsOrigin::Any => None,
        }))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::PUT])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-on-behalf-of"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-export-truncated"),
                header::RETRY_AFTER,
                header::CONTENT_DISPOSITION,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The answer to a request whose handler panicked; the message is logged only.
#[expect(
    clippy::needless_pass_by_value,
    reason = "CatchPanicLayer hands the payload over by value"
)]
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a non-string panic payload");
    AppError::Internal(format!("handler panicked: {message}")).into_response()
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route")
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
