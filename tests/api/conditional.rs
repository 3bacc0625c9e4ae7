//! `ETag`, `If-Match`, `If-None-Match` (API.md, "Conditional requests").

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;
use crate::safe_writes::{
    create_with, delete_with, entry_path, etag, mint, send, send_with, update_with,
};

both_stores!(
    every_entry_answer_has_a_strong_etag_that_changes_on_every_write,
    put_applies_only_when_if_match_names_the_current_tag,
    if_match_accepts_star_and_lists_and_never_a_weak_tag,
    if_match_on_a_missing_entry_is_404,
    malformed_conditional_headers_are_400_naming_the_header,
    get_with_a_matching_if_none_match_is_304_without_a_body,
    auth_validation_and_404_take_precedence_over_412,
    forty_concurrent_puts_with_one_if_match_give_one_200_and_39_412,
    delete_honours_if_match,
);

async fn every_entry_answer_has_a_strong_etag_that_changes_on_every_write(app: TestApp) {
    let created = create_with(&app, "responses", &[], &json!({"id": "resp-1"})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let mut tags = vec![etag(&created)];
    // Writes back to back, most within one millisecond: every tag differs.
    for n in 0..5 {
        let rating = if n % 2 == 0 {
            "thumbs_up"
        } else {
            "thumbs_down"
        };
        let updated =
            update_with(&app, "responses", "resp-1", &[], &json!({"rating": rating})).await;
        assert_eq!(updated.status, 200, "{}", updated.text);
        tags.push(etag(&updated));
    }
    let distinct: BTreeSet<&String> = tags.iter().collect();
    assert_eq!(distinct.len(), tags.len(), "{tags:?}");
    for tag in &tags {
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"),
            "{tag}"
        );
    }
    let got = app.get("responses", "resp-1").await;
    assert_eq!(got.status, 200);
    assert_eq!(etag(&got), *tags.last().expect("tags"));
}

async fn put_applies_only_when_if_match_names_the_current_tag(app: TestApp) {
    let created = create_with(
        &app,
        "responses",
        &[],
        &json!({"id": "resp-1", "rating": "thumbs_up"}),
    )
    .await;
    let first = etag(&created);
    let updated = update_with(
        &app,
        "responses",
        "resp-1",
        &[("If-Match", &first)],
        &json!({"description": "a"}),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    // The first tag is stale now: 412, and nothing changes.
    let before = app.get("responses", "resp-1").await;
    let stale = update_with(
        &app,
        "responses",
        "resp-1",
        &[("If-Match", &first)],
        &json!({"rating": null}),
    )
    .await;
    assert_eq!(stale.status, 412, "{}", stale.text);
    assert_eq!(stale.error_code(), "precondition_failed");
    let after = app.get("responses", "resp-1").await;
    assert_eq!(after.body, before.body);
    assert_eq!(etag(&after), etag(&before));
}

async fn if_match_accepts_star_and_lists_and_never_a_weak_tag(app: TestApp) {
    let created = create_with(&app, "completions", &[], &json!({"id": "c-1"})).await;
    let tag = etag(&created);
    let body = json!({});
    let star = update_with(&app, "completions", "c-1", &[("If-Match", "*")], &body).await;
    assert_eq!(star.status, 200, "{}", star.text);
    let current = etag(&star);
    let list = format!("\"nope\", {tag} , {current}");
    let listed = update_with(&app, "completions", "c-1", &[("If-Match", &list)], &body).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let current = etag(&listed);
    // An empty list (RFC 9110 allows one) matches nothing.
    let empty = update_with(&app, "completions", "c-1", &[("If-Match", "")], &body).await;
    assert_eq!(empty.status, 412, "{}", empty.text);
    let weak = format!("W/{current}");
    let refused = update_with(&app, "completions", "c-1", &[("If-Match", &weak)], &body).await;
    assert_eq!(refused.status, 412, "{}", refused.text);
    // Two header lines make one list.
    let request = app
        .request(Method::PUT, &entry_path("completions", "c-1"))
        .header("If-Match", "\"other\"")
        .header("If-Match", current.as_str())
        .json(&body);
    assert_eq!(app.send(request).await.status, 200);
}

async fn if_match_on_a_missing_entry_is_404(app: TestApp) {
    for tag in ["\"r1\"", "*"] {
        let reply = update_with(
            &app,
            "completions",
            "missing",
            &[("If-Match", tag)],
            &json!({}),
        )
        .await;
        assert_eq!(reply.status, 404, "{}", reply.text);
        let reply = delete_with(&app, "completions", "missing", &[("If-Match", tag)]).await;
        assert_eq!(reply.status, 404, "{}", reply.text);
    }
}

async fn malformed_conditional_headers_are_400_naming_the_header(app: TestApp) {
    create_with(&app, "completions", &[], &json!({"id": "c-1"})).await;
    for bad in ["r1", "\"r1", "W/ \"r1\"", "*, \"r1\"", "\"a\" \"b\"", "**"] {
        let reply = update_with(&app, "completions", "c-1", &[("If-Match", bad)], &json!({})).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["details"][0]["field"], "If-Match",
            "{}",
            reply.text
        );
        let reply = send(
            &app,
            Method::GET,
            &entry_path("completions", "c-1"),
            &[("If-None-Match", bad)],
            None,
        )
        .await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["details"][0]["field"], "If-None-Match",
            "{}",
            reply.text
        );
        let reply = delete_with(&app, "completions", "c-1", &[("If-Match", bad)]).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
    }
    assert_eq!(app.get("completions", "c-1").await.status, 200);
}

