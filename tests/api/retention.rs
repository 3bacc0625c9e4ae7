//! `RETENTION_DAYS` (API.md, "Delete and end-user erasure").

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;

use crate::helpers::{
    Backend, TestApp, TestStorage, execute_directly, spawn_app, spawn_app_on, spawn_app_on_with,
    test_database_args,
};
use crate::safe_writes::revisions;

per_store!(a_replica_with_retention_deletes_old_entries_and_their_histories_only);
both_stores!(retention_works_in_bounded_batches);

mod advisory_lock {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::retention_skips_a_round_another_replica_holds().await;
    }
}

/// Moves the entry's creation `days` days back, straight in the database.
async fn age(app: &TestApp, id: &str, days: i64) {
    let changed = execute_directly(
        app.backend,
        &app.database_url,
        &format!("update feedback set created_at = created_at - interval '{days} days' where output_id = '{id}'"),
        &format!("update feedback set created_at = created_at - {days} * 86400000 where output_id = '{id}'"),
    )
    .await
    .expect("age the entry");
    assert_eq!(changed, 1);
}

async fn a_replica_with_retention_deletes_old_entries_and_their_histories_only(backend: Backend) {
    let storage = TestStorage::new(backend).await;
    let database = test_database_args(&storage.url());
    let app = spawn_app_on(&database).await;
    app.create_ok("completions", json!({"id": "old-1", "description": "old"}))
        .await;
    app.update_ok("completions", "old-1", json!({"rating": "thumbs_up"}))
        .await;
    app.create_ok("responses", json!({"id": "old-2"})).await;
    app.create_ok("completions", json!({"id": "recent"})).await;
    app.create_ok("completions", json!({"id": "two-days-less-an-hour"}))
        .await;
    age(&app, "old-1", 3).await;
    age(&app, "old-2", 2).await;
    // A second replica, with RETENTION_DAYS=2: it runs a round at start.
    let _retaining = spawn_app_on_with(&database, |serve| serve.retention_days = Some(2)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.get("completions", "old-1").await.status != 404
        || app.get("responses", "old-2").await.status != 404
    {
        assert!(Instant::now() < deadline, "retention did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        revisions(&app, "completions", "old-1", "").await.status,
        404
    );
    assert_eq!(app.get("completions", "recent").await.status, 200);
    assert_eq!(
        app.get("completions", "two-days-less-an-hour").await.status,
        200
    );
    assert_eq!(
        revisions(&app, "completions", "recent", "").await.status,
        200
    );
}

async fn retention_works_in_bounded_batches(app: TestApp) {
    for n in 0..5 {
        app.create_ok("completions", json!({"id": format!("c-{n}")}))
            .await;
    }
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    let mut batches = Vec::new();
    loop {
        let deleted = app
            .store
            .delete_expired_feedback(later, 2)
            .await
            .expect("retention batch");
        let deleted = deleted.expect("no other replica");
        batches.push(deleted);
        if deleted == 0 {
            break;
        }
    }
    // Each batch: at most 2 entries (and as many orphaned revisions).
    assert_eq!(batches[..3], [2, 2, 1], "{batches:?}");
    assert_eq!(app.list("completions", "").await.body["data"], json!([]));
    assert_eq!(revisions(&app, "completions", "c-0", "").await.status, 404);
}

async fn retention_skips_a_round_another_replica_holds() {
    let app = spawn_app(Backend::Postgres).await;
    app.create_ok("completions", json!({"id": "c-1"})).await;
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    let mut other = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    let mut held = other.begin().await.expect("begin");
    sqlx::query("select pg_advisory_xact_lock(19528, 0)")
        .execute(&mut *held)
        .await
        .expect("lock");
    assert_eq!(
        app.store
            .delete_expired_feedback(later, 10)
            .await
            .expect("batch"),
        None
    );
    held.rollback().await.expect("release");
    assert_eq!(
        app.store
            .delete_expired_feedback(later, 10)
            .await
            .expect("batch"),
        Some(1)
    );
}
