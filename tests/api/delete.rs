//! `DELETE /{kind}/{id}` (API.md, "Delete and end-user erasure").

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;
use crate::safe_writes::{delete_with, entry_path, send, send_with};

both_stores!(
    delete_is_204_and_the_entry_is_gone_everywhere,
    a_deleted_id_can_be_created_again,
    delete_is_scoped_like_get,
);

async fn delete_is_204_and_the_entry_is_gone_everywhere(app: TestApp) {
    app.create_ok(
        "completions",
        json!({"id": "c-1", "description": "gone soon"}),
    )
    .await;
    app.create_ok("completions", json!({"id": "c-2"})).await;
    let reply = delete_with(&app, "completions", "c-1", &[]).await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert!(reply.text.is_empty());
    assert_eq!(app.get("completions", "c-1").await.status, 404);
    let list = app.list("completions", "").await;
    let ids: Vec<&str> = list.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids, ["c-2"]);
    let batch = app.batch_get("completions", json!({"ids": ["c-1"]})).await;
    assert_eq!(
        batch.body["results"][0]["error"], "not_found",
        "{}",
        batch.text
    );
    let export = app.export("completions", "").await;
    assert!(!export.text.contains("gone soon"), "{}", export.text);
    assert_eq!(
        delete_with(&app, "completions", "c-1", &[]).await.status,
        404
    );
    assert_eq!(
        app.update("completions", "c-1", json!({})).await.status,
        404
    );
}

async fn a_deleted_id_can_be_created_again(app: TestApp) {
    app.create_ok("responses", json!({"id": "resp-1", "rating": "thumbs_up"}))
        .await;
    assert_eq!(
        delete_with(&app, "responses", "resp-1", &[]).await.status,
        204
    );
    let again = app
        .create(
            "responses",
            json!({"id": "resp-1", "rating": "thumbs_down"}),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(
        app.get("responses", "resp-1").await.body["rating"],
        "thumbs_down"
    );
}

async fn delete_is_scoped_like_get(app: TestApp) {
    let caller = app.as_caller(&app.api_key, Some("user-1"));
    caller.create_ok("responses", json!({"id": "resp-1"})).await;
    let path = entry_path("responses", "resp-1");
    let other_tenant = app.new_key("tenant-b").await;
    assert_eq!(
        send_with(&app, &other_tenant, Method::DELETE, &path, &[], None)
            .await
            .status,
        404
    );
    assert_eq!(
        send(
            &app,
            Method::DELETE,
            &path,
            &[("X-On-Behalf-Of", "user-2")],
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        delete_with(&app, "completions", "resp-1", &[]).await.status,
        404
    );
    assert_eq!(
        send_with(&app, "lfk_bad", Method::DELETE, &path, &[], None)
            .await
            .status,
        401
    );
    assert_eq!(app.get("responses", "resp-1").await.status, 200);
    assert_eq!(
        send(
            &app,
            Method::DELETE,
            &path,
            &[("X-On-Behalf-Of", "user-1")],
            None
        )
        .await
        .status,
        204
    );
}
