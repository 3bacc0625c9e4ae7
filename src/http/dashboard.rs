//! `GET /dashboard`: the built-in dashboard (`assets/dashboard.*`), embedded
//! in the binary. No credential: the page asks for a tenant API key and
//! calls the API with it (see API.md, "The dashboard").

use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};

/// The page, its script and its style sheet, as written in the repository.
const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard.css");
const DASHBOARD_ICON: &str = include_str!("../../assets/dashboard-icon.svg");

/// Only the page's own files: no inline script or style, no other origin,
/// no framing.
const POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard`: the page.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "operations",
    summary = "The built-in dashboard (HTML; asks for a tenant API key)",
    responses((status = 200, description = "The page", content_type = "text/html", body = String,
        headers(("Content-Security-Policy" = String, description = "default-src 'self' and stricter"))))
)]
pub(crate) async fn dashboard_html() -> Response {
    asset("text/html; charset=utf-8", DASHBOARD_HTML)
}

/// `GET /dashboard/app.js`: the page's script (an ES module).
#[utoipa::path(
    get,
    path = "/dashboard/app.js",
    tag = "operations",
    summary = "The dashboard's script",
    responses((status = 200, description = "The module", content_type = "text/javascript", body = String))
)]
pub(crate) async fn dashboard_js() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

/// `GET /dashboard/app.css`: the page's style sheet.
#[utoipa::path(
    get,
    path = "/dashboard/app.css",
    tag = "operations",
    summary = "The dashboard's style sheet",
    responses((status = 200, description = "The style sheet", content_type = "text/css", body = String))
)]
pub(crate) async fn dashboard_css() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// `GET /dashboard/icon.svg`: the page's icon.
#[utoipa::path(
    get,
    path = "/dashboard/icon.svg",
    tag = "operations",
    summary = "The dashboard's icon",
    responses((status = 200, description = "The icon", content_type = "image/svg+xml", body = String))
)]
pub(crate) async fn dashboard_icon() -> Response {
    asset("image/svg+xml", DASHBOARD_ICON)
}
