//! `GET /api/v1/llm/feedback/{kind}` (list) and `POST /api/v1/llm/feedback/{kind}/batch`.

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::helpers::{
    Caller, Reply, TestApp, assert_entry_timestamps, encode_id, is_utc_millisecond_timestamp,
    sorted_keys,
};

both_stores!(
    paging_with_every_limit_order_and_rating_visits_each_entry_once_in_order,
    entries_with_one_created_at_are_paged_in_insertion_order,
    the_default_page_holds_the_20_newest_entries,
    list_items_and_pages_have_exactly_the_documented_keys,
    a_page_after_the_last_entry_is_empty_without_first_and_last_id,
    an_empty_namespace_lists_as_an_empty_page,
    entries_created_while_paging_newest_first_never_appear_nor_shift_the_pages,
    entries_created_while_paging_oldest_first_come_last_and_exactly_once,
    an_after_entry_outside_the_rating_filter_is_still_a_valid_cursor,
    an_after_id_with_reserved_characters_is_percent_decoded,
    bad_list_queries_are_400_invalid_request,
    a_flood_of_5000_unknown_list_parameters_is_one_400_with_20_details,
    an_after_that_names_no_visible_entry_is_400,
    the_two_kinds_are_listed_separately,
    list_shows_each_caller_only_its_tenants_and_end_users_entries,
    batch_get_answers_in_input_order_with_not_found_markers_and_repeats,
    batch_get_finds_nothing_of_another_tenant_another_end_user_or_the_other_kind,
    batch_get_of_1_and_of_100_ids_is_answered,
    batch_get_bodies_that_break_the_rules_are_400,
    batch_get_without_a_json_content_type_is_415,
    post_on_batch_is_batch_get_while_get_and_put_address_the_entry_named_batch,
);

/// The list item API.md derives from an entry as create, PUT or GET return
/// it: snake_case timestamps, `model` always (`""` when never given).
fn list_item(entry: &Value) -> Value {
    let mut item = json!({
        "id": entry["id"],
        "model": entry.get("model").cloned().unwrap_or_else(|| json!("")),
        "created_at": entry["createdAt"],
        "updated_at": entry["updatedAt"],
    });
    for field in ["rating", "description"] {
        if let Some(value) = entry.get(field) {
            item[field] = value.clone();
        }
    }
    item
}

fn ids_of(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .map(|item| item["id"].as_str().expect("an id"))
        .collect()
}

/// Creates `count` completions with mixed ratings, models and descriptions,
/// one after the other; returns them in creation order.
async fn create_mixed(app: &TestApp, prefix: &str, count: usize) -> Vec<Value> {
    let mut created = Vec::with_capacity(count);
    for i in 0..count {
        let mut body = json!({"id": format!("{prefix}-{i:02}")});
        match i % 3 {
            1 => body["rating"] = json!("thumbs_up"),
            2 => body["rating"] = json!("thumbs_down"),
            _ => {}
        }
        if i % 2 == 0 {
            body["model"] = json!(format!("model-{}", i % 4));
        }
        if i % 4 == 0 {
            body["description"] = json!(format!("note {i}, with a comma"));
        } else if i % 7 == 0 {
            body["description"] = json!("");
        }
        created.push(app.create_ok("completions", body).await);
    }
    created
}

/// One page, its envelope checked against API.md.
struct Page {
    items: Vec<Value>,
    has_more: bool,
}

/// Checks a list reply's envelope: `object`, `data`, `has_more`, and
/// `first_id`/`last_id` naming the first and last item, absent when empty.
fn page_of(reply: &Reply, limit: usize) -> Page {
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = &reply.body;
    assert_eq!(body["object"], "list", "{}", reply.text);
    let items = body["data"].as_array().expect("data is an array").clone();
    let has_more = body["has_more"].as_bool().expect("has_more is a boolean");
    assert!(
        items.len() <= limit,
        "{} items > limit {limit}",
        items.len()
    );
    if has_more {
        assert_eq!(items.len(), limit, "a page with has_more is full");
    }
    if let (Some(first), Some(last)) = (items.first(), items.last()) {
        assert_eq!(
            sorted_keys(body),
            ["data", "first_id", "has_more", "last_id", "object"]
        );
        assert_eq!(body["first_id"], first["id"], "{}", reply.text);
        assert_eq!(body["last_id"], last["id"], "{}", reply.text);
    } else {
        assert_eq!(
            sorted_keys(body),
            ["data", "has_more", "object"],
            "{}",
            reply.text
        );
        assert!(!has_more, "an empty page has has_more: false");
    }
    Page { items, has_more }
}

