//! Webhooks (API.md, "Webhooks (Standard Webhooks)"): endpoint management,
//! bad input, and real deliveries to a receiver on 127.0.0.1 inside the
//! test (signatures, retries on the configured schedule, 410, redirects,
//! timeouts, SSRF refusal at send, erasure of undelivered payloads).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use llm_feedback::config::ServeArgs;
use llm_feedback::store::NewWebhookEndpoint;
use llm_feedback::webhook::RetrySchedule;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::cli::{llm_feedback_on, run};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::safe_writes::{mint, send, send_with};

per_store!(
    endpoints_are_created_listed_and_removed_with_the_documented_shapes,
    webhook_management_is_for_tenant_keys_acting_for_the_whole_tenant,
    bad_urls_and_event_types_are_400,
    the_cli_lists_and_removes_endpoints,
    every_change_is_delivered_signed_per_standard_webhooks,
    a_receiver_failing_twice_sees_the_event_again_on_the_schedule,
    a_410_disables_the_endpoint,
    a_redirect_is_a_failed_attempt,
    a_hanging_receiver_times_out_and_api_requests_stay_fast,
    private_targets_are_refused_at_send_after_resolution,
    erasure_strips_the_entry_from_undelivered_payloads,
    only_subscribed_event_types_are_delivered,
);

const WEBHOOKS: &str = "/api/v1/llm/feedback/webhooks";

