//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! The router is built from the same annotated handlers (utoipa-axum's
//! `routes!`), so a route cannot be served without being documented. What
//! the operations of one router share (their error responses, whether they
//! need the key) is added once per router by `describe`, from the router an
//! operation is in, not from its path; `finish` then adds the bearer scheme
//! and puts the document in the shape that client generators need, for
//! every operation (see `tidy_for_generators`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr};
use utoipa::{IntoParams, OpenApi, PartialSchema, ToSchema};

use super::error::ErrorEnvelope;

/// The document's fixed parts; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "llm-feedback",
        description = "Records what end users think of LLM outputs: a thumbs up or down and an optional comment on a chat completion or an agent response. Follows the MKA1 feedback API.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    servers((url = "/", description = "The service that serves this document")),
    // Every operation needs the key unless it says otherwise; operational
    // routes say `security: []` (`describe`).
    security(("bearer" = [])),
    components(schemas(
        ErrorEnvelope,
        RatingSchema,
        KindSchema,
        OrderSchema,
        OutputIdSchema,
        ModelNameSchema,
        super::stats::GroupBySchema
    )),
    tags(
        (name = "feedback", description = "Feedback entries"),
        (name = "tokens", description = "Feedback tokens: what a browser holds instead of an API key"),
        (name = "webhooks", description = "Webhook endpoints: every change of the tenant's entries, signed per Standard Webhooks v1"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
pub(crate) struct ApiDoc;

/// `thumbs_up` or `thumbs_down`.
#[derive(ToSchema)]
#[schema(as = Rating)]
#[allow(
    dead_code,
    reason = "documentation only: the handlers parse ratings themselves"
)]
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RatingSchema {
    ThumbsUp,
    ThumbsDown,
}

/// The namespace of the rated output.
#[derive(ToSchema, Deserialize)]
#[schema(as = Kind)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "documentation only")]
pub(crate) enum KindSchema {
    Completions,
    Responses,
}

/// Listing order by creation time.
#[derive(ToSchema, Deserialize)]
#[schema(as = Order)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "documentation only")]
pub(crate) enum OrderSchema {
    Asc,
    Desc,
}

/// API.md's identifier rule as a JSON Schema pattern: no control characters
/// (Unicode Cc), no leading or trailing whitespace.
const IDENTIFIER_PATTERN: &str = r"^[^\s\u0000-\u001F\u007F-\u009F]([^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F])?$";

/// An output id: 1 to 256 characters, no control characters, no leading or
/// trailing whitespace.
pub(crate) struct OutputIdSchema;

/// A model name: the same rule as output ids.
pub(crate) struct ModelNameSchema;

fn identifier_schema(description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1))
        .max_length(Some(256))
        .pattern(Some(IDENTIFIER_PATTERN))
        .into()
}

impl PartialSchema for OutputIdSchema {
    fn schema() -> RefOr<Schema> {
        identifier_schema(
            "The id of a rated output: 1 to 256 characters, no control characters, no leading or trailing whitespace.",
        )
    }
}

impl ToSchema for OutputIdSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("OutputId")
    }
}

impl PartialSchema for ModelNameSchema {
    fn schema() -> RefOr<Schema> {
        identifier_schema(
            "The model that produced the output: 1 to 256 characters, no control characters, no leading or trailing whitespace.",
        )
    }
}

impl ToSchema for ModelNameSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ModelName")
    }
}

/// A string schema that allows one value. It is written as a one-value
/// `enum`, which `finish` turns into a `const` (utoipa's model has no
/// `const`).
pub(crate) fn constant(value: &str, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([value]))
        .description(Some(description))
        .build()
}

/// The `X-Export-Truncated` header: only ever `true`.
pub(crate) struct ExportTruncatedSchema;

impl PartialSchema for ExportTruncatedSchema {
    fn schema() -> RefOr<Schema> {
        constant("true", "Sent only when the row cap cut rows off.").into()
    }
}

/// `/openapi.json`'s answer: an OpenAPI 3.1 document, any JSON object.
pub(crate) struct OpenApiDocumentSchema;

impl PartialSchema for OpenApiDocumentSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("An OpenAPI 3.1 document."))
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl ToSchema for OpenApiDocumentSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("OpenApiDocument")
    }
}

/// Path of collection operations.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct KindPath {
    /// `completions` or `responses`; anything else is 404.
    kind: KindSchema,
}

/// Path of entry operations.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct EntryPath {
    /// `completions` or `responses`; anything else is 404.
    kind: KindSchema,
    /// The output's id, percent-encoded: 1 to 256 characters, no control
    /// characters, no leading or trailing whitespace.
    #[param(value_type = OutputIdSchema)]
    id: String,
}

/// `X-On-Behalf-Of`: act for one end user.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct OnBehalfOf {
    /// The end user (1 to 256 printable ASCII characters). Creates record it;
    /// reads and updates see only that user's entries. Absent: the whole tenant.
    #[param(
        rename = "X-On-Behalf-Of",
        min_length = 1,
        max_length = 256,
        pattern = "^[ -~]+$"
    )]
    on_behalf_of: Option<String>,
}

/// Query of the list operation.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct ListParams {
    /// Continue after this entry (the `last_id` of the previous page).
    #[param(value_type = Option<OutputIdSchema>)]
    after: Option<String>,
    /// Entries per page.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<u32>,
    /// By creation time; default `desc`.
    order: Option<OrderSchema>,
    /// Only entries with this rating.
    rating: Option<RatingSchema>,
}

