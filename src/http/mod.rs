//! The HTTP layer: router, layers, fallbacks.
//!
//! Two routers: `/api/v1` (authenticated, bounded; each route states what
//! it requires) merged into the outer one under its prefix (operational
//! routes, fallbacks, the layers every request passes).

mod admin_export;
mod authn;
mod changes;
mod conditional;
mod connection;
mod dashboard;
mod error;
mod export;
mod extract;
mod feedback;
mod history;
mod limits;
mod list;
mod on_response;
mod openapi;
mod ops;
mod serve;
mod stats;
mod tokens;
mod trace;
mod webhooks;
mod widget;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::any;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

pub use error::{AppError, ErrorCause, Result};
pub use feedback::format_timestamp;
pub use limits::KeyRateLimiter;
use limits::Limits;
use openapi::Surface;
pub use serve::{ConnectionSettings, serve};

use crate::auth::{Authenticator, Requirement};
use crate::config::CorsOrigin;
use crate::store::Store;
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
    /// Starts admin exports and reads their status.
    pub exporter: crate::admin_export::Exporter,
    /// Verifies API keys.
    pub authenticator: Authenticator,
    /// The per-key and per-token rate limits, when configured.
    pub rate_limiters: RateLimiters,
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
    /// How long idempotent outcomes are kept.
    pub(crate) idempotency_ttl: std::time::Duration,
    /// `WEBHOOK_ALLOW_PRIVATE_TARGETS`.
    pub(crate) webhook_allow_private: bool,
    /// How many days changes are kept (`CHANGE_RETENTION_DAYS`): older cursors are `410`.
    pub(crate) change_retention_days: u32,
}

/// The rate limits of authenticated requests, each keyed by its credential.
#[derive(Debug, Clone, Default)]
pub struct RateLimiters {
    /// Per API key (`RATE_LIMIT_PER_SECOND`); off when `None`.
    pub keys: Option<Arc<KeyRateLimiter>>,
    /// Per feedback token (`TOKEN_RATE_LIMIT_PER_MINUTE`).
    pub tokens: Option<Arc<KeyRateLimiter>>,
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
    /// How long idempotent outcomes are kept (`IDEMPOTENCY_TTL_SECS`).
    pub idempotency_ttl: std::time::Duration,
    /// Whether webhook endpoints may target private addresses and `http://`.
    pub webhook_allow_private: bool,
    /// How many days changes are kept (`CHANGE_RETENTION_DAYS`).
    pub change_retention_days: u32,
}

/// The `/api/v1` operations, each with its OpenAPI annotation (what is
/// served is what is documented) and the [`Requirement`] it states, checked
/// by a layer of its own before any of its extractors run.
fn api_routes() -> OpenApiRouter<AppState> {
    let routes = OpenApiRouter::new()
        .routes(requiring(
            Requirement::OneOutput,
            routes!(feedback::create_feedback),
        ))
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(list::list_feedback),
        ))
        .routes(requiring(
            Requirement::OneOutput,
            routes!(feedback::get_feedback, feedback::update_feedback),
        ))
        // Static segments win over `{id}`: GET and PUT here address the entry
        // named `batch`, POST is batch get.
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(list::batch_get_feedback),
        ))
        .routes(requiring(
            Requirement::OneOutput,
            routes!(
                feedback::get_feedback_named_batch,
                feedback::update_feedback_named_batch
            ),
        ))
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(export::export_feedback),
        ))
        // Safe writes (issue 13): delete, history, erasure.
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(history::delete_feedback),
        ))
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(history::delete_feedback_named_batch),
        ))
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(history::list_revisions),
        ))
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(history::list_revisions_named_batch),
        ))
        .routes(requiring(
            Requirement::EraseEndUsers,
            routes!(history::erase_end_user),
        ))
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(stats::feedback_stats),
        ))
        // MKA1's admin export; `status` is a static segment: it wins over
        // `GET /export/{kind}`.
        .routes(requiring(
            Requirement::AllTenants,
            routes!(admin_export::start_export),
        ))
        .routes(requiring(
            Requirement::AllTenants,
            routes!(admin_export::export_status),
        ))
        // Webhooks (issue 14); static segments again.
        .routes(requiring(
            Requirement::ManageWebhooks,
            routes!(webhooks::create_webhook, webhooks::list_webhooks),
        ))
        .routes(requiring(
            Requirement::ManageWebhooks,
            routes!(webhooks::delete_webhook),
        ))
        .routes(requiring(
            Requirement::ManageWebhooks,
            routes!(webhooks::list_webhook_deliveries),
        ))
        // Issue 14: the changes feed (a static segment, like `tokens`).
        .routes(requiring(
            Requirement::TenantFeedback,
            routes!(changes::list_changes),
        ))
        // A static segment again: `POST /tokens` is not a create of kind `tokens`.
        .routes(requiring(
            Requirement::MintTokens,
            routes!(tokens::create_token),
        ));
    described(routes, Surface::Api)
}

