//! `GET /openapi.json`: the document states API.md's rules, and the router
//! serves exactly what it documents.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp};

both_stores!(
    the_document_is_served_without_a_key_as_openapi_3_1_json,
    every_api_operation_requires_the_bearer_key_and_documents_x_on_behalf_of,
    operational_endpoints_need_no_key_in_the_document,
    the_schemas_state_the_rules_of_api_md,
    error_responses_of_api_operations_use_the_error_schema,
    readyz_documents_its_503,
    every_documented_operation_is_served,
    methods_the_document_does_not_list_are_405_on_every_documented_path,
    undocumented_paths_are_never_200,
);

/// The methods the completeness checks try on every documented path.
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every method name an OpenAPI path item can hold.
const PATH_ITEM_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document, fetched without a key.
async fn document(app: &TestApp) -> Value {
    let reply = app.send(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.body.is_object(), "not a JSON object: {}", reply.text);
    reply.body
}

/// `(path, method, operation)` for every operation of the document.
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let paths = document["paths"].as_object().expect("`paths` is an object");
    let mut found = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (method, operation) in item {
            if PATH_ITEM_METHODS.contains(&method.as_str()) {
                found.push((path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    assert!(!found.is_empty(), "the document has no operations");
    found
}

/// Follows a local `$ref` (`#/components/...`) until a value is not one.
fn resolve<'a>(document: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
            return value;
        };
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("not a local reference: {reference}"));
        value = document
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling reference {reference}"));
    }
    panic!("reference loop at {value}");
}

/// A schema of `components.schemas`.
fn schema<'a>(document: &'a Value, name: &str) -> &'a Value {
    let schema = &document["components"]["schemas"][name];
    assert!(
        schema.is_object(),
        "components.schemas.{name} is missing: {}",
        document["components"]
    );
    schema
}

/// Whether a JSON schema accepts `null` (3.1 `type` lists, `oneOf`/`anyOf`
/// branches, or the 3.0 `nullable`).
fn accepts_null(document: &Value, schema: &Value) -> bool {
    let schema = resolve(document, schema);
    let type_allows_null = match &schema["type"] {
        Value::String(name) => name == "null",
        Value::Array(names) => names.iter().any(|name| name == "null"),
        _ => false,
    };
    type_allows_null
        || schema["nullable"] == true
        || ["oneOf", "anyOf"].iter().any(|combinator| {
            schema[*combinator]
                .as_array()
                .is_some_and(|branches| branches.iter().any(|b| accepts_null(document, b)))
        })
}

/// The documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{kind}", "completions").replace("{id}", "x")
}

/// The router's own answers for paths and methods it does not serve.
fn is_fallback(reply: &Reply) -> bool {
    (reply.status == 405 && reply.error_code() == "method_not_allowed")
        || (reply.status == 404 && reply.body["error"]["message"] == "no such route")
}

async fn the_document_is_served_without_a_key_as_openapi_3_1_json(app: TestApp) {
    let reply = app.send(app.client.get(app.url("/openapi.json"))).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "content type {:?}",
        reply.header("content-type")
    );
    let version = reply.body["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.1"),
        "openapi: {:?}",
        reply.body["openapi"]
    );
    assert!(
        reply.body["info"]["title"].is_string(),
        "{}",
        reply.body["info"]
    );
    assert!(
        reply.body["paths"]
            .as_object()
            .is_some_and(|paths| paths.keys().any(|path| path.starts_with("/api/v1/"))),
        "no /api/v1 paths: {}",
        reply.text
    );
}

