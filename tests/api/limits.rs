//! Back-pressure and browser access: the request timeout, load shedding, the
//! per-key rate limit, CORS, and the body limit.

use std::time::{Duration, Instant};

use llm_feedback::config::{CorsOrigin, ServeArgs};
use reqwest::Method;
use reqwest::header::{CONNECTION, CONTENT_TYPE};
use serde_json::json;
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::helpers::{
    Backend, Reply, SLOW_EXPORT_ROWS, SlowExport, TestApp, assert_error, insert_long_completions,
    spawn_app_with,
};

/// Like `both_stores!`, on apps whose settings `$configure` adjusts.
macro_rules! both_stores_with {
    ($configure:ident => $($scenario:ident),+ $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let app = $crate::helpers::spawn_app_with(
                        $crate::helpers::Backend::Postgres,
                        super::$configure,
                    )
                    .await;
                    super::$scenario(app).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::helpers::spawn_app_with(
                        $crate::helpers::Backend::Sqlite,
                        super::$configure,
                    )
                    .await;
                    super::$scenario(app).await;
                }
            }
        )+
    };
}

both_stores!(
    without_a_rate_limit_50_quick_requests_with_one_key_all_succeed,
    without_cors_origins_a_preflight_gets_no_cors_headers_and_needs_a_key,
    a_body_of_65537_bytes_is_413_payload_too_large,
);

both_stores_with!(short_request_timeout =>
    a_write_blocked_past_the_request_timeout_is_503_unavailable_and_the_app_recovers,
);

both_stores_with!(small_rate_limit =>
    a_key_over_its_burst_is_429_with_retry_after_until_its_bucket_refills,
);

both_stores_with!(cors_for_one_origin =>
    a_preflight_from_the_allowed_origin_is_answered_without_a_key,
    a_cross_origin_request_from_the_allowed_origin_can_read_the_request_id,
    other_origins_get_no_cors_headers,
);

both_stores_with!(cors_for_any_origin =>
    with_a_wildcard_every_origin_is_allowed,
);

both_stores_with!(one_request_in_flight =>
    an_export_read_slowly_holds_its_in_flight_slot_until_its_last_byte,
);

both_stores!(a_fifth_export_is_503_unavailable_while_four_stream);

/// `REQUEST_TIMEOUT_MS` of `short_request_timeout` apps.
const SHORT_TIMEOUT: Duration = Duration::from_millis(300);
/// The origin `cors_for_one_origin` apps allow.
const ALLOWED_ORIGIN: &str = "https://app.example";
/// `RATE_LIMIT_PER_SECOND` and `RATE_LIMIT_BURST` of `small_rate_limit` apps.
const RATE_PER_SECOND: u32 = 2;
const RATE_BURST: u32 = 3;

const COLLECTION: &str = "/api/v1/llm/feedback/responses";

fn short_request_timeout(serve: &mut ServeArgs) {
    serve.request_timeout_ms = u64::try_from(SHORT_TIMEOUT.as_millis()).expect("small");
}

fn small_rate_limit(serve: &mut ServeArgs) {
    serve.rate_limit_per_second = Some(RATE_PER_SECOND);
    serve.rate_limit_burst = Some(RATE_BURST);
}

fn cors_for_one_origin(serve: &mut ServeArgs) {
    serve.cors_allowed_origins = vec![CorsOrigin::parse(ALLOWED_ORIGIN).expect("a valid origin")];
}

fn one_request_in_flight(serve: &mut ServeArgs) {
    serve.max_concurrent_requests = 1;
}

fn cors_for_any_origin(serve: &mut ServeArgs) {
    serve.cors_allowed_origins = vec![CorsOrigin::Any];
}

/// A lock held from outside the app, so that its writes wait: on PostgreSQL
/// the rows of some `responses` entries (`select ... for update`), on SQLite
/// the whole database (`begin immediate`).
enum WriteLock {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl WriteLock {
    async fn hold(app: &TestApp, ids: &[&str]) -> Self {
        match app.backend {
            Backend::Postgres => {
                let mut connection = PgConnection::connect(&app.database_url)
                    .await
                    .expect("connect to the test database");
                sqlx::query("begin")
                    .execute(&mut connection)
                    .await
                    .expect("begin");
                let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
                let locked = sqlx::query(
                    "select 1 from feedback where kind = 'responses' and output_id = any($1) for update",
                )
                .bind(&ids)
                .fetch_all(&mut connection)
                .await
                .expect("lock the rows");
                assert_eq!(locked.len(), ids.len(), "rows to lock: {ids:?}");
                Self::Postgres(connection)
            }
            Backend::Sqlite => {
                let mut connection = SqliteConnection::connect(&app.database_url)
                    .await
                    .expect("open the test database");
                sqlx::query("begin immediate")
                    .execute(&mut connection)
                    .await
                    .expect("begin immediate");
                Self::Sqlite(connection)
            }
        }
    }

