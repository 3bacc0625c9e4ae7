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
    shared_enums_are_components_referenced_never_inlined,
    header_parameters_are_never_nullable_and_each_is_described,
    every_one_of_branch_is_a_named_component_or_null,
    constants_are_const,
    the_error_code_is_an_open_string_that_lists_the_current_codes,
    the_document_names_its_server_license_and_security,
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
        // The admin export acts for no end user: it takes no X-On-Behalf-Of.
        if operation["tags"] == serde_json::json!(["admin"]) {
            assert!(path.starts_with("/api/v1/llm/feedback/export"), "{path}");
            continue;
        }
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

    let error = resolve(&document, schema(&document, "ErrorResponse"));
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
                schema["$ref"], "#/components/schemas/ErrorResponse",
                "{method} {path} {status}: {}",
                operation["responses"][status]
            );
        }
    }
    assert!(schema(&document, "ErrorResponse").is_object());
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
        "#/components/schemas/ErrorResponse"
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

/// Every JSON object in `value` with its JSON pointer.
fn objects<'a>(pointer: &str, value: &'a Value, found: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(object) => {
            found.push((pointer.to_owned(), value));
            for (key, child) in object {
                let key = key.replace('~', "~0").replace('/', "~1");
                objects(&format!("{pointer}/{key}"), child, found);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                objects(&format!("{pointer}/{index}"), child, found);
            }
        }
        _ => {}
    }
}

/// Every header parameter of every operation, as `(method path, parameter)`.
fn header_parameters(document: &Value) -> Vec<(String, Value)> {
    operations(document)
        .into_iter()
        .flat_map(|(path, method, operation)| {
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            parameters
                .into_iter()
                .map(|parameter| resolve(document, &parameter).clone())
                .filter(|parameter| parameter["in"] == "header")
                .map(move |parameter| (format!("{method} {path}"), parameter))
        })
        .collect()
}

async fn shared_enums_are_components_referenced_never_inlined(app: TestApp) {
    let document = document(&app).await;

    // An inlined enum becomes one generated type per place it appears.
    let mut found = Vec::new();
    objects("", &document, &mut found);
    for (pointer, object) in &found {
        if object.get("enum").is_some() {
            let segments: Vec<&str> = pointer.split('/').skip(1).collect();
            assert!(
                matches!(segments.as_slice(), ["components", "schemas", _]),
                "an enum inlined at {pointer}: {object}"
            );
        }
    }
    for (name, values) in [
        ("Kind", json!(["completions", "responses"])),
        ("Order", json!(["asc", "desc"])),
        ("Rating", json!(["thumbs_up", "thumbs_down"])),
    ] {
        assert_eq!(schema(&document, name)["enum"], values, "{name}");
    }
    let mut kinds = 0;
    for (path, method, operation) in operations(&document) {
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let parameter = resolve(&document, parameter);
            let expected = match parameter["name"].as_str() {
                Some("kind") => "#/components/schemas/Kind",
                Some("order") => "#/components/schemas/Order",
                Some("rating") => "#/components/schemas/Rating",
                _ => continue,
            };
            kinds += usize::from(parameter["name"] == "kind");
            assert_eq!(
                parameter["schema"]["$ref"], expected,
                "{method} {path}: {parameter}"
            );
        }
    }
    assert!(kinds >= 6, "only {kinds} `kind` parameters");
}

async fn header_parameters_are_never_nullable_and_each_is_described(app: TestApp) {
    let document = document(&app).await;

    let headers = header_parameters(&document);
    assert!(headers.len() >= 6, "{headers:?}");
    for (operation, header) in headers {
        // A header is absent or a string; `null` makes generated clients
        // send the text `None` or crash.
        assert!(
            !accepts_null(&document, &header["schema"]),
            "{operation}: header {} is nullable: {header}",
            header["name"]
        );
        assert_eq!(
            resolve(&document, &header["schema"])["type"],
            "string",
            "{operation}: {header}"
        );
        assert!(
            header["description"]
                .as_str()
                .is_some_and(|text| !text.trim().is_empty()),
            "{operation}: header {} has no description",
            header["name"]
        );
    }
}

