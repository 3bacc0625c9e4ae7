//! Concurrent requests: one winner per id, no lost updates, no SQLite lock
//! errors, pages that neither skip nor repeat an entry while others are created.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

use crate::helpers::{Backend, Reply, TestApp, encode_id, spawn_app};

both_stores!(
    concurrent_creates_of_one_id_have_exactly_one_winner_whose_entry_is_stored,
    concurrent_updates_of_different_fields_never_lose_a_field,
    readers_paging_both_ways_while_entries_are_created_never_skip_nor_repeat_one,
);

/// Requests sent at once in each race.
const RACERS: usize = 40;

/// Opens `RACERS` keep-alive connections to the app, so that the racing
/// requests reach the server together instead of one connect apart.
async fn open_connections(app: &TestApp) {
    let probes = (0..RACERS).map(|_| app.client.get(app.url("/healthz")).send());
    for probe in join_all(probes).await {
        assert_eq!(probe.expect("healthz").status().as_u16(), 200);
    }
}

async fn concurrent_creates_of_one_id_have_exactly_one_winner_whose_entry_is_stored(app: TestApp) {
    open_connections(&app).await;
    let attempts = (0..RACERS).map(|i| {
        let rating = if i % 2 == 0 {
            "thumbs_up"
        } else {
            "thumbs_down"
        };
        app.create(
            "completions",
            json!({"id": "chatcmpl-race", "rating": rating, "description": format!("attempt {i}")}),
        )
    });

    let replies = join_all(attempts).await;

    let winners: Vec<&Reply> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(
        winners.len(),
        1,
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let losers: Vec<&Reply> = replies.iter().filter(|r| r.status != 201).collect();
    assert_eq!(losers.len(), RACERS - 1);
    for loser in losers {
        assert_eq!(loser.status, 409, "{}", loser.text);
        assert_eq!(loser.error_code(), "conflict", "{}", loser.text);
    }
    let stored = app.get("completions", "chatcmpl-race").await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body, winners[0].body);
}

/// Lost updates show only when the last writer read a stale row; a few
/// rounds make a lucky pass unlikely.
const UPDATE_ROUNDS: usize = 5;

