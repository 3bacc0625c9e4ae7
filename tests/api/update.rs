//! `PUT /api/v1/llm/feedback/{kind}/{id}`.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    Reply, TestApp, assert_invalid_fields, encode_id, entry_fields, timestamp, with_timestamps,
};

both_stores!(
    put_of_the_brief_example_returns_200_with_exactly_those_values,
    put_without_rating_leaves_the_rating_unchanged,
    put_without_description_leaves_the_description_unchanged,
    put_with_null_rating_clears_it,
    put_with_null_description_clears_it,
    put_with_a_rating_replaces_it,
    put_with_a_description_replaces_it,
    put_with_an_empty_description_sets_an_empty_string,
    put_with_an_empty_object_changes_only_updated_at,
    sequential_puts_give_strictly_increasing_updated_at,
    put_of_a_missing_id_is_404_and_creates_nothing,
    put_on_the_other_kind_is_404,
    put_with_id_model_or_unknown_fields_is_400_and_changes_nothing,
    put_with_a_2001_character_description_is_400_with_the_documented_envelope,
    put_with_a_bad_rating_is_400_naming_both_values,
    put_with_several_bad_fields_gives_one_details_item_each,
    put_with_a_raw_json_body_and_charset_is_applied,
);

/// Creates `completions/{id}` with a rating and a description.
async fn create_rated(app: &TestApp, id: &str) -> Reply {
    let reply = app
        .create(
            "completions",
            json!({"id": id, "rating": "thumbs_up", "description": "original"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply
}

async fn put_of_the_brief_example_returns_200_with_exactly_those_values(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-abc123def456", "rating": "thumbs_up"}),
        )
        .await;

    let reply = app
        .update(
            "completions",
            "chatcmpl-abc123def456",
            json!({"rating": "thumbs_down", "description": "Could be more detailed."}),
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body,
        with_timestamps(
            json!({
                "id": "chatcmpl-abc123def456",
                "rating": "thumbs_down",
                "description": "Could be more detailed.",
            }),
            &created["createdAt"],
            &reply.body["updatedAt"],
        )
    );
    assert!(timestamp(&reply.body["updatedAt"]) >= timestamp(&created["updatedAt"]));
    let stored = app.get("completions", "chatcmpl-abc123def456").await;
    assert_eq!(stored.body, reply.body);
}

async fn put_without_rating_leaves_the_rating_unchanged(app: TestApp) {
    create_rated(&app, "chatcmpl-1").await;

    let reply = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"description": "changed"}),
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["rating"], "thumbs_up");
    assert_eq!(reply.body["description"], "changed");
    let stored = app.get("completions", "chatcmpl-1").await;
    assert_eq!(stored.body, reply.body);
}

async fn put_without_description_leaves_the_description_unchanged(app: TestApp) {
    create_rated(&app, "chatcmpl-1").await;

    let reply = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"rating": "thumbs_down"}),
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["rating"], "thumbs_down");
    assert_eq!(reply.body["description"], "original");
    let stored = app.get("completions", "chatcmpl-1").await;
    assert_eq!(stored.body, reply.body);
}

async fn put_with_null_rating_clears_it(app: TestApp) {
    create_rated(&app, "chatcmpl-1").await;

    let reply = app
        .update("completions", "chatcmpl-1", json!({"rating": null}))
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(entry_fields(&reply.body), ["description", "id"]);
    assert_eq!(reply.body["description"], "original");
    let stored = app.get("completions", "chatcmpl-1").await;
    assert_eq!(stored.body, reply.body);
}

async fn put_with_null_description_clears_it(app: TestApp) {
    create_rated(&app, "chatcmpl-1").await;

    let reply = app
        .update("completions", "chatcmpl-1", json!({"description": null}))
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(entry_fields(&reply.body), ["id", "rating"]);
    assert_eq!(reply.body["rating"], "thumbs_up");
    let stored = app.get("completions", "chatcmpl-1").await;
    assert_eq!(stored.body, reply.body);
}

