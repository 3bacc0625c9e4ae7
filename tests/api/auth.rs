//! Authentication: `Authorization: Bearer <key>` on every `/api/v1` route, first.

use std::time::{Duration, Instant};

use llm_feedback::store::Revocation;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue};
use serde_json::json;

use crate::helpers::{Reply, TestApp};

both_stores!(
    a_request_without_authorization_is_401,
    an_empty_authorization_header_is_401,
    bearer_without_a_token_is_401,
    other_schemes_are_401_even_with_a_valid_key,
    an_unknown_key_of_the_right_shape_is_401,
    a_short_garbage_key_is_401,
    a_revoked_key_gets_401_within_5_seconds,
    the_bearer_scheme_name_is_case_insensitive,
    a_second_key_of_the_same_tenant_sees_and_updates_the_same_entries,
    without_a_valid_key_every_api_request_is_401_whatever_else_is_wrong,
    a_create_with_a_bad_key_stores_nothing,
    healthz_needs_no_key,
);

const ENTRY_PATH: &str = "/api/v1/llm/feedback/completions/chatcmpl-1";

/// Asserts API.md's 401: status, envelope with code `unauthorized`, and
/// `WWW-Authenticate: Bearer`.
fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.text);
    let body = reply
        .body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a JSON object: {:?}", reply.text));
    assert_eq!(
        body.keys().map(String::as_str).collect::<Vec<_>>(),
        ["error"],
        "{what}"
    );
    assert_eq!(reply.error_code(), "unauthorized", "{what}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{what}: {}",
        reply.text
    );
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{what}");
}

/// `GET` of an entry path with exactly this `Authorization` header value.
async fn get_with_authorization(app: &TestApp, authorization: HeaderValue) -> Reply {
    app.send(
        app.client
            .get(app.url(ENTRY_PATH))
            .header(AUTHORIZATION, authorization),
    )
    .await
}

/// A key that looks like a generated one (`lfk_` + 40 alphanumerics) but was never issued.
fn unissued_key() -> String {
    format!("lfk_{}Zz09Yy18", uuid::Uuid::new_v4().simple())
}

async fn a_request_without_authorization_is_401(app: TestApp) {
    app.create("completions", json!({"id": "chatcmpl-1"})).await;

    let reply = app.send(app.client.get(app.url(ENTRY_PATH))).await;

    assert_unauthorized(&reply, "no Authorization header");
}

async fn an_empty_authorization_header_is_401(app: TestApp) {
    app.create("completions", json!({"id": "chatcmpl-1"})).await;

    let reply = get_with_authorization(&app, HeaderValue::from_static("")).await;

    assert_unauthorized(&reply, "empty Authorization header");
}

async fn bearer_without_a_token_is_401(app: TestApp) {
    app.create("completions", json!({"id": "chatcmpl-1"})).await;

    for value in ["Bearer", "Bearer ", "Bearer    ", "bearer"] {
        let reply = get_with_authorization(&app, HeaderValue::from_static(value)).await;

        assert_unauthorized(&reply, &format!("Authorization: {value:?}"));
    }
}

async fn other_schemes_are_401_even_with_a_valid_key(app: TestApp) {
    app.create_ok("completions", json!({"id": "chatcmpl-1"}))
        .await;
    let key = &app.api_key;

    for value in [
        format!("Basic {key}"),
        "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
        format!("Token {key}"),
        format!("Bearer{key}"),
        key.clone(),
    ] {
        let reply =
            get_with_authorization(&app, HeaderValue::from_str(&value).expect("header")).await;

        assert_unauthorized(&reply, &format!("Authorization: {value:?}"));
    }
}

async fn an_unknown_key_of_the_right_shape_is_401(app: TestApp) {
    app.create("completions", json!({"id": "chatcmpl-1"})).await;
    let unknown = unissued_key();
    assert_eq!(unknown.len(), 44);
    assert!(unknown[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    // The real key with its last character changed.
    let mut near_miss = app.api_key.clone();
    let last = near_miss.pop().expect("non-empty key");
    near_miss.push(if last == 'a' { 'b' } else { 'a' });

    for secret in [&unknown, &unknown, &near_miss] {
        let reply = app
            .as_caller(secret, None)
            .get("completions", "chatcmpl-1")
            .await;

        assert_unauthorized(&reply, &format!("key {secret}"));
    }
}

async fn a_short_garbage_key_is_401(app: TestApp) {
    app.create("completions", json!({"id": "chatcmpl-1"})).await;

    for secret in ["x", "lfk_", "lfk_abc", "not a key at all", "%%%"] {
        let reply = app
            .as_caller(secret, None)
            .get("completions", "chatcmpl-1")
            .await;

        assert_unauthorized(&reply, &format!("key {secret:?}"));
    }
}

async fn a_revoked_key_gets_401_within_5_seconds(app: TestApp) {
    let doomed = app.new_key("tenant-a").await;
    app.as_caller(&doomed, None)
        .create_ok("completions", json!({"id": "chatcmpl-1"}))
        .await;
    let before = app
        .as_caller(&doomed, None)
        .get("completions", "chatcmpl-1")
        .await;
    assert_eq!(before.status, 200, "{}", before.text);

    let revocation = app
        .store
        .revoke_api_key(&TestApp::key_id(&doomed))
        .await
        .expect("revoke");
    let revoked_at = Instant::now();
    let mut after = app
        .as_caller(&doomed, None)
        .get("completions", "chatcmpl-1")
        .await;
    while after.status == 200 && revoked_at.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = app
            .as_caller(&doomed, None)
            .get("completions", "chatcmpl-1")
            .await;
    }
    let took = revoked_at.elapsed();

    assert!(matches!(revocation, Revocation::Revoked));
    assert_unauthorized(&after, "revoked key");
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    let still_revoked = app
        .as_caller(&doomed, None)
        .get("completions", "chatcmpl-1")
        .await;
    assert_unauthorized(&still_revoked, "revoked key, once more");
    let other_key = app.get("completions", "chatcmpl-1").await;
    assert_eq!(other_key.status, 200, "{}", other_key.text);
}

async fn the_bearer_scheme_name_is_case_insensitive(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;

    for scheme in ["bearer", "BEARER", "bEaReR", "Bearer"] {
        let value = format!("{scheme} {}", app.api_key);
        let reply =
            get_with_authorization(&app, HeaderValue::from_str(&value).expect("header")).await;

        assert_eq!(reply.status, 200, "{scheme}: {}", reply.text);
        assert_eq!(reply.body, created, "{scheme}");
    }
}

async fn a_second_key_of_the_same_tenant_sees_and_updates_the_same_entries(app: TestApp) {
    let second = app.new_key("tenant-a").await;
    let created = app
        .create_ok(
            "responses",
            json!({"id": "resp-1", "rating": "thumbs_up", "description": "fine"}),
        )
        .await;

    let seen = app
        .as_caller(&second, None)
        .get("responses", "resp-1")
        .await;
    let updated = app
        .as_caller(&second, None)
        .update("responses", "resp-1", json!({"rating": "thumbs_down"}))
        .await;
    let duplicate = app
        .as_caller(&second, None)
        .create("responses", json!({"id": "resp-1"}))
        .await;

    assert_eq!(seen.status, 200, "{}", seen.text);
    assert_eq!(seen.body, created);
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.body["rating"], "thumbs_down");
    assert_eq!(updated.body["description"], "fine");
    let through_first = app.get("responses", "resp-1").await;
    assert_eq!(through_first.body, updated.body);
    assert_eq!(duplicate.status, 409, "{}", duplicate.text);
}

