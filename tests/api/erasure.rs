//! `DELETE /end-users/{end_user}` (API.md, "Delete and end-user erasure").

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::{Backend, TestApp, is_utc_millisecond_timestamp};
use crate::safe_writes::{create_with, mint, revisions, send, send_with};

both_stores!(
    erasure_removes_the_end_users_entries_histories_and_kept_outcomes_only,
    erasure_with_x_on_behalf_of_or_a_token_is_403,
    a_bad_end_user_in_the_path_is_400_naming_the_path_parameter,
    no_table_or_file_holds_an_erased_description,
);

fn erase_path(end_user: &str) -> String {
    format!(
        "/api/v1/llm/feedback/end-users/{}",
        crate::helpers::encode_id(end_user)
    )
}

async fn erase(app: &TestApp, end_user: &str) -> crate::helpers::Reply {
    send(app, Method::DELETE, &erase_path(end_user), &[], None).await
}

async fn erasure_removes_the_end_users_entries_histories_and_kept_outcomes_only(app: TestApp) {
    let user = app.as_caller(&app.api_key, Some("user-1"));
    user.create_ok("completions", json!({"id": "c-1", "description": "mine"}))
        .await;
    user.create_ok("responses", json!({"id": "r-1"})).await;
    let kept = create_with(
        &app,
        "responses",
        &[("X-On-Behalf-Of", "user-1"), ("Idempotency-Key", "k-1")],
        &json!({"id": "r-2"}),
    )
    .await;
    assert_eq!(kept.status, 201);
    user.update("completions", "c-1", json!({"rating": "thumbs_up"}))
        .await;
    app.as_caller(&app.api_key, Some("user-2"))
        .create_ok("completions", json!({"id": "c-2"}))
        .await;
    app.create_ok("completions", json!({"id": "c-3"})).await;
    let other_tenant = app.new_key("tenant-b").await;
    app.as_caller(&other_tenant, Some("user-1"))
        .create_ok("completions", json!({"id": "c-1"}))
        .await;

    let reply = erase(&app, "user-1").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["end_user"], "user-1");
    assert_eq!(
        reply.body["deleted"],
        json!({"completions": 1, "responses": 2})
    );
    let receipt = reply.body["receipt"].as_str().expect("receipt");
    assert!(
        receipt.starts_with("era_") && receipt.len() == 36,
        "{receipt}"
    );
    assert!(is_utc_millisecond_timestamp(
        reply.body["erased_at"].as_str().expect("erased_at")
    ));
    let mut keys: Vec<&str> = reply
        .body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["deleted", "end_user", "erased_at", "receipt"]);

    for (kind, id) in [
        ("completions", "c-1"),
        ("responses", "r-1"),
        ("responses", "r-2"),
    ] {
        assert_eq!(app.get(kind, id).await.status, 404);
        assert_eq!(revisions(&app, kind, id, "").await.status, 404);
    }
    assert_eq!(app.get("completions", "c-2").await.status, 200);
    assert_eq!(app.get("completions", "c-3").await.status, 200);
    assert_eq!(
        app.as_caller(&other_tenant, None)
            .get("completions", "c-1")
            .await
            .status,
        200
    );
    // The kept outcome went too: the same request is processed anew.
    let again = create_with(
        &app,
        "responses",
        &[("X-On-Behalf-Of", "user-1"), ("Idempotency-Key", "k-1")],
        &json!({"id": "r-2"}),
    )
    .await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), None);

    let second = erase(&app, "user-1").await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body["deleted"],
        json!({"completions": 0, "responses": 1})
    );
    let third = erase(&app, "user-1").await;
    assert_eq!(
        third.body["deleted"],
        json!({"completions": 0, "responses": 0})
    );
    assert_ne!(third.body["receipt"], reply.body["receipt"]);
}