    /// Sessions of the app waiting for a PostgreSQL lock.
    async fn waiting_sessions(&mut self) -> i64 {
        let Self::Postgres(connection) = self else {
            panic!("only PostgreSQL shows waiting sessions");
        };
        // This connection is inside a transaction, where pg_stat_activity
        // is read once and cached: drop that snapshot first.
        sqlx::query("select pg_stat_clear_snapshot()")
            .execute(&mut *connection)
            .await
            .expect("pg_stat_clear_snapshot");
        let (count,): (i64,) = sqlx::query_as(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *connection)
        .await
        .expect("pg_stat_activity");
        count
    }

    async fn release(self) {
        match self {
            Self::Postgres(mut connection) => {
                sqlx::query("rollback")
                    .execute(&mut connection)
                    .await
                    .expect("rollback");
                connection.close().await.expect("close");
            }
            Self::Sqlite(mut connection) => {
                sqlx::query("rollback")
                    .execute(&mut connection)
                    .await
                    .expect("rollback");
                connection.close().await.expect("close");
            }
        }
    }
}

/// Sends `request`, timing it.
async fn timed(app: &TestApp, request: reqwest::RequestBuilder) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = app.send(request).await;
    (reply, started.elapsed())
}

async fn a_write_blocked_past_the_request_timeout_is_503_unavailable_and_the_app_recovers(
    app: TestApp,
) {
    app.create_ok("responses", json!({"id": "held"})).await;
    let lock = WriteLock::hold(&app, &["held"]).await;

    let mut blocked = vec![(
        "PUT",
        timed(
            &app,
            app.request(Method::PUT, &format!("{COLLECTION}/held"))
                .json(&json!({"rating": "thumbs_up"})),
        )
        .await,
    )];
    if app.backend == Backend::Sqlite {
        // The whole database is locked: creates wait too.
        blocked.push((
            "POST",
            timed(
                &app,
                app.request(Method::POST, COLLECTION)
                    .json(&json!({"id": "blocked"})),
            )
            .await,
        ));
    }
    let read = app.get("responses", "held").await;
    lock.release().await;

    for (what, (reply, took)) in &blocked {
        assert_error(reply, 503, "unavailable", what);
        assert!(
            *took >= Duration::from_millis(250) && *took < Duration::from_secs(2),
            "{what} answered after {took:?}, the timeout is {SHORT_TIMEOUT:?}"
        );
        assert!(reply.header("x-request-id").is_some(), "{what}");
    }
    // Reads do not wait for the lock, so they fit in the deadline.
    assert_eq!(read.status, 200, "{}", read.text);
    // Once the lock is gone, writes succeed again.
    app.create_ok("responses", json!({"id": "after-release"}))
        .await;
    let updated = app
        .update("responses", "held", json!({"description": "after"}))
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_beyond_max_concurrent_requests_are_shed_at_once_while_probes_answer() {
    let app = spawn_app_with(Backend::Postgres, |serve| {
        serve.max_concurrent_requests = 2;
    })
    .await;
    for id in ["held-1", "held-2"] {
        app.create_ok("responses", json!({"id": id})).await;
    }
    let mut lock = WriteLock::hold(&app, &["held-1", "held-2"]).await;
    let in_flight: Vec<_> = ["held-1", "held-2"]
        .into_iter()
        .map(|id| {
            let request = app
                .request(Method::PUT, &format!("{COLLECTION}/{id}"))
                .json(&json!({"rating": "thumbs_up"}));
            tokio::spawn(async move { Reply::read(request.send().await.expect("PUT")).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock.waiting_sessions().await < 2 {
        assert!(
            Instant::now() < deadline,
            "the two PUTs never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (third, third_took) = timed(
        &app,
        app.request(Method::GET, &format!("{COLLECTION}/held-1")),
    )
    .await;
    let (create, create_took) = timed(
        &app,
        app.request(Method::POST, COLLECTION)
            .json(&json!({"id": "shed"})),
    )
    .await;
    let healthz = app.send(app.client.get(app.url("/healthz"))).await;
    let metrics = app.send(app.client.get(app.url("/metrics"))).await;
    lock.release().await;

    assert_error(&third, 503, "unavailable", "a third request");
    assert!(
        third_took < Duration::from_millis(500),
        "shed after {third_took:?}"
    );
    assert_error(&create, 503, "unavailable", "a create");
    assert!(
        create_took < Duration::from_millis(500),
        "shed after {create_took:?}"
    );
    assert_eq!(healthz.status, 200, "{}", healthz.text);
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    for (id, task) in ["held-1", "held-2"].into_iter().zip(in_flight) {
        let reply = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the PUT did not finish after the lock was released")
            .expect("the PUT task panicked");
        assert_eq!(reply.status, 200, "{id}: {}", reply.text);
        assert_eq!(reply.body["rating"], "thumbs_up", "{id}");
    }
    let shed = app.get("responses", "shed").await;
    assert_eq!(shed.status, 404, "a shed create was stored: {}", shed.text);
    for id in ["held-1", "held-2"] {
        let reply = app.get("responses", id).await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.text);
    }
    app.create_ok("responses", json!({"id": "after-shedding"}))
        .await;
}

async fn a_key_over_its_burst_is_429_with_retry_after_until_its_bucket_refills(app: TestApp) {
    let other_key = app.new_key("tenant-a").await;

    let started = Instant::now();
    let mut successes = 0_u32;
    let limited = loop {
        let reply = app.list("responses", "limit=1").await;
        match reply.status {
            200 => successes += 1,
            429 => break reply,
            other => panic!("unexpected {other}: {}", reply.text),
        }
        assert!(successes <= 20, "never rate limited");
    };
    let limited_after = started.elapsed();
    // Made while the bucket is (very likely) still empty.
    let create = app
        .create("responses", json!({"id": "while-limited"}))
        .await;
    let create_after = started.elapsed();
    let other = app
        .as_caller(&other_key, None)
        .get("responses", "while-limited")
        .await;

    // The burst, plus whatever refilled while the requests were made.
    let refilled = (limited_after.as_secs_f64() * f64::from(RATE_PER_SECOND)).floor();
    assert!(
        successes >= RATE_BURST && f64::from(successes) <= f64::from(RATE_BURST) + refilled,
        "{successes} requests succeeded in {limited_after:?} (burst {RATE_BURST}, {RATE_PER_SECOND}/s)"
    );
    assert_error(&limited, 429, "rate_limited", "over the burst");
    let retry_after: u64 = limited
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", limited.headers))
        .parse()
        .expect("Retry-After in whole seconds");
    // One token comes back every 1/RATE_PER_SECOND s: at most a second away.
    assert_eq!(
        retry_after, 1,
        "Retry-After for {RATE_PER_SECOND} requests a second"
    );
    // The limit applies before the request is served.
    let refill_interval = Duration::from_secs(1) / RATE_PER_SECOND;
    if create_after < refill_interval {
        assert_error(&create, 429, "rate_limited", "a create while limited");
        assert_eq!(
            other.status, 404,
            "a rate-limited create was stored: {}",
            other.text
        );
    }
    // Each key has its own bucket.
    let fresh = app
        .as_caller(&other_key, None)
        .get("responses", "nothing")
        .await;
    assert_eq!(
        fresh.status, 404,
        "another key of the tenant: {}",
        fresh.text
    );

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let again = app.list("responses", "limit=1").await;
    assert_eq!(again.status, 200, "after Retry-After: {}", again.text);
}

async fn without_a_rate_limit_50_quick_requests_with_one_key_all_succeed(app: TestApp) {
    for i in 0..50 {
        let reply = app.list("responses", "limit=1").await;

        assert_eq!(reply.status, 200, "request {i}: {}", reply.text);
    }
}

/// A CORS preflight for `path` from `origin`: no credentials, as browsers send it.
fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::RequestBuilder {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type, x-on-behalf-of",
        )
}

/// The comma-separated items of a header, lowercased.
fn header_items(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Whether a response carries any `access-control-*` header.
fn has_cors_headers(reply: &Reply) -> bool {
    reply
        .headers
        .keys()
        .any(|name| name.as_str().starts_with("access-control-"))
}

async fn a_preflight_from_the_allowed_origin_is_answered_without_a_key(app: TestApp) {
    for (path, method) in [
        (COLLECTION.to_owned(), "POST"),
        (format!("{COLLECTION}/resp-1"), "PUT"),
        (format!("{COLLECTION}/resp-1"), "GET"),
    ] {
        let reply = app
            .send(preflight(&app, &path, ALLOWED_ORIGIN, method))
            .await;

        assert!(
            (200..300).contains(&reply.status),
            "OPTIONS {path} ({method}): {} {}",
            reply.status,
            reply.text
        );
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some(ALLOWED_ORIGIN),
            "{path}: {:?}",
            reply.headers
        );
        let methods = header_items(&reply, "access-control-allow-methods");
        for expected in ["post", "put", "get"] {
            assert!(
                methods.iter().any(|m| m == expected || m == "*"),
                "{path}: allow-methods {methods:?}"
            );
        }
        let headers = header_items(&reply, "access-control-allow-headers");
        for expected in ["authorization", "content-type", "x-on-behalf-of"] {
            assert!(
                headers.iter().any(|h| h == expected),
                "{path}: allow-headers {headers:?}"
            );
        }
        assert!(reply.header("www-authenticate").is_none(), "{path}");
    }
}

async fn a_cross_origin_request_from_the_allowed_origin_can_read_the_request_id(app: TestApp) {
    app.create_ok("responses", json!({"id": "resp-cors"})).await;

    let reply = app
        .send(
            app.request(Method::GET, &format!("{COLLECTION}/resp-cors"))
                .header("Origin", ALLOWED_ORIGIN),
        )
        .await;
    let without_key = app
        .send(
            app.client
                .get(app.url(&format!("{COLLECTION}/resp-cors")))
                .header("Origin", ALLOWED_ORIGIN),
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["id"], "resp-cors");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN),
        "{:?}",
        reply.headers
    );
    let exposed = header_items(&reply, "access-control-expose-headers");
    assert!(
        exposed.iter().any(|h| h == "x-request-id"),
        "expose-headers {exposed:?}"
    );
    // Errors too, so the page can read why it failed.
    assert_error(
        &without_key,
        401,
        "unauthorized",
        "cross-origin without a key",
    );
    assert_eq!(
        without_key.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN),
        "{:?}",
        without_key.headers
    );
}

async fn other_origins_get_no_cors_headers(app: TestApp) {
    for origin in [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil",
        "https://app.example:8443",
    ] {
        let preflight = app.send(preflight(&app, COLLECTION, origin, "POST")).await;
        let get = app
            .send(
                app.request(Method::GET, COLLECTION)
                    .header("Origin", origin),
            )
            .await;

        assert!(
            preflight.header("access-control-allow-origin").is_none(),
            "preflight from {origin}: {:?}",
            preflight.headers
        );
        assert!(
            get.header("access-control-allow-origin").is_none(),
            "GET from {origin}: {:?}",
            get.headers
        );
        assert_eq!(get.status, 200, "{origin}: {}", get.text);
    }
}

async fn with_a_wildcard_every_origin_is_allowed(app: TestApp) {
    for origin in [
        "https://app.example",
        "https://any.example",
        "http://localhost:3000",
    ] {
        let preflight = app.send(preflight(&app, COLLECTION, origin, "POST")).await;
        let get = app
            .send(
                app.request(Method::GET, COLLECTION)
                    .header("Origin", origin),
            )
            .await;

        assert!(
            (200..300).contains(&preflight.status),
            "{origin}: {} {}",
            preflight.status,
            preflight.text
        );
        for reply in [&preflight, &get] {
            let allowed = reply.header("access-control-allow-origin");
            assert!(
                allowed == Some("*") || allowed == Some(origin),
                "{origin}: {:?}",
                reply.headers
            );
        }
        assert_eq!(get.status, 200, "{}", get.text);
    }
}

async fn without_cors_origins_a_preflight_gets_no_cors_headers_and_needs_a_key(app: TestApp) {
    let reply = app
        .send(preflight(&app, COLLECTION, ALLOWED_ORIGIN, "POST"))
        .await;
    let get = app
        .send(
            app.request(Method::GET, COLLECTION)
                .header("Origin", ALLOWED_ORIGIN),
        )
        .await;

    assert_error(&reply, 401, "unauthorized", "a preflight without a key");
    assert!(!has_cors_headers(&reply), "{:?}", reply.headers);
    assert_eq!(get.status, 200, "{}", get.text);
    assert!(!has_cors_headers(&get), "{:?}", get.headers);
}

async fn a_body_of_65537_bytes_is_413_payload_too_large(app: TestApp) {
    let prefix = r#"{"id":"too-big","description":""#;
    let suffix = r#""}"#;
    let body = format!(
        "{prefix}{}{suffix}",
        "a".repeat(65_537 - prefix.len() - suffix.len())
    );
    assert_eq!(body.len(), 65_537);

    let reply = app
        .send(
            app.request(Method::POST, COLLECTION)
                .header(CONTENT_TYPE, "application/json")
                // The service may not read the rest of the body: no reuse.
                .header(CONNECTION, "close")
                .body(body),
        )
        .await;

    assert_error(&reply, 413, "payload_too_large", "65,537 bytes");
    let stored = app.get("responses", "too-big").await;
    assert_eq!(stored.status, 404, "{}", stored.text);
}

/// Polls `GET /completions/bulk-1` until it is answered 200 (the slot
/// freed), for at most 5 s.
async fn wait_until_served(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = app.get("completions", "bulk-1").await;
        if reply.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {} 5 s after the export ended: {}",
            reply.status,
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_export_read_slowly_holds_its_in_flight_slot_until_its_last_byte(app: TestApp) {
    insert_long_completions(app.backend, &app.database_url).await;

    let export = SlowExport::open(&app).await;
    assert_eq!(export.status(), "200", "{}", export.head);
    // Long after the handler returned, the body is still being sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let meanwhile = app.get("completions", "bulk-1").await;

    assert_error(
        &meanwhile,
        503,
        "unavailable",
        "a get while the export streams",
    );
    let bytes = export.finish().await;
    assert!(bytes > 10_000_000, "{bytes} bytes");
    wait_until_served(&app).await;
}

async fn a_fifth_export_is_503_unavailable_while_four_stream(app: TestApp) {
    insert_long_completions(app.backend, &app.database_url).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let export = SlowExport::open(&app).await;
        assert_eq!(export.status(), "200", "{}", export.head);
        open.push(export);
    }

    let fifth = app.export("completions", "").await;
    let get = app.get("completions", "bulk-1").await;

    assert_error(&fifth, 503, "unavailable", "a fifth export");
    assert_eq!(get.status, 200, "other requests still served: {}", get.text);
    let finished = open.pop().expect("four exports").finish().await;
    assert!(finished > 10_000_000, "{finished} bytes");
    let deadline = Instant::now() + Duration::from_secs(5);
    let another = loop {
        let reply = app.export("completions", "").await;
        if reply.status != 503 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(another.status, 200, "{}", another.text);
    let rows = usize::try_from(SLOW_EXPORT_ROWS).expect("small");
    assert_eq!(
        another.text.split("\r\n").count(),
        rows + 2,
        "header, rows, end"
    );
    for export in open {
        export.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_chunk_query_past_the_request_timeout_ends_the_body_early() {
    let app = spawn_app_with(Backend::Postgres, |serve| serve.request_timeout_ms = 1000).await;
    insert_long_completions(app.backend, &app.database_url).await;
    let export = SlowExport::open(&app).await;
    assert_eq!(export.status(), "200", "{}", export.head);
    // While the body waits for the client, the next chunk queries are made
    // to wait far longer than the timeout.
    let mut lock = PgConnection::connect(&app.database_url)
        .await
        .expect("connect to the test database");
    sqlx::query("begin")
        .execute(&mut lock)
        .await
        .expect("begin");
    sqlx::query("lock table feedback in access exclusive mode")
        .execute(&mut lock)
        .await
        .expect("lock the table");

    let started = Instant::now();
    let (body, is_complete) = export.read_rest().await;
    let took = started.elapsed();
    sqlx::query("rollback")
        .execute(&mut lock)
        .await
        .expect("rollback");

    assert!(!is_complete, "the export ended cleanly despite the lock");
    let rows = body.windows(2).filter(|pair| pair == b"\r\n").count();
    assert!(
        rows < usize::try_from(SLOW_EXPORT_ROWS).expect("small"),
        "{rows} lines arrived"
    );
    assert!(
        took < Duration::from_secs(15),
        "the body ended after {took:?}"
    );
    // The slot was given back: other exports run.
    let after = app.export("completions", "").await;
    assert_eq!(after.status, 200, "{}", after.text);
}
