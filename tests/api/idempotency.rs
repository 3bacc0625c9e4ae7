//! `Idempotency-Key` on create (API.md, "Idempotent creates").

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::safe_writes::{create_with, send, send_with};

both_stores!(
    a_retry_with_the_same_key_replays_the_first_answer_byte_for_byte,
    a_kept_409_is_replayed_too,
    the_same_key_with_another_request_is_422,
    the_body_is_compared_after_parsing,
    unprocessed_outcomes_are_not_kept,
    malformed_keys_are_400_naming_the_header,
    keys_belong_to_one_tenant,
    forty_concurrent_identical_creates_make_one_entry_and_answer_201_or_409_in_progress,
);

per_store!(an_expired_key_is_processed_anew_and_purged);

const KEY: (&str, &str) = ("Idempotency-Key", "key-1");

async fn a_retry_with_the_same_key_replays_the_first_answer_byte_for_byte(app: TestApp) {
    let body = json!({"id": "resp-1", "rating": "thumbs_up", "description": "ok"});
    let first = create_with(&app, "responses", &[KEY], &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    // Even after the entry changed, the retry gets what the first got.
    app.update_ok("responses", "resp-1", json!({"rating": "thumbs_down"}))
        .await;
    let retry = create_with(&app, "responses", &[KEY], &body).await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert_eq!(retry.text, first.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.header("etag"), first.header("etag"));
    assert_eq!(retry.header("content-type"), Some("application/json"));
    // A quoted structured-field string names the same key.
    let quoted = create_with(
        &app,
        "responses",
        &[("Idempotency-Key", "\"key-1\"")],
        &body,
    )
    .await;
    assert_eq!(quoted.status, 201);
    assert_eq!(quoted.text, first.text);
}

async fn a_kept_409_is_replayed_too(app: TestApp) {
    app.create_ok("responses", json!({"id": "resp-1"})).await;
    let body = json!({"id": "resp-1"});
    let first = create_with(&app, "responses", &[KEY], &body).await;
    assert_eq!(first.status, 409, "{}", first.text);
    assert_eq!(first.error_code(), "conflict");
    let retry = create_with(&app, "responses", &[KEY], &body).await;
    assert_eq!(retry.status, 409);
    assert_eq!(retry.text, first.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
}

async fn the_same_key_with_another_request_is_422(app: TestApp) {
    let first = create_with(&app, "responses", &[KEY], &json!({"id": "resp-1"})).await;
    assert_eq!(first.status, 201);
    for (kind, headers, body) in [
        (
            "responses",
            vec![KEY],
            json!({"id": "resp-1", "rating": "thumbs_up"}),
        ),
        ("responses", vec![KEY], json!({"id": "resp-2"})),
        ("completions", vec![KEY], json!({"id": "resp-1"})),
        (
            "responses",
            vec![KEY, ("X-On-Behalf-Of", "user-1")],
            json!({"id": "resp-1"}),
        ),
    ] {
        let reply = create_with(&app, kind, &headers, &body).await;
        assert_eq!(reply.status, 422, "{kind} {body}: {}", reply.text);
        assert_eq!(reply.error_code(), "idempotency_key_reused");
    }
    assert_eq!(app.get("responses", "resp-2").await.status, 404);
}

async fn the_body_is_compared_after_parsing(app: TestApp) {
    let request = |text: &'static str| {
        app.request(Method::POST, "/api/v1/llm/feedback/responses")
            .header(KEY.0, KEY.1)
            .header("content-type", "application/json")
            .body(text)
    };
    let first = app
        .send(request(
            r#"{"id":"resp-1","rating":"thumbs_up","model":null}"#,
        ))
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let retry = app
        .send(request(
            "{ \"rating\" : \"thumbs_up\",\n \"id\": \"resp-1\" }",
        ))
        .await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.text, first.text);
}