async fn put_with_a_rating_replaces_it(app: TestApp) {
    create_rated(&app, "chatcmpl-1").await;
    app.create_ok("completions", json!({"id": "chatcmpl-2"}))
        .await;

    let replaced = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"rating": "thumbs_down"}),
        )
        .await;
    let set = app
        .update("completions", "chatcmpl-2", json!({"rating": "thumbs_up"}))
        .await;

    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert_eq!(replaced.body["rating"], "thumbs_down");
    assert_eq!(
        app.get("completions", "chatcmpl-1").await.body,
        replaced.body
    );
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(entry_fields(&set.body), ["id", "rating"]);
    assert_eq!(set.body["rating"], "thumbs_up");
    assert_eq!(app.get("completions", "chatcmpl-2").await.body, set.body);
}

async fn put_with_a_description_replaces_it(app: TestApp) {
    create_rated(&app, "chatcmpl-1").await;
    let description = "new text:\n\"quoted\" ünïcødé 😀";

    let reply = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"description": description}),
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["description"], description);
    assert_eq!(reply.body["rating"], "thumbs_up");
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, reply.body);
}

async fn put_with_an_empty_description_sets_an_empty_string(app: TestApp) {
    create_rated(&app, "chatcmpl-1").await;

    let reply = app
        .update("completions", "chatcmpl-1", json!({"description": ""}))
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["description"], json!(""));
    let stored = app.get("completions", "chatcmpl-1").await;
    assert_eq!(stored.body["description"], json!(""));
}

async fn put_with_an_empty_object_changes_only_updated_at(app: TestApp) {
    let created = app
        .create_ok(
            "responses",
            json!({"id": "resp-1", "rating": "thumbs_down", "description": "kept", "model": "m-1"}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let reply = app.update("responses", "resp-1", json!({})).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    let expected = with_timestamps(
        created.clone(),
        &created["createdAt"],
        &reply.body["updatedAt"],
    );
    assert_eq!(reply.body, expected);
    assert!(
        timestamp(&reply.body["updatedAt"]) > timestamp(&created["updatedAt"]),
        "{} then {}",
        created["updatedAt"],
        reply.body["updatedAt"]
    );
    assert_eq!(app.get("responses", "resp-1").await.body, reply.body);
}

async fn sequential_puts_give_strictly_increasing_updated_at(app: TestApp) {
    let created = create_rated(&app, "chatcmpl-1").await;
    let created_at = timestamp(&created.body["createdAt"]);
    let mut previous = timestamp(&created.body["updatedAt"]);

    for n in 0..5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let reply = app
            .update(
                "completions",
                "chatcmpl-1",
                json!({"description": format!("edit {n}")}),
            )
            .await;

        assert_eq!(reply.status, 200, "{}", reply.text);
        let updated_at = timestamp(&reply.body["updatedAt"]);
        assert!(
            updated_at > previous,
            "edit {n}: {previous} then {updated_at}"
        );
        assert_eq!(timestamp(&reply.body["createdAt"]), created_at);
        assert!(created_at <= updated_at);
        previous = updated_at;
    }
}

async fn put_of_a_missing_id_is_404_and_creates_nothing(app: TestApp) {
    let reply = app
        .update(
            "completions",
            "chatcmpl-missing",
            json!({"rating": "thumbs_up", "description": "hello"}),
        )
        .await;
    let empty = app
        .update("completions", "chatcmpl-missing", json!({}))
        .await;

    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.error_code(), "not_found");
    assert_eq!(empty.status, 404, "{}", empty.text);
    assert_eq!(empty.error_code(), "not_found");
    assert_eq!(app.get("completions", "chatcmpl-missing").await.status, 404);
    let created = app
        .create_ok("completions", json!({"id": "chatcmpl-missing"}))
        .await;
    assert_eq!(entry_fields(&created), ["id"]);
}

async fn put_on_the_other_kind_is_404(app: TestApp) {
    let created = create_rated(&app, "shared-id").await;

    let reply = app
        .update("responses", "shared-id", json!({"rating": "thumbs_down"}))
        .await;

    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.error_code(), "not_found");
    assert_eq!(app.get("responses", "shared-id").await.status, 404);
    assert_eq!(app.get("completions", "shared-id").await.body, created.body);
}

