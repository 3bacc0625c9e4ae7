//! One JSON error envelope from every layer, body limits, content types and
//! request ids.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, assert_error};

both_stores!(
    unknown_routes_are_404_with_the_envelope,
    wrong_methods_on_known_paths_are_405_with_the_envelope,
    malformed_json_is_400,
    json_bodies_that_are_not_objects_are_400,
    an_empty_body_with_a_json_content_type_is_400,
    a_field_of_the_wrong_type_is_400_naming_the_field,
    unknown_fields_are_400,
    bodies_without_a_json_content_type_are_415,
    json_content_types_with_parameters_other_case_or_a_json_suffix_are_accepted,
    a_body_of_exactly_65536_bytes_is_read,
    a_body_over_65536_bytes_is_413,
    a_chunked_body_without_content_length_over_the_limit_is_413,
    after_a_413_the_connection_is_still_usable_or_announced_closed,
    a_404_message_does_not_echo_the_id,
    every_response_carries_a_request_id,
    a_sane_request_id_is_echoed_back_unchanged,
    insane_request_ids_are_replaced_by_generated_ones,
    requests_without_a_request_id_get_different_ids,
);

const COLLECTION: &str = "/api/v1/llm/feedback/completions";
const ENTRY: &str = "/api/v1/llm/feedback/completions/chatcmpl-1";
const BODY_LIMIT: usize = 65_536;

/// The `field` of each `details` item.
fn detail_fields(reply: &Reply) -> Vec<&str> {
    reply.body["error"]["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .filter_map(|detail| detail["field"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// `POST` of a raw body with a JSON content type.
async fn post_raw(app: &TestApp, path: &str, body: impl Into<reqwest::Body>) -> Reply {
    app.send(own_connection(app.request(Method::POST, path)).body(body))
        .await
}

/// `PUT` of a raw body with a JSON content type.
async fn put_raw(app: &TestApp, path: &str, body: impl Into<reqwest::Body>) -> Reply {
    app.send(own_connection(app.request(Method::PUT, path)).body(body))
        .await
}

/// A JSON request on a connection that is not reused afterwards: the service
/// drops connections whose oversized body it did not read, and other
/// requests must not race with that (the keep-alive scenario tests it).
fn own_connection(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header(CONTENT_TYPE, "application/json")
        .header(CONNECTION, "close")
}

/// A create body `{"id":"<id>"   ...   }` of exactly `len` bytes.
fn padded_create_body(id: &str, len: usize) -> String {
    let head = format!(r#"{{"id":"{id}""#);
    let padding = len - head.len() - 1;
    format!("{head}{}}}", " ".repeat(padding))
}

/// Status and body of a raw HTTP/1.1 response.
struct RawReply {
    status: u16,
    body: Value,
}

/// `POST`s `body` with `Transfer-Encoding: chunked` (no `Content-Length`), in
/// chunks of `chunk_len` bytes, over a plain socket; the reqwest of this
/// suite has no streaming bodies.
async fn post_chunked(app: &TestApp, path: &str, body: Vec<u8>, chunk_len: usize) -> RawReply {
    let host = app
        .address
        .strip_prefix("http://")
        .expect("an http:// address")
        .to_owned();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        app.api_key
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&host).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut wire = head.into_bytes();
        for chunk in body.chunks(chunk_len) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        // The server may answer and stop reading before the body ends.
        for piece in wire.chunks(chunk_len) {
            if stream.write_all(piece).is_err() {
                break;
            }
        }
        let mut response = Vec::new();
        let mut buffer = [0_u8; 8192];
        while let Ok(read @ 1..) = stream.read(&mut buffer) {
            response.extend_from_slice(&buffer[..read]);
        }
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
        RawReply {
            status,
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    })
    .await
    .expect("the raw request panicked")
}

/// Reads one response (head and `Content-Length` body) off a socket: the
/// head, lowercased, and the body; `None` if the connection ends first.
fn read_response(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 8192];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let body_len: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|len| len.trim().parse().ok())
                .unwrap_or(0);
            if received.len() >= end + 4 + body_len {
                let body = String::from_utf8_lossy(&received[end + 4..end + 4 + body_len]);
                return Some((head, body.into_owned()));
            }
        }
        match stream.read(&mut buffer) {
            Ok(read @ 1..) => received.extend_from_slice(&buffer[..read]),
            _ => return None,
        }
    }
}

