//! `GET /{kind}/{id}/revisions` (API.md, "Revision history").

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::safe_writes::{delete_with, entry_path, mint, revisions, send, send_with};

both_stores!(
    create_updates_and_delete_each_append_a_revision_with_actor_and_state,
    revisions_are_paginated_oldest_first,
    a_bad_after_or_limit_is_400,
    revisions_are_scoped_like_get,
    the_entry_named_batch_has_its_revisions_under_batch_revisions,
    a_deleted_history_stays_readable_and_a_recreate_continues_it,
    revision_counts_equal_the_successful_writes_under_concurrent_updates,
    a_token_write_is_recorded_as_a_token_and_tokens_cannot_read_histories,
);

fn numbers(page: &Value) -> Vec<i64> {
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| r["revision"].as_i64().expect("revision"))
        .collect()
}

async fn create_updates_and_delete_each_append_a_revision_with_actor_and_state(app: TestApp) {
    let caller = app.as_caller(&app.api_key, Some("user-1"));
    caller
        .create_ok(
            "responses",
            json!({"id": "resp-1", "rating": "thumbs_up", "description": "first"}),
        )
        .await;
    let updated = caller
        .update("responses", "resp-1", json!({"description": null}))
        .await;
    assert_eq!(updated.status, 200);
    let deleted = delete_with(&app, "responses", "resp-1", &[]).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);

    let reply = revisions(&app, "responses", "resp-1", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let key_id = TestApp::key_id(&app.api_key);
    let actor = json!({"type": "api_key", "key_id": key_id});
    let data = reply.body["data"].as_array().expect("data").clone();
    assert_eq!(data.len(), 3, "{}", reply.text);
    let recorded: Vec<Value> = data
        .iter()
        .map(|r| {
            let mut r = r.clone();
            assert!(crate::helpers::is_utc_millisecond_timestamp(
                r["recorded_at"].as_str().expect("recorded_at")
            ));
            r.as_object_mut().expect("object").remove("recorded_at");
            r
        })
        .collect();
    assert_eq!(
        recorded,
        vec![
            json!({"revision": 1, "rating": "thumbs_up", "description": "first", "actor": actor, "end_user": "user-1"}),
            json!({"revision": 2, "rating": "thumbs_up", "actor": actor, "end_user": "user-1"}),
            json!({"revision": 3, "deleted": true, "actor": actor, "end_user": "user-1"}),
        ]
    );
    assert_eq!(reply.body["object"], "list");
    assert_eq!(reply.body["has_more"], false);
    assert_eq!(reply.body["first_id"], 1);
    assert_eq!(reply.body["last_id"], 3);
    assert_eq!(data[1]["recorded_at"], updated.body["updatedAt"]);
}

async fn revisions_are_paginated_oldest_first(app: TestApp) {
    app.create_ok("completions", json!({"id": "c-1"})).await;
    for _ in 0..6 {
        app.update_ok("completions", "c-1", json!({})).await;
    }
    let first = revisions(&app, "completions", "c-1", "limit=3").await;
    assert_eq!(numbers(&first.body), [1, 2, 3]);
    assert_eq!(first.body["has_more"], true);
    let second = revisions(&app, "completions", "c-1", "limit=3&after=3").await;
    assert_eq!(numbers(&second.body), [4, 5, 6]);
    assert_eq!(second.body["has_more"], true);
    let third = revisions(&app, "completions", "c-1", "limit=3&after=6").await;
    assert_eq!(numbers(&third.body), [7]);
    assert_eq!(third.body["has_more"], false);
    let past = revisions(&app, "completions", "c-1", "after=7").await;
    assert_eq!(past.status, 200);
    assert_eq!(numbers(&past.body), Vec::<i64>::new());
    assert!(past.body.get("first_id").is_none() && past.body.get("last_id").is_none());
    assert_eq!(
        numbers(&revisions(&app, "completions", "c-1", "").await.body).len(),
        7
    );
}

async fn a_bad_after_or_limit_is_400(app: TestApp) {
    app.create_ok("completions", json!({"id": "c-1"})).await;
    for (query, field) in [
        ("after=x", "after"),
        ("after=-1", "after"),
        ("after=1.5", "after"),
        ("after=", "after"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("order=asc", "order"),
    ] {
        let reply = revisions(&app, "completions", "c-1", query).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["details"][0]["field"], field,
            "{}",
            reply.text
        );
    }
}

