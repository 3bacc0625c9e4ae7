//! Who sees what: tenants never see each other's entries; `X-On-Behalf-Of`
//! confines a caller to one end user's entries.

use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::json;

use crate::helpers::{Reply, TestApp};

both_stores!(
    tenants_get_404_for_each_others_entries,
    another_tenants_put_is_404_and_leaves_the_entry_unchanged,
    another_tenant_can_create_the_same_id_independently,
    an_entry_created_for_an_end_user_is_visible_to_that_user_and_to_the_tenant,
    another_end_user_gets_404_on_get_and_put_and_the_entry_is_unchanged,
    an_entry_created_tenant_wide_is_404_for_an_end_user,
    creating_an_id_that_another_end_user_rated_is_409,
    bad_on_behalf_of_values_are_400_naming_the_header,
    a_bad_on_behalf_of_on_create_stores_nothing,
    an_on_behalf_of_of_256_printable_characters_with_spaces_is_accepted,
    two_on_behalf_of_headers_are_400,
);

const HEADER: &str = "X-On-Behalf-Of";

/// Asserts a 400 `invalid_request` whose details name `X-On-Behalf-Of`.
fn assert_bad_end_user(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 400, "{what}: {}", reply.text);
    assert_eq!(reply.error_code(), "invalid_request", "{what}");
    let body = reply.body.as_object().expect("an object");
    assert_eq!(
        body.keys().map(String::as_str).collect::<Vec<_>>(),
        ["error"],
        "{what}"
    );
    assert!(
        body["error"]["message"].is_string(),
        "{what}: {}",
        reply.text
    );
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no details: {}", reply.text))
        .iter()
        .filter_map(|detail| detail["field"].as_str())
        .collect();
    assert_eq!(fields, [HEADER], "{what}: {}", reply.text);
}

async fn tenants_get_404_for_each_others_entries(app: TestApp) {
    let tenant_b = app.new_key("tenant-b").await;
    let of_a = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-a", "rating": "thumbs_up"}),
        )
        .await;
    let of_b = app
        .as_caller(&tenant_b, None)
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-b", "rating": "thumbs_up"}),
        )
        .await;

    let b_reads_a = app
        .as_caller(&tenant_b, None)
        .get("completions", "chatcmpl-a")
        .await;
    let a_reads_b = app.get("completions", "chatcmpl-b").await;

    assert_eq!(b_reads_a.status, 404, "{}", b_reads_a.text);
    assert_eq!(b_reads_a.error_code(), "not_found");
    assert_eq!(a_reads_b.status, 404, "{}", a_reads_b.text);
    assert_eq!(a_reads_b.error_code(), "not_found");
    // Each still sees its own.
    assert_eq!(app.get("completions", "chatcmpl-a").await.body, of_a);
    let own_b = app
        .as_caller(&tenant_b, None)
        .get("completions", "chatcmpl-b")
        .await;
    assert_eq!(own_b.body, of_b);
}

async fn another_tenants_put_is_404_and_leaves_the_entry_unchanged(app: TestApp) {
    let tenant_b = app.new_key("tenant-b").await;
    let created = app
        .create_ok(
            "responses",
            json!({"id": "resp-1", "rating": "thumbs_up", "description": "mine"}),
        )
        .await;

    let changed = app
        .as_caller(&tenant_b, None)
        .update(
            "responses",
            "resp-1",
            json!({"rating": "thumbs_down", "description": null}),
        )
        .await;
    let emptied = app
        .as_caller(&tenant_b, None)
        .update("responses", "resp-1", json!({}))
        .await;

    assert_eq!(changed.status, 404, "{}", changed.text);
    assert_eq!(changed.error_code(), "not_found");
    assert_eq!(emptied.status, 404, "{}", emptied.text);
    assert_eq!(emptied.error_code(), "not_found");
    let stored = app.get("responses", "resp-1").await;
    assert_eq!(stored.body, created);
    // Nothing was created for tenant B either.
    let of_b = app
        .as_caller(&tenant_b, None)
        .get("responses", "resp-1")
        .await;
    assert_eq!(of_b.status, 404, "{}", of_b.text);
}

