//! `GET /widget.js`: the browser widget (`assets/widget.js`), embedded in the
//! binary. No credential: pages load it cross-origin as a module.

use std::sync::LazyLock;

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The module, as written in the repository.
pub(crate) const WIDGET_JS: &str = include_str!("../../assets/widget.js");

/// A strong tag of the bytes served, computed once: the first 128 bits of
/// their SHA-256, quoted.
static WIDGET_ETAG: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(WIDGET_JS.as_bytes());
    format!("\"{}\"", hex::encode(&digest[..16]))
});

/// `GET /widget.js`: the `<llm-feedback>` custom element (see API.md,
/// "Feedback tokens and the browser widget"); `304` when `If-None-Match`
/// names the current tag.
#[utoipa::path(
    get,
    path = "/widget.js",
    tag = "operations",
    summary = "The browser widget: an ES module defining <llm-feedback>",
    responses(
        (status = 200, description = "The module (cacheable for an hour, loadable from any origin)",
            content_type = "text/javascript", body = String,
            headers(
                ("ETag" = String, description = "Strong tag of the module's bytes"),
                ("Cache-Control" = String, description = "public, max-age=3600"),
            )),
        (status = 304, description = "Not modified: `If-None-Match` names the current tag",
            headers(("ETag" = String, description = "Strong tag of the module's bytes"))),
    )
)]
pub(crate) async fn widget_js(headers: HeaderMap) -> Response {
    let etag = WIDGET_ETAG.as_str();
    let common = [
        (ETAG, etag),
        (CACHE_CONTROL, "public, max-age=3600"),
        (ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    if headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| none_match_names(value, etag))
    {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
        WIDGET_JS,
    )
        .into_response()
}

/// Whether an `If-None-Match` value (`*` or a list of tags) names `etag`,
/// by weak comparison as RFC 9110 13.1.2 asks (`W/"x"` names `"x"`).
fn none_match_names(value: &str, etag: &str) -> bool {
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_strong_quoted_and_stable() {
        assert!(WIDGET_ETAG.starts_with('"') && WIDGET_ETAG.ends_with('"'));
        assert_eq!(WIDGET_ETAG.len(), 34);
        assert!(!WIDGET_ETAG.starts_with("W/"));
    }

    #[test]
    fn if_none_match_lists_star_and_weak_tags_match() {
        let etag = WIDGET_ETAG.as_str();
        assert!(none_match_names(etag, etag));
        assert!(none_match_names("*", etag));
        assert!(none_match_names(&format!("\"other\", W/{etag}"), etag));
        assert!(!none_match_names("\"other\"", etag));
        assert!(!none_match_names("", etag));
    }
}