/// On one keep-alive connection: a create with a 1 MiB body, then, once the
/// body is written (or the server stopped taking it), `GET /healthz`.
/// Returns the head of the first response and that of the second, if any.
async fn oversized_then_healthz(app: &TestApp) -> (Option<String>, Option<String>) {
    let host = app
        .address
        .strip_prefix("http://")
        .expect("an http:// address")
        .to_owned();
    let body = padded_create_body("chatcmpl-huge", 1024 * 1024);
    let head = format!(
        "POST {COLLECTION} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.api_key,
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&host).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut writer = stream.try_clone().expect("clone the socket");
        writer
            .set_write_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // Written while the response is read, as HTTP clients do.
        let written = std::thread::spawn(move || {
            writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.write_all(body.as_bytes()))
        });
        let first = read_response(&mut stream);
        let _ = written.join();
        let second = first.as_ref().and_then(|_| {
            let next = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
            stream.write_all(next.as_bytes()).ok()?;
            read_response(&mut stream)
        });
        (first.map(|(head, _)| head), second.map(|(head, _)| head))
    })
    .await
    .expect("the raw requests panicked")
}

async fn unknown_routes_are_404_with_the_envelope(app: TestApp) {
    let requests = [
        ("/nope without a key", app.client.get(app.url("/nope"))),
        ("/nope with a key", app.request(Method::GET, "/nope")),
        (
            "the bare feedback path",
            app.request(Method::GET, "/api/v1/llm/feedback"),
        ),
        (
            "POST to the bare feedback path",
            app.request(Method::POST, "/api/v1/llm/feedback")
                .json(&json!({"id": "x"})),
        ),
        (
            "an unknown kind",
            app.request(Method::GET, "/api/v1/llm/feedback/widgets/x"),
        ),
        (
            "create of an unknown kind",
            app.request(Method::POST, "/api/v1/llm/feedback/widgets")
                .json(&json!({"id": "x"})),
        ),
        (
            "a path below an entry",
            app.request(Method::GET, "/api/v1/llm/feedback/completions/x/y"),
        ),
        ("/api/v1 itself", app.request(Method::GET, "/api/v1")),
    ];

    for (what, request) in requests {
        let reply = app.send(request).await;

        assert_error(&reply, 404, "not_found", what);
    }
}

async fn wrong_methods_on_known_paths_are_405_with_the_envelope(app: TestApp) {
    let requests = [
        (
            "DELETE on the collection",
            app.request(Method::DELETE, COLLECTION),
        ),
        (
            "PATCH on an entry",
            app.request(Method::PATCH, ENTRY)
                .json(&json!({"rating": "thumbs_up"})),
        ),
        (
            "POST on an entry",
            app.request(Method::POST, ENTRY).json(&json!({"id": "x"})),
        ),
        (
            "PUT on the collection",
            app.request(Method::PUT, COLLECTION)
                .json(&json!({"rating": "thumbs_up"})),
        ),
        (
            "DELETE on the collection",
            app.request(Method::DELETE, COLLECTION),
        ),
        ("POST on /healthz", app.request(Method::POST, "/healthz")),
    ];

    for (what, request) in requests {
        let reply = app.send(request).await;

        assert_error(&reply, 405, "method_not_allowed", what);
    }
}