/// `query` (possibly empty) with `extra` parameters appended.
fn with_params(query: &str, extra: &[String]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !query.is_empty() {
        parts.push(query.to_owned());
    }
    parts.extend(extra.iter().cloned());
    parts.join("&")
}

/// Follows `last_id` from page to page until `has_more` is false; returns
/// every item in the order received, checking that there were exactly as
/// many pages as the item count requires.
async fn page_through(app: &TestApp, kind: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut items: Vec<Value> = Vec::new();
    let mut pages = 0;
    loop {
        let mut extra = vec![format!("limit={limit}")];
        if let Some(last) = items.last() {
            extra.push(format!(
                "after={}",
                encode_id(last["id"].as_str().expect("id"))
            ));
        }
        let reply = app.list(kind, &with_params(query, &extra)).await;
        let page = page_of(&reply, limit);
        pages += 1;
        assert!(pages <= 200, "paging does not end ({query}, limit {limit})");
        items.extend(page.items);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        pages,
        items.len().div_ceil(limit).max(1),
        "page count for {} items at limit {limit} ({query})",
        items.len()
    );
    items
}

/// `GET /{kind}?{query}` as another caller.
async fn list_as(caller: &Caller<'_>, kind: &str, query: &str) -> Reply {
    let request = caller.request(Method::GET, &format!("/api/v1/llm/feedback/{kind}?{query}"));
    Reply::read(request.send().await.expect("request failed")).await
}

/// `POST /{kind}/batch` as another caller.
async fn batch_get_as(caller: &Caller<'_>, kind: &str, body: Value) -> Reply {
    let request = caller
        .request(Method::POST, &format!("/api/v1/llm/feedback/{kind}/batch"))
        .json(&body);
    Reply::read(request.send().await.expect("request failed")).await
}

fn not_found(id: &str) -> Value {
    json!({"id": id, "error": "not_found"})
}

