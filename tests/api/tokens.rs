//! Feedback tokens (API.md, "Feedback tokens and the browser widget"):
//! minting, what a token may and may not do, and every way a token is refused.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use llm_feedback::auth::token::{TokenClaims, TokenSigner};
use llm_feedback::feedback::{EndUserId, FeedbackKey, OutputId, OutputKind, TenantId};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, Reply, TestApp, assert_error, assert_invalid_fields, is_utc_millisecond_timestamp,
    spawn_app_with, timestamp,
};

both_stores!(
    a_key_mints_a_token_for_one_output_with_or_without_an_end_user,
    bad_mint_bodies_are_400_with_details,
    a_token_creates_updates_and_gets_its_output_as_its_end_user,
    a_token_is_403_for_anything_but_its_own_output,
    a_token_may_address_the_entry_named_batch,
    x_on_behalf_of_contradicting_the_token_is_403,
    expired_forged_truncated_and_resigned_tokens_are_401,
    revoking_the_minting_key_revokes_its_tokens_within_5_seconds,
    a_token_of_a_key_created_a_moment_ago_works,
    the_openapi_document_says_which_operations_take_a_token,
);

per_store!(each_token_has_its_own_rate_limit);

const TOKENS: &str = "/api/v1/llm/feedback/tokens";

/// `POST /tokens` with `key`, optionally for `end_user`.
async fn mint_as(app: &TestApp, key: &str, end_user: Option<&str>, body: &Value) -> Reply {
    let mut request = app.client.post(app.url(TOKENS)).bearer_auth(key).json(body);
    if let Some(user) = end_user {
        request = request.header("X-On-Behalf-Of", user);
    }
    app.send(request).await
}