async fn revisions_are_scoped_like_get(app: TestApp) {
    let caller = app.as_caller(&app.api_key, Some("user-1"));
    caller.create_ok("completions", json!({"id": "c-1"})).await;
    let other_tenant = app.new_key("tenant-b").await;
    let path = format!("{}/revisions", entry_path("completions", "c-1"));
    let foreign = send_with(&app, &other_tenant, Method::GET, &path, &[], None).await;
    assert_eq!(foreign.status, 404, "{}", foreign.text);
    let other_user = send(
        &app,
        Method::GET,
        &path,
        &[("X-On-Behalf-Of", "user-2")],
        None,
    )
    .await;
    assert_eq!(other_user.status, 404);
    let same_user = send(
        &app,
        Method::GET,
        &path,
        &[("X-On-Behalf-Of", "user-1")],
        None,
    )
    .await;
    assert_eq!(same_user.status, 200);
    assert_eq!(revisions(&app, "responses", "c-1", "").await.status, 404);
    assert_eq!(
        revisions(&app, "completions", "missing", "").await.status,
        404
    );
    let unknown_kind = send(
        &app,
        Method::GET,
        "/api/v1/llm/feedback/things/c-1/revisions",
        &[],
        None,
    )
    .await;
    assert_eq!(unknown_kind.status, 404);
}

async fn the_entry_named_batch_has_its_revisions_under_batch_revisions(app: TestApp) {
    app.create_ok("responses", json!({"id": "batch"})).await;
    app.update_ok("responses", "batch", json!({"rating": "thumbs_down"}))
        .await;
    let reply = send(
        &app,
        Method::GET,
        "/api/v1/llm/feedback/responses/batch/revisions",
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(numbers(&reply.body), [1, 2]);
    let deleted = send(
        &app,
        Method::DELETE,
        "/api/v1/llm/feedback/responses/batch",
        &[],
        None,
    )
    .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(app.get("responses", "batch").await.status, 404);
}

async fn a_deleted_history_stays_readable_and_a_recreate_continues_it(app: TestApp) {
    app.create_ok("completions", json!({"id": "c-1", "rating": "thumbs_up"}))
        .await;
    assert_eq!(
        delete_with(&app, "completions", "c-1", &[]).await.status,
        204
    );
    let history = revisions(&app, "completions", "c-1", "").await;
    assert_eq!(history.status, 200, "{}", history.text);
    assert_eq!(numbers(&history.body), [1, 2]);
    assert_eq!(history.body["data"][1]["deleted"], true);
    let again = app
        .create("completions", json!({"id": "c-1", "rating": "thumbs_down"}))
        .await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.header("etag"), Some("\"r3\""));
    let history = revisions(&app, "completions", "c-1", "").await;
    assert_eq!(numbers(&history.body), [1, 2, 3]);
    assert_eq!(history.body["data"][2]["rating"], "thumbs_down");
}

async fn revision_counts_equal_the_successful_writes_under_concurrent_updates(app: TestApp) {
    app.create_ok("completions", json!({"id": "c-1"})).await;
    let replies = futures_util::future::join_all((0..30).map(|n| {
        let app = &app;
        async move {
            app.update(
                "completions",
                "c-1",
                json!({"description": format!("d{n}")}),
            )
            .await
        }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok,
        30,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let history = revisions(&app, "completions", "c-1", "limit=100").await;
    let listed = numbers(&history.body);
    assert_eq!(listed, (1..=31).collect::<Vec<i64>>());
    // Each answer's state is the one its revision recorded.
    for reply in &replies {
        let tag = reply.header("etag").expect("etag");
        let n: usize = tag
            .trim_matches('"')
            .trim_start_matches('r')
            .parse()
            .expect("our tag");
        assert_eq!(
            history.body["data"][n - 1]["description"],
            reply.body["description"]
        );
    }
}

async fn a_token_write_is_recorded_as_a_token_and_tokens_cannot_read_histories(app: TestApp) {
    let token = mint(&app, "responses", "resp-1", Some("user-7")).await;
    let path = "/api/v1/llm/feedback/responses";
    let created = send_with(
        &app,
        &token,
        Method::POST,
        path,
        &[],
        Some(&json!({"id": "resp-1"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let history = revisions(&app, "responses", "resp-1", "").await;
    assert_eq!(history.body["data"][0]["actor"], json!({"type": "token"}));
    assert_eq!(history.body["data"][0]["end_user"], "user-7");
    let own = format!("{}/revisions", entry_path("responses", "resp-1"));
    let refused = send_with(&app, &token, Method::GET, &own, &[], None).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let refused = send_with(
        &app,
        &token,
        Method::DELETE,
        &entry_path("responses", "resp-1"),
        &[],
        None,
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
}
