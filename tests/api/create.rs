//! `POST /api/v1/llm/feedback/{kind}`.

use serde_json::json;

use crate::helpers::TestApp;

both_stores!(
    create_returns_201_with_the_entry_of_the_brief_example,
    create_then_duplicate_is_409_and_leaves_the_entry_untouched,
);

async fn create_returns_201_with_the_entry_of_the_brief_example(app: TestApp) {
    let reply = app
        .create(
            "responses",
            json!({"id": "resp-xyz789", "rating": "thumbs_up", "description": "Very helpful response!"}),
        )
        .await;

    assert_eq!(reply.status, 201, "{}", reply.text);
    let body = reply.body.as_object().expect("an object");
    assert_eq!(body["id"], "resp-xyz789");
    assert_eq!(body["rating"], "thumbs_up");
    assert_eq!(body["description"], "Very helpful response!");
    assert_eq!(body["createdAt"], body["updatedAt"]);
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["createdAt", "description", "id", "rating", "updatedAt"]
    );
}

async fn create_then_duplicate_is_409_and_leaves_the_entry_untouched(app: TestApp) {
    let first = app
        .create(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;
    assert_eq!(first.status, 201);

    let second = app
        .create(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_down", "description": "changed"}),
        )
        .await;

    assert_eq!(second.status, 409);
    assert_eq!(second.error_code(), "conflict");
    let stored = app.get("completions", "chatcmpl-1").await;
    assert_eq!(stored.body, first.body);
}