/// A token of the app's key for `(kind, id)`, optionally for `end_user`.
async fn mint(app: &TestApp, kind: &str, id: &str, end_user: Option<&str>) -> String {
    let reply = mint_as(
        app,
        &app.api_key,
        end_user,
        &json!({"kind": kind, "id": id}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.body["token"].as_str().expect("a token").to_owned()
}

/// A token signed with the deployment's secret (read from the database, as
/// every replica does) for claims a client could not get minted, such as an
/// expiry in the past.
async fn sign_directly(app: &TestApp, claims: &TokenClaims) -> String {
    let signer = TokenSigner::load(app.store.as_ref())
        .await
        .expect("the signing secret");
    signer.sign(claims)
}

/// The status of `GET /responses/resp-1` with `credential` (a token or a key).
async fn get_status(app: &TestApp, credential: &str) -> u16 {
    app.as_caller(credential, None)
        .get("responses", "resp-1")
        .await
        .status
}

/// A token for `responses/resp-1` minted by `key` (any key of the app).
async fn mint_by(app: &TestApp, key: &str) -> String {
    let body = json!({"kind": "responses", "id": "resp-1"});
    let reply = mint_as(app, key, None, &body).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.body["token"].as_str().expect("a token").to_owned()
}

fn claims(app: &TestApp, id: &str, end_user: Option<&str>, ttl: TimeDelta) -> TokenClaims {
    TokenClaims {
        key_id: TestApp::key_id(&app.api_key),
        tenant: TenantId::parse("tenant-a").unwrap(),
        output: FeedbackKey {
            kind: OutputKind::Responses,
            id: OutputId::parse(id).unwrap(),
        },
        end_user: end_user.map(|user| EndUserId::parse(user).unwrap()),
        expires_at: Utc::now() + ttl,
    }
}

/// The value of `auth_failures_total{reason}` on this process.
async fn auth_failures(app: &TestApp, reason: &str) -> u64 {
    let metrics = app.send(app.client.get(app.url("/metrics"))).await;
    let prefix = format!("auth_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .text
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

async fn a_key_mints_a_token_for_one_output_with_or_without_an_end_user(app: TestApp) {
    let before = Utc::now();
    let reply = mint_as(
        &app,
        &app.api_key,
        Some("user-7"),
        &json!({"kind": "responses", "id": "resp-1", "ttl_seconds": 120}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let body = &reply.body;
    assert!(
        body["token"].as_str().unwrap().starts_with("lft_"),
        "{body}"
    );
    assert_eq!(body["kind"], "responses");
    assert_eq!(body["id"], "resp-1");
    assert_eq!(body["end_user"], "user-7");
    let expires_at = body["expires_at"].as_str().unwrap();
    assert!(is_utc_millisecond_timestamp(expires_at), "{expires_at}");
    let lifetime = timestamp(&body["expires_at"]) - before;
    assert!(
        (TimeDelta::seconds(118)..=TimeDelta::seconds(121)).contains(&lifetime),
        "{lifetime}"
    );
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["end_user", "expires_at", "id", "kind", "token"]);

    // Without an end user, and with the default lifetime of an hour.
    let reply = mint_as(
        &app,
        &app.api_key,
        None,
        &json!({"kind": "completions", "id": "chatcmpl-1"}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(reply.body.get("end_user").is_none(), "{}", reply.text);
    let lifetime = timestamp(&reply.body["expires_at"]) - before;
    assert!(
        (TimeDelta::seconds(3598)..=TimeDelta::seconds(3601)).contains(&lifetime),
        "{lifetime}"
    );
    // Both bounds are accepted, also written as JSON Schema integers with a
    // fraction of zero.
    for ttl in [json!(60), json!(604_800), json!(60.0)] {
        let reply = mint_as(
            &app,
            &app.api_key,
            None,
            &json!({"kind": "responses", "id": "resp-1", "ttl_seconds": ttl}),
        )
        .await;
        assert_eq!(reply.status, 201, "ttl {ttl}: {}", reply.text);
    }
    // Without a credential: 401, as every API route.
    let reply = app
        .send(
            app.client
                .post(app.url(TOKENS))
                .json(&json!({"kind": "responses", "id": "resp-1"})),
        )
        .await;
    assert_error(&reply, 401, "unauthorized", "minting without a key");
}

async fn bad_mint_bodies_are_400_with_details(app: TestApp) {
    let cases = [
        (json!({"kind": "threads", "id": "x"}), vec!["kind"]),
        (json!({"id": "x"}), vec!["kind"]),
        (json!({"kind": "responses"}), vec!["id"]),
        (json!({"kind": "responses", "id": " padded"}), vec!["id"]),
        (json!({"kind": "responses", "id": ""}), vec!["id"]),
        (
            json!({"kind": "responses", "id": "x", "ttl_seconds": 59}),
            vec!["ttl_seconds"],
        ),
        (
            json!({"kind": "responses", "id": "x", "ttl_seconds": 604_801}),
            vec!["ttl_seconds"],
        ),
        (
            json!({"kind": "responses", "id": "x", "ttl_seconds": 60.5}),
            vec!["ttl_seconds"],
        ),
        (
            json!({"kind": "responses", "id": "x", "ttl_seconds": "60"}),
            vec!["ttl_seconds"],
        ),
        (
            json!({"kind": "nope", "id": "", "ttl_seconds": 0}),
            vec!["kind", "id", "ttl_seconds"],
        ),
    ];
    for (body, fields) in cases {
        let reply = mint_as(&app, &app.api_key, None, &body).await;
        assert_invalid_fields(&reply, &fields);
    }
    let reply = mint_as(
        &app,
        &app.api_key,
        None,
        &json!({"kind": "responses", "id": "x", "scope": "all"}),
    )
    .await;
    assert_error(&reply, 400, "invalid_request", "an unknown field");
    let reply = mint_as(
        &app,
        &app.api_key,
        Some(&"u".repeat(257)),
        &json!({"kind": "responses", "id": "x"}),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
}

async fn a_token_creates_updates_and_gets_its_output_as_its_end_user(app: TestApp) {
    let token = mint(&app, "responses", "resp-1", Some("user-7")).await;
    let browser = app.as_caller(&token, None);

    let created = browser
        .create_ok("responses", json!({"id": "resp-1", "rating": "thumbs_up"}))
        .await;
    assert_eq!(created["rating"], "thumbs_up");
    let updated = browser
        .update(
            "responses",
            "resp-1",
            json!({"rating": "thumbs_down", "description": "meh"}),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.body["rating"], "thumbs_down");
    let got = browser.get("responses", "resp-1").await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body["description"], "meh");

    // The entry records the token's end user: the backend sees it for that
    // user and no other.
    let for_user = app.as_caller(&app.api_key, Some("user-7"));
    assert_eq!(for_user.get("responses", "resp-1").await.status, 200);
    let for_other = app.as_caller(&app.api_key, Some("user-8"));
    assert_eq!(for_other.get("responses", "resp-1").await.status, 404);

    // A tenant-wide token creates a tenant-wide entry.
    let token = mint(&app, "completions", "chatcmpl-1", None).await;
    app.as_caller(&token, None)
        .create_ok("completions", json!({"id": "chatcmpl-1"}))
        .await;
    let for_user = app.as_caller(&app.api_key, Some("user-7"));
    assert_eq!(for_user.get("completions", "chatcmpl-1").await.status, 404);
    assert_eq!(app.get("completions", "chatcmpl-1").await.status, 200);
}

async fn a_token_is_403_for_anything_but_its_own_output(app: TestApp) {
    app.create_ok("responses", json!({"id": "resp-2", "rating": "thumbs_up"}))
        .await;
    app.create_ok("completions", json!({"id": "resp-1"})).await;
    let token = mint(&app, "responses", "resp-1", None).await;
    let browser = app.as_caller(&token, None);

    // Another id: create, update, get.
    let reply = browser
        .create("responses", json!({"id": "resp-3", "rating": "thumbs_up"}))
        .await;
    assert_error(&reply, 403, "forbidden", "create of another id");
    assert_eq!(
        app.get("responses", "resp-3").await.status,
        404,
        "nothing created"
    );
    let reply = browser
        .update("responses", "resp-2", json!({"rating": "thumbs_down"}))
        .await;
    assert_error(&reply, 403, "forbidden", "update of another id");
    assert_eq!(
        app.get("responses", "resp-2").await.body["rating"],
        "thumbs_up"
    );
    let reply = browser.get("responses", "resp-2").await;
    assert_error(&reply, 403, "forbidden", "get of another id");

    // The same id under the other kind.
    let reply = browser.create("completions", json!({"id": "resp-1"})).await;
    assert_error(&reply, 403, "forbidden", "create under another kind");
    let reply = browser
        .update("completions", "resp-1", json!({"rating": "thumbs_down"}))
        .await;
    assert_error(&reply, 403, "forbidden", "update under another kind");
    assert!(
        app.get("completions", "resp-1")
            .await
            .body
            .get("rating")
            .is_none()
    );
    let reply = browser.get("completions", "resp-1").await;
    assert_error(&reply, 403, "forbidden", "get under another kind");

    // Every other operation.
    let others = [
        (
            Method::GET,
            "/api/v1/llm/feedback/responses".to_owned(),
            None,
        ),
        (
            Method::POST,
            "/api/v1/llm/feedback/responses/batch".to_owned(),
            Some(json!({"ids": ["resp-1"]})),
        ),
        (
            Method::GET,
            "/api/v1/llm/feedback/export/responses".to_owned(),
            None,
        ),
        (
            Method::POST,
            TOKENS.to_owned(),
            Some(json!({"kind": "responses", "id": "resp-1"})),
        ),
    ];
    for (method, path, body) in others {
        let reply = app
            .send_as(&token, method.clone(), &path, body.as_ref())
            .await;
        assert_error(&reply, 403, "forbidden", &format!("{method} {path}"));
    }

    // Its own output still works.
    browser
        .create_ok("responses", json!({"id": "resp-1", "rating": "thumbs_up"}))
        .await;
}

async fn a_token_may_address_the_entry_named_batch(app: TestApp) {
    let token = mint(&app, "responses", "batch", None).await;
    let browser = app.as_caller(&token, None);
    browser.create_ok("responses", json!({"id": "batch"})).await;
    let reply = browser
        .update("responses", "batch", json!({"rating": "thumbs_up"}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(browser.get("responses", "batch").await.status, 200);
    // POST there is batch get: not for a token.
    let reply = app
        .send_as(
            &token,
            Method::POST,
            "/api/v1/llm/feedback/responses/batch",
            Some(&json!({"ids": ["batch"]})),
        )
        .await;
    assert_error(&reply, 403, "forbidden", "batch get");

    // A token for another id may not touch the entry named batch.
    let other = mint(&app, "responses", "resp-1", None).await;
    let reply = app.as_caller(&other, None).get("responses", "batch").await;
    assert_error(&reply, 403, "forbidden", "get of the entry named batch");
    let reply = app
        .as_caller(&other, None)
        .update("responses", "batch", json!({"rating": "thumbs_down"}))
        .await;
    assert_error(&reply, 403, "forbidden", "update of the entry named batch");
}

async fn x_on_behalf_of_contradicting_the_token_is_403(app: TestApp) {
    let token = mint(&app, "responses", "resp-1", Some("user-7")).await;
    let reply = app
        .as_caller(&token, Some("user-8"))
        .create("responses", json!({"id": "resp-1"}))
        .await;
    assert_error(&reply, 403, "forbidden", "another end user");
    assert_eq!(
        app.get("responses", "resp-1").await.status,
        404,
        "nothing created"
    );
    // The same end user is fine.
    app.as_caller(&token, Some("user-7"))
        .create_ok("responses", json!({"id": "resp-1"}))
        .await;

    // A tenant-wide token may not pick an end user either.
    let token = mint(&app, "responses", "resp-2", None).await;
    let reply = app
        .as_caller(&token, Some("user-7"))
        .create("responses", json!({"id": "resp-2"}))
        .await;
    assert_error(
        &reply,
        403,
        "forbidden",
        "an end user for a tenant-wide token",
    );
}

async fn expired_forged_truncated_and_resigned_tokens_are_401(app: TestApp) {
    let valid = mint(&app, "responses", "resp-1", None).await;
    let expired = sign_directly(&app, &claims(&app, "resp-1", None, TimeDelta::seconds(-1))).await;
    let resigned = TokenSigner::new(b"a secret of another deployment!!").sign(&claims(
        &app,
        "resp-1",
        None,
        TimeDelta::hours(1),
    ));
    let (payload, mac) = valid.split_once('.').unwrap();
    // Another output's payload under this token's MAC.
    let (other_payload, _) = mint(&app, "responses", "resp-2", None)
        .await
        .split_once('.')
        .map(|(p, m)| (p.to_owned(), m.to_owned()))
        .unwrap();
    let forged = format!("{other_payload}.{mac}");
    let truncated = valid[..valid.len() - 4].to_owned();
    let cases = [
        ("token_expired", expired),
        ("token_bad_signature", resigned),
        ("token_bad_signature", forged),
        ("token_bad_signature", truncated),
        ("token_malformed", payload.to_owned()),
        ("token_malformed", "lft_".to_owned()),
        ("token_bad_signature", format!("{valid}.x")),
    ];
    for (reason, token) in cases {
        let before = auth_failures(&app, reason).await;
        let reply = app.as_caller(&token, None).get("responses", "resp-1").await;
        assert_error(&reply, 401, "unauthorized", &format!("{reason}: {token}"));
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{token}");
        assert!(
            auth_failures(&app, reason).await > before,
            "{reason} is counted"
        );
    }
    // The valid one is fine.
    assert_eq!(get_status(&app, &valid).await, 404);
}

async fn revoking_the_minting_key_revokes_its_tokens_within_5_seconds(app: TestApp) {
    let key = app.new_key("tenant-a").await;
    let token = mint_by(&app, &key).await;
    let other = mint(&app, "responses", "resp-1", None).await;
    assert_eq!(get_status(&app, &token).await, 404);

    let revoked_at = Instant::now();
    app.store
        .revoke_api_key(&TestApp::key_id(&key))
        .await
        .expect("revoke");
    loop {
        let reply = app.as_caller(&token, None).get("responses", "resp-1").await;
        if reply.status == 401 {
            assert_error(&reply, 401, "unauthorized", "a revoked key's token");
            break;
        }
        assert_eq!(reply.status, 404, "{}", reply.text);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still accepted 5 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another key's tokens keep working.
    assert_eq!(get_status(&app, &other).await, 404);
}

async fn a_token_of_a_key_created_a_moment_ago_works(app: TestApp) {
    // The key is not in the in-memory key set yet: its token is checked
    // against the database once.
    let key = app.new_key("tenant-b").await;
    let token = mint_by(&app, &key).await;
    app.as_caller(&token, None)
        .create_ok("responses", json!({"id": "resp-1"}))
        .await;
    // In the minting key's tenant, not the app key's.
    assert_eq!(app.get("responses", "resp-1").await.status, 404);
    assert_eq!(get_status(&app, &key).await, 200);
}

async fn each_token_has_its_own_rate_limit(backend: Backend) {
    let app = spawn_app_with(backend, |serve| serve.token_rate_limit_per_minute = 3).await;
    let token = mint(&app, "responses", "resp-1", None).await;
    // Minted alike, a second apart or not: another token.
    let other = mint(&app, "responses", "resp-1", None).await;
    assert_ne!(token, other);
    for _ in 0..3 {
        let reply = app.as_caller(&token, None).get("responses", "resp-1").await;
        assert_eq!(reply.status, 404, "{}", reply.text);
    }
    let reply = app.as_caller(&token, None).get("responses", "resp-1").await;
    assert_error(
        &reply,
        429,
        "rate_limited",
        "the fourth request in a minute",
    );
    let retry_after: u64 = reply
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    // Another token, and the minting key, have their own budgets.
    assert_eq!(get_status(&app, &other).await, 404);
    for _ in 0..5 {
        assert_eq!(app.get("responses", "resp-1").await.status, 404);
    }
}

async fn the_openapi_document_says_which_operations_take_a_token(app: TestApp) {
    let document = app
        .send(app.client.get(app.url("/openapi.json")))
        .await
        .body;
    let scheme = &document["components"]["securitySchemes"]["feedback_token"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    let mut with_token = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let security = operation.get("security").unwrap_or(&document["security"]);
            if security
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.get("feedback_token").is_some())
            {
                assert_eq!(
                    security,
                    &json!([{"bearer": []}, {"feedback_token": []}]),
                    "{method} {path}"
                );
                with_token.push(format!("{method} {path}"));
            }
        }
    }
    with_token.sort();
    assert_eq!(
        with_token,
        [
            "get /api/v1/llm/feedback/{kind}/batch",
            "get /api/v1/llm/feedback/{kind}/{id}",
            "post /api/v1/llm/feedback/{kind}",
            "put /api/v1/llm/feedback/{kind}/batch",
            "put /api/v1/llm/feedback/{kind}/{id}",
        ]
    );
    let mint = &document["paths"]["/api/v1/llm/feedback/tokens"]["post"];
    assert_eq!(
        mint["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateToken"
    );
    assert_eq!(
        mint["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/FeedbackToken"
    );
    assert!(mint["responses"]["409"].is_null(), "{mint}");
    let token_schema = &document["components"]["schemas"]["FeedbackToken"];
    let mut required: Vec<&str> = token_schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(
        required,
        ["expires_at", "id", "kind", "token"],
        "{token_schema}"
    );
}
