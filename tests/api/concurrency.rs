//! Concurrent requests: one winner per id, no lost updates, no SQLite lock errors.

use std::collections::HashSet;

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, spawn_app};

both_stores!(
    concurrent_creates_of_one_id_have_exactly_one_winner_whose_entry_is_stored,
    concurrent_updates_of_different_fields_never_lose_a_field,
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
        let created = app.create("responses", json!({"id": id})).await;
        assert_eq!(created.status, 201, "{}", created.text);
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
        assert_eq!(stored.body["createdAt"], created.body["createdAt"]);
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