async fn paging_with_every_limit_order_and_rating_visits_each_entry_once_in_order(app: TestApp) {
    let created = create_mixed(&app, "chatcmpl", 47).await;
    app.create_ok("responses", json!({"id": "resp-elsewhere"}))
        .await;
    let oldest_first: Vec<Value> = created.iter().map(list_item).collect();

    for rating in [None, Some("thumbs_up"), Some("thumbs_down")] {
        let matching: Vec<Value> = oldest_first
            .iter()
            .filter(|item| rating.is_none_or(|rating| item["rating"] == rating))
            .cloned()
            .collect();
        let newest_first: Vec<Value> = matching.iter().rev().cloned().collect();
        let filter = rating.map(|rating| format!("rating={rating}"));
        for (order, expected) in [
            (None, &newest_first),
            (Some("order=desc"), &newest_first),
            (Some("order=asc"), &matching),
        ] {
            let query = [order.map(str::to_owned), filter.clone()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("&");
            for limit in [1, 7, 20, 100] {
                let listed = page_through(&app, "completions", &query, limit).await;

                assert_eq!(
                    ids_of(&listed),
                    ids_of(expected),
                    "query {query:?}, limit {limit}"
                );
                assert_eq!(&listed, expected, "query {query:?}, limit {limit}");
            }
        }
    }
}

async fn entries_with_one_created_at_are_paged_in_insertion_order(app: TestApp) {
    app.insert_completions_directly("tie", 45).await;
    // Ratings as the direct insert sets them: n % 3 = 1 up, 2 down, 0 none.
    let inserted: Vec<(String, Option<&str>)> = (1..=45)
        .map(|n| {
            let rating = [None, Some("thumbs_up"), Some("thumbs_down")][n % 3];
            (format!("tie-{n}"), rating)
        })
        .collect();

    for rating in [None, Some("thumbs_up"), Some("thumbs_down")] {
        let oldest_first: Vec<&str> = inserted
            .iter()
            .filter(|(_, r)| rating.is_none() || *r == rating)
            .map(|(id, _)| id.as_str())
            .collect();
        let newest_first: Vec<&str> = oldest_first.iter().rev().copied().collect();
        let filter = rating.map(|rating| format!("rating={rating}"));
        for (order, expected) in [(None, &newest_first), (Some("order=asc"), &oldest_first)] {
            let query = [order.map(str::to_owned), filter.clone()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("&");
            for limit in [1, 7, 20, 100] {
                let listed = page_through(&app, "completions", &query, limit).await;

                assert_eq!(ids_of(&listed), *expected, "query {query:?}, limit {limit}");
                assert!(
                    listed
                        .iter()
                        .all(|item| item["created_at"] == listed[0]["created_at"]),
                    "one created_at for all"
                );
            }
        }
    }
}

async fn the_default_page_holds_the_20_newest_entries(app: TestApp) {
    let created = create_mixed(&app, "chatcmpl", 25).await;
    let newest_20: Vec<Value> = created.iter().rev().take(20).map(list_item).collect();

    let without_query = app
        .send(app.request(Method::GET, "/api/v1/llm/feedback/completions"))
        .await;
    let empty_query = app.list("completions", "").await;

    for reply in [&without_query, &empty_query] {
        let page = page_of(reply, 20);
        assert!(page.has_more);
        assert_eq!(page.items, newest_20);
    }
}

async fn list_items_and_pages_have_exactly_the_documented_keys(app: TestApp) {
    let bare = app.create_ok("completions", json!({"id": "bare"})).await;
    let full = app
        .create_ok(
            "completions",
            json!({"id": "full", "rating": "thumbs_down", "description": "ok", "model": "gpt-4o"}),
        )
        .await;
    let empty_description = app
        .create_ok(
            "completions",
            json!({"id": "empty-description", "description": "", "rating": "thumbs_up"}),
        )
        .await;
    app.create_ok(
        "completions",
        json!({"id": "cleared", "rating": "thumbs_up", "description": "gone"}),
    )
    .await;
    let cleared = app
        .update(
            "completions",
            "cleared",
            json!({"rating": null, "description": null}),
        )
        .await;
    assert_eq!(cleared.status, 200, "{}", cleared.text);

    let reply = app.list("completions", "order=asc").await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body,
        json!({
            "object": "list",
            "data": [
                {"id": "bare", "model": "",
                 "created_at": bare["createdAt"], "updated_at": bare["updatedAt"]},
                {"id": "full", "model": "gpt-4o", "rating": "thumbs_down", "description": "ok",
                 "created_at": full["createdAt"], "updated_at": full["updatedAt"]},
                {"id": "empty-description", "model": "", "rating": "thumbs_up", "description": "",
                 "created_at": empty_description["createdAt"],
                 "updated_at": empty_description["updatedAt"]},
                {"id": "cleared", "model": "",
                 "created_at": cleared.body["createdAt"], "updated_at": cleared.body["updatedAt"]},
            ],
            "first_id": "bare",
            "last_id": "cleared",
            "has_more": false,
        })
    );
    for item in reply.body["data"].as_array().expect("data") {
        for field in ["created_at", "updated_at"] {
            let text = item[field].as_str().expect("a timestamp string");
            assert!(is_utc_millisecond_timestamp(text), "{field}: {text}");
        }
    }
}

async fn a_page_after_the_last_entry_is_empty_without_first_and_last_id(app: TestApp) {
    let created = create_mixed(&app, "chatcmpl", 5).await;
    let oldest = created[0]["id"].as_str().expect("id");
    let newest = created[4]["id"].as_str().expect("id");

    let desc = app.list("completions", &format!("after={oldest}")).await;
    let asc = app
        .list("completions", &format!("order=asc&after={newest}"))
        .await;
    let filtered = app
        .list("completions", &format!("rating=thumbs_up&after={oldest}"))
        .await;

    for reply in [&desc, &asc, &filtered] {
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            reply.body,
            json!({"object": "list", "data": [], "has_more": false})
        );
    }
}

async fn an_empty_namespace_lists_as_an_empty_page(app: TestApp) {
    app.create_ok("responses", json!({"id": "resp-1"})).await;

    let reply = app.list("completions", "").await;
    let filtered = app
        .list("responses", "rating=thumbs_up&order=asc&limit=1")
        .await;

    for reply in [&reply, &filtered] {
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            reply.body,
            json!({"object": "list", "data": [], "has_more": false})
        );
    }
}