async fn every_one_of_branch_is_a_named_component_or_null(app: TestApp) {
    let document = document(&app).await;

    let mut found = Vec::new();
    objects("", &document, &mut found);
    let mut combinators = 0;
    for (pointer, object) in &found {
        for combinator in ["oneOf", "anyOf"] {
            let Some(branches) = object.get(combinator).and_then(Value::as_array) else {
                continue;
            };
            combinators += 1;
            for branch in branches {
                // Anything else becomes `...Type1` in generated clients.
                let is_named = branch["$ref"].is_string();
                let is_null = branch == &json!({"type": "null"});
                assert!(
                    is_named || is_null,
                    "{pointer}: a {combinator} branch that is neither a component nor null: {branch}"
                );
                // Generators show the property's description, not a branch's.
                assert!(
                    branch.get("description").is_none(),
                    "{pointer}: a description inside a {combinator} branch: {branch}"
                );
            }
        }
    }
    assert!(combinators >= 3, "only {combinators} oneOf/anyOf found");

    let results = schema(&document, "BatchResult");
    assert_eq!(
        results["oneOf"],
        json!([
            {"$ref": "#/components/schemas/Feedback"},
            {"$ref": "#/components/schemas/BatchNotFound"}
        ]),
        "{results}"
    );
    let update = schema(&document, "UpdateFeedback");
    for field in ["rating", "description"] {
        let description = update["properties"][field]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.contains("Absent") && description.contains("`null`"),
            "UpdateFeedback.{field} does not explain absent/null/value: {update}"
        );
    }
}

async fn constants_are_const(app: TestApp) {
    let document = document(&app).await;

    let not_found = schema(&document, "BatchNotFound");
    assert_eq!(
        not_found["properties"]["error"]["const"], "not_found",
        "{not_found}"
    );
    assert_eq!(not_found["required"], json!(["id", "error"]), "{not_found}");
    let list = schema(&document, "FeedbackList");
    assert_eq!(list["properties"]["object"]["const"], "list", "{list}");
    let export = &document["paths"]["/api/v1/llm/feedback/export/{kind}"]["get"];
    let truncated = &export["responses"]["200"]["headers"]["X-Export-Truncated"];
    assert_eq!(truncated["schema"]["const"], "true", "{truncated}");
}

async fn the_error_code_is_an_open_string_that_lists_the_current_codes(app: TestApp) {
    let document = document(&app).await;

    assert!(
        document["components"]["schemas"].get("Error").is_none(),
        "a schema named `Error` collides with its `error` property in generated clients"
    );
    let error = schema(&document, "ErrorResponse");
    let body = resolve(&document, &error["properties"]["error"]);
    let code = resolve(&document, &body["properties"]["code"]);
    // A closed enum would break clients generated today when a code is added.
    assert_eq!(code["type"], "string", "{code}");
    assert!(
        code.get("enum").is_none() && code.get("const").is_none(),
        "{code}"
    );
    let description = code["description"].as_str().unwrap_or_default();
    for listed in [
        "invalid_request",
        "unauthorized",
        "not_found",
        "method_not_allowed",
        "conflict",
        "payload_too_large",
        "unsupported_media_type",
        "rate_limited",
        "unavailable",
        "internal",
    ] {
        assert!(
            description.contains(&format!("`{listed}`")),
            "`{listed}` is not listed: {description}"
        );
    }
}

async fn the_document_names_its_server_license_and_security(app: TestApp) {
    let document = document(&app).await;

    assert_eq!(
        document["servers"][0]["url"], "/",
        "{}",
        document["servers"]
    );
    assert!(
        document["info"]["license"]["identifier"].is_string(),
        "{}",
        document["info"]
    );
    assert_eq!(document["security"], json!([{"bearer": []}]));
    for (path, method, operation) in operations(&document) {
        if !path.starts_with("/api/") {
            assert_eq!(
                operation["security"],
                json!([]),
                "{method} {path} must say that it needs no key"
            );
        }
    }
    let own = response_schema(&document, &document["paths"]["/openapi.json"]["get"], "200");
    assert_eq!(own["type"], "object", "{own}");
    assert_eq!(own["additionalProperties"], true, "{own}");
}
