//! Three replicas of the service on one PostgreSQL database, as operations
//! runs them: one winner per id across replicas, a revoked key refused by
//! every replica's key cache in time, no field lost to updates spread over
//! all three.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{llm_feedback_on, run};
use crate::helpers::spawn_app_on;
use crate::helpers::{Reply, TestApp, TestDatabase, test_database_args};

/// Replicas behind the imaginary load balancer.
const REPLICAS: usize = 3;
/// Requests sent at once in each race.
const RACERS: usize = 30;
/// API.md: a revoked key "stops working on every server sharing the database
/// within 5 seconds".
const REVOCATION_WITHIN: Duration = Duration::from_secs(5);

/// Three applications on one fresh database, and a key of `tenant-a`.
struct Replicas {
    apps: Vec<TestApp>,
    key: String,
    // Last: dropped once the apps are told to stop.
    database: TestDatabase,
}

impl Replicas {
    async fn start() -> Self {
        let database = TestDatabase::create().await;
        let mut apps = Vec::new();
        for _ in 0..REPLICAS {
            apps.push(spawn_app_on(&test_database_args(&database.url)).await);
        }
        let key = apps[0].new_key("tenant-a").await;
        Self {
            apps,
            key,
            database,
        }
    }

    /// The replica the `n`th request goes to (round robin).
    fn nth(&self, n: usize) -> &TestApp {
        &self.apps[n % self.apps.len()]
    }

    /// Opens keep-alive connections to every replica, so that racing
    /// requests reach the servers together instead of one connect apart.
    async fn open_connections(&self) {
        let probes = (0..RACERS).map(|n| {
            let app = self.nth(n);
            app.client.get(app.url("/healthz")).send()
        });
        for probe in join_all(probes).await {
            assert_eq!(probe.expect("healthz").status().as_u16(), 200);
        }
    }
}