async fn put_with_id_model_or_unknown_fields_is_400_and_changes_nothing(app: TestApp) {
    let created = create_rated(&app, "chatcmpl-1").await;
    let bodies = [
        json!({"id": "chatcmpl-1"}),
        json!({"id": "chatcmpl-other", "rating": "thumbs_down"}),
        json!({"model": "gpt-4o"}),
        json!({"rating": "thumbs_down", "model": "gpt-4o"}),
        json!({"user": "bob"}),
        json!({"rating": "thumbs_down", "createdAt": "2024-01-15T10:30:00.000Z"}),
    ];

    for body in bodies {
        let reply = app.update("completions", "chatcmpl-1", body.clone()).await;

        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(reply.error_code(), "invalid_request", "{body}");
    }
    assert_eq!(
        app.get("completions", "chatcmpl-1").await.body,
        created.body
    );
    assert_eq!(app.get("completions", "chatcmpl-other").await.status, 404);
}

async fn put_with_a_2001_character_description_is_400_with_the_documented_envelope(app: TestApp) {
    let created = create_rated(&app, "chatcmpl-1").await;

    let reply = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"description": "a".repeat(2001)}),
        )
        .await;
    let emoji = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"description": "😀".repeat(2001)}),
        )
        .await;
    let longest = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"description": "😀".repeat(2000)}),
        )
        .await;

    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(
        reply.body,
        json!({"error": {
            "code": "invalid_request",
            "message": "description: must be at most 2000 characters (got 2001)",
            "details": [{"field": "description", "message": "must be at most 2000 characters (got 2001)"}],
        }})
    );
    assert_invalid_fields(&emoji, &["description"]);
    assert_eq!(longest.status, 200, "{}", longest.text);
    assert_eq!(longest.body["description"], json!("😀".repeat(2000)));
    assert_eq!(longest.body["createdAt"], created.body["createdAt"]);
}

async fn put_with_a_bad_rating_is_400_naming_both_values(app: TestApp) {
    let created = create_rated(&app, "chatcmpl-1").await;

    for rating in [json!("THUMBS_DOWN"), json!("down"), json!("")] {
        let reply = app
            .update("completions", "chatcmpl-1", json!({"rating": rating}))
            .await;

        assert_invalid_fields(&reply, &["rating"]);
        let message = reply.body["error"]["message"].as_str().expect("a message");
        assert!(
            message.contains("thumbs_up") && message.contains("thumbs_down"),
            "{rating}: {message}"
        );
    }
    for rating in [json!(0), json!(false)] {
        let reply = app
            .update("completions", "chatcmpl-1", json!({"rating": rating}))
            .await;

        assert_invalid_fields(&reply, &["rating"]);
    }
    assert_eq!(
        app.get("completions", "chatcmpl-1").await.body,
        created.body
    );
}

async fn put_with_several_bad_fields_gives_one_details_item_each(app: TestApp) {
    let created = create_rated(&app, "chatcmpl-1").await;

    let reply = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"rating": "up", "description": "a".repeat(2001)}),
        )
        .await;

    assert_invalid_fields(&reply, &["description", "rating"]);
    assert_eq!(
        app.get("completions", "chatcmpl-1").await.body,
        created.body
    );
}

async fn put_with_a_raw_json_body_and_charset_is_applied(app: TestApp) {
    create_rated(&app, "chatcmpl-1").await;
    let path = format!(
        "/api/v1/llm/feedback/completions/{}",
        encode_id("chatcmpl-1")
    );

    let reply = app
        .send(
            app.request(Method::PUT, &path)
                .header("content-type", "application/json; charset=utf-8")
                .body(r#"{"rating": null, "description": "raw \u00e9"}"#),
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(entry_fields(&reply.body), ["description", "id"]);
    assert_eq!(reply.body["description"], "raw é");
}