/// Requests that are wrong in some way besides their credentials, with the
/// status each gets once it does carry a valid key.
fn wrong_requests(app: &TestApp) -> Vec<(&'static str, u16, reqwest::RequestBuilder)> {
    let feedback = "/api/v1/llm/feedback";
    let client = &app.client;
    vec![
        (
            "unknown route under /api/v1",
            404,
            client.get(app.url("/api/v1/nope")),
        ),
        (
            "unknown kind",
            404,
            client.get(app.url(&format!("{feedback}/widgets/x"))),
        ),
        (
            "unknown kind, create",
            404,
            client
                .post(app.url(&format!("{feedback}/widgets")))
                .json(&json!({"id": "x"})),
        ),
        (
            "wrong method",
            405,
            client.patch(app.url(&format!("{feedback}/completions/x"))),
        ),
        (
            "bad JSON",
            400,
            client
                .post(app.url(&format!("{feedback}/completions")))
                .header(CONTENT_TYPE, "application/json")
                .body(r#"{"id":"#),
        ),
        (
            "wrong content type",
            415,
            client
                .post(app.url(&format!("{feedback}/completions")))
                .header(CONTENT_TYPE, "text/plain")
                .body(r#"{"id":"x"}"#),
        ),
        (
            "oversized body",
            413,
            client
                .post(app.url(&format!("{feedback}/completions")))
                .header(CONTENT_TYPE, "application/json")
                // Not reused: the service drops a connection whose body it did not read.
                .header(CONNECTION, "close")
                .body(format!(r#"{{"id":"x"{}}}"#, " ".repeat(70 * 1024))),
        ),
        (
            "bad X-On-Behalf-Of",
            400,
            client
                .get(app.url(&format!("{feedback}/completions/x")))
                .header(
                    "X-On-Behalf-Of",
                    HeaderValue::from_bytes(b"caf\xc3\xa9").expect("header"),
                ),
        ),
        (
            "bad id in the path",
            400,
            client.get(app.url(&format!("{feedback}/completions/%20x"))),
        ),
    ]
}

async fn without_a_valid_key_every_api_request_is_401_whatever_else_is_wrong(app: TestApp) {
    let credentials = [
        ("no key", None),
        ("unknown key", Some(format!("Bearer {}", unissued_key()))),
        ("garbage key", Some("Bearer garbage".to_owned())),
        ("other scheme", Some(format!("Basic {}", app.api_key))),
    ];

    for (credential, authorization) in &credentials {
        for (what, _, request) in wrong_requests(&app) {
            let request = match authorization {
                Some(value) => request.header(AUTHORIZATION, value),
                None => request,
            };
            let reply = app.send(request).await;

            assert_unauthorized(&reply, &format!("{what}, {credential}"));
        }
    }
    // The same requests with a valid key fail for their other fault.
    for (what, status, request) in wrong_requests(&app) {
        let reply = app.send(request.bearer_auth(&app.api_key)).await;
        assert_eq!(reply.status, status, "{what}, valid key: {}", reply.text);
    }
}

async fn a_create_with_a_bad_key_stores_nothing(app: TestApp) {
    let request = app
        .client
        .request(Method::POST, app.url("/api/v1/llm/feedback/completions"))
        .bearer_auth(unissued_key())
        .json(&json!({"id": "chatcmpl-1", "rating": "thumbs_up"}));

    let reply = app.send(request).await;

    assert_unauthorized(&reply, "create with an unknown key");
    let stored = app.get("completions", "chatcmpl-1").await;
    assert_eq!(stored.status, 404, "{}", stored.text);
}

async fn healthz_needs_no_key(app: TestApp) {
    let reply = app.send(app.client.get(app.url("/healthz"))).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.header("www-authenticate").is_none());
}