async fn malformed_json_is_400(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;

    for body in [
        r#"{"id":"#,
        r#"{"id": "chatcmpl-2""#,
        r#"{"id": "chatcmpl-2",}"#,
        r#"{"id": "chatcmpl-2"} trailing"#,
        r#"{"id": "chatcmpl-2"}{}"#,
        "{id: 'chatcmpl-2'}",
    ] {
        let create = post_raw(&app, COLLECTION, body).await;
        let update = put_raw(&app, ENTRY, body.replace("\"id\"", "\"description\"")).await;

        assert_error(&create, 400, "invalid_request", &format!("POST {body}"));
        assert_error(&update, 400, "invalid_request", &format!("PUT {body}"));
    }
    assert_eq!(app.get("completions", "chatcmpl-2").await.status, 404);
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn json_bodies_that_are_not_objects_are_400(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;

    for body in [
        "[]",
        r#"["resp-1"]"#,
        r#"["resp-1", "thumbs_up", "ok", null]"#,
        r#""x""#,
        "null",
        "1",
        "true",
    ] {
        let create = post_raw(&app, "/api/v1/llm/feedback/responses", body).await;
        let update = put_raw(&app, ENTRY, body).await;

        assert_error(&create, 400, "invalid_request", &format!("POST {body}"));
        assert_error(&update, 400, "invalid_request", &format!("PUT {body}"));
    }
    for body in ["[null, null]", r#"["thumbs_down"]"#] {
        let update = put_raw(&app, ENTRY, body).await;
        assert_error(&update, 400, "invalid_request", &format!("PUT {body}"));
    }
    assert_eq!(app.get("responses", "resp-1").await.status, 404);
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn an_empty_body_with_a_json_content_type_is_400(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;

    for body in ["", "   \r\n\t "] {
        let create = post_raw(&app, COLLECTION, body).await;
        let update = put_raw(&app, ENTRY, body).await;

        assert_error(&create, 400, "invalid_request", &format!("POST {body:?}"));
        assert_error(&update, 400, "invalid_request", &format!("PUT {body:?}"));
    }
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn a_field_of_the_wrong_type_is_400_naming_the_field(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;

    let cases = [
        (Method::POST, COLLECTION, json!({"id": 5}), "id"),
        (Method::POST, COLLECTION, json!({"id": ["x"]}), "id"),
        (
            Method::POST,
            COLLECTION,
            json!({"id": "chatcmpl-2", "rating": 1}),
            "rating",
        ),
        (
            Method::POST,
            COLLECTION,
            json!({"id": "chatcmpl-2", "description": {"text": "x"}}),
            "description",
        ),
        (
            Method::POST,
            COLLECTION,
            json!({"id": "chatcmpl-2", "model": true}),
            "model",
        ),
        (Method::PUT, ENTRY, json!({"rating": 5}), "rating"),
        (Method::PUT, ENTRY, json!({"description": 5}), "description"),
    ];

    for (method, path, body, field) in cases {
        let what = format!("{method} {body}");
        let reply = app.send(app.request(method, path).json(&body)).await;

        assert_error(&reply, 400, "invalid_request", &what);
        assert_eq!(detail_fields(&reply), [field], "{what}: {}", reply.text);
    }
    assert_eq!(app.get("completions", "chatcmpl-2").await.status, 404);
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn unknown_fields_are_400(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;

    let create = app
        .create("completions", json!({"id": "chatcmpl-2", "foo": 1}))
        .await;
    let create_with_timestamps = app
        .create(
            "completions",
            json!({"id": "chatcmpl-3", "createdAt": "2024-01-15T10:30:00.000Z"}),
        )
        .await;
    let update = app
        .update(
            "completions",
            "chatcmpl-1",
            json!({"rating": "thumbs_down", "foo": 1}),
        )
        .await;
    let update_of_model = app
        .update("completions", "chatcmpl-1", json!({"model": "gpt-4o"}))
        .await;

    assert_error(&create, 400, "invalid_request", "create with foo");
    assert_error(
        &create_with_timestamps,
        400,
        "invalid_request",
        "create with createdAt",
    );
    assert_error(&update, 400, "invalid_request", "update with foo");
    assert_error(&update_of_model, 400, "invalid_request", "update of model");
    assert_eq!(app.get("completions", "chatcmpl-2").await.status, 404);
    assert_eq!(app.get("completions", "chatcmpl-3").await.status, 404);
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn bodies_without_a_json_content_type_are_415(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;
    let create_body = r#"{"id": "chatcmpl-2"}"#;
    let update_body = r#"{"rating": "thumbs_down"}"#;

    for content_type in [
        None,
        Some("text/plain"),
        Some("text/json"),
        Some("application/xml"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("json"),
    ] {
        let with_type = |request: reqwest::RequestBuilder| match content_type {
            Some(value) => request.header(CONTENT_TYPE, value),
            None => request,
        };

        let create = app
            .send(with_type(app.request(Method::POST, COLLECTION)).body(create_body))
            .await;
        let update = app
            .send(with_type(app.request(Method::PUT, ENTRY)).body(update_body))
            .await;

        let what = format!("Content-Type {content_type:?}");
        assert_error(&create, 415, "unsupported_media_type", &what);
        assert_error(&update, 415, "unsupported_media_type", &what);
    }
    assert_eq!(app.get("completions", "chatcmpl-2").await.status, 404);
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn json_content_types_with_parameters_other_case_or_a_json_suffix_are_accepted(app: TestApp) {
    let content_types = [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
        "APPLICATION/JSON; CHARSET=UTF-8",
        "application/vnd.foo+json",
        "application/merge-patch+JSON",
    ];

    for (index, content_type) in content_types.into_iter().enumerate() {
        let id = format!("chatcmpl-{index}");
        let body = json!({"id": id, "rating": "thumbs_up"}).to_string();

        let created = app
            .send(
                app.request(Method::POST, COLLECTION)
                    .header(CONTENT_TYPE, content_type)
                    .body(body),
            )
            .await;
        let updated = app
            .send(
                app.request(Method::PUT, &format!("{COLLECTION}/{id}"))
                    .header(CONTENT_TYPE, content_type)
                    .body(r#"{"rating": "thumbs_down"}"#),
            )
            .await;

        assert_eq!(created.status, 201, "{content_type}: {}", created.text);
        assert_eq!(created.body["id"], id.as_str());
        assert_eq!(updated.status, 200, "{content_type}: {}", updated.text);
        assert_eq!(updated.body["rating"], "thumbs_down");
    }
}

async fn a_body_of_exactly_65536_bytes_is_read(app: TestApp) {
    let create = padded_create_body("chatcmpl-big", BODY_LIMIT);
    assert_eq!(create.len(), BODY_LIMIT);
    let update = format!(r#"{{"description":"{}"}}"#, "d".repeat(2000));
    let update = format!("{update}{}", " ".repeat(BODY_LIMIT - update.len()));
    assert_eq!(update.len(), BODY_LIMIT);

    let created = post_raw(&app, COLLECTION, create).await;
    let updated = put_raw(&app, &format!("{COLLECTION}/chatcmpl-big"), update).await;

    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["id"], "chatcmpl-big");
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.body["description"], "d".repeat(2000));
}

async fn a_body_over_65536_bytes_is_413(app: TestApp) {
    let created = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;

    for len in [BODY_LIMIT + 1, BODY_LIMIT + 2, 70 * 1024, 1024 * 1024] {
        let create = post_raw(&app, COLLECTION, padded_create_body("chatcmpl-2", len)).await;
        let update_body = format!(
            r#"{{"rating":"thumbs_down"{}}}"#,
            " ".repeat(len - r#"{"rating":"thumbs_down"}"#.len())
        );
        assert_eq!(update_body.len(), len);
        let update = put_raw(&app, ENTRY, update_body).await;

        assert_error(
            &create,
            413,
            "payload_too_large",
            &format!("POST of {len} bytes"),
        );
        assert_error(
            &update,
            413,
            "payload_too_large",
            &format!("PUT of {len} bytes"),
        );
    }
    assert_eq!(app.get("completions", "chatcmpl-2").await.status, 404);
    assert_eq!(app.get("completions", "chatcmpl-1").await.body, created);
}

async fn a_chunked_body_without_content_length_over_the_limit_is_413(app: TestApp) {
    let small = padded_create_body("chatcmpl-small", 10_000).into_bytes();
    let small_reply = post_chunked(&app, COLLECTION, small, 1024).await;
    assert_eq!(small_reply.status, 201, "{}", small_reply.body);

    let large = padded_create_body("chatcmpl-large", BODY_LIMIT + 1024).into_bytes();
    let large_reply = post_chunked(&app, COLLECTION, large, 4096).await;

    assert_eq!(large_reply.status, 413, "{}", large_reply.body);
    let body = large_reply.body.as_object().expect("a JSON object");
    assert_eq!(
        body.keys().map(String::as_str).collect::<Vec<_>>(),
        ["error"]
    );
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(body["error"]["message"].is_string());
    assert_eq!(app.get("completions", "chatcmpl-large").await.status, 404);
}

async fn after_a_413_the_connection_is_still_usable_or_announced_closed(app: TestApp) {
    let (first, second) = oversized_then_healthz(&app).await;

    let first = first.expect("no response to the oversized request");
    assert!(first.starts_with("http/1.1 413"), "{first}");
    // A server may close the connection after a 413, but then it says so;
    // otherwise a keep-alive client sends its next request into a dead socket.
    let announced_close = first
        .lines()
        .any(|line| line.starts_with("connection:") && line.contains("close"));
    assert!(
        announced_close
            || second
                .as_ref()
                .is_some_and(|head| head.starts_with("http/1.1 200")),
        "the connection was dropped after a 413 without `Connection: close`:\n{first}\nthen {second:?}"
    );
}

async fn a_404_message_does_not_echo_the_id(app: TestApp) {
    let id = "chatcmpl-secret-7f3a9c";

    let read = app.get("completions", id).await;
    let write = app
        .update("completions", id, json!({"rating": "thumbs_up"}))
        .await;
    let route = app
        .send(app.request(Method::GET, &format!("/api/v1/llm/feedback/widgets/{id}")))
        .await;

    for (what, reply) in [("GET", &read), ("PUT", &write), ("unknown kind", &route)] {
        assert_error(reply, 404, "not_found", what);
        assert!(!reply.text.contains(id), "{what}: {}", reply.text);
        assert!(!reply.text.contains("secret"), "{what}: {}", reply.text);
    }
}

async fn every_response_carries_a_request_id(app: TestApp) {
    let replies = [
        (
            "201",
            app.create("completions", json!({"id": "chatcmpl-1"})).await,
        ),
        ("200", app.get("completions", "chatcmpl-1").await),
        ("400", post_raw(&app, COLLECTION, r#"{"id":"#).await),
        ("401", app.send(app.client.get(app.url(ENTRY))).await),
        ("404 entry", app.get("completions", "chatcmpl-2").await),
        (
            "404 fallback",
            app.send(app.client.get(app.url("/nope"))).await,
        ),
        (
            "404 fallback under /api/v1",
            app.send(app.request(Method::GET, "/api/v1/nope")).await,
        ),
        ("405", app.send(app.request(Method::PATCH, ENTRY)).await),
        (
            "409",
            app.create("completions", json!({"id": "chatcmpl-1"})).await,
        ),
        (
            "413",
            post_raw(&app, COLLECTION, padded_create_body("x", BODY_LIMIT + 1)).await,
        ),
        (
            "415",
            app.send(app.request(Method::POST, COLLECTION).body("{}"))
                .await,
        ),
        (
            "healthz",
            app.send(app.client.get(app.url("/healthz"))).await,
        ),
    ];

    let mut seen = Vec::new();
    for (what, reply) in &replies {
        let id = reply
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no x-request-id ({})", reply.status));
        assert!(!id.is_empty(), "{what}");
        assert!(!seen.contains(&id), "{what}: {id} was used before");
        seen.push(id);
    }
    let statuses: Vec<u16> = replies.iter().map(|(_, reply)| reply.status).collect();
    assert_eq!(
        statuses,
        [201, 200, 400, 401, 404, 404, 404, 405, 409, 413, 415, 200]
    );
}

async fn a_sane_request_id_is_echoed_back_unchanged(app: TestApp) {
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
    let longest: String = alphabet.chars().cycle().take(128).collect();
    let sane = [
        "a".to_owned(),
        "req-1".to_owned(),
        "01HZX3.trace:span_7-x".to_owned(),
        alphabet.to_owned(),
        longest,
    ];

    for request_id in sane {
        let requests = [
            (
                "create",
                app.request(Method::POST, COLLECTION)
                    .json(&json!({"id": format!("chatcmpl-{}", request_id.len())})),
            ),
            ("401", app.client.get(app.url(ENTRY))),
            ("404 fallback", app.client.get(app.url("/nope"))),
        ];
        for (what, request) in requests {
            let reply = app.send(request.header("x-request-id", &request_id)).await;

            assert_eq!(
                reply.header("x-request-id"),
                Some(request_id.as_str()),
                "{what}, status {}",
                reply.status
            );
        }
    }
}

async fn insane_request_ids_are_replaced_by_generated_ones(app: TestApp) {
    let insane = [
        (
            "129 characters",
            HeaderValue::from_str(&"r".repeat(129)).expect("header"),
        ),
        ("a space inside", HeaderValue::from_static("req 1")),
        ("a slash", HeaderValue::from_static("req/1")),
        ("empty", HeaderValue::from_static("")),
        (
            "non-ASCII",
            HeaderValue::from_bytes(b"req-\xc3\xa9").expect("header"),
        ),
        ("a comma", HeaderValue::from_static("req-1,req-2")),
        (
            "a tab inside",
            HeaderValue::from_bytes(b"req\t1").expect("header"),
        ),
    ];

    for (what, sent) in insane {
        let reply = app
            .send(
                app.request(Method::GET, ENTRY)
                    .header("x-request-id", sent.clone()),
            )
            .await;

        let got = reply
            .headers
            .get("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no x-request-id"));
        assert!(!got.is_empty(), "{what}");
        assert_ne!(got, &sent, "{what}");
        assert_eq!(reply.status, 404, "{what}: {}", reply.text);
    }
}

async fn requests_without_a_request_id_get_different_ids(app: TestApp) {
    let first = app.send(app.client.get(app.url("/healthz"))).await;
    let second = app.send(app.client.get(app.url("/healthz"))).await;

    let first = first.header("x-request-id").expect("first x-request-id");
    let second = second.header("x-request-id").expect("second x-request-id");
    assert!(!first.is_empty());
    assert!(!second.is_empty());
    assert_ne!(first, second);
}
