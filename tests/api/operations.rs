//! Operational endpoints (`/healthz`, `/readyz`, `/metrics`) and the
//! `healthcheck` subcommand.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::binary::free_port;
use crate::cli::{llm_feedback, run};
use crate::helpers::{Backend, TestApp};

both_stores!(
    healthz_is_200_without_a_key_and_ignores_bad_credentials,
    readyz_is_200_without_a_key_while_the_database_answers,
    metrics_are_prometheus_text_served_without_a_key,
    metrics_count_requests_by_method_route_template_and_status,
    metrics_count_creates_updates_and_auth_failures,
    metrics_never_hold_ids_or_keys_from_requests,
    metrics_show_the_connection_pools_of_the_store,
    healthcheck_exits_0_against_a_running_app,
);

/// How long the `healthcheck` subcommand may take before the test gives up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: every sample, and the text as served.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    /// The sum of the samples of `name` that carry all of `labels`
    /// (0 when there are none: a counter not yet incremented is absent).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
    }

    /// Whether any sample of `name` carries all of `labels`.
    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }
}

/// Parses `name{label="value",...} value [timestamp]` lines; panics on any
/// line that is neither that, a comment nor blank.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("not a sample line: {line:?}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = if let Some(open) = line.find('{') {
        let (labels, rest) = parse_labels(&line[open + 1..])?;
        (&line[..open], labels, rest)
    } else {
        let (name, rest) = line.split_once(' ')?;
        (name, BTreeMap::new(), rest)
    };
    let is_valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        raw => raw.parse().ok()?,
    };
    is_valid_name.then(|| Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `key="value",...}` (after the opening brace): the labels and what follows.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, after) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    value.push(if escaped == 'n' { '\n' } else { escaped });
                }
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        text = &after[end + 1..];
    }
}

