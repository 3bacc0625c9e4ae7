//! `GET /changes` and the outbox behind it (API.md, "Changes feed").

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::erasure::occurrences;
use crate::helpers::{
    Backend, Reply, TestApp, TestStorage, assert_error, assert_invalid_fields, execute_directly,
    is_utc_millisecond_timestamp, spawn_app_on, spawn_app_on_with, test_database_args,
};
use crate::safe_writes::{create_with, mint, send, send_with};

both_stores!(
    every_write_is_a_change_with_every_field,
    following_next_cursor_pages_through_every_change_once,
    the_kind_filter_shows_one_kind,
    an_end_user_sees_only_their_changes_and_a_tenant_only_its_own,
    feedback_tokens_may_not_read_the_feed,
    limits_and_cursors_not_issued_by_the_service_are_400,
    writes_that_change_nothing_record_no_change,
    erasure_strips_earlier_changes_and_records_deletes,
    retention_records_a_delete_per_expired_entry,
    a_write_whose_revision_cannot_be_stored_leaves_nothing_behind,
);
per_store!(a_cursor_older_than_the_retention_is_410_and_old_changes_are_purged);

mod purge_lock {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::the_purge_skips_a_round_another_replica_holds().await;
    }
}

mod concurrent_writers_and_a_late_commit {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        super::concurrent_writers_on_two_replicas_and_a_late_commit_are_seen_once_in_commit_order()
            .await;
    }
}

const FEED: &str = "/api/v1/llm/feedback/changes";

