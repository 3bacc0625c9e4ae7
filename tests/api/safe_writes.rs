//! Helpers of the safe-writes suites (issue 13): requests with the headers
//! of conditional and idempotent writes, tokens, direct database reads.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, encode_id};

/// `/api/v1/llm/feedback/{kind}/{id}`.
pub(crate) fn entry_path(kind: &str, id: &str) -> String {
    format!("/api/v1/llm/feedback/{kind}/{}", encode_id(id))
}

/// `method path` with `key`, extra headers and an optional JSON body.
pub(crate) async fn send_with(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(key);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    app.send(request).await
}

/// The same with the app's own key.
pub(crate) async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    send_with(app, &app.api_key, method, path, headers, body).await
}

/// `POST /{kind}` with headers.
pub(crate) async fn create_with(
    app: &TestApp,
    kind: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Reply {
    send(
        app,
        Method::POST,
        &format!("/api/v1/llm/feedback/{kind}"),
        headers,
        Some(body),
    )
    .await
}

/// `PUT /{kind}/{id}` with headers.
pub(crate) async fn update_with(
    app: &TestApp,
    kind: &str,
    id: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Reply {
    send(app, Method::PUT, &entry_path(kind, id), headers, Some(body)).await
}

/// `DELETE /{kind}/{id}` with headers.
pub(crate) async fn delete_with(
    app: &TestApp,
    kind: &str,
    id: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(app, Method::DELETE, &entry_path(kind, id), headers, None).await
}

/// `GET /{kind}/{id}/revisions?{query}`.
pub(crate) async fn revisions(app: &TestApp, kind: &str, id: &str, query: &str) -> Reply {
    let path = format!("{}/revisions?{query}", entry_path(kind, id));
    send(app, Method::GET, &path, &[], None).await
}

/// The `ETag` of a reply.
pub(crate) fn etag(reply: &Reply) -> String {
    reply
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag: {reply:?}"))
        .to_owned()
}

/// A feedback token for `(kind, id)`, acting as `end_user`.
pub(crate) async fn mint(app: &TestApp, kind: &str, id: &str, end_user: Option<&str>) -> String {
    let mut headers = Vec::new();
    if let Some(user) = end_user {
        headers.push(("X-On-Behalf-Of", user));
    }
    let reply = send(
        app,
        Method::POST,
        "/api/v1/llm/feedback/tokens",
        &headers,
        Some(&json!({"kind": kind, "id": id})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.body["token"].as_str().expect("a token").to_owned()
}