async fn another_tenant_can_create_the_same_id_independently(app: TestApp) {
    let tenant_b = app.new_key("tenant-b").await;
    let of_a = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-same", "rating": "thumbs_up", "description": "from A"}),
        )
        .await;

    let of_b = app
        .as_caller(&tenant_b, None)
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-same", "rating": "thumbs_down", "description": "from B"}),
        )
        .await;
    let b_updates = app
        .as_caller(&tenant_b, None)
        .update(
            "completions",
            "chatcmpl-same",
            json!({"description": "B again"}),
        )
        .await;

    assert_eq!(of_b["rating"], "thumbs_down");
    assert_eq!(b_updates.status, 200, "{}", b_updates.text);
    let seen_by_a = app.get("completions", "chatcmpl-same").await;
    assert_eq!(seen_by_a.body, of_a);
    let seen_by_b = app
        .as_caller(&tenant_b, None)
        .get("completions", "chatcmpl-same")
        .await;
    assert_eq!(seen_by_b.body["rating"], "thumbs_down");
    assert_eq!(seen_by_b.body["description"], "B again");
    assert_eq!(seen_by_b.body, b_updates.body);
}

async fn an_entry_created_for_an_end_user_is_visible_to_that_user_and_to_the_tenant(app: TestApp) {
    let user_1 = app.as_caller(&app.api_key, Some("user-1"));
    let created = user_1
        .create_ok("responses", json!({"id": "resp-1", "rating": "thumbs_up"}))
        .await;

    let by_user = user_1.get("responses", "resp-1").await;
    let by_tenant = app.get("responses", "resp-1").await;
    let updated_by_tenant = app
        .update("responses", "resp-1", json!({"description": "tenant note"}))
        .await;
    let updated_by_user = user_1
        .update("responses", "resp-1", json!({"rating": "thumbs_down"}))
        .await;

    assert_eq!(by_user.status, 200, "{}", by_user.text);
    assert_eq!(by_user.body, created);
    assert_eq!(by_tenant.status, 200, "{}", by_tenant.text);
    assert_eq!(by_tenant.body, created);
    assert_eq!(updated_by_tenant.status, 200, "{}", updated_by_tenant.text);
    assert_eq!(updated_by_user.status, 200, "{}", updated_by_user.text);
    assert_eq!(updated_by_user.body["description"], "tenant note");
    assert_eq!(updated_by_user.body["rating"], "thumbs_down");
}