async fn entries_created_while_paging_newest_first_never_appear_nor_shift_the_pages(app: TestApp) {
    let before = create_mixed(&app, "old", 30).await;
    let expected: Vec<Value> = before.iter().rev().map(list_item).collect();

    let mut listed: Vec<Value> = Vec::new();
    let mut new_count = 0;
    loop {
        let query = match listed.last() {
            None => "limit=7".to_owned(),
            Some(last) => format!(
                "limit=7&after={}",
                encode_id(last["id"].as_str().expect("id"))
            ),
        };
        let page = page_of(&app.list("completions", &query).await, 7);
        listed.extend(page.items);
        if !page.has_more {
            break;
        }
        for _ in 0..2 {
            app.create_ok("completions", json!({"id": format!("new-{new_count}")}))
                .await;
            new_count += 1;
        }
    }

    assert!(new_count >= 8, "entries were created between the pages");
    assert_eq!(ids_of(&listed), ids_of(&expected));
    assert_eq!(listed, expected);
}

async fn entries_created_while_paging_oldest_first_come_last_and_exactly_once(app: TestApp) {
    let mut created = create_mixed(&app, "old", 30).await;
    let before_count = created.len();

    let mut listed: Vec<Value> = Vec::new();
    let mut pages = 0;
    loop {
        let query = match listed.last() {
            None => "order=asc&limit=7".to_owned(),
            Some(last) => format!(
                "order=asc&limit=7&after={}",
                encode_id(last["id"].as_str().expect("id"))
            ),
        };
        let page = page_of(&app.list("completions", &query).await, 7);
        pages += 1;
        assert!(pages <= 50, "paging does not end");
        listed.extend(page.items);
        if !page.has_more {
            break;
        }
        // New entries while the old ones are still being paged through.
        if listed.len() < before_count {
            for _ in 0..2 {
                let id = format!("new-{}", created.len() - before_count);
                created.push(app.create_ok("completions", json!({"id": id})).await);
            }
        }
    }

    assert!(created.len() - before_count >= 8);
    let expected: Vec<Value> = created.iter().map(list_item).collect();
    assert_eq!(ids_of(&listed), ids_of(&expected));
    assert_eq!(listed, expected);
}

async fn an_after_entry_outside_the_rating_filter_is_still_a_valid_cursor(app: TestApp) {
    let mut created = Vec::new();
    for i in 0..12 {
        let rating = if i % 2 == 0 {
            "thumbs_up"
        } else {
            "thumbs_down"
        };
        created.push(
            app.create_ok(
                "completions",
                json!({"id": format!("c-{i:02}"), "rating": rating}),
            )
            .await,
        );
    }
    // c-05 is thumbs_down: a cursor that the thumbs_up filter would not list.
    let cursor = 5;
    let up_after_desc: Vec<Value> = created[..cursor]
        .iter()
        .rev()
        .filter(|entry| entry["rating"] == "thumbs_up")
        .map(list_item)
        .collect();
    let up_after_asc: Vec<Value> = created[cursor + 1..]
        .iter()
        .filter(|entry| entry["rating"] == "thumbs_up")
        .map(list_item)
        .collect();

    let desc = app
        .list("completions", "rating=thumbs_up&after=c-05&limit=100")
        .await;
    let asc = app
        .list(
            "completions",
            "rating=thumbs_up&after=c-05&order=asc&limit=2",
        )
        .await;

    let desc = page_of(&desc, 100);
    assert_eq!(desc.items, up_after_desc);
    assert!(!desc.has_more);
    let asc = page_of(&asc, 2);
    assert_eq!(asc.items, up_after_asc[..2]);
    assert!(asc.has_more);
}

async fn an_after_id_with_reserved_characters_is_percent_decoded(app: TestApp) {
    let tricky = "a/b c?d=e&f#g+h%20 ü";
    app.create_ok("completions", json!({"id": "first"})).await;
    app.create_ok("completions", json!({"id": tricky})).await;
    let last = app.create_ok("completions", json!({"id": "last"})).await;

    let reply = app
        .list(
            "completions",
            &format!("order=asc&after={}", encode_id(tricky)),
        )
        .await;

    let page = page_of(&reply, 20);
    assert_eq!(page.items, [list_item(&last)]);
}