/// The operational routes: no credential, never shed.
fn operational_routes() -> OpenApiRouter<AppState> {
    let routes = OpenApiRouter::new()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
        .routes(routes!(widget::widget_js))
        .routes(routes!(dashboard::dashboard_html))
        .routes(routes!(dashboard::dashboard_js))
        .routes(routes!(dashboard::dashboard_css))
        .routes(routes!(dashboard::dashboard_icon));
    described(routes, Surface::Operational)
}

/// Puts `requirement` on the routes of one `routes!` (a route layer: not on
/// the 405 fallback, which the API layers already guard).
///
/// Also puts the route under [`API_PREFIX`]: handlers document their paths
/// relative to it.
fn requiring(
    requirement: Requirement,
    (schemas, mut paths, routes): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    paths.paths = std::mem::take(&mut paths.paths)
        .into_iter()
        .map(|(path, item)| (format!("{API_PREFIX}{path}"), item))
        .collect();
    (
        schemas,
        paths,
        // One call: axum boxes each layer it is given.
        routes.route_layer(authn::Require(requirement)),
    )
}

fn described(mut routes: OpenApiRouter<AppState>, surface: Surface) -> OpenApiRouter<AppState> {
    openapi::describe(routes.get_openapi_mut(), surface);
    routes
}

/// Where the API router hangs.
const API_PREFIX: &str = "/api/v1";
/// Every other path under it: answered by the API router (`401` without a
/// key, `404` with one), behind the API layers.
pub(super) const API_UNKNOWN: [&str; 3] = ["/api/v1", "/api/v1/", "/api/v1/{*rest}"];

/// The OpenAPI document of every route, as served.
#[must_use]
pub fn openapi_document() -> serde_json::Value {
    let (_, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(api_routes())
        .merge(operational_routes())
        .split_for_parts();
    openapi::finish(document)
}

/// The whole service: every route, with its layers.
pub fn router(
    store: Arc<dyn Store>,
    authenticator: Authenticator,
    workers: WorkerHealth,
    rate_limiters: RateLimiters,
    export_max_rows: u64,
    settings: &HttpSettings,
    exporter: crate::admin_export::Exporter,
) -> Router {
    let state = AppState(Arc::new(AppServices {
        authenticator,
        store,
        exporter,
        rate_limiters,
        export_max_rows,
        exports: export::ExportLimits::new(settings.request_timeout),
        openapi_json: openapi_document().to_string().into(),
        readiness: ops::Readiness::default(),
        workers,
        idempotency_ttl: settings.idempotency_ttl,
        webhook_allow_private: settings.webhook_allow_private,
        change_retention_days: settings.change_retention_days,
    }));
    let limits = Limits::new(settings.max_concurrent_requests, settings.request_timeout);
    // Layers of the API router, outermost first (fallbacks included, so
    // unknown `/api/v1` paths need a key too). They wrap each route, after
    // routing: the route template is recorded first, so that a 401 or a 503
    // counts under its route. One `layer` call: axum boxes
    // each layer it is given. Authentication comes before the in-flight bound so that
    // refused credentials never hold a slot (API.md: floods of bad
    // credentials); `Connection: close` sees every answer given before the
    // body was read.
    //
    // The API router is merged, not `nest`ed: its routes carry the prefix
    // (see `requiring`), because `nest` rebuilds every request's URI to strip
    // the prefix (3,000 instructions, 3 % of a `GET`; callgrind).
    let (api, _) = api_routes().split_for_parts();
    let api = API_UNKNOWN
        .into_iter()
        .fold(api, |api, path| api.route(path, any(not_found)))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(trace::RecordRouteLayer)
                .layer(connection::CloseIfBodyUnreadLayer)
                .layer(authn::AuthenticateLayer(state.clone()))
                .layer(limits::InFlightLayer(limits.clone()))
                .layer(limits::DeadlineLayer(limits.clone())),
        );
    let (operational, _) = operational_routes().split_for_parts();
    let operational = operational
        .route_layer(trace::RecordRouteLayer)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(limits::DeadlineLayer(limits));
    let layered = Router::new()
        .merge(api)
        .merge(operational)
        .fallback(not_found);
    // The outer layers, outermost first, in one call (axum boxes each layer
    // it is given): the request span and line; a panic in a handler still
    // gets the 500 envelope, and its log line; CORS outside authentication
    // (preflights carry no credentials); the body limit.
    layered
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(trace::trace_request))
                .layer(CatchPanicLayer::custom(panic_response))
                .option_layer(cors_layer(&settings.cors_allowed_origins))
                .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES)),
        )
        .with_state(state)
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
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-on-behalf-of"),
                HeaderName::from_static("x-request-id"),
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                header::ETAG,
                HeaderName::from_static("idempotent-replayed"),
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