async fn unprocessed_outcomes_are_not_kept(app: TestApp) {
    let bad = create_with(
        &app,
        "responses",
        &[KEY],
        &json!({"id": "resp-1", "rating": "meh"}),
    )
    .await;
    assert_eq!(bad.status, 400);
    let unauthenticated = send_with(
        &app,
        "lfk_nope",
        Method::POST,
        "/api/v1/llm/feedback/responses",
        &[KEY],
        Some(&json!({"id": "resp-1"})),
    )
    .await;
    assert_eq!(unauthenticated.status, 401);
    let token = crate::safe_writes::mint(&app, "responses", "resp-9", None).await;
    let forbidden = send_with(
        &app,
        &token,
        Method::POST,
        "/api/v1/llm/feedback/responses",
        &[KEY],
        Some(&json!({"id": "resp-1"})),
    )
    .await;
    assert_eq!(forbidden.status, 403);
    let good = create_with(&app, "responses", &[KEY], &json!({"id": "resp-1"})).await;
    assert_eq!(good.status, 201, "{}", good.text);
    assert_eq!(good.header("idempotent-replayed"), None);
}

async fn malformed_keys_are_400_naming_the_header(app: TestApp) {
    let long = "k".repeat(256);
    for bad in [
        "\"unterminated",
        "\"\"",
        "\"a\\b\"",
        long.as_str(),
        "caf\u{e9}",
    ] {
        let request = app
            .request(Method::POST, "/api/v1/llm/feedback/responses")
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).expect("value"),
            )
            .json(&json!({"id": "resp-1"}));
        let reply = app.send(request).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["details"][0]["field"], "Idempotency-Key",
            "{}",
            reply.text
        );
    }
    let twice = app
        .request(Method::POST, "/api/v1/llm/feedback/responses")
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .json(&json!({"id": "resp-1"}));
    assert_eq!(app.send(twice).await.status, 400);
    assert_eq!(app.get("responses", "resp-1").await.status, 404);
    let max = "k".repeat(255);
    let ok = create_with(
        &app,
        "responses",
        &[("Idempotency-Key", &max)],
        &json!({"id": "resp-1"}),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.text);
}

async fn keys_belong_to_one_tenant(app: TestApp) {
    let body = json!({"id": "resp-1"});
    assert_eq!(
        create_with(&app, "responses", &[KEY], &body).await.status,
        201
    );
    let other = app.new_key("tenant-b").await;
    let reply = send_with(
        &app,
        &other,
        Method::POST,
        "/api/v1/llm/feedback/responses",
        &[KEY],
        Some(&body),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.header("idempotent-replayed"), None);
}

async fn forty_concurrent_identical_creates_make_one_entry_and_answer_201_or_409_in_progress(
    app: TestApp,
) {
    let body = json!({"id": "resp-1", "rating": "thumbs_up"});
    let replies = futures_util::future::join_all((0..40).map(|_| {
        let (app, body) = (&app, body.clone());
        async move { create_with(app, "responses", &[KEY], &body).await }
    }))
    .await;
    let mut created = Vec::new();
    for reply in &replies {
        match reply.status {
            201 => created.push(reply.text.clone()),
            409 => {
                assert_eq!(
                    reply.error_code(),
                    "idempotency_in_progress",
                    "{}",
                    reply.text
                );
                assert_eq!(reply.header("retry-after"), Some("1"));
            }
            other => panic!("{other}: {}", reply.text),
        }
    }
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|text| *text == created[0]),
        "{created:?}"
    );
    let fresh = replies
        .iter()
        .filter(|r| r.status == 201 && r.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(fresh, 1);
    let list = app.list("responses", "").await;
    assert_eq!(list.body["data"].as_array().expect("data").len(), 1);
    let history = crate::safe_writes::revisions(&app, "responses", "resp-1", "").await;
    assert_eq!(history.body["data"].as_array().expect("data").len(), 1);
}

async fn an_expired_key_is_processed_anew_and_purged(backend: Backend) {
    let app = spawn_app_with(backend, |serve| serve.idempotency_ttl_secs = 1).await;
    assert_eq!(
        create_with(&app, "responses", &[KEY], &json!({"id": "resp-1"}))
            .await
            .status,
        201
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Expired: another request with the key is processed, not refused.
    let reply = create_with(&app, "responses", &[KEY], &json!({"id": "resp-2"})).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.header("idempotent-replayed"), None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let purged = app
        .store
        .purge_idempotency_keys(chrono::Utc::now() - chrono::Duration::seconds(1), 500)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let again = send(
        &app,
        Method::POST,
        "/api/v1/llm/feedback/responses",
        &[KEY],
        Some(&json!({"id": "resp-3"})),
    )
    .await;
    assert_eq!(again.status, 201);
}