async fn bad_list_queries_are_400_invalid_request(app: TestApp) {
    create_mixed(&app, "chatcmpl", 3).await;
    let queries = [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=%2B5",
        "limit=%205",
        "limit=99999999999999999999",
        "order=ASC",
        "order=Desc",
        "order=",
        "order=sideways",
        "rating=bogus",
        "rating=THUMBS_UP",
        "rating=",
        "after=",
        "limit",
        "foo=bar",
        "Limit=5",
        "cursor=chatcmpl-00",
        "limit=5&limit=5",
        "order=asc&order=desc",
        "rating=thumbs_up&rating=thumbs_up",
        "after=chatcmpl-00&after=chatcmpl-01",
        "limit=5&foo=bar",
    ];

    for query in queries {
        let reply = app.list("completions", query).await;

        assert_eq!(reply.status, 400, "{query}: {}", reply.text);
        assert_eq!(reply.error_code(), "invalid_request", "{query}");
    }
}

/// `a1=&a2=&...&a{count}=`: `count` unknown query parameters.
pub(crate) fn unknown_parameter_flood(count: usize) -> String {
    (1..=count)
        .map(|i| format!("a{i}="))
        .collect::<Vec<_>>()
        .join("&")
}

/// The answer to [`unknown_parameter_flood`]: one 400 naming the first 20
/// parameters, saying how many more there were, in a small body.
pub(crate) fn assert_one_bounded_flood_error(reply: &Reply, count: usize) {
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.error_code(), "invalid_request");
    let details = reply.body["error"]["details"].as_array().expect("details");
    let fields: Vec<&str> = details
        .iter()
        .map(|detail| detail["field"].as_str().expect("a field name"))
        .collect();
    let first_20: Vec<String> = (1..=20).map(|i| format!("a{i}")).collect();
    assert_eq!(fields, first_20, "{}", reply.text);
    let message = reply.body["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains(&format!("{} more", count - 20)),
        "the message does not say how many were left out: {message}"
    );
    assert!(
        reply.text.len() < 8 * 1024,
        "{} bytes of error body",
        reply.text.len()
    );
}

async fn a_flood_of_5000_unknown_list_parameters_is_one_400_with_20_details(app: TestApp) {
    let reply = app
        .list("completions", &unknown_parameter_flood(5000))
        .await;

    assert_one_bounded_flood_error(&reply, 5000);
    // Exactly 20 bad parameters: all listed, nothing said to be left out.
    let reply = app.list("completions", &unknown_parameter_flood(20)).await;
    assert_eq!(
        reply.body["error"]["details"].as_array().map(Vec::len),
        Some(20)
    );
    assert!(!reply.text.contains("more problems"), "{}", reply.text);
}

async fn an_after_that_names_no_visible_entry_is_400(app: TestApp) {
    let tenant_b = app.new_key("tenant-b").await;
    let alice = app.as_caller(&app.api_key, Some("alice"));
    app.create_ok("completions", json!({"id": "tenant-wide"}))
        .await;
    assert_eq!(
        alice
            .create("completions", json!({"id": "alices"}))
            .await
            .status,
        201
    );
    let bob = app.as_caller(&app.api_key, Some("bob"));
    assert_eq!(
        bob.create("completions", json!({"id": "bobs"}))
            .await
            .status,
        201
    );
    let other_tenant = app.as_caller(&tenant_b, None);
    assert_eq!(
        other_tenant
            .create("completions", json!({"id": "foreign"}))
            .await
            .status,
        201
    );
    app.create_ok("responses", json!({"id": "a-response"}))
        .await;

    let missing = app.list("completions", "after=nothing-here").await;
    let foreign = app.list("completions", "after=foreign").await;
    let other_kind = app.list("completions", "after=a-response").await;
    let other_user = list_as(&alice, "completions", "after=bobs").await;
    let tenant_wide_for_alice = list_as(&alice, "completions", "after=tenant-wide").await;
    let own_for_alice = list_as(&alice, "completions", "after=alices").await;
    let end_users_for_tenant = app.list("completions", "after=alices").await;

    for reply in [
        &missing,
        &foreign,
        &other_kind,
        &other_user,
        &tenant_wide_for_alice,
    ] {
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.error_code(), "invalid_request", "{}", reply.text);
    }
    assert_eq!(own_for_alice.status, 200, "{}", own_for_alice.text);
    assert_eq!(own_for_alice.body["data"], json!([]));
    assert_eq!(
        end_users_for_tenant.status, 200,
        "{}",
        end_users_for_tenant.text
    );
    assert_eq!(
        ids_of(&page_of(&end_users_for_tenant, 20).items),
        ["tenant-wide"]
    );
}