fn entry_path(id: &str) -> String {
    format!("/api/v1/llm/feedback/responses/{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_id_spread_over_three_replicas_have_exactly_one_winner() {
    let replicas = Replicas::start().await;
    replicas.open_connections().await;
    let bodies: Vec<Value> = (0..RACERS)
        .map(|i| {
            let rating = if i % 2 == 0 {
                "thumbs_up"
            } else {
                "thumbs_down"
            };
            json!({"id": "resp-race", "rating": rating, "description": format!("attempt {i}")})
        })
        .collect();

    let replies = join_all(bodies.iter().enumerate().map(|(i, body)| {
        replicas.nth(i).send_as(
            &replicas.key,
            Method::POST,
            "/api/v1/llm/feedback/responses",
            Some(body),
        )
    }))
    .await;

    let statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
    let winners: Vec<&Reply> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(winners.len(), 1, "statuses: {statuses:?}");
    for loser in replies.iter().filter(|r| r.status != 201) {
        assert_eq!(loser.status, 409, "{}", loser.text);
        assert_eq!(loser.error_code(), "conflict", "{}", loser.text);
    }
    for app in &replicas.apps {
        let stored = app
            .send_as(&replicas.key, Method::GET, &entry_path("resp-race"), None)
            .await;
        assert_eq!(stored.status, 200, "{}: {}", app.address, stored.text);
        assert_eq!(stored.body, winners[0].body, "{}", app.address);
    }
}

/// `GET` of the entry the doomed key created.
async fn get_revoked(app: &TestApp, key: &str) -> Reply {
    app.send_as(key, Method::GET, &entry_path("resp-revoked"), None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_with_the_cli_is_refused_by_all_three_replicas_within_5_seconds() {
    let replicas = Replicas::start().await;
    let doomed = replicas.apps[1].new_key("tenant-b").await;
    let created = replicas
        .nth(2)
        .send_as(
            &doomed,
            Method::POST,
            "/api/v1/llm/feedback/responses",
            Some(&json!({"id": "resp-revoked", "rating": "thumbs_up"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    // Used on every replica, so that each has it in its key cache.
    for app in &replicas.apps {
        let reply = get_revoked(app, &doomed).await;
        assert_eq!(reply.status, 200, "{}: {}", app.address, reply.text);
    }

    let mut revoke = llm_feedback_on(&replicas.database.url);
    revoke.args(["keys", "revoke", &TestApp::key_id(&doomed)]);
    let finished = run(revoke, Duration::from_secs(30)).await;

    finished.assert_success();
    let revoked_at = Instant::now();
    let mut refused_after = [None; REPLICAS];
    while refused_after.iter().any(Option::is_none) {
        for (n, app) in replicas.apps.iter().enumerate() {
            if refused_after[n].is_some() {
                continue;
            }
            let reply = get_revoked(app, &doomed).await;
            if reply.status == 401 {
                assert_eq!(reply.error_code(), "unauthorized", "{}", reply.text);
                refused_after[n] = Some(revoked_at.elapsed());
            } else {
                assert_eq!(reply.status, 200, "replica {n}: {}", reply.text);
            }
        }
        assert!(
            revoked_at.elapsed() < REVOCATION_WITHIN,
            "after {:?} the revoked key still works on some replicas: {refused_after:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (n, app) in replicas.apps.iter().enumerate() {
        let reply = get_revoked(app, &doomed).await;
        assert_eq!(
            reply.status, 401,
            "replica {n} accepts it again: {}",
            reply.text
        );
        let other = app
            .send_as(&replicas.key, Method::GET, &entry_path("resp-x"), None)
            .await;
        assert_eq!(
            other.status, 404,
            "another key stopped working: {}",
            other.text
        );
    }
}

/// Lost updates show only when the last writer read a stale row; a few
/// rounds make a lucky pass unlikely.
const UPDATE_ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_spread_over_three_replicas_never_lose_a_field() {
    let replicas = Replicas::start().await;
    for round in 0..UPDATE_ROUNDS {
        let id = format!("resp-contended-{round}");
        let created = replicas
            .nth(round)
            .send_as(
                &replicas.key,
                Method::POST,
                "/api/v1/llm/feedback/responses",
                Some(&json!({"id": id})),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        // Alternately the rating and the description, each a value of its own.
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
        let descriptions: HashSet<&str> = bodies
            .iter()
            .filter_map(|body| body["description"].as_str())
            .collect();
        replicas.open_connections().await;

        let path = entry_path(&id);
        let replies = join_all(bodies.iter().enumerate().map(|(i, body)| {
            replicas
                .nth(i)
                .send_as(&replicas.key, Method::PUT, &path, Some(body))
        }))
        .await;

        for (body, reply) in bodies.iter().zip(&replies) {
            assert_eq!(reply.status, 200, "{body} -> {}", reply.text);
            for field in ["rating", "description"] {
                if body.get(field).is_some() {
                    assert_eq!(reply.body[field], body[field], "{body} -> {}", reply.text);
                }
            }
        }
        let mut seen = Vec::new();
        for app in &replicas.apps {
            let stored = app.send_as(&replicas.key, Method::GET, &path, None).await;
            assert_eq!(stored.status, 200, "{}", stored.text);
            assert!(
                matches!(
                    stored.body["rating"].as_str(),
                    Some("thumbs_up" | "thumbs_down")
                ),
                "round {round}: rating lost: {}",
                stored.text
            );
            assert!(
                stored.body["description"]
                    .as_str()
                    .is_some_and(|d| descriptions.contains(d)),
                "round {round}: description lost: {}",
                stored.text
            );
            assert_eq!(stored.body["createdAt"], created.body["createdAt"]);
            seen.push(stored.body);
        }
        assert!(
            seen.windows(2).all(|pair| pair[0] == pair[1]),
            "round {round}: the replicas disagree: {seen:?}"
        );
    }
}
