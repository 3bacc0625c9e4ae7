//! Authorization and the API router's structure, as far as HTTP shows them.
//!
//! Which principal may meet which requirement is tested on `auth::authorize`
//! itself (unit and property tests in src/auth.rs); the HTTP tests of `403`
//! for feedback tokens are in tokens.rs.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::TestApp;

both_stores!(
    the_api_root_with_a_trailing_slash_needs_a_key_then_is_404,
    every_api_operation_documents_403_and_no_operational_one_does,
    forbidden_is_a_listed_error_code,
);

async fn document(app: &TestApp) -> Value {
    let reply = app.send(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body
}

/// `/api/v1/` is under `/api/v1` like any other unknown path there, though
/// the nested router's catch-all does not match it.
async fn the_api_root_with_a_trailing_slash_needs_a_key_then_is_404(app: TestApp) {
    for method in [Method::GET, Method::POST, Method::DELETE] {
        let without_key = app
            .send(app.client.request(method.clone(), app.url("/api/v1/")))
            .await;
        let with_key = app.send(app.request(method.clone(), "/api/v1/")).await;

        assert_eq!(
            (without_key.status, without_key.error_code()),
            (401, "unauthorized"),
            "{method} without a key: {}",
            without_key.text
        );
        assert_eq!(
            (with_key.status, with_key.error_code()),
            (404, "not_found"),
            "{method} with a key: {}",
            with_key.text
        );
    }
}

async fn every_api_operation_documents_403_and_no_operational_one_does(app: TestApp) {
    let document = document(&app).await;
    let paths = document["paths"].as_object().expect("paths");
    let mut api_operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            let forbidden = &operation["responses"]["403"];
            if path.starts_with("/api/v1/") {
                api_operations += 1;
                assert_eq!(
                    forbidden["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorResponse",
                    "{method} {path}: {operation}"
                );
            } else {
                assert!(forbidden.is_null(), "{method} {path}: {operation}");
            }
        }
    }
    // The eight feedback operations, `GET /stats`, `POST /tokens`, issue
    // 13's delete and revisions (each also for the entry named `batch`) and
    // erasure, the two admin export operations, and issue 14's
    // `GET /changes` and four webhook operations.
    assert_eq!(api_operations, 22, "{}", document["paths"]);
}

async fn forbidden_is_a_listed_error_code(app: TestApp) {
    let document = document(&app).await;
    let code = &document["components"]["schemas"]["ErrorBody"]["properties"]["code"];

    let description = code["description"].as_str().unwrap_or_default();
    assert!(description.contains("`forbidden` (403)"), "{code}");
}