/// Query of the export operation.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct ExportParams {
    /// By creation time; default `desc`.
    order: Option<OrderSchema>,
    /// Only entries with this rating.
    rating: Option<RatingSchema>,
}

/// Which router an operation is served by, and so which errors it can give
/// and whether it needs a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// Under `/api/v1`: authenticated, authorized, bounded.
    Api,
    /// Health, readiness, metrics, this document: no credential.
    Operational,
}

/// Adds to every operation of `document` (one router's part of the whole)
/// the error responses it can give (all with the `ErrorResponse` envelope),
/// so annotations list only successes. The whole document's root `security`
/// asks for the key; operational operations say `security: []`.
pub(crate) fn describe(document: &mut Document, surface: Surface) {
    for (path, item) in &mut document.paths.paths {
        for (method, operation) in [
            ("get", &mut item.get),
            ("post", &mut item.post),
            ("put", &mut item.put),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ] {
            if let Some(operation) = operation {
                add_error_responses(operation, surface, method, path);
                if surface == Surface::Operational {
                    operation.security = Some(Vec::new());
                }
            }
        }
    }
}

/// Completes the document once every route is in it: the typed model first,
/// then, as JSON, what the typed model cannot say.
pub(crate) fn finish(mut document: Document) -> Value {
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API key: `Authorization: Bearer lfk_...`"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "feedback_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A feedback token (`POST /api/v1/llm/feedback/tokens`): `Authorization: Bearer lft_...`; create, update and get of its one output only",
                ))
                .build(),
        ),
    );
    let mut json = match serde_json::to_value(&document) {
        Ok(json) => json,
        // Unreachable in practice (the model is plain data); the service
        // still starts and says what is wrong.
        Err(err) => {
            return serde_json::json!({ "error": format!("cannot serialize the document: {err}") });
        }
    };
    tidy_for_generators(&mut json);
    json
}

/// What client generators (openapi-typescript, openapi-python-client) need
/// and utoipa's output does not give, applied to every schema and operation
/// so that routes added later get it too:
/// - header parameters are never nullable (utoipa makes an `Option` header
///   `type: [string, null]`; a header is absent or a string);
/// - a property's description sits on the property, not inside one branch
///   of its `oneOf` (utoipa puts it on the `$ref` branch of an `Option`);
/// - a one-value `enum` is a `const` (see `constant`).
fn tidy_for_generators(document: &mut Value) {
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in item.values_mut() {
                let parameters = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten();
                for parameter in parameters.filter(|p| p["in"] == "header") {
                    if let Some(schema) = parameter.get_mut("schema") {
                        drop_null_type(schema);
                    }
                }
            }
        }
    }
    visit_schemas(document);
}

/// `type: [T, "null"]` becomes `type: T`.
fn drop_null_type(schema: &mut Value) {
    let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) else {
        return;
    };
    types.retain(|name| name != "null");
    if let [only] = types.as_slice() {
        let only = only.clone();
        schema["type"] = only;
    }
}

/// Walks every JSON object of the document: hoists a lone branch
/// description of a `oneOf`/`anyOf` to the schema holding it, and turns
/// one-value `enum`s into `const`s.
fn visit_schemas(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for combinator in ["oneOf", "anyOf"] {
                let Some(Value::Array(branches)) = object.get_mut(combinator) else {
                    continue;
                };
                let described: Vec<usize> = branches
                    .iter()
                    .enumerate()
                    .filter(|(_, branch)| branch.get("description").is_some())
                    .map(|(index, _)| index)
                    .collect();
                if let [index] = described.as_slice() {
                    let description = branches[*index]
                        .as_object_mut()
                        .and_then(|branch| branch.remove("description"));
                    if let Some(description) = description {
                        object.entry("description").or_insert(description);
                    }
                }
            }
            if let Some(Value::Array(values)) = object.get("enum") {
                if let [only] = values.as_slice() {
                    let only = only.clone();
                    object.remove("enum");
                    object.insert("const".to_owned(), only);
                }
            }
            for child in object.values_mut() {
                visit_schemas(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(visit_schemas),
        _ => {}
    }
}

fn add_error_responses(operation: &mut Operation, surface: Surface, method: &str, path: &str) {
    let has_body = operation.request_body.is_some();
    // Any request can fail, time out or be shed; readiness answers 503 by design.
    let mut statuses: Vec<(&str, &str)> = vec![
        ("500", "Internal error; no detail is given"),
        (
            "503",
            "Database unreachable, overloaded or past the request timeout; retry later",
        ),
    ];
    if surface == Surface::Api {
        statuses.extend([
            (
                "400",
                "Invalid request: bad JSON, fields, values, query or header",
            ),
            (
                "401",
                "Missing, malformed, unknown or revoked API key; or a feedback token that is malformed, forged, expired or whose key was revoked",
            ),
            ("403", "The credential may not call this operation"),
            (
                "404",
                "No such entry visible to the caller, or unknown kind",
            ),
            ("429", "Rate limited; see Retry-After"),
        ]);
        if has_body {
            statuses.extend([
                ("413", "Body over 65,536 bytes"),
                ("415", "Body not application/json"),
            ]);
        }
        // Creates only: not batch get, not minting a token.
        if method == "post" && !path.ends_with("/batch") && !path.ends_with("/tokens") {
            statuses.push(("409", "Feedback for this output already exists"));
        }
    }
    for (status, description) in statuses {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorResponse")))),
                        )
                        .build(),
                )
            });
    }
}
