//! PostgreSQL going away under a running app, for real (a throwaway cluster
//! is stopped): every API request answers `503 unavailable` within about two
//! seconds and never `500`, `/readyz` says not ready, `/healthz` stays up, and
//! once the database is back the same process serves again with every
//! acknowledged write in place.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use llm_feedback::auth::{KEY_CACHE_TTL, generate_key};
use llm_feedback::config::DatabaseArgs;
use llm_feedback::feedback::TenantId;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cluster::ThrowawayCluster;
use crate::helpers::{Reply, TestApp, spawn_app_on, test_database_args};

/// API.md: "answers 503 unavailable within about 2 seconds".
const UNAVAILABLE_WITHIN: Duration = Duration::from_millis(2500);
/// `/readyz` gives the database one second.
const NOT_READY_WITHIN: Duration = Duration::from_millis(1500);
/// How long the app may take to serve again once the database is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// `DATABASE_ACQUIRE_TIMEOUT_MS` as in production (its default).
const PRODUCTION_ACQUIRE_TIMEOUT_MS: u64 = 1500;

/// How the cluster goes away.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `pg_ctl stop -m fast`: clients disconnected, clean shutdown.
    Fast,
    /// `pg_ctl stop -m immediate`: as a crash.
    Immediate,
}

#[tokio::test]
async fn during_a_fast_postgres_shutdown_requests_get_503_fast_and_the_same_app_recovers_after() {
    postgres_outage(Stop::Fast, "outage: fast shutdown").await;
}

#[tokio::test]
async fn during_an_immediate_postgres_shutdown_requests_get_503_fast_and_the_same_app_recovers_after()
 {
    postgres_outage(Stop::Immediate, "outage: immediate shutdown").await;
}

/// A request made while the database is down, and what it is.
struct Probe {
    what: &'static str,
    key: String,
    method: Method,
    path: &'static str,
    body: Option<Value>,
}

impl Probe {
    fn send<'a>(&'a self, app: &'a TestApp) -> impl Future<Output = Reply> + 'a {
        app.send_as(
            &self.key,
            self.method.clone(),
            self.path,
            self.body.as_ref(),
        )
    }
}

/// Every answer is `503 unavailable`, each given in time.
fn assert_unavailable(round: &str, probes: &[Probe], answers: &[(Reply, Duration)]) {
    for (probe, (reply, elapsed)) in probes.iter().zip(answers) {
        let what = format!("{round}, {}: {}", probe.what, reply.text);
        assert_eq!(reply.status, 503, "{what}");
        assert_eq!(reply.error_code(), "unavailable", "{what}");
        assert!(
            *elapsed < UNAVAILABLE_WITHIN,
            "{what}: answered after {elapsed:?}"
        );
    }
}

/// `/readyz` is `503` in time, `/healthz` `200`.
async fn assert_not_ready_but_alive(app: &TestApp, round: &str) {
    let (ready, elapsed) = timed(app.send_as("", Method::GET, "/readyz", None)).await;
    assert_eq!(ready.status, 503, "{round}, /readyz: {}", ready.text);
    assert_eq!(ready.error_code(), "unavailable", "{}", ready.text);
    assert!(
        elapsed < NOT_READY_WITHIN,
        "{round}: /readyz answered after {elapsed:?}"
    );
    let health = app.send_as("", Method::GET, "/healthz", None).await;
    assert_eq!(health.status, 200, "{round}, /healthz: {}", health.text);
}

/// Awaits `future`, measuring how long it took.
async fn timed<T>(future: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let output = future.await;
    (output, started.elapsed())
}

/// The entries written (and acknowledged) before the outage: `(kind, id)`.
const ENTRIES: [(&str, &str); 5] = [
    ("completions", "chatcmpl-outage-1"),
    ("completions", "chatcmpl-outage-2"),
    ("responses", "resp-outage-1"),
    ("responses", "resp-outage-2"),
    ("responses", "resp-outage-3"),
];