async fn concurrent_updates_of_different_fields_never_lose_a_field(app: TestApp) {
    for round in 0..UPDATE_ROUNDS {
        let id = format!("resp-contended-{round}");
        let created = app.create_ok("responses", json!({"id": id})).await;
        // Half set the rating, half the description, each a value of its own.
        let bodies: Vec<Value> = (0..RACERS)
            .map(|i| {
                if i % 2 == 0 {
                    let rating = if i % 4 == 0 {
                        "thumbs_up"
                    } else {
                        "thumbs_down"
                    };
                    json!({"rating": rating})
                } else {
                    json!({"description": format!("description {round}-{i}")})
                }
            })
            .collect();
        let descriptions: HashSet<String> = bodies
            .iter()
            .filter_map(|body| body["description"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(descriptions.len(), RACERS / 2);
        open_connections(&app).await;

        let replies = join_all(
            bodies
                .iter()
                .map(|body| app.update("responses", &id, body.clone())),
        )
        .await;

        for (body, reply) in bodies.iter().zip(&replies) {
            assert_eq!(reply.status, 200, "{body} -> {}", reply.text);
            // Each answer shows its own change applied.
            for field in ["rating", "description"] {
                if body.get(field).is_some() {
                    assert_eq!(reply.body[field], body[field], "{body} -> {}", reply.text);
                }
            }
        }
        let stored = app.get("responses", &id).await;
        assert_eq!(stored.status, 200);
        let rating = stored.body["rating"].as_str();
        assert!(
            matches!(rating, Some("thumbs_up" | "thumbs_down")),
            "round {round}: rating lost: {}",
            stored.text
        );
        let description = stored.body["description"].as_str();
        assert!(
            description.is_some_and(|d| descriptions.contains(d)),
            "round {round}: description lost: {}",
            stored.text
        );
        assert_eq!(stored.body["createdAt"], created["createdAt"]);
    }
}

/// Writers per run and entries per writer.
const WRITERS: usize = 32;
const ENTRIES_PER_WRITER: usize = 25;

/// One writer: creates its entries, then updates each; every reply that is
/// not a success, as `(request, status, body)`.
async fn write_entries(app: &TestApp, writer: usize) -> Vec<(String, u16, String)> {
    let mut failures = Vec::new();
    for entry in 0..ENTRIES_PER_WRITER {
        let id = format!("resp-w{writer}-e{entry}");
        let reply = app
            .create(
                "responses",
                json!({"id": id, "rating": "thumbs_up", "description": format!("{id} created")}),
            )
            .await;
        if reply.status != 201 {
            failures.push((format!("create {id}"), reply.status, reply.text));
        }
    }
    for entry in 0..ENTRIES_PER_WRITER {
        let id = format!("resp-w{writer}-e{entry}");
        let reply = app
            .update(
                "responses",
                &id,
                json!({"rating": "thumbs_down", "description": format!("{id} updated")}),
            )
            .await;
        if reply.status != 200 {
            failures.push((format!("update {id}"), reply.status, reply.text));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_serves_32_concurrent_writers_without_lock_errors() {
    let app = spawn_app(Backend::Sqlite).await;

    let failures: Vec<_> = join_all((0..WRITERS).map(|writer| write_entries(&app, writer)))
        .await
        .into_iter()
        .flatten()
        .collect();

    assert!(
        failures.is_empty(),
        "{} of {} writes failed, e.g. {:?}",
        failures.len(),
        WRITERS * ENTRIES_PER_WRITER * 2,
        &failures[..failures.len().min(5)]
    );
    let app = &app;
    for writer in 0..WRITERS {
        let reads = join_all((0..ENTRIES_PER_WRITER).map(|entry| {
            let id = format!("resp-w{writer}-e{entry}");
            async move { (app.get("responses", &id).await, id) }
        }))
        .await;
        for (reply, id) in reads {
            assert_eq!(reply.status, 200, "{id}: {}", reply.text);
            assert_eq!(reply.body["rating"], "thumbs_down", "{id}: {}", reply.text);
            assert_eq!(
                reply.body["description"],
                format!("{id} updated"),
                "{id}: {}",
                reply.text
            );
        }
    }
}

/// The WAL is folded back into the database file as writes go (SQLite's
/// auto-checkpoint), so it stays around its 1000-page threshold instead of
/// growing with every write until shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_its_wal_bounded_under_sustained_writes() {
    // SQLite checkpoints once the WAL holds 1000 pages; 4 KiB pages.
    const CHECKPOINT_AT_BYTES: u64 = 1000 * 4096;
    let app = spawn_app(Backend::Sqlite).await;
    let path = app
        .database_url
        .strip_prefix("sqlite://")
        .expect("a sqlite:// URL")
        .to_owned();
    let size =
        |suffix: &str| std::fs::metadata(format!("{path}{suffix}")).map_or(0, |meta| meta.len());

    let mut writes = 0;
    while size("") < CHECKPOINT_AT_BYTES / 4 {
        assert!(
            size("-wal") < 2 * CHECKPOINT_AT_BYTES,
            "after {writes} writes the WAL holds {} bytes and the database file {}: no checkpoint",
            size("-wal"),
            size("")
        );
        let id = format!("wal-{writes}");
        app.create_ok(
            "responses",
            json!({"id": id, "description": "x".repeat(500)}),
        )
        .await;
        app.update_ok("responses", &id, json!({"rating": "thumbs_up"}))
            .await;
        writes += 2;
    }
}

/// Tasks creating entries at once, and entries each creates.
const CREATORS: usize = 8;
const CREATES_PER_CREATOR: usize = 25;
/// Entries that exist before the readers start.
const BEFORE: usize = 20;

/// Pages through `completions` in `order`, 7 at a time, following `last_id`;
/// returns the ids in the order listed and when the first page was asked
/// for. Oldest first, it keeps asking from its last cursor (a short page
/// only means "nothing more yet") until `done` is set and a page asked for
/// after that ends with `has_more: false`; newest first, it stops at the
/// first `has_more: false`.
async fn page_through(app: &TestApp, order: &str, done: &AtomicBool) -> (Vec<String>, Instant) {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let started = Instant::now();
    loop {
        let was_done = done.load(Ordering::SeqCst);
        let query = match &cursor {
            None => format!("order={order}&limit=7"),
            Some(id) => format!("order={order}&limit=7&after={}", encode_id(id)),
        };
        let page = app.list("completions", &query).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for item in page.body["data"].as_array().expect("data") {
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        if let Some(last) = page.body["last_id"].as_str() {
            cursor = Some(last.to_owned());
        }
        let has_more = page.body["has_more"].as_bool().expect("has_more");
        if !has_more && (order == "desc" || was_done) {
            return (seen, started);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the {order} reader is still paging after 60 s"
        );
        if !has_more {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// PostgreSQL: starts a create of `held` that takes its position and then
/// waits (on the unique index, for an uncommitted row of the same id held by
/// the returned connection) until that connection rolls back.
async fn hold_a_create_open(app: &Arc<TestApp>) -> (PgConnection, JoinHandle<(Reply, Instant)>) {
    let mut blocker = PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    sqlx::query("begin")
        .execute(&mut blocker)
        .await
        .expect("begin");
    sqlx::query(
        "insert into feedback (tenant, kind, output_id, created_at, updated_at)
         values ('tenant-a', 'completions', 'held', now(), now())",
    )
    .execute(&mut blocker)
    .await
    .expect("uncommitted row");
    let creator = Arc::clone(app);
    let held = tokio::spawn(async move {
        let reply = creator.create("completions", json!({"id": "held"})).await;
        (reply, Instant::now())
    });
    let mut probe = PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut probe)
        .await
        .expect("pg_stat_activity");
        if waiting == 1 {
            return (blocker, held);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The ids among `expected` that `seen` lacks, and those it lists twice.
fn missed_and_repeated(seen: &[String], expected: impl Iterator<Item = String>) -> Vec<String> {
    let mut once = HashSet::new();
    let mut wrong: Vec<String> = seen
        .iter()
        .filter(|id| !once.insert(id.as_str()))
        .map(|id| format!("twice: {id}"))
        .collect();
    wrong.extend(
        expected
            .filter(|id| !once.contains(id.as_str()))
            .map(|id| format!("missed: {id}")),
    );
    wrong
}

async fn readers_paging_both_ways_while_entries_are_created_never_skip_nor_repeat_one(
    app: TestApp,
) {
    let app = Arc::new(app);
    for i in 0..BEFORE {
        app.create_ok("completions", json!({"id": format!("before-{i:02}")}))
            .await;
    }
    let held = if app.backend == Backend::Postgres {
        Some(hold_a_create_open(&app).await)
    } else {
        None
    };
    let done = Arc::new(AtomicBool::new(false));

    let creators = join_all((0..CREATORS).map(|c| {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut answered = Vec::new();
            for i in 0..CREATES_PER_CREATOR {
                let id = format!("c{c}-{i:02}");
                app.create_ok("completions", json!({"id": id})).await;
                answered.push((id, Instant::now()));
            }
            answered
        })
    }));
    let [asc, desc] = ["asc", "desc"].map(|order| {
        let (app, done) = (Arc::clone(&app), Arc::clone(&done));
        tokio::spawn(async move { page_through(&app, order, &done).await })
    });
    let mut answered: Vec<(String, Instant)> = creators
        .await
        .into_iter()
        .flat_map(|creator| creator.expect("creator"))
        .collect();
    if let Some((mut blocker, held)) = held {
        // The readers pass the later entries before the held one commits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("rollback")
            .execute(&mut blocker)
            .await
            .expect("rollback");
        let (reply, at) = held.await.expect("held create");
        assert_eq!(reply.status, 201, "{}", reply.text);
        answered.push(("held".to_owned(), at));
    }
    done.store(true, Ordering::SeqCst);
    let (asc_seen, _) = asc.await.expect("asc reader");
    let (desc_seen, desc_started) = desc.await.expect("desc reader");

    let before = (0..BEFORE).map(|i| format!("before-{i:02}"));
    // Oldest first: every entry, however late it committed.
    let all = answered.iter().map(|(id, _)| id.clone());
    assert_eq!(
        missed_and_repeated(&asc_seen, before.clone().chain(all)),
        Vec::<String>::new()
    );
    // Newest first: every entry answered before the first page.
    let earlier = answered
        .iter()
        .filter(|(_, at)| *at < desc_started)
        .map(|(id, _)| id.clone());
    assert_eq!(
        missed_and_repeated(&desc_seen, before.chain(earlier)),
        Vec::<String>::new()
    );
}