async fn get_with_a_matching_if_none_match_is_304_without_a_body(app: TestApp) {
    let created = create_with(&app, "responses", &[], &json!({"id": "resp-1"})).await;
    let tag = etag(&created);
    let path = entry_path("responses", "resp-1");
    for header in [
        tag.clone(),
        format!("W/{tag}"),
        "*".to_owned(),
        format!("\"x\", {tag}"),
    ] {
        let reply = send(
            &app,
            Method::GET,
            &path,
            &[("If-None-Match", &header)],
            None,
        )
        .await;
        assert_eq!(reply.status, 304, "{header}: {}", reply.text);
        assert!(reply.text.is_empty());
        assert_eq!(etag(&reply), tag);
    }
    app.update_ok("responses", "resp-1", json!({"rating": "thumbs_up"}))
        .await;
    let reply = send(&app, Method::GET, &path, &[("If-None-Match", &tag)], None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["rating"], "thumbs_up");
    // A missing entry is 404 whatever If-None-Match says.
    let missing = send(
        &app,
        Method::GET,
        &entry_path("responses", "nope"),
        &[("If-None-Match", "*")],
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
}

async fn auth_validation_and_404_take_precedence_over_412(app: TestApp) {
    create_with(&app, "responses", &[], &json!({"id": "resp-1"})).await;
    create_with(&app, "responses", &[], &json!({"id": "resp-2"})).await;
    let stale = [("If-Match", "\"r999\"")];
    let path = entry_path("responses", "resp-1");
    let unauthenticated = send_with(
        &app,
        "lfk_nope",
        Method::PUT,
        &path,
        &stale,
        Some(&json!({})),
    )
    .await;
    assert_eq!(unauthenticated.status, 401);
    let token = mint(&app, "responses", "resp-2", None).await;
    let forbidden = send_with(&app, &token, Method::PUT, &path, &stale, Some(&json!({}))).await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.text);
    let invalid = update_with(
        &app,
        "responses",
        "resp-1",
        &stale,
        &json!({"rating": "meh"}),
    )
    .await;
    assert_eq!(invalid.status, 400, "{}", invalid.text);
    let other_user = send(
        &app,
        Method::PUT,
        &path,
        &[stale[0], ("X-On-Behalf-Of", "someone")],
        Some(&json!({})),
    )
    .await;
    assert_eq!(other_user.status, 404, "{}", other_user.text);
    let stale_reply = update_with(&app, "responses", "resp-1", &stale, &json!({})).await;
    assert_eq!(stale_reply.status, 412, "{}", stale_reply.text);
}

async fn forty_concurrent_puts_with_one_if_match_give_one_200_and_39_412(app: TestApp) {
    let created = create_with(&app, "completions", &[], &json!({"id": "c-1"})).await;
    let tag = etag(&created);
    let replies = futures_util::future::join_all((0..40).map(|n| {
        let (app, tag) = (&app, tag.clone());
        async move {
            update_with(
                app,
                "completions",
                "c-1",
                &[("If-Match", &tag)],
                &json!({"description": format!("writer {n}")}),
            )
            .await
        }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let failed = replies.iter().filter(|r| r.status == 412).count();
    assert_eq!(
        (ok, failed),
        (1, 39),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let winner = replies.iter().find(|r| r.status == 200).expect("a winner");
    let stored = app.get("completions", "c-1").await;
    assert_eq!(stored.body["description"], winner.body["description"]);
}

async fn delete_honours_if_match(app: TestApp) {
    let created = create_with(&app, "completions", &[], &json!({"id": "c-1"})).await;
    let first = etag(&created);
    let updated = app
        .update("completions", "c-1", json!({"rating": "thumbs_up"}))
        .await;
    let stale = delete_with(&app, "completions", "c-1", &[("If-Match", &first)]).await;
    assert_eq!(stale.status, 412, "{}", stale.text);
    assert_eq!(app.get("completions", "c-1").await.status, 200);
    let current = etag(&updated);
    let deleted = delete_with(&app, "completions", "c-1", &[("If-Match", &current)]).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(app.get("completions", "c-1").await.status, 404);
}