/// What a receiver does with one request.
#[derive(Debug, Clone)]
enum Answer {
    Status(u16),
    Redirect(&'static str),
    Hang(Duration),
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Value,
    raw: Vec<u8>,
    at: Instant,
}

type Responder = dyn Fn(&Received, usize) -> Answer + Send + Sync;

/// A webhook receiver on 127.0.0.1: records every request and answers as
/// `respond(request, attempt number of that webhook-id)` says.
#[derive(Clone)]
struct Receiver {
    url: String,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(respond: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static) -> Self {
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let respond: Arc<Responder> = Arc::new(respond);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = Arc::clone(&log);
        let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (log, respond) = (Arc::clone(&shared), Arc::clone(&respond));
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let received = Received {
                    path: uri.path().to_owned(),
                    id: header("webhook-id"),
                    timestamp: header("webhook-timestamp"),
                    signature: header("webhook-signature"),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    raw: body.to_vec(),
                    at: Instant::now(),
                };
                let attempt = {
                    let mut log = log.lock().unwrap();
                    log.push(received.clone());
                    log.iter().filter(|r| r.id == received.id).count()
                };
                let answer: Response = match respond(&received, attempt) {
                    Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
                    Answer::Redirect(to) => (StatusCode::FOUND, [("location", to)]).into_response(),
                    Answer::Hang(wait) => {
                        tokio::time::sleep(wait).await;
                        StatusCode::OK.into_response()
                    }
                };
                answer
            }
        };
        let router = axum::Router::new().fallback(handler);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { url, log }
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (at most `within`) until `done(received)`; the requests then.
    async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not get what was expected within {within:?}: {received:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Standard Webhooks v1, verified independently of the service's code.
fn verify(secret: &str, received: &Received) {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", received.id, received.timestamp).as_bytes());
    mac.update(&received.raw);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert!(
        received.signature.split(' ').any(|s| s == expected),
        "signature {:?}, expected {expected:?}",
        received.signature
    );
    let timestamp: i64 = received.timestamp.parse().expect("unix seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    assert!(received.id.starts_with("msg_"), "{}", received.id);
}

fn is_timestamp(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(crate::helpers::is_utc_millisecond_timestamp)
}

fn private_allowed(schedule: &'static str) -> impl FnOnce(&mut ServeArgs) {
    move |serve: &mut ServeArgs| {
        serve.webhooks.webhook_allow_private_targets = true;
        serve.webhooks.webhook_retry_schedule = RetrySchedule::parse(schedule).unwrap();
        serve.webhooks.webhook_timeout_ms = 1_000;
    }
}

async fn register(app: &TestApp, body: Value) -> Value {
    let reply = send(app, Method::POST, WEBHOOKS, &[], Some(&body)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.body
}

async fn deliveries(app: &TestApp, endpoint: &str) -> Vec<Value> {
    let reply = send(
        app,
        Method::GET,
        &format!("{WEBHOOKS}/{endpoint}/deliveries"),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["object"], "list");
    reply.body["data"].as_array().unwrap().clone()
}

/// Waits until the endpoint's newest delivery satisfies `done`.
async fn wait_for_delivery(app: &TestApp, endpoint: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = deliveries(app, endpoint).await;
        if let Some(first) = list.first().filter(|d| done(d)) {
            return first.clone();
        }
        assert!(Instant::now() < deadline, "deliveries: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn endpoints_are_created_listed_and_removed_with_the_documented_shapes(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("1s")).await;

    let created = register(&app, json!({"url": "https://hooks.example.com/feedback"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "events", "id", "secret", "url"]);
    assert!(id.starts_with("wh_"), "{id}");
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["url"], "https://hooks.example.com/feedback");
    assert_eq!(
        created["events"],
        json!(["feedback.created", "feedback.updated", "feedback.deleted"])
    );
    assert!(is_timestamp(&created["created_at"]));
    let second = register(
        &app,
        json!({"url": "http://127.0.0.1:9/x", "events": ["feedback.deleted"]}),
    )
    .await;
    assert_eq!(second["events"], json!(["feedback.deleted"]));

    let list = send(&app, Method::GET, WEBHOOKS, &[], None).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(
        list.body,
        json!({"object": "list", "data": [
            {"id": id, "url": "https://hooks.example.com/feedback", "events": created["events"], "created_at": created["created_at"]},
            {"id": second["id"], "url": "http://127.0.0.1:9/x", "events": ["feedback.deleted"], "created_at": second["created_at"]},
        ]})
    );
    assert!(!list.text.contains("whsec_"));
    assert_eq!(deliveries(&app, &id).await, Vec::<Value>::new());

    // Another tenant sees none of them.
    let other = app.new_key("tenant-b").await;
    let theirs = send_with(&app, &other, Method::GET, WEBHOOKS, &[], None).await;
    assert_eq!(theirs.body["data"], json!([]));
    for (method, path) in [
        (Method::DELETE, format!("{WEBHOOKS}/{id}")),
        (Method::GET, format!("{WEBHOOKS}/{id}/deliveries")),
    ] {
        let reply = send_with(&app, &other, method, &path, &[], None).await;
        assert_eq!(reply.status, 404, "{}", reply.text);
        assert_eq!(reply.error_code(), "not_found");
    }

    let removed = send(&app, Method::DELETE, &format!("{WEBHOOKS}/{id}"), &[], None).await;
    assert_eq!(removed.status, 204, "{}", removed.text);
    assert!(removed.text.is_empty());
    let again = send(&app, Method::DELETE, &format!("{WEBHOOKS}/{id}"), &[], None).await;
    assert_eq!(again.status, 404);
    let gone = send(
        &app,
        Method::GET,
        &format!("{WEBHOOKS}/{id}/deliveries"),
        &[],
        None,
    )
    .await;
    assert_eq!(gone.status, 404);
    let list = send(&app, Method::GET, WEBHOOKS, &[], None).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
}

async fn webhook_management_is_for_tenant_keys_acting_for_the_whole_tenant(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("1s")).await;
    let token = mint(&app, "responses", "resp-1", None).await;
    let body = json!({"url": "https://hooks.example.com/x"});
    for (method, path, body) in [
        (Method::POST, WEBHOOKS.to_owned(), Some(&body)),
        (Method::GET, WEBHOOKS.to_owned(), None),
        (Method::DELETE, format!("{WEBHOOKS}/wh_x"), None),
        (Method::GET, format!("{WEBHOOKS}/wh_x/deliveries"), None),
    ] {
        let with_token = send_with(&app, &token, method.clone(), &path, &[], body).await;
        assert_eq!(
            with_token.status, 403,
            "{method} {path}: {}",
            with_token.text
        );
        assert_eq!(with_token.error_code(), "forbidden");
        let on_behalf = send(
            &app,
            method.clone(),
            &path,
            &[("X-On-Behalf-Of", "user-1")],
            // Even a bad body: 403 comes first.
            body.map(|_| &Value::Null),
        )
        .await;
        assert_eq!(on_behalf.status, 403, "{method} {path}: {}", on_behalf.text);
        let unauthenticated = app
            .send(app.client.request(method.clone(), app.url(&path)))
            .await;
        assert_eq!(unauthenticated.status, 401);
    }
}

async fn bad_urls_and_event_types_are_400(backend: Backend) {
    // Default settings: private targets refused, https only.
    let app = spawn_app(backend).await;
    let long = format!("https://hooks.example.com/{}", "a".repeat(2030));
    for (body, field) in [
        (json!({"url": "http://hooks.example.com/x"}), "url"),
        (json!({"url": "ftp://hooks.example.com/x"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": long}), "url"),
        (json!({"url": "https://127.0.0.1/x"}), "url"),
        (json!({"url": "https://10.1.2.3/x"}), "url"),
        (json!({"url": "https://172.16.0.1/x"}), "url"),
        (json!({"url": "https://192.168.0.1/x"}), "url"),
        (
            json!({"url": "https://169.254.169.254/latest/meta-data"}),
            "url",
        ),
        (json!({"url": "https://100.64.0.1/x"}), "url"),
        (json!({"url": "https://0.0.0.0/x"}), "url"),
        (json!({"url": "https://[::1]/x"}), "url"),
        (json!({"url": "https://[fe80::1]/x"}), "url"),
        (json!({"url": "https://[fd00:ec2::254]/x"}), "url"),
        (json!({"url": "https://[::ffff:127.0.0.1]/x"}), "url"),
        (json!({"url": "https://[::]/x"}), "url"),
        (json!({"url": "https://2130706433/x"}), "url"),
        // Resolves (/etc/hosts) to loopback.
        (json!({"url": "https://localhost:8443/x"}), "url"),
        (json!({}), "url"),
        (json!({"url": 7}), "url"),
        (
            json!({"url": "https://hooks.example.com/x", "events": ["feedback.exploded"]}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "events": "feedback.created"}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "secret": "whsec_mine"}),
            "secret",
        ),
    ] {
        let reply = send(&app, Method::POST, WEBHOOKS, &[], Some(&body)).await;
        crate::helpers::assert_error(&reply, 400, "invalid_request", &body.to_string());
        assert!(reply.text.contains(field), "{body}: {}", reply.text);
    }
    let list = send(&app, Method::GET, WEBHOOKS, &[], None).await;
    assert_eq!(list.body["data"], json!([]));
}

async fn the_cli_lists_and_removes_endpoints(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("1s")).await;
    let created = register(&app, json!({"url": "https://hooks.example.com/cli"})).await;
    let id = created["id"].as_str().unwrap();

    let mut list = llm_feedback_on(&app.database_url);
    list.args(["webhooks", "list", "--json", "--tenant", "tenant-a"]);
    let listed = run(list, COMMAND_TIMEOUT).await;
    listed.assert_success();
    let line: Value = serde_json::from_str(listed.stdout.trim()).unwrap();
    assert_eq!(line["id"], id);
    assert_eq!(line["tenant"], "tenant-a");
    assert_eq!(line["url"], "https://hooks.example.com/cli");
    assert_eq!(line["disabled_at"], Value::Null);
    assert!(!listed.stdout.contains("whsec_"));

    let mut remove = llm_feedback_on(&app.database_url);
    remove.args(["webhooks", "remove", id]);
    run(remove, COMMAND_TIMEOUT).await.assert_success();
    let mut again = llm_feedback_on(&app.database_url);
    again.args(["webhooks", "remove", id]);
    assert!(!run(again, COMMAND_TIMEOUT).await.status.success());
    let list = send(&app, Method::GET, WEBHOOKS, &[], None).await;
    assert_eq!(list.body["data"], json!([]));
}

async fn every_change_is_delivered_signed_per_standard_webhooks(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("1s")).await;
    let hook = Receiver::start(|_, _| Answer::Status(204)).await;
    let endpoint = register(&app, json!({"url": hook.url})).await;
    let secret = endpoint["secret"].as_str().unwrap();

    let user = app.as_caller(&app.api_key, Some("user-1"));
    let entry = user
        .create_ok("responses", json!({"id": "resp-1", "rating": "thumbs_up"}))
        .await;
    let updated = user
        .update("responses", "resp-1", json!({"description": "better"}))
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let updated = updated.body;
    let deleted = send(
        &app,
        Method::DELETE,
        &crate::safe_writes::entry_path("responses", "resp-1"),
        &[],
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);

    let received = hook
        .wait_for(Duration::from_secs(15), |r| r.len() >= 3)
        .await;
    for request in &received {
        verify(secret, request);
        assert_eq!(request.path, "/hook");
    }
    // In change order: a create, its update and its delete can share a
    // millisecond (`timestamp`), and deliveries of different events may
    // arrive in any order.
    let order = ["feedback.created", "feedback.updated", "feedback.deleted"];
    let mut by_type: Vec<&Value> = received.iter().map(|r| &r.body).collect();
    by_type.sort_by_key(|body| order.iter().position(|t| body["type"] == *t));
    assert_eq!(by_type[0]["type"], "feedback.created");
    assert_eq!(
        by_type[0]["data"],
        json!({"kind": "responses", "id": "resp-1", "end_user": "user-1", "entry": entry})
    );
    assert_eq!(by_type[1]["type"], "feedback.updated");
    assert_eq!(by_type[1]["data"]["entry"], updated);
    assert_eq!(by_type[2]["type"], "feedback.deleted");
    assert_eq!(
        by_type[2]["data"],
        json!({"kind": "responses", "id": "resp-1", "end_user": "user-1"})
    );
    assert!(is_timestamp(&by_type[0]["timestamp"]));
    let ids: std::collections::HashSet<&str> = received.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "one event id per change");

    let endpoint_id = endpoint["id"].as_str().unwrap();
    let delivered = wait_for_delivery(&app, endpoint_id, |d| d["status"] == "delivered").await;
    let list = deliveries(&app, endpoint_id).await;
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["type"], "feedback.deleted", "newest first");
    assert_eq!(
        delivered,
        json!({"event_id": delivered["event_id"], "type": "feedback.deleted", "status": "delivered",
               "attempts": 1, "last_status_code": 204})
    );
    assert!(received.iter().any(|r| r.id == delivered["event_id"]));

    let metrics = app.send(app.client.get(app.url("/metrics"))).await.text;
    assert!(
        metrics.contains("webhook_deliveries_total{outcome=\"delivered\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("webhook_delivery_seconds_bucket"),
        "{metrics}"
    );
}

async fn a_receiver_failing_twice_sees_the_event_again_on_the_schedule(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("1s,2s,1s")).await;
    let hook = Receiver::start(|_, attempt| {
        if attempt <= 2 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let endpoint = register(&app, json!({"url": hook.url})).await;
    let secret = endpoint["secret"].as_str().unwrap();

    app.create_ok("completions", json!({"id": "c-1"})).await;

    let received = hook
        .wait_for(Duration::from_secs(20), |r| r.len() >= 3)
        .await;
    assert_eq!(received.len(), 3, "{received:#?}");
    assert!(
        received.iter().all(|r| r.id == received[0].id),
        "the same webhook-id"
    );
    for request in &received {
        verify(secret, request);
        assert_eq!(request.raw, received[0].raw, "the same body");
    }
    let first_wait = received[1].at - received[0].at;
    let second_wait = received[2].at - received[1].at;
    assert!(first_wait >= Duration::from_millis(900), "{first_wait:?}");
    assert!(
        second_wait >= Duration::from_millis(1900),
        "{second_wait:?}"
    );
    assert!(second_wait < Duration::from_secs(6), "{second_wait:?}");
    let delivered = wait_for_delivery(&app, endpoint["id"].as_str().unwrap(), |d| {
        d["status"] == "delivered"
    })
    .await;
    assert_eq!(delivered["attempts"], 3);
    assert_eq!(delivered["last_status_code"], 200);
}

async fn a_410_disables_the_endpoint(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("1s")).await;
    let hook = Receiver::start(|_, _| Answer::Status(410)).await;
    let endpoint = register(&app, json!({"url": hook.url})).await;
    let id = endpoint["id"].as_str().unwrap();

    app.create_ok("completions", json!({"id": "c-1"})).await;
    let failed = wait_for_delivery(&app, id, |d| d["status"] == "failed").await;
    assert_eq!(failed["last_status_code"], 410);
    assert_eq!(failed["attempts"], 1);

    let list = send(&app, Method::GET, WEBHOOKS, &[], None).await;
    assert!(
        is_timestamp(&list.body["data"][0]["disabled_at"]),
        "{}",
        list.text
    );
    app.create_ok("completions", json!({"id": "c-2"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.received().len(), 1, "nothing more is sent");
    assert_eq!(
        deliveries(&app, id).await.len(),
        1,
        "nothing more is enqueued"
    );
}

async fn a_redirect_is_a_failed_attempt(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("1s")).await;
    let hook = Receiver::start(|request, _| {
        if request.path == "/hook" {
            Answer::Redirect("/elsewhere")
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let endpoint = register(&app, json!({"url": hook.url})).await;

    app.create_ok("completions", json!({"id": "c-1"})).await;

    let failed = wait_for_delivery(&app, endpoint["id"].as_str().unwrap(), |d| {
        d["status"] == "failed"
    })
    .await;
    assert_eq!(failed["attempts"], 2, "the first attempt and one retry");
    assert_eq!(failed["last_status_code"], 302);
    assert!(
        failed["last_error"].as_str().unwrap().contains("redirect"),
        "{failed}"
    );
    assert!(failed.get("next_attempt_at").is_none());
    let received = hook.received();
    assert!(received.iter().all(|r| r.path == "/hook"), "{received:#?}");
}

async fn a_hanging_receiver_times_out_and_api_requests_stay_fast(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("30s")).await;
    let hook = Receiver::start(|_, _| Answer::Hang(Duration::from_secs(5))).await;
    let endpoint = register(&app, json!({"url": hook.url})).await;

    for n in 0..20 {
        let started = Instant::now();
        app.create_ok("completions", json!({"id": format!("c-{n}")}))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    let retried = wait_for_delivery(&app, endpoint["id"].as_str().unwrap(), |d| {
        d["attempts"] == 1 && d["status"] == "pending"
    })
    .await;
    assert!(
        retried["last_error"]
            .as_str()
            .unwrap()
            .contains("no answer within 1000 ms"),
        "{retried}"
    );
    assert!(retried.get("last_status_code").is_none());
    assert!(is_timestamp(&retried["next_attempt_at"]));
}

async fn private_targets_are_refused_at_send_after_resolution(backend: Backend) {
    // Private targets refused (the default); the endpoints are written
    // straight into the store, as if DNS had changed since creation.
    let app = spawn_app_with(backend, |serve| {
        serve.webhooks.webhook_retry_schedule = RetrySchedule::parse("").unwrap();
    })
    .await;
    let hook = Receiver::start(|_, _| Answer::Status(200)).await;
    let port = hook
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let tenant = llm_feedback::feedback::TenantId::parse("tenant-a".to_owned()).unwrap();
    for (id, url) in [
        ("wh_by_name", format!("https://localhost:{port}/hook")),
        ("wh_literal", format!("https://127.0.0.1:{port}/hook")),
    ] {
        app.store
            .insert_webhook_endpoint(&NewWebhookEndpoint {
                id: id.to_owned(),
                tenant: tenant.clone(),
                url,
                events: "feedback.created".to_owned(),
                secret: llm_feedback::webhook::EndpointSecret::generate()
                    .expose()
                    .to_owned(),
            })
            .await
            .unwrap();
    }

    app.create_ok("completions", json!({"id": "c-1"})).await;

    for id in ["wh_by_name", "wh_literal"] {
        let failed = wait_for_delivery(&app, id, |d| d["status"] == "failed").await;
        assert!(
            failed["last_error"]
                .as_str()
                .unwrap()
                .contains("refused address"),
            "{id}: {failed}"
        );
    }
    assert!(hook.received().is_empty());
}

async fn erasure_strips_the_entry_from_undelivered_payloads(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("2s")).await;
    let hook = Receiver::start(|_, attempt| {
        if attempt == 1 {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    register(
        &app,
        json!({"url": hook.url, "events": ["feedback.created"]}),
    )
    .await;
    let user = app.as_caller(&app.api_key, Some("user-9"));
    user.create_ok(
        "responses",
        json!({"id": "resp-9", "description": "my private words"}),
    )
    .await;
    let first = hook
        .wait_for(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert!(String::from_utf8_lossy(&first[0].raw).contains("my private words"));

    let erased = send(
        &app,
        Method::DELETE,
        "/api/v1/llm/feedback/end-users/user-9",
        &[],
        None,
    )
    .await;
    assert_eq!(erased.status, 200, "{}", erased.text);

    let received = hook
        .wait_for(Duration::from_secs(10), |r| r.len() >= 2)
        .await;
    let retry = String::from_utf8_lossy(&received[1].raw).into_owned();
    assert!(!retry.contains("my private words"), "{retry}");
    assert_eq!(received[1].body["type"], "feedback.created");
    assert!(received[1].body["data"].get("entry").is_none(), "{retry}");
}

async fn only_subscribed_event_types_are_delivered(backend: Backend) {
    let app = spawn_app_with(backend, private_allowed("1s")).await;
    let hook = Receiver::start(|_, _| Answer::Status(200)).await;
    register(
        &app,
        json!({"url": hook.url, "events": ["feedback.deleted"]}),
    )
    .await;
    let other_tenant = app.new_key("tenant-b").await;

    app.create_ok("completions", json!({"id": "c-1"})).await;
    app.update_ok("completions", "c-1", json!({"rating": "thumbs_down"}))
        .await;
    let other = app.as_caller(&other_tenant, None);
    other.create_ok("completions", json!({"id": "c-2"})).await;
    let deleted = send(
        &app,
        Method::DELETE,
        &crate::safe_writes::entry_path("completions", "c-1"),
        &[],
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);

    let received = hook
        .wait_for(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received_later = hook.received();
    assert_eq!(received_later.len(), 1, "{received_later:#?}");
    assert_eq!(received[0].body["type"], "feedback.deleted");
    assert_eq!(received[0].body["data"]["id"], "c-1");
}