async fn every_api_operation_requires_the_bearer_key_and_documents_x_on_behalf_of(app: TestApp) {
    let document = document(&app).await;

    let scheme = resolve(
        &document,
        &document["components"]["securitySchemes"]["bearer"],
    );
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert!(
        scheme["scheme"]
            .as_str()
            .is_some_and(|name| name.eq_ignore_ascii_case("bearer")),
        "{scheme}"
    );
    let api_operations: Vec<_> = operations(&document)
        .into_iter()
        .filter(|(path, _, _)| path.starts_with("/api/v1"))
        .collect();
    assert!(api_operations.len() >= 6, "{api_operations:?}");
    for (path, method, operation) in &api_operations {
        // An operation's own `security` overrides the document's.
        let security = operation.get("security").unwrap_or(&document["security"]);
        let requirements = security.as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(
            requirements
                .iter()
                .any(|requirement| requirement.get("bearer").is_some()),
            "{method} {path}: security {security}"
        );
        assert!(
            requirements
                .iter()
                .all(|requirement| requirement.as_object().is_some_and(|r| !r.is_empty())),
            "{method} {path}: an empty requirement makes the key optional: {security}"
        );
        let parameters = operation["parameters"]
            .as_array()
            .into_iter()
            .chain(document["paths"][path]["parameters"].as_array())
            .flatten()
            .map(|parameter| resolve(&document, parameter));
        let on_behalf_of: Vec<&Value> = parameters
            .filter(|parameter| {
                parameter["in"] == "header"
                    && parameter["name"]
                        .as_str()
                        .is_some_and(|name| name.eq_ignore_ascii_case("X-On-Behalf-Of"))
            })
            .collect();
        assert_eq!(
            on_behalf_of.len(),
            1,
            "{method} {path}: X-On-Behalf-Of header parameter: {}",
            operation["parameters"]
        );
        assert_ne!(
            on_behalf_of[0]["required"], true,
            "{method} {path}: X-On-Behalf-Of is optional"
        );
    }
}

async fn operational_endpoints_need_no_key_in_the_document(app: TestApp) {
    let document = document(&app).await;

    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let operation = &document["paths"][path]["get"];
        assert!(operation.is_object(), "GET {path} is not documented");
        let security = operation.get("security").unwrap_or(&document["security"]);
        let requirements = security.as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(
            requirements.is_empty()
                || requirements
                    .iter()
                    .any(|r| r.as_object().is_some_and(serde_json::Map::is_empty)),
            "GET {path} is documented as needing a key: {security}"
        );
    }
}

async fn the_schemas_state_the_rules_of_api_md(app: TestApp) {
    let document = document(&app).await;

    let rating = resolve(&document, schema(&document, "Rating"));
    assert_eq!(
        rating["enum"],
        json!(["thumbs_up", "thumbs_down"]),
        "{rating}"
    );

    let create = resolve(&document, schema(&document, "CreateFeedback"));
    let description = resolve(&document, &create["properties"]["description"]);
    assert_eq!(description["maxLength"], 2000, "{create}");
    assert!(
        create["required"]
            .as_array()
            .is_some_and(|required| required.iter().any(|field| field == "id")),
        "`id` is not required: {create}"
    );
    assert!(
        create["properties"]["id"].is_object(),
        "no `id` property: {create}"
    );

    let update = resolve(&document, schema(&document, "UpdateFeedback"));
    for field in ["rating", "description"] {
        let property = &update["properties"][field];
        assert!(
            property.is_object(),
            "UpdateFeedback.{field} missing: {update}"
        );
        assert!(
            accepts_null(&document, property),
            "UpdateFeedback.{field} does not accept null: {property}"
        );
    }
    assert!(
        update["required"].as_array().is_none_or(Vec::is_empty),
        "no field of an update is required: {update}"
    );

    let error = resolve(&document, schema(&document, "Error"));
    assert!(
        error["required"]
            .as_array()
            .is_some_and(|required| required.iter().any(|field| field == "error")),
        "{error}"
    );
    let body = resolve(&document, &error["properties"]["error"]);
    for field in ["code", "message"] {
        assert!(body["properties"][field].is_object(), "{body}");
        assert!(
            body["required"]
                .as_array()
                .is_some_and(|required| required.iter().any(|f| f == field)),
            "error.{field} is not required: {body}"
        );
    }
    assert!(body["properties"]["details"].is_object(), "{body}");
}

/// `4XX`, `5XX` and numeric statuses from 400 up (not `default`, not 2xx).
fn is_error_status(status: &str) -> bool {
    status
        .parse::<u16>()
        .map_or(status.starts_with('4') || status.starts_with('5'), |code| {
            code >= 400
        })
}

/// The schema of a documented response's JSON content.
fn response_schema<'a>(document: &'a Value, operation: &'a Value, status: &str) -> &'a Value {
    let response = resolve(document, &operation["responses"][status]);
    &response["content"]["application/json"]["schema"]
}