async fn another_end_user_gets_404_on_get_and_put_and_the_entry_is_unchanged(app: TestApp) {
    let user_1 = app.as_caller(&app.api_key, Some("user-1"));
    let user_2 = app.as_caller(&app.api_key, Some("user-2"));
    let created = user_1
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up", "description": "user 1"}),
        )
        .await;

    let read = user_2.get("completions", "chatcmpl-1").await;
    let write = user_2
        .update(
            "completions",
            "chatcmpl-1",
            json!({"rating": "thumbs_down", "description": null}),
        )
        .await;

    assert_eq!(read.status, 404, "{}", read.text);
    assert_eq!(read.error_code(), "not_found");
    assert_eq!(write.status, 404, "{}", write.text);
    assert_eq!(write.error_code(), "not_found");
    assert_eq!(user_1.get("completions", "chatcmpl-1").await.body, created);
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn an_entry_created_tenant_wide_is_404_for_an_end_user(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;
    let user_1 = app.as_caller(&app.api_key, Some("user-1"));

    let read = user_1.get("completions", "chatcmpl-1").await;
    let write = user_1
        .update(
            "completions",
            "chatcmpl-1",
            json!({"rating": "thumbs_down"}),
        )
        .await;

    assert_eq!(read.status, 404, "{}", read.text);
    assert_eq!(read.error_code(), "not_found");
    assert_eq!(write.status, 404, "{}", write.text);
    assert_eq!(write.error_code(), "not_found");
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn creating_an_id_that_another_end_user_rated_is_409(app: TestApp) {
    let user_1 = app.as_caller(&app.api_key, Some("user-1"));
    let user_2 = app.as_caller(&app.api_key, Some("user-2"));
    let created = user_1
        .create_ok("responses", json!({"id": "resp-1", "rating": "thumbs_up"}))
        .await;

    let by_other_user = user_2
        .create(
            "responses",
            json!({"id": "resp-1", "rating": "thumbs_down"}),
        )
        .await;
    let tenant_wide = app
        .create("responses", json!({"id": "resp-1", "description": "x"}))
        .await;

    assert_eq!(by_other_user.status, 409, "{}", by_other_user.text);
    assert_eq!(by_other_user.error_code(), "conflict");
    assert_eq!(tenant_wide.status, 409, "{}", tenant_wide.text);
    assert_eq!(tenant_wide.error_code(), "conflict");
    assert_eq!(user_1.get("responses", "resp-1").await.body, created);
    let still_hidden = user_2.get("responses", "resp-1").await;
    assert_eq!(still_hidden.status, 404, "{}", still_hidden.text);
}

/// `X-On-Behalf-Of` values that API.md refuses, by name.
fn bad_end_users() -> Vec<(&'static str, HeaderValue)> {
    vec![
        ("empty", HeaderValue::from_static("")),
        ("all spaces", HeaderValue::from_static("    ")),
        (
            "257 characters",
            HeaderValue::from_str(&"u".repeat(257)).expect("header"),
        ),
        (
            "non-ASCII",
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("header"),
        ),
        (
            "a Latin-1 byte",
            HeaderValue::from_bytes(b"caf\xe9").expect("header"),
        ),
        (
            "a tab inside",
            HeaderValue::from_bytes(b"a\tb").expect("header"),
        ),
    ]
}

async fn bad_on_behalf_of_values_are_400_naming_the_header(app: TestApp) {
    let created = app
        .create_ok("completions", json!({"id": "chatcmpl-1"}))
        .await;

    for (what, value) in bad_end_users() {
        let read = app
            .send(
                app.request(Method::GET, "/api/v1/llm/feedback/completions/chatcmpl-1")
                    .header(HEADER, value.clone()),
            )
            .await;
        let write = app
            .send(
                app.request(Method::PUT, "/api/v1/llm/feedback/completions/chatcmpl-1")
                    .header(HEADER, value)
                    .json(&json!({"rating": "thumbs_down"})),
            )
            .await;

        assert_bad_end_user(&read, &format!("GET, {what}"));
        assert_bad_end_user(&write, &format!("PUT, {what}"));
    }
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn a_bad_on_behalf_of_on_create_stores_nothing(app: TestApp) {
    for (index, (what, value)) in bad_end_users().into_iter().enumerate() {
        let id = format!("resp-{index}");

        let reply = app
            .send(
                app.request(Method::POST, "/api/v1/llm/feedback/responses")
                    .header(HEADER, value)
                    .json(&json!({"id": id, "rating": "thumbs_up"})),
            )
            .await;

        assert_bad_end_user(&reply, &format!("POST, {what}"));
        let stored = app.get("responses", &id).await;
        assert_eq!(stored.status, 404, "{what}: {}", stored.text);
    }
}

async fn an_on_behalf_of_of_256_printable_characters_with_spaces_is_accepted(app: TestApp) {
    // Every printable ASCII character, spaces included, between two letters.
    let middle: String = (0x20_u8..=0x7e).map(char::from).cycle().take(254).collect();
    let end_user = format!("a{middle}z");
    assert_eq!(end_user.len(), 256);
    assert!(end_user.contains(' '));
    let user = app.as_caller(&app.api_key, Some(&end_user));

    let created = user
        .create_ok("responses", json!({"id": "resp-1", "rating": "thumbs_up"}))
        .await;
    let read = user.get("responses", "resp-1").await;

    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body, created);
    let other = app
        .as_caller(&app.api_key, Some(&format!("a{middle}y")))
        .get("responses", "resp-1")
        .await;
    assert_eq!(other.status, 404, "{}", other.text);
}

async fn two_on_behalf_of_headers_are_400(app: TestApp) {
    app.as_caller(&app.api_key, Some("user-1"))
        .create_ok("completions", json!({"id": "chatcmpl-1"}))
        .await;

    for (first, second) in [("user-1", "user-2"), ("user-1", "user-1")] {
        let read = app
            .send(
                app.request(Method::GET, "/api/v1/llm/feedback/completions/chatcmpl-1")
                    .header(HEADER, first)
                    .header(HEADER, second),
            )
            .await;
        let create = app
            .send(
                app.request(Method::POST, "/api/v1/llm/feedback/completions")
                    .header(HEADER, first)
                    .header(HEADER, second)
                    .json(&json!({"id": "chatcmpl-2"})),
            )
            .await;

        assert_bad_end_user(&read, &format!("GET, {first} and {second}"));
        assert_bad_end_user(&create, &format!("POST, {first} and {second}"));
    }
    assert_eq!(app.get("completions", "chatcmpl-2").await.status, 404);
}
