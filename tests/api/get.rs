//! `GET /api/v1/llm/feedback/{kind}/{id}`, and ids in paths.

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;

both_stores!(
    get_returns_the_entry_that_create_returned,
    get_of_a_missing_id_is_404_with_the_error_envelope,
    get_of_an_id_that_exists_only_under_the_other_kind_is_404,
    an_unknown_kind_is_404_for_get_put_and_post,
    an_entry_named_batch_is_addressed_by_get_and_put,
    ids_with_reserved_and_non_ascii_characters_round_trip_through_the_path,
    a_path_id_that_breaks_the_id_rules_is_400,
);

async fn get_returns_the_entry_that_create_returned(app: TestApp) {
    let full = app
        .create_ok(
            "responses",
            json!({"id": "resp-1", "rating": "thumbs_down", "description": "d", "model": "m"}),
        )
        .await;
    let bare = app
        .create_ok("completions", json!({"id": "chatcmpl-1"}))
        .await;

    let got_full = app.get("responses", "resp-1").await;
    let got_bare = app.get("completions", "chatcmpl-1").await;

    assert_eq!(got_full.status, 200, "{}", got_full.text);
    assert_eq!(got_full.body, full);
    assert_eq!(got_full.body["model"], "m");
    assert_eq!(got_bare.status, 200, "{}", got_bare.text);
    assert_eq!(got_bare.body, bare);
}

async fn get_of_a_missing_id_is_404_with_the_error_envelope(app: TestApp) {
    let reply = app.get("completions", "chatcmpl-missing").await;

    assert_eq!(reply.status, 404, "{}", reply.text);
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{}", reply.text);
    assert_eq!(
        reply.body,
        json!({"error": {"code": "not_found", "message": message}})
    );
}

async fn get_of_an_id_that_exists_only_under_the_other_kind_is_404(app: TestApp) {
    app.create_ok(
        "responses",
        json!({"id": "resp-only", "rating": "thumbs_up"}),
    )
    .await;

    let reply = app.get("completions", "resp-only").await;

    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.error_code(), "not_found");
}

async fn an_unknown_kind_is_404_for_get_put_and_post(app: TestApp) {
    let created = app.create_ok("completions", json!({"id": "x"})).await;

    let get = app.get("chats", "x").await;
    let put = app
        .update("chats", "x", json!({"rating": "thumbs_up"}))
        .await;
    let post = app
        .create("chats", json!({"id": "y", "rating": "thumbs_up"}))
        .await;

    for reply in [&get, &put, &post] {
        assert_eq!(reply.status, 404, "{}", reply.text);
        assert_eq!(reply.error_code(), "not_found", "{}", reply.text);
    }
    assert_eq!(app.get("completions", "x").await.body, created);
    assert_eq!(app.get("completions", "y").await.status, 404);
}

async fn an_entry_named_batch_is_addressed_by_get_and_put(app: TestApp) {
    let created = app
        .create_ok("completions", json!({"id": "batch", "rating": "thumbs_up"}))
        .await;

    let got = app
        .send(app.request(Method::GET, "/api/v1/llm/feedback/completions/batch"))
        .await;
    let put = app
        .send(
            app.request(Method::PUT, "/api/v1/llm/feedback/completions/batch")
                .json(&json!({"rating": "thumbs_down", "description": "named batch"})),
        )
        .await;

    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body, created);
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.body["id"], "batch");
    assert_eq!(put.body["rating"], "thumbs_down");
    assert_eq!(put.body["description"], "named batch");
    assert_eq!(app.get("completions", "batch").await.body, put.body);
    assert_eq!(app.get("responses", "batch").await.status, 404);
}

async fn ids_with_reserved_and_non_ascii_characters_round_trip_through_the_path(app: TestApp) {
    let ids = [
        "a/b",
        "/leading-slash",
        "trailing-slash/",
        "with space",
        "100%",
        "%20",
        "what?",
        "what?x=1&y=2",
        "frag#ment",
        "plus+sign",
        "semi;colon",
        "ünïcødé 日本語 😀",
        "a/b%20c?d#e",
        "inner  spaces",
    ];

    for id in ids {
        let created = app
            .create("completions", json!({"id": id, "rating": "thumbs_up"}))
            .await;
        assert_eq!(created.status, 201, "{id:?}: {}", created.text);
        assert_eq!(created.body["id"], id);

        let got = app.get("completions", id).await;
        let put = app
            .update("completions", id, json!({"rating": "thumbs_down"}))
            .await;

        assert_eq!(got.status, 200, "{id:?}: {}", got.text);
        assert_eq!(got.body, created.body, "{id:?}");
        assert_eq!(put.status, 200, "{id:?}: {}", put.text);
        assert_eq!(put.body["id"], id);
        assert_eq!(put.body["rating"], "thumbs_down", "{id:?}");
    }
    for id in ids {
        let got = app.get("completions", id).await;
        assert_eq!(got.body["rating"], "thumbs_down", "{id:?}");
    }
}

async fn a_path_id_that_breaks_the_id_rules_is_400(app: TestApp) {
    let long = "a".repeat(257);
    let raw_ids = [
        "%20lead",
        "trail%20",
        "%00",
        "a%1Fb",
        "a%7Fb",
        "a%C2%85b",
        "%C2%A0nbsp",
        "ideographic%E3%80%80",
        "%09tab",
        long.as_str(),
    ];

    for raw in raw_ids {
        let path = format!("/api/v1/llm/feedback/completions/{raw}");

        let get = app.send(app.request(Method::GET, &path)).await;
        let put = app
            .send(
                app.request(Method::PUT, &path)
                    .json(&json!({"rating": "thumbs_up"})),
            )
            .await;

        assert_eq!(get.status, 400, "GET {raw}: {}", get.text);
        assert_eq!(get.error_code(), "invalid_request", "GET {raw}");
        assert_eq!(put.status, 400, "PUT {raw}: {}", put.text);
        assert_eq!(put.error_code(), "invalid_request", "PUT {raw}");
    }
    let encoded = app.get("completions", "\u{3000}lead").await;
    assert_eq!(encoded.status, 400, "{}", encoded.text);
    assert_eq!(encoded.error_code(), "invalid_request");
}