async fn the_two_kinds_are_listed_separately(app: TestApp) {
    let completion = app
        .create_ok(
            "completions",
            json!({"id": "same-id", "rating": "thumbs_up", "model": "gpt-4o"}),
        )
        .await;
    let only_completion = app
        .create_ok("completions", json!({"id": "chatcmpl-1"}))
        .await;
    let response = app
        .create_ok(
            "responses",
            json!({"id": "same-id", "rating": "thumbs_down", "description": "a response"}),
        )
        .await;
    let only_response = app.create_ok("responses", json!({"id": "resp-1"})).await;

    let completions = app.list("completions", "order=asc").await;
    let responses = app.list("responses", "order=asc").await;

    assert_eq!(
        page_of(&completions, 20).items,
        [list_item(&completion), list_item(&only_completion)]
    );
    assert_eq!(
        page_of(&responses, 20).items,
        [list_item(&response), list_item(&only_response)]
    );
}

async fn list_shows_each_caller_only_its_tenants_and_end_users_entries(app: TestApp) {
    let tenant_b = app.new_key("tenant-b").await;
    let alice = app.as_caller(&app.api_key, Some("alice"));
    let bob = app.as_caller(&app.api_key, Some("bob"));
    let other_tenant = app.as_caller(&tenant_b, None);
    let other_tenants_alice = app.as_caller(&tenant_b, Some("alice"));
    let mut tenant_a = Vec::new();
    let mut of_alice = Vec::new();
    let mut of_bob = Vec::new();
    let mut of_tenant_b = Vec::new();
    let mut of_tenant_b_alice = Vec::new();
    for i in 0..3 {
        let wide = app
            .create_ok("completions", json!({"id": format!("wide-{i}")}))
            .await;
        tenant_a.push(wide);
        let reply = alice
            .create_ok(
                "completions",
                json!({"id": format!("alice-{i}"), "rating": "thumbs_up"}),
            )
            .await;
        tenant_a.push(reply.clone());
        of_alice.push(reply);
        let reply = bob
            .create_ok(
                "completions",
                json!({"id": format!("bob-{i}"), "rating": "thumbs_down"}),
            )
            .await;
        tenant_a.push(reply.clone());
        of_bob.push(reply);
        // Tenant B reuses tenant A's ids, with other content.
        let reply = other_tenant
            .create_ok(
                "completions",
                json!({"id": format!("wide-{i}"), "description": "tenant b"}),
            )
            .await;
        of_tenant_b.push(reply);
        let reply = other_tenants_alice
            .create_ok(
                "completions",
                json!({"id": format!("b-alice-{i}"), "model": "b-model"}),
            )
            .await;
        of_tenant_b.push(reply.clone());
        of_tenant_b_alice.push(reply);
    }

    let as_tenant_a = app.list("completions", "order=asc&limit=100").await;
    let as_alice = list_as(&alice, "completions", "order=asc&limit=100").await;
    let as_bob = list_as(&bob, "completions", "order=asc&limit=100").await;
    let as_tenant_b = list_as(&other_tenant, "completions", "order=asc&limit=100").await;
    let as_tenant_b_alice =
        list_as(&other_tenants_alice, "completions", "order=asc&limit=100").await;
    let as_carol = list_as(
        &app.as_caller(&app.api_key, Some("carol")),
        "completions",
        "",
    )
    .await;
    let alice_thumbs_down = list_as(&alice, "completions", "rating=thumbs_down").await;

    for (reply, expected) in [
        (&as_tenant_a, &tenant_a),
        (&as_alice, &of_alice),
        (&as_bob, &of_bob),
        (&as_tenant_b, &of_tenant_b),
        (&as_tenant_b_alice, &of_tenant_b_alice),
    ] {
        let expected: Vec<Value> = expected.iter().map(list_item).collect();
        assert_eq!(page_of(reply, 100).items, expected);
    }
    assert_eq!(page_of(&as_carol, 20).items, Vec::<Value>::new());
    assert_eq!(page_of(&alice_thumbs_down, 20).items, Vec::<Value>::new());
}