async fn erasure_with_x_on_behalf_of_or_a_token_is_403(app: TestApp) {
    app.as_caller(&app.api_key, Some("user-1"))
        .create_ok("completions", json!({"id": "c-1"}))
        .await;
    for user in ["user-1", "user-2"] {
        let reply = send(
            &app,
            Method::DELETE,
            &erase_path("user-1"),
            &[("X-On-Behalf-Of", user)],
            None,
        )
        .await;
        assert_eq!(reply.status, 403, "{}", reply.text);
        assert_eq!(reply.error_code(), "forbidden");
    }
    let token = mint(&app, "completions", "c-1", Some("user-1")).await;
    let reply = send_with(
        &app,
        &token,
        Method::DELETE,
        &erase_path("user-1"),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(
        send_with(
            &app,
            "lfk_bad",
            Method::DELETE,
            &erase_path("user-1"),
            &[],
            None
        )
        .await
        .status,
        401
    );
    assert_eq!(
        app.as_caller(&app.api_key, Some("user-1"))
            .get("completions", "c-1")
            .await
            .status,
        200
    );
}

async fn a_bad_end_user_in_the_path_is_400_naming_the_path_parameter(app: TestApp) {
    let long = "u".repeat(257);
    for bad in ["%01", "caf%C3%A9", long.as_str(), "%FF"] {
        let reply = send(
            &app,
            Method::DELETE,
            &format!("/api/v1/llm/feedback/end-users/{bad}"),
            &[],
            None,
        )
        .await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["details"][0]["field"], "end_user",
            "{}",
            reply.text
        );
    }
    // A space is printable ASCII: a valid end user.
    assert_eq!(erase(&app, "user one").await.status, 200);
}

/// How many places in the database hold `needle`: rows of any table
/// (PostgreSQL), bytes of the file and its WAL (SQLite).
pub(crate) async fn occurrences(app: &TestApp, needle: &str) -> usize {
    match app.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url)
                .await
                .expect("connect");
            let tables: Vec<(String,)> = sqlx::query_as(
                "select tablename::text from pg_tables where schemaname = current_schema()",
            )
            .fetch_all(&mut conn)
            .await
            .expect("tables");
            let mut found = 0;
            for (table,) in tables {
                let sql = format!(
                    "select count(*) from \"{table}\" as t where t::text like '%' || $1 || '%'"
                );
                let (count,): (i64,) = sqlx::query_as(&sql)
                    .bind(needle)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count");
                found += usize::try_from(count).expect("count");
            }
            found
        }
        Backend::Sqlite => {
            let path = app.database_url.trim_start_matches("sqlite://").to_owned();
            let mut found = 0;
            for file in [
                path.clone(),
                format!("{path}-wal"),
                format!("{path}-journal"),
            ] {
                let Ok(bytes) = std::fs::read(&file) else {
                    continue;
                };
                found += bytes
                    .windows(needle.len())
                    .filter(|w| *w == needle.as_bytes())
                    .count();
            }
            found
        }
    }
}

async fn no_table_or_file_holds_an_erased_description(app: TestApp) {
    let secret = "SECRET-erase-me-4711";
    let user = app.as_caller(&app.api_key, Some("user-1"));
    user.create_ok(
        "completions",
        json!({"id": "c-1", "description": format!("{secret} v1")}),
    )
    .await;
    user.update(
        "completions",
        "c-1",
        json!({"description": format!("{secret} v2")}),
    )
    .await;
    let kept = create_with(
        &app,
        "responses",
        &[("X-On-Behalf-Of", "user-1"), ("Idempotency-Key", "k-1")],
        &json!({"id": "r-1", "description": secret}),
    )
    .await;
    assert_eq!(kept.status, 201);
    let kept_text: Value = kept.body;
    assert_eq!(kept_text["description"], secret);
    app.create_ok(
        "completions",
        json!({"id": "c-2", "description": "keep me"}),
    )
    .await;
    assert!(
        occurrences(&app, secret).await > 0,
        "the test cannot see the description before erasure"
    );

    assert_eq!(erase(&app, "user-1").await.status, 200);
    assert_eq!(occurrences(&app, secret).await, 0);
    assert!(occurrences(&app, "keep me").await > 0);
    // Also after the store closes (SQLite checkpoints again).
    app.store.close().await;
    assert_eq!(occurrences(&app, secret).await, 0);
}