async fn error_responses_of_api_operations_use_the_error_schema(app: TestApp) {
    let document = document(&app).await;

    for (path, method, operation) in operations(&document) {
        if path.starts_with("/api/v1") {
            for status in ["400", "401", "404", "429", "500", "503"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{method} {path}: no {status} response"
                );
            }
        }
        // Every documented error, wherever it is, is the one envelope.
        let statuses = operation["responses"]
            .as_object()
            .expect("`responses` is an object");
        for status in statuses.keys().filter(|status| is_error_status(status)) {
            let schema = response_schema(&document, &operation, status);
            assert_eq!(
                schema["$ref"], "#/components/schemas/Error",
                "{method} {path} {status}: {}",
                operation["responses"][status]
            );
        }
    }
    assert!(schema(&document, "Error").is_object());
}

async fn readyz_documents_its_503(app: TestApp) {
    let document = document(&app).await;

    let readyz = &document["paths"]["/readyz"]["get"];
    assert!(readyz.is_object(), "GET /readyz is not documented");
    assert!(
        readyz["responses"]["503"].is_object(),
        "GET /readyz answers 503 when the database does not answer (API.md), \
         but its documented responses are {}",
        readyz["responses"]
    );
    assert_eq!(
        response_schema(&document, readyz, "503")["$ref"],
        "#/components/schemas/Error"
    );
}

/// A request for a documented operation: the app's key, and a JSON body when
/// the operation takes one (`{}`: enough to reach the handler).
fn probe(app: &TestApp, method: &str, path: &str, has_body: bool) -> reqwest::RequestBuilder {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("a method");
    let request = app.request(method, &concrete(path));
    if has_body {
        request.json(&json!({}))
    } else {
        request
    }
}

async fn every_documented_operation_is_served(app: TestApp) {
    let document = document(&app).await;
    let operations = operations(&document);
    assert!(operations.len() >= 12, "{operations:?}");

    for (path, method, operation) in operations {
        let has_body = operation.get("requestBody").is_some();
        let reply = app.send(probe(&app, &method, &path, has_body)).await;

        assert!(
            !is_fallback(&reply),
            "documented {method} {path} is not served: {} {}",
            reply.status,
            reply.text
        );
        assert!(
            reply.status < 500,
            "{method} {path}: {} {}",
            reply.status,
            reply.text
        );
    }
}

async fn methods_the_document_does_not_list_are_405_on_every_documented_path(app: TestApp) {
    let document = document(&app).await;
    let paths = document["paths"].as_object().expect("`paths` is an object");

    let mut tried = 0;
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                continue;
            }
            let reply = app.send(probe(&app, method, path, true)).await;
            tried += 1;

            assert_eq!(
                (reply.status, reply.error_code()),
                (405, "method_not_allowed"),
                "undocumented {} {path} is served: {}",
                method.to_ascii_uppercase(),
                reply.text
            );
        }
    }
    assert!(tried >= 20, "only {tried} undocumented methods tried");
}

async fn undocumented_paths_are_never_200(app: TestApp) {
    for path in ["/", "/docs", "/swagger-ui", "/openapi.yaml"] {
        for method in [Method::GET, Method::POST] {
            let reply = app
                .send(app.client.request(method.clone(), app.url(path)))
                .await;

            assert_eq!(
                (reply.status, reply.error_code()),
                (404, "not_found"),
                "{method} {path}: {}",
                reply.text
            );
        }
    }
    for path in ["/api/v1", "/api/v1/llm/feedback", "/api/v1/llm"] {
        for method in [Method::GET, Method::POST] {
            let without_key = app
                .send(app.client.request(method.clone(), app.url(path)))
                .await;
            let with_key = app.send(app.request(method.clone(), path)).await;

            assert_eq!(
                (without_key.status, without_key.error_code()),
                (401, "unauthorized"),
                "{method} {path} without a key: {}",
                without_key.text
            );
            assert_eq!(
                (with_key.status, with_key.error_code()),
                (404, "not_found"),
                "{method} {path} with a key: {}",
                with_key.text
            );
        }
    }
}