async fn batch_get_answers_in_input_order_with_not_found_markers_and_repeats(app: TestApp) {
    let a = app.create_ok("completions", json!({"id": "a"})).await;
    let b = app
        .create_ok(
            "completions",
            json!({"id": "b", "rating": "thumbs_up", "description": "", "model": "gpt-4o"}),
        )
        .await;
    app.create_ok("completions", json!({"id": "c", "rating": "thumbs_up"}))
        .await;
    let c = app
        .update(
            "completions",
            "c",
            json!({"rating": "thumbs_down", "description": "changed"}),
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    let c = c.body;

    let reply = app
        .batch_get(
            "completions",
            json!({"ids": ["c", "missing", "a", "c", "b", "a/b c", "missing"]}),
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body,
        json!({"results": [
            c, not_found("missing"), a, c, b, not_found("a/b c"), not_found("missing"),
        ]})
    );
    for (index, id) in [(0, "c"), (2, "a"), (4, "b")] {
        let got = app.get("completions", id).await;
        assert_eq!(reply.body["results"][index], got.body, "{id}");
        assert_entry_timestamps(&reply.body["results"][index]);
    }
}

async fn batch_get_finds_nothing_of_another_tenant_another_end_user_or_the_other_kind(
    app: TestApp,
) {
    let tenant_b = app.new_key("tenant-b").await;
    let other_tenant = app.as_caller(&tenant_b, None);
    let alice = app.as_caller(&app.api_key, Some("alice"));
    let bob = app.as_caller(&app.api_key, Some("bob"));
    let wide = app.create_ok("completions", json!({"id": "wide"})).await;
    let alices = alice
        .create_ok(
            "completions",
            json!({"id": "alices", "rating": "thumbs_up"}),
        )
        .await;
    let bobs = bob.create_ok("completions", json!({"id": "bobs"})).await;
    let foreign = other_tenant
        .create_ok(
            "completions",
            json!({"id": "foreign", "rating": "thumbs_down"}),
        )
        .await;
    let foreign_wide = other_tenant
        .create_ok("completions", json!({"id": "wide", "description": "b's"}))
        .await;
    let response = app
        .create_ok("responses", json!({"id": "a-response"}))
        .await;
    let ids = json!({"ids": ["wide", "alices", "bobs", "foreign", "a-response"]});

    let as_tenant = app.batch_get("completions", ids.clone()).await;
    let as_alice = batch_get_as(&alice, "completions", ids.clone()).await;
    let as_other_tenant = batch_get_as(&other_tenant, "completions", ids.clone()).await;
    let responses = app.batch_get("responses", ids).await;

    assert_eq!(as_tenant.status, 200, "{}", as_tenant.text);
    assert_eq!(
        as_tenant.body,
        json!({"results": [
            wide, alices, bobs, not_found("foreign"), not_found("a-response"),
        ]})
    );
    assert_eq!(as_alice.status, 200, "{}", as_alice.text);
    assert_eq!(
        as_alice.body,
        json!({"results": [
            not_found("wide"), alices, not_found("bobs"), not_found("foreign"),
            not_found("a-response"),
        ]})
    );
    assert_eq!(as_other_tenant.status, 200, "{}", as_other_tenant.text);
    assert_eq!(
        as_other_tenant.body,
        json!({"results": [
            foreign_wide, not_found("alices"), not_found("bobs"), foreign,
            not_found("a-response"),
        ]})
    );
    assert_eq!(responses.status, 200, "{}", responses.text);
    assert_eq!(
        responses.body,
        json!({"results": [
            not_found("wide"), not_found("alices"), not_found("bobs"), not_found("foreign"),
            response,
        ]})
    );
}

async fn batch_get_of_1_and_of_100_ids_is_answered(app: TestApp) {
    let created = create_mixed(&app, "chatcmpl", 50).await;
    // Existing and missing ids interleaved, newest first.
    let mut ids = Vec::new();
    let mut expected = Vec::new();
    for entry in created.iter().rev() {
        let id = entry["id"].as_str().expect("id");
        ids.push(id.to_owned());
        expected.push(entry.clone());
        let missing = format!("{id}-missing");
        expected.push(not_found(&missing));
        ids.push(missing);
    }

    let one = app
        .batch_get("completions", json!({"ids": ["chatcmpl-07"]}))
        .await;
    let hundred = app.batch_get("completions", json!({"ids": ids})).await;

    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body, json!({"results": [created[7]]}));
    assert_eq!(hundred.status, 200, "{}", hundred.text);
    assert_eq!(ids.len(), 100);
    assert_eq!(hundred.body, json!({"results": expected}));
}

