//! `GET /widget.js`: the browser widget, served without a credential,
//! cacheable, loadable as a module from any origin. Its behaviour in a real
//! browser is checked by `scripts/browser_check.sh`.

use llm_feedback::config::CorsOrigin;

use crate::helpers::{Backend, Reply, TestApp, spawn_app_with};

both_stores!(
    the_widget_is_a_cacheable_javascript_module_served_without_a_key,
    a_matching_if_none_match_is_304_without_a_body,
);
per_store!(the_widget_loads_from_any_origin_while_cors_names_one_for_the_api);

async fn get_widget(app: &TestApp, if_none_match: Option<&str>) -> Reply {
    let mut request = app.client.get(app.url("/widget.js"));
    if let Some(tag) = if_none_match {
        request = request.header("If-None-Match", tag);
    }
    app.send(request).await
}

async fn the_widget_is_a_cacheable_javascript_module_served_without_a_key(app: TestApp) {
    let bare = app.client.get(app.url("/widget.js"));
    let bad_key = app
        .client
        .get(app.url("/widget.js"))
        .bearer_auth("not-a-key");
    let mut tags = Vec::new();
    for (what, request) in [("no key", bare), ("a bad key", bad_key)] {
        let reply = app.send(request).await;

        assert_eq!(reply.status, 200, "{what}: {}", reply.text);
        assert_eq!(
            reply.header("content-type"),
            Some("text/javascript; charset=utf-8"),
            "{what}"
        );
        assert_eq!(
            reply.header("cache-control"),
            Some("public, max-age=3600"),
            "{what}"
        );
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("*"),
            "{what}"
        );
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert!(reply.header("www-authenticate").is_none(), "{what}");
        let etag = reply.header("etag").unwrap_or_default().to_owned();
        assert!(
            etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
            "{what}: a strong tag, got {etag:?}"
        );
        assert!(
            reply
                .text
                .contains("customElements.define(\"llm-feedback\""),
            "{what}: {}",
            reply.text
        );
        tags.push(etag);
    }
    assert_eq!(tags[0], tags[1], "the tag is the same for the same bytes");
}

async fn a_matching_if_none_match_is_304_without_a_body(app: TestApp) {
    let first = get_widget(&app, None).await;
    let etag = first.header("etag").unwrap_or_default().to_owned();
    assert_eq!(first.status, 200, "{}", first.text);

    for (what, value) in [
        ("the tag", etag.clone()),
        ("the tag as weak", format!("W/{etag}")),
        ("a list holding it", format!("\"stale\", {etag}")),
        ("a star", "*".to_owned()),
    ] {
        let reply = get_widget(&app, Some(&value)).await;

        assert_eq!(reply.status, 304, "{what}: {}", reply.text);
        assert!(reply.text.is_empty(), "{what}: a body {:?}", reply.text);
        assert_eq!(reply.header("etag"), Some(etag.as_str()), "{what}");
        assert_eq!(
            reply.header("cache-control"),
            Some("public, max-age=3600"),
            "{what}"
        );
    }
    let stale = get_widget(&app, Some("\"stale\"")).await;
    assert_eq!(stale.status, 200, "another tag: {}", stale.text);
    assert_eq!(stale.text, first.text);
}

const ALLOWED_ORIGIN: &str = "http://allowed.example";

async fn the_widget_loads_from_any_origin_while_cors_names_one_for_the_api(backend: Backend) {
    let app = spawn_app_with(backend, |serve| {
        serve.cors_allowed_origins =
            vec![CorsOrigin::parse(ALLOWED_ORIGIN).expect("a valid origin")];
    })
    .await;

    for origin in [ALLOWED_ORIGIN, "http://other.example"] {
        let reply = app
            .send(
                app.client
                    .get(app.url("/widget.js"))
                    .header("Origin", origin),
            )
            .await;

        assert_eq!(reply.status, 200, "{origin}: {}", reply.text);
        let allowed = reply.header("access-control-allow-origin");
        assert!(
            allowed == Some("*") || allowed == Some(origin),
            "{origin}: access-control-allow-origin {allowed:?}"
        );
    }
    let api = app
        .send(
            app.request(reqwest::Method::GET, "/api/v1/llm/feedback/responses/x")
                .header("Origin", "http://other.example"),
        )
        .await;
    assert!(
        api.header("access-control-allow-origin").is_none(),
        "the API stays closed to other origins: {:?}",
        api.headers
    );
}