fn entry_path(kind: &str, id: &str) -> String {
    format!("/api/v1/llm/feedback/{kind}/{id}")
}

async fn postgres_outage(stop: Stop, test: &str) {
    let Some(mut cluster) = ThrowawayCluster::create(test).await else {
        return;
    };
    let app = spawn_app_on(&DatabaseArgs {
        database_acquire_timeout_ms: PRODUCTION_ACQUIRE_TIMEOUT_MS,
        ..test_database_args(&cluster.url())
    })
    .await;
    let keys = Keys {
        used: app.new_key("tenant-a").await,
        unused: app.new_key("tenant-a").await,
        unknown: generate_key(TenantId::parse("tenant-a").expect("tenant"), None).secret,
    };
    let acknowledged = write_entries(&app, &keys.used).await;

    let stopped_at = Instant::now();
    match stop {
        Stop::Fast => cluster.stop().await,
        Stop::Immediate => cluster.kill().await,
    }

    let probes = probes(&keys);
    // All at once while the used key is still in the app's key cache (only
    // the handler needs the database), then one at a time once the cache
    // has let it go (its authentication needs the database too).
    let at_once = join_all(probes.iter().map(|probe| timed(probe.send(&app)))).await;
    assert_unavailable("all at once, the used key cached", &probes, &at_once);
    assert_not_ready_but_alive(&app, "all at once").await;
    tokio::time::sleep_until((stopped_at + KEY_CACHE_TTL + Duration::from_millis(500)).into())
        .await;
    let mut one_at_a_time = Vec::new();
    for probe in &probes {
        one_at_a_time.push(timed(probe.send(&app)).await);
    }
    assert_unavailable(
        "one at a time, the key cache expired",
        &probes,
        &one_at_a_time,
    );
    assert_not_ready_but_alive(&app, "one at a time").await;

    cluster.start().await;

    wait_until_served(&app, &keys.used, &acknowledged[0].0).await;
    assert_recovered(&app, &keys, &acknowledged).await;
}

/// The keys of the scenario, all of `tenant-a`.
struct Keys {
    /// Used before the outage: in the app's key cache when it begins.
    used: String,
    /// Provisioned but never used: not cached.
    unused: String,
    /// Never provisioned.
    unknown: String,
}