/// `GET /changes?query` as the app's key, with headers.
async fn feed(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> Reply {
    send(app, Method::GET, &format!("{FEED}?{query}"), headers, None).await
}

/// Every change visible from the start, following `next_cursor`, waiting
/// up to 5 s (API.md: a change shows within 5 s of its write's answer)
/// until there are at least `expected`.
async fn whole_feed(
    app: &TestApp,
    query: &str,
    headers: &[(&str, &str)],
    expected: usize,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for page in 0.. {
            assert!(page < 1000, "the feed never ends");
            let mut params = query.to_owned();
            if let Some(cursor) = &after {
                let _ = write!(params, "&after={cursor}");
            }
            let reply = feed(app, &params, headers).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            let data = reply.body["data"].as_array().expect("data").clone();
            seen.extend(data);
            after = Some(
                reply.body["next_cursor"]
                    .as_str()
                    .expect("next_cursor")
                    .to_owned(),
            );
            if reply.body["has_more"] == false {
                break;
            }
        }
        if seen.len() >= expected || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(type, kind, id)` of each change.
fn summary(changes: &[Value]) -> Vec<(String, String, String)> {
    changes
        .iter()
        .map(|change| {
            (
                change["type"].as_str().expect("type").to_owned(),
                change["kind"].as_str().expect("kind").to_owned(),
                change["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect()
}

fn triple(change_type: &str, kind: &str, id: &str) -> (String, String, String) {
    (change_type.to_owned(), kind.to_owned(), id.to_owned())
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

async fn every_write_is_a_change_with_every_field(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "c-1", "rating": "thumbs_up", "description": "fine", "model": "gpt-4o"}),
        )
        .await;
    let updated = app
        .update_ok("completions", "c-1", json!({"rating": null}))
        .await;
    let deleted = send(
        &app,
        Method::DELETE,
        "/api/v1/llm/feedback/completions/c-1",
        &[],
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    let own = app
        .as_caller(&app.api_key, Some("user-1"))
        .create_ok("responses", json!({"id": "r-1"}))
        .await;

    let reply = feed(&app, "", &[]).await;
    let changes = whole_feed(&app, "", &[], 4).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        keys(&reply.body),
        ["data", "has_more", "next_cursor", "object"]
    );
    assert_eq!(reply.body["object"], "list");
    assert_eq!(
        summary(&changes),
        [
            triple("feedback.created", "completions", "c-1"),
            triple("feedback.updated", "completions", "c-1"),
            triple("feedback.deleted", "completions", "c-1"),
            triple("feedback.created", "responses", "r-1"),
        ]
    );
    // The entry after each change, exactly as the API answered it.
    assert_eq!(changes[0]["entry"], created);
    assert_eq!(changes[1]["entry"], updated);
    assert_eq!(changes[3]["entry"], own);
    assert_eq!(
        keys(&changes[0]),
        ["cursor", "entry", "id", "kind", "occurred_at", "type"]
    );
    // Deletes carry no entry; end users appear where there is one.
    assert_eq!(
        keys(&changes[2]),
        ["cursor", "id", "kind", "occurred_at", "type"]
    );
    assert_eq!(
        keys(&changes[3]),
        [
            "cursor",
            "end_user",
            "entry",
            "id",
            "kind",
            "occurred_at",
            "type"
        ]
    );
    assert_eq!(changes[3]["end_user"], "user-1");
    let mut times = Vec::new();
    for change in &changes {
        let at = change["occurred_at"].as_str().expect("occurred_at");
        assert!(is_utc_millisecond_timestamp(at), "{at}");
        times.push(at.to_owned());
    }
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
    let cursors: HashSet<&str> = changes
        .iter()
        .map(|c| c["cursor"].as_str().expect("cursor"))
        .collect();
    assert_eq!(cursors.len(), 4);
    // The last page's next_cursor is its last change's cursor; nothing follows.
    let last = changes[3]["cursor"].as_str().expect("cursor");
    let after_last = feed(&app, &format!("after={last}"), &[]).await;
    assert_eq!(after_last.body["data"], json!([]));
    assert_eq!(after_last.body["next_cursor"], last);
    assert_eq!(after_last.body["has_more"], false);
    // A change's own cursor continues right after it.
    let second = changes[1]["cursor"].as_str().expect("cursor");
    let rest = feed(&app, &format!("after={second}"), &[]).await;
    assert_eq!(
        summary(rest.body["data"].as_array().expect("data")),
        summary(&changes[2..])
    );
}

async fn following_next_cursor_pages_through_every_change_once(app: TestApp) {
    for n in 0..7 {
        app.create_ok("completions", json!({"id": format!("c-{n}")}))
            .await;
    }
    let everything = whole_feed(&app, "", &[], 7).await;
    assert_eq!(everything.len(), 7);

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = after
            .as_ref()
            .map_or("limit=3".to_owned(), |c| format!("limit=3&after={c}"));
        let reply = feed(&app, &query, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let data = reply.body["data"].as_array().expect("data").clone();
        pages.push((data.len(), reply.body["has_more"].clone()));
        after = Some(
            reply.body["next_cursor"]
                .as_str()
                .expect("next_cursor")
                .to_owned(),
        );
        if reply.body["has_more"] == false {
            break;
        }
    }

    assert_eq!(
        pages,
        [(3, json!(true)), (3, json!(true)), (1, json!(false))]
    );
    let all = feed(&app, "limit=1000", &[]).await;
    assert_eq!(all.body["data"].as_array().map(Vec::len), Some(7));
    assert_eq!(all.body["has_more"], false);
    // An empty feed answers a cursor that starts from the beginning.
    let other = app.new_key("tenant-empty").await;
    let nothing = send_with(&app, &other, Method::GET, FEED, &[], None).await;
    assert_eq!(nothing.body["data"], json!([]));
    let start = nothing.body["next_cursor"]
        .as_str()
        .expect("next_cursor")
        .to_owned();
    send_with(
        &app,
        &other,
        Method::POST,
        "/api/v1/llm/feedback/responses",
        &[],
        Some(&json!({"id": "r-1"})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send_with(
            &app,
            &other,
            Method::GET,
            &format!("{FEED}?after={start}"),
            &[],
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        if reply.body["data"].as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the change did not show");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn the_kind_filter_shows_one_kind(app: TestApp) {
    app.create_ok("completions", json!({"id": "c-1"})).await;
    app.create_ok("responses", json!({"id": "r-1"})).await;
    app.update_ok("completions", "c-1", json!({"rating": "thumbs_down"}))
        .await;
    app.create_ok("responses", json!({"id": "r-2"})).await;
    whole_feed(&app, "", &[], 4).await;

    let responses = whole_feed(&app, "kind=responses", &[], 2).await;
    let completions = whole_feed(&app, "kind=completions&limit=1", &[], 2).await;

    assert_eq!(
        summary(&responses),
        [
            triple("feedback.created", "responses", "r-1"),
            triple("feedback.created", "responses", "r-2"),
        ]
    );
    assert_eq!(
        summary(&completions),
        [
            triple("feedback.created", "completions", "c-1"),
            triple("feedback.updated", "completions", "c-1"),
        ]
    );
}

async fn an_end_user_sees_only_their_changes_and_a_tenant_only_its_own(app: TestApp) {
    app.as_caller(&app.api_key, Some("user-1"))
        .create_ok("completions", json!({"id": "c-1"}))
        .await;
    app.as_caller(&app.api_key, Some("user-2"))
        .create_ok("completions", json!({"id": "c-2"}))
        .await;
    app.create_ok("completions", json!({"id": "c-3"})).await;
    let other = app.new_key("tenant-b").await;
    send_with(
        &app,
        &other,
        Method::POST,
        "/api/v1/llm/feedback/completions",
        &[("X-On-Behalf-Of", "user-1")],
        Some(&json!({"id": "c-1"})),
    )
    .await;

    let tenant = whole_feed(&app, "", &[], 3).await;
    let user = whole_feed(&app, "", &[("X-On-Behalf-Of", "user-1")], 1).await;
    let nobody = feed(&app, "", &[("X-On-Behalf-Of", "user-3")]).await;

    assert_eq!(tenant.len(), 3, "{tenant:?}");
    assert_eq!(
        summary(&user),
        [triple("feedback.created", "completions", "c-1")]
    );
    assert_eq!(user[0]["end_user"], "user-1");
    assert_eq!(nobody.body["data"], json!([]));
    // The other tenant's change is its own, never ours.
    let theirs = send_with(&app, &other, Method::GET, FEED, &[], None).await;
    assert!(
        theirs.body["data"]
            .as_array()
            .is_some_and(|data| data.len() <= 1)
    );
    let bad_user = feed(&app, "", &[("X-On-Behalf-Of", "")]).await;
    assert_eq!(bad_user.status, 400);
}

async fn feedback_tokens_may_not_read_the_feed(app: TestApp) {
    let token = mint(&app, "completions", "c-1", Some("user-1")).await;

    let reply = send_with(&app, &token, Method::GET, FEED, &[], None).await;
    let anonymous = app.send(app.client.get(app.url(FEED))).await;

    assert_error(&reply, 403, "forbidden", "a token reading the feed");
    assert_error(&anonymous, 401, "unauthorized", "no key");
}

async fn limits_and_cursors_not_issued_by_the_service_are_400(app: TestApp) {
    app.create_ok("completions", json!({"id": "c-1"})).await;
    let changes = whole_feed(&app, "", &[], 1).await;
    let cursor = changes[0]["cursor"].as_str().expect("cursor").to_owned();
    let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let now = chrono::Utc::now().timestamp_millis();

    for (query, field) in [
        ("limit=0".to_owned(), "limit"),
        ("limit=1001".to_owned(), "limit"),
        ("limit=ten".to_owned(), "limit"),
        ("limit=-1".to_owned(), "limit"),
        ("kind=Completions".to_owned(), "kind"),
        ("kind=tokens".to_owned(), "kind"),
        ("after=".to_owned(), "after"),
        ("after=not-a-cursor".to_owned(), "after"),
        (format!("after={cursor}x"), "after"),
        // Well formed, but no such change: never issued.
        (
            format!("after={}", encode(&format!("c1:{now}:987654321"))),
            "after",
        ),
        ("order=asc".to_owned(), "order"),
        (format!("after={cursor}&after={cursor}"), "after"),
    ] {
        let reply = feed(&app, &query, &[]).await;
        assert_invalid_fields(&reply, &[field]);
    }
    assert_eq!(feed(&app, "limit=1", &[]).await.status, 200);
    assert_eq!(feed(&app, "limit=1000", &[]).await.status, 200);
    // Another tenant's cursor names no change of ours.
    let other = app.new_key("tenant-b").await;
    let foreign = send_with(
        &app,
        &other,
        Method::GET,
        &format!("{FEED}?after={cursor}"),
        &[],
        None,
    )
    .await;
    assert_invalid_fields(&foreign, &["after"]);
}

async fn writes_that_change_nothing_record_no_change(app: TestApp) {
    let first = create_with(
        &app,
        "completions",
        &[("Idempotency-Key", "k-1")],
        &json!({"id": "c-1"}),
    )
    .await;
    let replay = create_with(
        &app,
        "completions",
        &[("Idempotency-Key", "k-1")],
        &json!({"id": "c-1"}),
    )
    .await;
    let conflict = app.create("completions", json!({"id": "c-1"})).await;
    let unmatched = send(
        &app,
        Method::PUT,
        "/api/v1/llm/feedback/completions/c-1",
        &[("If-Match", "\"r9\"")],
        Some(&json!({"rating": "thumbs_up"})),
    )
    .await;
    let missing = app.update("completions", "nope", json!({})).await;
    let gone = send(
        &app,
        Method::DELETE,
        "/api/v1/llm/feedback/completions/nope",
        &[],
        None,
    )
    .await;

    assert_eq!(
        (first.status, replay.status, conflict.status),
        (201, 201, 409)
    );
    assert_eq!(
        (unmatched.status, missing.status, gone.status),
        (412, 404, 404)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let changes = whole_feed(&app, "", &[], 1).await;
    assert_eq!(
        summary(&changes),
        [triple("feedback.created", "completions", "c-1")]
    );
}

async fn erasure_strips_earlier_changes_and_records_deletes(app: TestApp) {
    let secret = "SECRET-of-the-feed-0815";
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
    user.create_ok("responses", json!({"id": "r-1", "description": secret}))
        .await;
    app.as_caller(&app.api_key, Some("user-2"))
        .create_ok(
            "completions",
            json!({"id": "c-2", "description": "keep me"}),
        )
        .await;
    assert_eq!(whole_feed(&app, "", &[], 4).await.len(), 4);

    let erased = send(
        &app,
        Method::DELETE,
        "/api/v1/llm/feedback/end-users/user-1",
        &[],
        None,
    )
    .await;
    assert_eq!(erased.status, 200, "{}", erased.text);
    let changes = whole_feed(&app, "", &[], 6).await;

    assert_eq!(changes.len(), 6, "{changes:?}");
    assert_eq!(
        summary(&changes[..4]),
        [
            triple("feedback.created", "completions", "c-1"),
            triple("feedback.updated", "completions", "c-1"),
            triple("feedback.created", "responses", "r-1"),
            triple("feedback.created", "completions", "c-2"),
        ]
    );
    assert_eq!(
        sorted_deletes(&changes[4..]),
        [
            triple("feedback.deleted", "completions", "c-1"),
            triple("feedback.deleted", "responses", "r-1"),
        ]
    );
    for change in changes.iter().filter(|c| c["end_user"] == "user-1") {
        assert!(change.get("entry").is_none(), "{change}");
    }
    assert_eq!(
        changes.iter().filter(|c| c["end_user"] == "user-1").count(),
        5
    );
    assert_eq!(changes[3]["entry"]["description"], "keep me");
    assert_eq!(occurrences(&app, secret).await, 0);
    assert!(occurrences(&app, "keep me").await > 0);
}

/// Deletes of one erasure in a fixed order (the erasure's own is not specified).
fn sorted_deletes(changes: &[Value]) -> Vec<(String, String, String)> {
    let mut deletes = summary(changes);
    deletes.sort();
    deletes
}

async fn retention_records_a_delete_per_expired_entry(app: TestApp) {
    app.as_caller(&app.api_key, Some("user-1"))
        .create_ok("completions", json!({"id": "c-1", "description": "old"}))
        .await;
    app.create_ok("responses", json!({"id": "r-1"})).await;
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);

    let deleted = app
        .store
        .delete_expired_feedback(later, 10)
        .await
        .expect("retention batch");

    assert!(deleted.is_some_and(|rows| rows >= 2), "{deleted:?}");
    let changes = whole_feed(&app, "", &[], 4).await;
    assert_eq!(
        sorted_deletes(&changes[2..]),
        [
            triple("feedback.deleted", "completions", "c-1"),
            triple("feedback.deleted", "responses", "r-1"),
        ]
    );
    assert!(
        changes[2..]
            .iter()
            .all(|change| change.get("entry").is_none())
    );
}

async fn a_cursor_older_than_the_retention_is_410_and_old_changes_are_purged(backend: Backend) {
    let storage = TestStorage::new(backend).await;
    let database = test_database_args(&storage.url());
    let app = spawn_app_on(&database).await;
    app.create_ok("completions", json!({"id": "old-1"})).await;
    app.create_ok("completions", json!({"id": "old-2"})).await;
    let fresh_cursor = whole_feed(&app, "", &[], 2).await[0]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    execute_directly(
        backend,
        &app.database_url,
        "update changes set occurred_at = occurred_at - interval '31 days'",
        "update changes set occurred_at = occurred_at - 31 * 86400000",
    )
    .await
    .expect("age the changes");
    let aged = whole_feed(&app, "", &[], 2).await;
    let old_cursor = aged[0]["cursor"].as_str().expect("cursor").to_owned();
    assert_ne!(old_cursor, fresh_cursor);
    app.create_ok("completions", json!({"id": "new"})).await;

    let expired = feed(&app, &format!("after={old_cursor}"), &[]).await;
    // The change-purge worker's round, as CHANGE_RETENTION_DAYS=30 runs it.
    let kept_since = chrono::Utc::now() - chrono::Duration::days(30);
    let purged = app
        .store
        .purge_changes(kept_since, 500)
        .await
        .expect("purge");

    assert_eq!(purged, Some(2));
    assert_error(&expired, 410, "cursor_expired", "an aged cursor");
    let still_expired = feed(&app, &format!("after={old_cursor}"), &[]).await;
    assert_error(&still_expired, 410, "cursor_expired", "a purged cursor");
    assert_eq!(
        summary(&whole_feed(&app, "", &[], 1).await),
        [triple("feedback.created", "completions", "new")]
    );
    // The cursor issued before the rows were aged names a purged change.
    assert_eq!(
        feed(&app, &format!("after={fresh_cursor}"), &[])
            .await
            .status,
        400
    );
}

/// One write a test made: what it should show as, and when it was sent and
/// answered.
#[derive(Debug, Clone)]
struct Write {
    change: (String, String, String),
    sent: Instant,
    answered: Instant,
}

type Replicas = Arc<[TestApp; 2]>;

/// Writers on two replicas of one PostgreSQL, plus a create, an update and
/// a delete whose transactions are held open (each waits on a row another
/// connection inserted and has not committed) while later writes commit; a
/// reader pages the feed all along. Every write shows exactly once; a write
/// answered before another was sent comes first.
async fn concurrent_writers_on_two_replicas_and_a_late_commit_are_seen_once_in_commit_order() {
    let storage = TestStorage::new(Backend::Postgres).await;
    let database = test_database_args(&storage.url());
    // The late writes wait longer than the default request timeout.
    let patient = |serve: &mut llm_feedback::config::ServeArgs| serve.request_timeout_ms = 60_000;
    let replicas: Replicas = Arc::new([
        spawn_app_on_with(&database, patient).await,
        spawn_app_on(&database).await,
    ]);
    let mut blocker = sqlx::PgConnection::connect(&replicas[0].database_url)
        .await
        .expect("connect");
    let mut held = blocker.begin().await.expect("begin");
    let mut made = hold_rows_of_late_writes(&replicas, &mut held).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_until_stopped(Arc::clone(&replicas), Arc::clone(&stop)));

    // An update and a delete wait; writes commit after them (a reader that
    // passed these would never see the two); then a create waits too, and
    // more writes commit.
    let mut late = vec![
        start_late_write(&replicas, "feedback.updated"),
        start_late_write(&replicas, "feedback.deleted"),
    ];
    wait_for_waiting_writes(&replicas[0], 2).await;
    made.extend(write_concurrently(&replicas, 0..6).await);
    late.push(start_late_write(&replicas, "feedback.created"));
    wait_for_waiting_writes(&replicas[0], 3).await;
    made.extend(write_concurrently(&replicas, 6..12).await);
    assert!(
        late.iter().all(|write| !write.is_finished()),
        "a late write did not wait"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.rollback().await.expect("release");
    for write in late {
        made.push(write.await.expect("late write"));
    }
    // Within 5 s of the last answer every change is visible; then the
    // reader stops at its next empty page.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.expect("reader");

    assert_seen_once_in_commit_order(&seen, &made);
}

/// Creates the entries that two late writes change and, in `held`, rows
/// that three late writes (see [`start_late_write`]) will wait on: the key
/// of the create's idempotency record, the revisions of the update and the
/// delete. (Each entry has its own model: a write holds its counter row until
/// it commits, and the other writers must not wait behind it.)
async fn hold_rows_of_late_writes(
    replicas: &Replicas,
    held: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Vec<Write> {
    let mut made = Vec::new();
    for (kind, id) in [("completions", "late-u"), ("responses", "late-d")] {
        let sent = Instant::now();
        replicas[1]
            .create_ok(kind, json!({"id": id, "model": format!("{id}-model")}))
            .await;
        made.push(Write {
            change: triple("feedback.created", kind, id),
            sent,
            answered: Instant::now(),
        });
    }
    for statement in [
        "insert into idempotency_keys (tenant, idempotency_key, fingerprint, status, body, created_at)
         values ('tenant-a', 'held', 'x', 201, '{}', now())",
        "insert into feedback_revisions (tenant, kind, output_id, revision, actor_type, recorded_at)
         values ('tenant-a', 'completions', 'late-u', 2, 'api_key', now()),
                ('tenant-a', 'responses', 'late-d', 2, 'api_key', now())",
    ] {
        sqlx::query(statement)
            .execute(&mut **held)
            .await
            .expect("hold the keys");
    }
    made
}

/// A late write on replica 0: it records its change, then waits on a row
/// of [`hold_rows_of_late_writes`] until that transaction ends.
fn start_late_write(
    replicas: &Replicas,
    change_type: &'static str,
) -> tokio::task::JoinHandle<Write> {
    let replicas = Arc::clone(replicas);
    tokio::spawn(async move {
        let app = &replicas[0];
        let sent = Instant::now();
        let (reply, kind, id) = match change_type {
            "feedback.created" => {
                let body = json!({"id": "late", "model": "late-model"});
                let headers = [("Idempotency-Key", "held")];
                (
                    create_with(app, "completions", &headers, &body).await,
                    "completions",
                    "late",
                )
            }
            "feedback.updated" => {
                let body = json!({"rating": "thumbs_down"});
                (
                    app.update("completions", "late-u", body).await,
                    "completions",
                    "late-u",
                )
            }
            _ => {
                let path = "/api/v1/llm/feedback/responses/late-d";
                (
                    send(app, Method::DELETE, path, &[], None).await,
                    "responses",
                    "late-d",
                )
            }
        };
        assert!([200, 201, 204].contains(&reply.status), "{}", reply.text);
        Write {
            change: triple(change_type, kind, id),
            sent,
            answered: Instant::now(),
        }
    })
}

/// Waits until `count` statements of the app's database wait on a lock.
async fn wait_for_waiting_writes(app: &TestApp, count: i64) {
    let mut watcher = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .expect("pg_stat_activity");
        if waiting == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} late writes wait, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pages the feed, following `next_cursor`, alternating replicas (both must
/// give the same feed), until `stop` is set and a page comes back empty.
async fn read_until_stopped(replicas: Replicas, stop: Arc<AtomicBool>) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    for page in 0_usize.. {
        assert!(page < 20_000, "the feed never ends");
        let stopping = stop.load(Ordering::SeqCst);
        let query = after
            .as_ref()
            .map_or("limit=37".to_owned(), |c| format!("limit=37&after={c}"));
        let reply = feed(&replicas[page % 2], &query, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let data = reply.body["data"].as_array().expect("data").clone();
        let is_empty = data.is_empty();
        seen.extend(data);
        after = Some(
            reply.body["next_cursor"]
                .as_str()
                .expect("next_cursor")
                .to_owned(),
        );
        if stopping && is_empty {
            break;
        }
        if reply.body["has_more"] == false {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    seen
}

/// 4 writers per replica, each creating, updating and sometimes deleting
/// its own ids (numbered from `ids`), one write after the other; every
/// write made.
async fn write_concurrently(replicas: &Replicas, ids: std::ops::Range<u32>) -> Vec<Write> {
    let mut tasks = Vec::new();
    for replica in 0..2 {
        for writer in 0..4 {
            let (replicas, ids) = (Arc::clone(replicas), ids.clone());
            tasks.push(tokio::spawn(async move {
                let app = &replicas[replica];
                let mut made = Vec::new();
                for n in ids {
                    let id = format!("w{replica}-{writer}-{n}");
                    let kind = if n % 2 == 0 {
                        "completions"
                    } else {
                        "responses"
                    };
                    let mut steps = vec!["feedback.created", "feedback.updated"];
                    if n % 4 == 0 {
                        steps.push("feedback.deleted");
                    }
                    for change_type in steps {
                        let sent = Instant::now();
                        let reply = match change_type {
                            "feedback.created" => app.create(kind, json!({"id": id})).await,
                            "feedback.updated" => {
                                app.update(kind, &id, json!({"rating": "thumbs_up"})).await
                            }
                            _ => {
                                let path = format!("/api/v1/llm/feedback/{kind}/{id}");
                                send(app, Method::DELETE, &path, &[], None).await
                            }
                        };
                        assert!([200, 201, 204].contains(&reply.status), "{}", reply.text);
                        made.push(Write {
                            change: triple(change_type, kind, &id),
                            sent,
                            answered: Instant::now(),
                        });
                    }
                }
                made
            }));
        }
    }
    let mut made = Vec::new();
    for task in tasks {
        made.extend(task.await.expect("writer"));
    }
    made
}

/// `seen` holds each write of `made` exactly once, and a write answered
/// before another was sent comes before it.
fn assert_seen_once_in_commit_order(seen: &[Value], made: &[Write]) {
    let cursors: HashSet<&str> = seen
        .iter()
        .map(|c| c["cursor"].as_str().expect("cursor"))
        .collect();
    assert_eq!(cursors.len(), seen.len(), "a change was shown twice");
    let mut shown = summary(seen);
    let mut expected: Vec<_> = made.iter().map(|write| write.change.clone()).collect();
    assert_eq!(
        shown.len(),
        expected.len(),
        "seen {} changes of {} writes",
        shown.len(),
        expected.len()
    );
    shown.sort();
    expected.sort();
    assert_eq!(shown, expected);
    let place: HashMap<(String, String, String), usize> = summary(seen)
        .into_iter()
        .enumerate()
        .map(|(index, change)| (change, index))
        .collect();
    let mut ordered_pairs = 0;
    for earlier in made {
        for later in made {
            if earlier.answered < later.sent {
                ordered_pairs += 1;
                assert!(
                    place[&earlier.change] < place[&later.change],
                    "{:?} was answered before {:?} was sent but comes after it",
                    earlier.change,
                    later.change
                );
            }
        }
    }
    assert!(ordered_pairs > 1000, "{ordered_pairs}");
}

async fn the_purge_skips_a_round_another_replica_holds() {
    let app = crate::helpers::spawn_app(Backend::Postgres).await;
    app.create_ok("completions", json!({"id": "c-1"})).await;
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    let mut other = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    let mut held = other.begin().await.expect("begin");
    sqlx::query("select pg_advisory_xact_lock(19528, 1)")
        .execute(&mut *held)
        .await
        .expect("lock");

    let skipped = app.store.purge_changes(later, 10).await.expect("batch");
    held.rollback().await.expect("release");
    let purged = app.store.purge_changes(later, 10).await.expect("batch");

    assert_eq!((skipped, purged), (None, Some(1)));
}

/// A write is one transaction across its tables: when the last of them
/// (the revision) refuses its row, the entry, its counters and its change
/// are not kept either; the client gets `500`. The fault is injected in the
/// database: a check no revision row passes.
async fn a_write_whose_revision_cannot_be_stored_leaves_nothing_behind(app: TestApp) {
    let kept = app
        .create_ok(
            "completions",
            json!({"id": "c-kept", "rating": "thumbs_up"}),
        )
        .await;
    let inject = |sql_pg: &'static str, sql_sqlite: &'static str| {
        execute_directly(app.backend, &app.database_url, sql_pg, sql_sqlite)
    };
    inject(
        "alter table feedback_revisions add constraint injected_fault check (revision < 0) not valid",
        "create trigger injected_fault before insert on feedback_revisions
         begin select raise(abort, 'injected fault'); end",
    )
    .await
    .expect("inject the fault");

    let created = create_with(
        &app,
        "completions",
        &[],
        &json!({"id": "c-new", "rating": "thumbs_down"}),
    )
    .await;
    assert_error(&created, 500, "internal", "create");
    let path = |id: &str| format!("/api/v1/llm/feedback/completions/{id}");
    let updated = send(
        &app,
        Method::PUT,
        &path("c-kept"),
        &[],
        Some(&json!({"rating": "thumbs_down"})),
    )
    .await;
    assert_error(&updated, 500, "internal", "update");
    let deleted = send(&app, Method::DELETE, &path("c-kept"), &[], None).await;
    assert_error(&deleted, 500, "internal", "delete");

    assert_eq!(app.get("completions", "c-new").await.status, 404);
    let still = app.get("completions", "c-kept").await;
    assert_eq!(still.status, 200, "{}", still.text);
    assert_eq!(still.body, kept);
    let stats = send(
        &app,
        Method::GET,
        "/api/v1/llm/feedback/stats?kind=completions",
        &[],
        None,
    )
    .await;
    assert_eq!(stats.body["groups"][0]["total"], 1, "{}", stats.text);
    assert_eq!(stats.body["groups"][0]["thumbs_up"], 1, "{}", stats.text);
    assert_eq!(stats.body["groups"][0]["thumbs_down"], 0, "{}", stats.text);
    let changes = whole_feed(&app, "", &[], 1).await;
    let seen: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default(),
                c["id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(seen, [("feedback.created", "c-kept")], "{changes:?}");

    inject(
        "alter table feedback_revisions drop constraint injected_fault",
        "drop trigger injected_fault",
    )
    .await
    .expect("remove the fault");
    let updated = send(
        &app,
        Method::PUT,
        &path("c-kept"),
        &[],
        Some(&json!({"rating": "thumbs_down"})),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
}