async fn batch_get_bodies_that_break_the_rules_are_400(app: TestApp) {
    app.create_ok("completions", json!({"id": "a"})).await;
    let hundred_and_one: Vec<String> = (0..101).map(|i| format!("id-{i}")).collect();
    let bodies = [
        json!({"ids": []}),
        json!({"ids": hundred_and_one}),
        json!({}),
        json!({"ids": null}),
        json!({"ids": "a"}),
        json!({"ids": {"a": 1}}),
        json!({"ids": 1}),
        json!({"ids": [1]}),
        json!({"ids": [null]}),
        json!({"ids": [["a"]]}),
        json!({"ids": ["a", ""]}),
        json!({"ids": ["a", " leading"]}),
        json!({"ids": ["trailing "]}),
        json!({"ids": ["tab\there"]}),
        json!({"ids": ["nul\u{0}"]}),
        json!({"ids": ["x".repeat(257)]}),
        json!({"ids": ["a"], "kind": "completions"}),
        json!({"id": ["a"]}),
        json!(["a"]),
        json!("a"),
    ];

    for body in bodies {
        let reply = app.batch_get("completions", body.clone()).await;

        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(reply.error_code(), "invalid_request", "{body}");
    }
    let malformed = app
        .send(
            app.request(Method::POST, "/api/v1/llm/feedback/completions/batch")
                .header(CONTENT_TYPE, "application/json")
                .body(r#"{"ids": ["a"]"#),
        )
        .await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    assert_eq!(malformed.error_code(), "invalid_request");
}

async fn batch_get_without_a_json_content_type_is_415(app: TestApp) {
    let created = app.create_ok("completions", json!({"id": "a"})).await;
    let path = "/api/v1/llm/feedback/completions/batch";
    let body = r#"{"ids": ["a"]}"#;

    let none = app.send(app.request(Method::POST, path).body(body)).await;
    let text_plain = app
        .send(
            app.request(Method::POST, path)
                .header(CONTENT_TYPE, "text/plain")
                .body(body),
        )
        .await;
    let text_json = app
        .send(
            app.request(Method::POST, path)
                .header(CONTENT_TYPE, "text/json")
                .body(body),
        )
        .await;
    let with_charset = app
        .send(
            app.request(Method::POST, path)
                .header(CONTENT_TYPE, "Application/JSON; charset=utf-8")
                .body(body),
        )
        .await;
    let suffixed = app
        .send(
            app.request(Method::POST, path)
                .header(CONTENT_TYPE, "application/vnd.feedback+json")
                .body(body),
        )
        .await;

    for reply in [&none, &text_plain, &text_json] {
        assert_eq!(reply.status, 415, "{}", reply.text);
        assert_eq!(
            reply.error_code(),
            "unsupported_media_type",
            "{}",
            reply.text
        );
    }
    for reply in [&with_charset, &suffixed] {
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body, json!({"results": [created]}));
    }
}

async fn post_on_batch_is_batch_get_while_get_and_put_address_the_entry_named_batch(app: TestApp) {
    let created = app
        .create_ok("completions", json!({"id": "batch", "rating": "thumbs_up"}))
        .await;
    let other = app.create_ok("completions", json!({"id": "other"})).await;
    let path = "/api/v1/llm/feedback/completions/batch";

    let got = app.send(app.request(Method::GET, path)).await;
    let put = app
        .send(
            app.request(Method::PUT, path)
                .json(&json!({"description": "named batch"})),
        )
        .await;
    let batch = app
        .batch_get("completions", json!({"ids": ["other", "batch"]}))
        .await;

    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body, created);
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.body["id"], "batch");
    assert_eq!(put.body["description"], "named batch");
    assert_eq!(batch.status, 200, "{}", batch.text);
    assert_eq!(batch.body, json!({"results": [other, put.body]}));
    let responses = app.batch_get("responses", json!({"ids": ["batch"]})).await;
    assert_eq!(responses.body, json!({"results": [not_found("batch")]}));
}