/// Creates [`ENTRIES`] and updates one: the acknowledged `(path, entry)`s.
async fn write_entries(app: &TestApp, key: &str) -> Vec<(String, Value)> {
    let bodies = [
        json!({"id": ENTRIES[0].1, "rating": "thumbs_up", "description": "before the outage", "model": "gpt-4o"}),
        json!({"id": ENTRIES[1].1, "rating": "thumbs_down"}),
        json!({"id": ENTRIES[2].1, "description": ""}),
        json!({"id": ENTRIES[3].1}),
        json!({"id": ENTRIES[4].1, "rating": "thumbs_up", "description": "to be changed"}),
    ];
    let mut acknowledged = Vec::new();
    for ((kind, id), body) in ENTRIES.iter().zip(&bodies) {
        let created = app
            .send_as(
                key,
                Method::POST,
                &format!("/api/v1/llm/feedback/{kind}"),
                Some(body),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        acknowledged.push((entry_path(kind, id), created.body));
    }
    let updated = app
        .send_as(
            key,
            Method::PUT,
            &acknowledged[4].0,
            Some(&json!({"rating": null, "description": "changed before the outage"})),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    acknowledged[4].1 = updated.body;
    acknowledged
}

/// One request of each kind, and authentications that need the database.
fn probes(keys: &Keys) -> Vec<Probe> {
    let probe = |what, key: &String, method, path, body| Probe {
        what,
        key: key.clone(),
        method,
        path,
        body,
    };
    let entry = "/api/v1/llm/feedback/responses/resp-outage-1";
    let create = "/api/v1/llm/feedback/responses";
    vec![
        probe("GET an entry", &keys.used, Method::GET, entry, None),
        probe(
            "list",
            &keys.used,
            Method::GET,
            "/api/v1/llm/feedback/completions?limit=10",
            None,
        ),
        probe(
            "create",
            &keys.used,
            Method::POST,
            create,
            Some(json!({"id": "resp-during-outage", "rating": "thumbs_up"})),
        ),
        probe(
            "update",
            &keys.used,
            Method::PUT,
            "/api/v1/llm/feedback/completions/chatcmpl-outage-1",
            Some(json!({"rating": "thumbs_down"})),
        ),
        probe(
            "batch get",
            &keys.used,
            Method::POST,
            "/api/v1/llm/feedback/completions/batch",
            Some(json!({"ids": ["chatcmpl-outage-1", "chatcmpl-outage-2"]})),
        ),
        probe(
            "export",
            &keys.used,
            Method::GET,
            "/api/v1/llm/feedback/export/completions",
            None,
        ),
        probe(
            "GET with a key never used before",
            &keys.unused,
            Method::GET,
            entry,
            None,
        ),
        probe(
            "create with a key never used before",
            &keys.unused,
            Method::POST,
            create,
            Some(json!({"id": "resp-during-outage-2"})),
        ),
        probe(
            "GET with an unknown key",
            &keys.unknown,
            Method::GET,
            entry,
            None,
        ),
    ]
}

/// Polls `GET path` until it is `200`; only `503` is acceptable meanwhile.
async fn wait_until_served(app: &TestApp, key: &str, path: &str) {
    let restarted = Instant::now();
    loop {
        let reply = app.send_as(key, Method::GET, path, None).await;
        if reply.status == 200 {
            return;
        }
        assert_eq!(reply.status, 503, "while recovering: {}", reply.text);
        assert!(
            restarted.elapsed() < RECOVERY_TIMEOUT,
            "still {} {:?} after PostgreSQL came back: {}",
            reply.status,
            restarted.elapsed(),
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ready again, every acknowledged entry as it was, no write answered 503
/// applied, new writes accepted.
async fn assert_recovered(app: &TestApp, keys: &Keys, acknowledged: &[(String, Value)]) {
    // `/readyz` serves an outcome again for a second: the last "not ready"
    // may still be the answer just after the database came back.
    let mut ready = app.send_as("", Method::GET, "/readyz", None).await;
    let recovered = Instant::now();
    while ready.status == 503 && recovered.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = app.send_as("", Method::GET, "/readyz", None).await;
    }
    assert_eq!(ready.status, 200, "/readyz after recovery: {}", ready.text);
    for (path, body) in acknowledged {
        for key in [&keys.used, &keys.unused] {
            let stored = app.send_as(key, Method::GET, path, None).await;
            assert_eq!(stored.status, 200, "{path}: {}", stored.text);
            assert_eq!(&stored.body, body, "{path} changed across the outage");
        }
    }
    for id in ["resp-during-outage", "resp-during-outage-2"] {
        let path = entry_path("responses", id);
        let missing = app.send_as(&keys.used, Method::GET, &path, None).await;
        assert_eq!(missing.status, 404, "{path}: {}", missing.text);
    }
    let created = app
        .send_as(
            &keys.unused,
            Method::POST,
            "/api/v1/llm/feedback/responses",
            Some(&json!({"id": "resp-after-outage", "rating": "thumbs_down"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let updated = app
        .send_as(
            &keys.used,
            Method::PUT,
            &acknowledged[0].0,
            Some(&json!({"description": "after the outage"})),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.body["description"], "after the outage");
    assert_eq!(updated.body["rating"], "thumbs_up");
    let stored = app
        .send_as(
            &keys.used,
            Method::GET,
            &entry_path("responses", "resp-after-outage"),
            None,
        )
        .await;
    assert_eq!(stored.body, created.body);
}
