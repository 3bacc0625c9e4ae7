//! The connection pool: a connection is checked out and given back without
//! being reopened, so a steady stream of requests lives on a few database
//! sessions, never more than `DATABASE_MAX_CONNECTIONS`.

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::helpers::{Backend, TestApp, spawn_app, test_database_args};

/// Sessions the app holds on its database, by backend pid.
async fn app_sessions(app: &TestApp) -> Vec<i32> {
    let mut connection = PgConnection::connect(&app.database_url)
        .await
        .expect("connect to the test database");
    let pids: Vec<(i32,)> = sqlx::query_as(
        "select pid from pg_stat_activity
         where datname = current_database() and application_name = 'llm-feedback'
         order by pid",
    )
    .fetch_all(&mut connection)
    .await
    .expect("pg_stat_activity");
    connection.close().await.expect("close");
    pids.into_iter().map(|(pid,)| pid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_database_session() {
    let app = spawn_app(Backend::Postgres).await;
    app.create_ok("responses", json!({"id": "first"})).await;
    // The key-set reload (every 2 s, the first at start) shares the pool:
    // when it overlaps a request it holds a second session, so a session of
    // its own may come and stay. Requests, one at a time, need one.
    let before = app_sessions(&app).await;
    assert!(
        (1..=2).contains(&before.len()),
        "sessions after one request: {before:?}"
    );

    for round in 0..30 {
        let id = format!("entry-{round}");
        app.create_ok("responses", json!({"id": id})).await;
        app.update_ok("responses", &id, json!({"rating": "thumbs_up"}))
            .await;
        let read = app.get("responses", &id).await;
        assert_eq!(read.status, 200, "{}", read.text);
    }

    let after = app_sessions(&app).await;
    assert!(
        before.iter().all(|pid| after.contains(pid)) && after.len() <= 2,
        "90 sequential requests should run on the sessions of the first: before {before:?}, after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_open_at_most_the_configured_connections() {
    let max_connections = test_database_args("sqlite://unused.db").database_max_connections;
    let app = spawn_app(Backend::Postgres).await;
    for _ in 0..3 {
        // Each create asserts its 201.
        futures::future::join_all((0..24).map(|n| {
            let id = format!("concurrent-{n}-{}", uuid::Uuid::new_v4());
            let app = &app;
            async move { app.create_ok("completions", json!({"id": id})).await }
        }))
        .await;
    }
    let sessions = app_sessions(&app).await;
    assert!(
        !sessions.is_empty() && sessions.len() <= max_connections as usize,
        "sessions {sessions:?}, at most {max_connections}"
    );
}