/// `GET /metrics` without a key, parsed.
async fn scrape(app: &TestApp) -> Scrape {
    let reply = app.send(app.client.get(app.url("/metrics"))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    Scrape {
        samples: parse_prometheus(&reply.text),
        text: reply.text,
    }
}

/// How much `name{labels}` grew between two scrapes.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

/// A unique, well-formed but unknown key.
fn unknown_key() -> String {
    format!("lfk_{}{}", uuid::Uuid::new_v4().simple(), "0000000000")
}

const COLLECTION_ROUTE: &str = "/api/v1/llm/feedback/{kind}";
const ENTRY_ROUTE: &str = "/api/v1/llm/feedback/{kind}/{id}";

async fn healthz_is_200_without_a_key_and_ignores_bad_credentials(app: TestApp) {
    let bare = app.client.get(app.url("/healthz"));
    let bad_bearer = app.client.get(app.url("/healthz")).bearer_auth("not-a-key");
    let basic = app
        .client
        .get(app.url("/healthz"))
        .header("Authorization", "Basic dXNlcjpwYXNz");

    for (what, request) in [
        ("no key", bare),
        ("a bad bearer key", bad_bearer),
        ("basic auth", basic),
    ] {
        let reply = app.send(request).await;
        assert_eq!(reply.status, 200, "{what}: {}", reply.text);
        assert!(reply.header("www-authenticate").is_none(), "{what}");
        assert!(reply.header("x-request-id").is_some(), "{what}");
    }
}

async fn readyz_is_200_without_a_key_while_the_database_answers(app: TestApp) {
    let reply = app.send(app.client.get(app.url("/readyz"))).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    let with_bad_key = app
        .send(
            app.client
                .get(app.url("/readyz"))
                .bearer_auth(unknown_key()),
        )
        .await;
    assert_eq!(with_bad_key.status, 200, "{}", with_bad_key.text);
}

async fn metrics_are_prometheus_text_served_without_a_key(app: TestApp) {
    let reply = app.send(app.client.get(app.url("/metrics"))).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let samples = parse_prometheus(&reply.text);
    assert!(!samples.is_empty(), "no samples: {}", reply.text);
    assert!(
        reply.text.lines().any(|line| line.starts_with("# TYPE ")),
        "no TYPE lines: {}",
        reply.text
    );
}

async fn metrics_count_requests_by_method_route_template_and_status(app: TestApp) {
    let id = format!("metrics-{}", uuid::Uuid::new_v4().simple());
    let missing = format!("missing-{}", uuid::Uuid::new_v4().simple());
    let before = scrape(&app).await;

    app.create_ok("responses", json!({"id": id, "rating": "thumbs_down"}))
        .await;
    let updated = app
        .update("responses", &id, json!({"rating": "thumbs_up"}))
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let not_found = app.get("responses", &missing).await;
    assert_eq!(not_found.status, 404, "{}", not_found.text);
    let unauthorized = app
        .as_caller(&unknown_key(), None)
        .get("responses", &id)
        .await;
    assert_eq!(unauthorized.status, 401, "{}", unauthorized.text);
    let unknown = app
        .send(app.request(reqwest::Method::GET, "/api/v1/no/such/path"))
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    let after = scrape(&app).await;

    for (method, route, status) in [
        ("POST", COLLECTION_ROUTE, "201"),
        ("PUT", ENTRY_ROUTE, "200"),
        ("GET", ENTRY_ROUTE, "404"),
        // A refused key counts under the route it asked for.
        ("GET", ENTRY_ROUTE, "401"),
        // Unknown paths under /api/v1 are one label, not their catch-all.
        ("GET", "unmatched", "404"),
    ] {
        let labels = [("method", method), ("route", route), ("status", status)];
        assert!(
            delta(&before, &after, "http_requests_total", &labels) >= 1.0,
            "http_requests_total{labels:?} did not grow:\n{}",
            after.text
        );
        assert!(
            after
                .matching("http_request_duration_seconds_bucket", &labels)
                .any(
                    |sample| sample.labels.get("le").is_some_and(|le| le == "+Inf")
                        && sample.value >= 1.0
                ),
            "no http_request_duration_seconds_bucket{labels:?}:\n{}",
            after.text
        );
        assert!(
            after.sum("http_request_duration_seconds_count", &labels) >= 1.0,
            "no http_request_duration_seconds_count{labels:?}:\n{}",
            after.text
        );
    }
    assert!(
        delta(
            &before,
            &after,
            "http_requests_total",
            &[("method", "GET"), ("status", "401")]
        ) >= 1.0,
        "http_requests_total{{status=\"401\"}} did not grow:\n{}",
        after.text
    );
    // Route labels are templates (or a fixed marker), never raw paths.
    for sample in after.matching("http_requests_total", &[]) {
        let route = sample.labels.get("route").map_or("", String::as_str);
        assert!(
            !route.contains("/responses") && !route.contains("/completions"),
            "a raw path as route label: {sample:?}"
        );
    }
}

async fn metrics_count_creates_updates_and_auth_failures(app: TestApp) {
    let id = format!("counted-{}", uuid::Uuid::new_v4().simple());
    let before = scrape(&app).await;

    app.create_ok("responses", json!({"id": id, "rating": "thumbs_down"}))
        .await;
    let updated = app
        .update("responses", &id, json!({"rating": "thumbs_up"}))
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let conflict = app.create("responses", json!({"id": id})).await;
    assert_eq!(conflict.status, 409, "{}", conflict.text);
    let unauthorized = app
        .as_caller(&unknown_key(), None)
        .get("responses", &id)
        .await;
    assert_eq!(unauthorized.status, 401, "{}", unauthorized.text);
    let after = scrape(&app).await;

    let created_labels = [("kind", "responses"), ("rating", "thumbs_down")];
    assert!(
        delta(&before, &after, "feedback_created_total", &created_labels) >= 1.0,
        "feedback_created_total{created_labels:?} did not grow:\n{}",
        after.text
    );
    let updated_labels = [("kind", "responses"), ("rating", "thumbs_up")];
    assert!(
        delta(&before, &after, "feedback_updated_total", &updated_labels) >= 1.0,
        "feedback_updated_total{updated_labels:?} did not grow:\n{}",
        after.text
    );
    assert!(
        delta(&before, &after, "auth_failures_total", &[]) >= 1.0,
        "auth_failures_total did not grow:\n{}",
        after.text
    );
}

async fn metrics_never_hold_ids_or_keys_from_requests(app: TestApp) {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("raw-{marker}");
    let end_user = format!("user-{marker}");
    let bad_key = format!("lfk_{marker}badbadbad");

    app.as_caller(&app.api_key, Some(&end_user))
        .create_ok("completions", json!({"id": id, "description": marker}))
        .await;
    for reply in [
        app.get("completions", &id).await,
        app.get("completions", &format!("{id}-missing")).await,
        app.update("completions", &id, json!({"description": null}))
            .await,
        app.as_caller(&bad_key, None).get("completions", &id).await,
        app.send(app.request(Method::GET, &format!("/api/v1/nowhere/{marker}")))
            .await,
        app.send(app.client.get(app.url(&format!("/nowhere/{marker}"))))
            .await,
    ] {
        assert!(reply.status < 500, "{}", reply.text);
    }
    let scrape = scrape(&app).await;

    for secret in [marker.as_str(), app.api_key.as_str(), bad_key.as_str()] {
        assert!(
            !scrape.text.contains(secret),
            "{secret:?} appears in the metrics:\n{}",
            scrape.text
        );
    }
}

async fn metrics_show_the_connection_pools_of_the_store(app: TestApp) {
    app.create_ok("responses", json!({"id": "pool-1"})).await;

    let scrape = scrape(&app).await;

    let pools: &[&str] = match app.backend {
        Backend::Postgres => &["main"],
        Backend::Sqlite => &["writer", "readers"],
    };
    for pool in pools {
        for state in ["idle", "in_use"] {
            assert!(
                scrape.has("db_pool_connections", &[("pool", pool), ("state", state)]),
                "no db_pool_connections{{pool={pool:?},state={state:?}}}:\n{}",
                scrape.text
            );
        }
        let max = scrape.sum("db_pool_max_connections", &[("pool", pool)]);
        assert!(
            max >= 1.0,
            "db_pool_max_connections{{pool={pool:?}}} = {max}:\n{}",
            scrape.text
        );
    }
    for sample in scrape.matching("db_pool_connections", &[]) {
        assert!(
            sample.value >= 0.0 && sample.value.fract() == 0.0,
            "{sample:?}"
        );
    }
}

/// `llm-feedback healthcheck` with these arguments.
async fn healthcheck(args: &[&str]) -> crate::cli::Finished {
    let mut command = llm_feedback();
    command.arg("healthcheck").args(args);
    run(command, COMMAND_TIMEOUT).await
}

async fn healthcheck_exits_0_against_a_running_app(app: TestApp) {
    let addr = app
        .address
        .strip_prefix("http://")
        .expect("an http:// address");
    let port = addr.rsplit(':').next().expect("a port");

    let by_flag = healthcheck(&["--listen-addr", addr]).await;

    by_flag.assert_success();
    // LISTEN_ADDR as the container sets it: 0.0.0.0 is checked on 127.0.0.1.
    let mut command = llm_feedback();
    command
        .arg("healthcheck")
        .env("LISTEN_ADDR", format!("0.0.0.0:{port}"));
    run(command, COMMAND_TIMEOUT).await.assert_success();
}

#[tokio::test]
async fn healthcheck_fails_quickly_against_a_closed_port() {
    let addr = format!("127.0.0.1:{}", free_port());

    let finished = healthcheck(&["--listen-addr", &addr]).await;

    assert!(!finished.status.success(), "{finished:?}");
    assert!(
        finished.elapsed < Duration::from_secs(5),
        "took {:?}",
        finished.elapsed
    );
    assert!(
        finished.stderr.contains(&addr),
        "stderr does not name the address: {}",
        finished.stderr
    );
}

#[tokio::test]
async fn healthcheck_fails_against_a_server_that_is_not_healthy() {
    // A listener that answers every request with 503.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0_u8; 1024];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });

    let finished = healthcheck(&["--listen-addr", &addr]).await;

    server.abort();
    assert!(!finished.status.success(), "{finished:?}");
    assert!(
        finished.elapsed < Duration::from_secs(5),
        "took {:?}",
        finished.elapsed
    );
}

#[test]
fn the_scrape_parser_reads_labels_with_braces_escapes_and_infinite_values() {
    let samples = parse_prometheus(concat!(
        "# TYPE x histogram\n",
        "x_bucket{route=\"/a/{kind}/{id}\",note=\"say \\\"hi\\\"\",le=\"+Inf\"} 3\n",
        "x_count 3\n",
        "\n",
        "y{a=\"1\"} -Inf 1700000000\n",
    ));

    assert_eq!(samples.len(), 3, "{samples:?}");
    assert_eq!(samples[0].name, "x_bucket");
    assert_eq!(samples[0].labels["route"], "/a/{kind}/{id}");
    assert_eq!(samples[0].labels["note"], "say \"hi\"");
    assert_eq!(samples[0].labels["le"], "+Inf");
    assert!((samples[0].value - 3.0).abs() < f64::EPSILON);
    assert!(samples[1].labels.is_empty());
    assert!(samples[2].value.is_infinite() && samples[2].value < 0.0);
}
