//! Create, update and get of feedback entries, and their wire shapes.

use axum::Json;
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, ETAG};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::conditional::{
    Condition, IDEMPOTENT_REPLAYED, IF_MATCH, IF_NONE_MATCH, IdempotencyKey, IdempotencyKeyHeader,
    IfMatchHeader, IfNoneMatchHeader, etag, etag_value,
};
use super::error::ErrorEnvelope;

use super::extract::{ApiJson, EntryParams, KindParam};
use super::openapi::{
    EntryPath, KindPath, ModelNameSchema, OnBehalfOf, OutputIdSchema, RatingSchema,
};
use super::{AppError, AppState, Result};
use crate::auth::Caller;
use crate::feedback::{
    Description, EndUserId, Feedback, FeedbackChanges, FeedbackKey, FieldError, ModelName,
    NewFeedback, OutputId, OutputKind, Patch, Rating, Scope,
};
use crate::store::{Actor, IdempotentCreate, IdempotentRequest, Insertion, KeptResponse, Update};
use crate::telemetry::{FEEDBACK_CREATED, FEEDBACK_UPDATED};

/// A new feedback entry (the body of create).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
#[schema(as = CreateFeedback)]
pub(crate) struct CreateFeedbackBody {
    /// The rated output's id: 1 to 256 characters, no control characters,
    /// no leading or trailing whitespace.
    #[schema(value_type = OutputIdSchema, required = true, example = "resp-xyz789")]
    id: Option<String>,
    /// The verdict; `null` means absent.
    #[schema(value_type = Option<RatingSchema>)]
    rating: Option<String>,
    /// A comment: at most 2000 Unicode scalar values; `""` is a value; `null` means absent.
    #[schema(max_length = 2000, example = "Very helpful response!")]
    description: Option<String>,
    /// The model that produced the output (an extension); never changes once set.
    #[schema(value_type = Option<ModelNameSchema>, example = "gpt-4o")]
    model: Option<String>,
}

/// Changes to an entry: each field absent (unchanged), `null` (cleared) or a value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
#[schema(as = UpdateFeedback)]
pub(crate) struct UpdateFeedbackBody {
    /// Absent: unchanged; `null`: cleared; a value: replaced.
    #[serde(default)]
    #[schema(value_type = Option<RatingSchema>)]
    rating: Patch<String>,
    /// Absent: unchanged; `null`: cleared; a value (at most 2000 characters): replaced.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 2000)]
    description: Patch<String>,
}

/// Keeps the value of a successful parse, collects the error of a failed one,
/// so that every bad field is reported at once.
fn collect<T>(errors: &mut Vec<FieldError>, parsed: Result<T, FieldError>) -> Option<T> {
    parsed.map_err(|err| errors.push(err)).ok()
}

impl CreateFeedbackBody {
    fn parse(self, kind: OutputKind) -> Result<NewFeedback> {
        let mut errors = Vec::new();
        let id = collect(
            &mut errors,
            self.id
                .ok_or_else(|| FieldError::required("id"))
                .and_then(OutputId::parse),
        );
        let rating = collect(
            &mut errors,
            self.rating.as_deref().map(Rating::parse).transpose(),
        );
        let description = collect(
            &mut errors,
            self.description.map(Description::parse).transpose(),
        );
        let model = collect(&mut errors, self.model.map(ModelName::parse).transpose());
        match (id, rating, description, model) {
            (Some(id), Some(rating), Some(description), Some(model)) if errors.is_empty() => {
                Ok(NewFeedback {
                    key: FeedbackKey { kind, id },
                    rating,
                    description,
                    model,
                })
            }
            _ => Err(errors.into()),
        }
    }
}

impl TryFrom<UpdateFeedbackBody> for FeedbackChanges {
    type Error = AppError;

    fn try_from(body: UpdateFeedbackBody) -> Result<Self> {
        let mut errors = Vec::new();
        let rating = collect(&mut errors, body.rating.try_map(|raw| Rating::parse(&raw)));
        let description = collect(&mut errors, body.description.try_map(Description::parse));
        match (rating, description) {
            (Some(rating), Some(description)) => Ok(Self {
                rating,
                description,
            }),
            _ => Err(errors.into()),
        }
    }
}

/// A feedback entry: unset fields omitted, millisecond timestamps under both
/// spellings (API.md, "Resources"): camelCase as MKA1's documentation shows
/// them, snake_case as MKA1's SDK reads them since 0.12.22.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Feedback)]
pub(crate) struct FeedbackResponse {
    /// The rated output's id.
    #[schema(example = "chatcmpl-abc123def456")]
    id: String,
    /// Omitted when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RatingSchema>, nullable = false)]
    rating: Option<&'static str>,
    /// Omitted when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, max_length = 2000)]
    description: Option<String>,
    /// Present only when given at creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    model: Option<String>,
    /// RFC 3339, UTC, milliseconds; never changes. Always equal to `created_at`.
    #[serde(rename = "createdAt")]
    #[schema(format = DateTime, example = "2024-01-15T10:30:00.000Z")]
    created_at_camel: String,
    /// RFC 3339, UTC, milliseconds; set on creation and every update. Always
    /// equal to `updated_at`.
    #[serde(rename = "updatedAt")]
    #[schema(format = DateTime, example = "2024-01-16T10:30:00.000Z")]
    updated_at_camel: String,
    /// Always equal to `createdAt` (the spelling MKA1's SDK reads since 0.12.22).
    #[schema(format = DateTime, example = "2024-01-15T10:30:00.000Z")]
    created_at: String,
    /// Always equal to `updatedAt` (the spelling MKA1's SDK reads since 0.12.22).
    #[schema(format = DateTime, example = "2024-01-16T10:30:00.000Z")]
    updated_at: String,
}

pub use crate::feedback::format_timestamp;

impl From<Feedback> for FeedbackResponse {
    fn from(entry: Feedback) -> Self {
        // Formatted once: the two spellings cannot differ.
        let created_at = format_timestamp(entry.created_at);
        let updated_at = format_timestamp(entry.updated_at);
        Self {
            id: entry.id.into_inner(),
            rating: entry.rating.map(Rating::as_str),
            description: entry.description.map(Description::into_inner),
            model: entry.model.map(ModelName::into_inner),
            created_at_camel: created_at.clone(),
            updated_at_camel: updated_at.clone(),
            created_at,
            updated_at,
        }
    }
}

/// `POST /api/v1/llm/feedback/{kind}`: records feedback once per output;
/// with `Idempotency-Key`, a retry gets the first outcome again.
#[utoipa::path(
    post,
    path = "/llm/feedback/{kind}",
    tag = "feedback",
    summary = "Create feedback for an output",
    params(KindPath, OnBehalfOf, IdempotencyKeyHeader),
    request_body = CreateFeedbackBody,
    security(("bearer" = []), ("feedback_token" = [])),
    responses(
        (status = 201, description = "Created (or, with `Idempotent-Replayed: true`, the kept outcome of the same request)", body = FeedbackResponse,
         headers(("ETag" = String, description = "The entry's revision tag"))),
        (status = 409, description = "Feedback for this output already exists, or `idempotency_in_progress` (with `Retry-After: 1`)", body = ErrorEnvelope),
        (status = 422, description = "`idempotency_key_reused`: the key was used with a different request", body = ErrorEnvelope),
    )
)]
pub(crate) async fn create_feedback(
    State(app): State<AppState>,
    caller: Caller,
    KindParam(kind): KindParam,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateFeedbackBody>,
) -> Result<Response> {
    let idempotency_key = IdempotencyKey::from_headers(&headers)?;
    let new = body.parse(kind)?;
    // The output is known only now: a token may create only its own.
    caller.authorize_output(&new.key)?;
    let scope = caller.scope();
    let actor = actor(&caller);
    let Some(key) = idempotency_key else {
        let Insertion::Inserted(entry) = app.store.insert_feedback(&scope, &new, &actor).await?
        else {
            return Err(AppError::Conflict);
        };
        count_write(FEEDBACK_CREATED, &entry);
        return Ok(entry_response(StatusCode::CREATED, entry));
    };
    let request = IdempotentRequest {
        key: key.as_str(),
        fingerprint: fingerprint(&scope, &new),
        kept_since: Utc::now() - app.idempotency_ttl,
    };
    let outcome = app
        .store
        .insert_feedback_idempotent(&scope, &new, &actor, &request, &keep_outcome)
        .await?;
    match outcome {
        IdempotentCreate::Processed(kept) => {
            if kept.status == StatusCode::CREATED.as_u16() {
                metrics::counter!(FEEDBACK_CREATED, "kind" => kind.as_str(),
                    "rating" => new.rating.map_or("none", Rating::as_str))
                .increment(1);
            }
            Ok(kept_response(kept, false))
        }
        IdempotentCreate::Replayed(kept) => Ok(kept_response(kept, true)),
        IdempotentCreate::InProgress => Err(AppError::IdempotencyInProgress),
        IdempotentCreate::KeyReused => Err(AppError::IdempotencyKeyReused),
    }
}

/// Who writes, as the revision records it.
pub(crate) fn actor(caller: &Caller) -> Actor {
    if caller.output.is_some() {
        Actor::Token(caller.key.key_id.clone())
    } else {
        Actor::ApiKey(caller.key.key_id.clone())
    }
}

/// What makes two creates "the same request" (API.md, "Idempotent creates"):
/// kind, end user and the body as parsed, hashed.
fn fingerprint(scope: &Scope, new: &NewFeedback) -> String {
    let parsed = serde_json::json!([
        new.key.kind.as_str(),
        scope.end_user.as_ref().map(EndUserId::as_str),
        new.key.id.as_str(),
        new.rating.map(Rating::as_str),
        new.description.as_ref().map(Description::as_str),
        new.model.as_ref().map(ModelName::as_str),
    ]);
    hex::encode(Sha256::digest(parsed.to_string().as_bytes()))
}

/// The outcome of a create as it is sent and kept: `201` + entry, or `409`.
fn keep_outcome(insertion: &Insertion) -> KeptResponse {
    match insertion {
        Insertion::Inserted(entry) => KeptResponse {
            status: StatusCode::CREATED.as_u16(),
            body: entry_json(entry.clone()),
            etag: Some(etag(entry.revision)),
        },
        Insertion::AlreadyExists => KeptResponse {
            status: StatusCode::CONFLICT.as_u16(),
            body: AppError::Conflict.envelope_json(),
            etag: None,
        },
    }
}

/// A kept outcome as a response, exactly its bytes.
fn kept_response(kept: KeptResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, [(CONTENT_TYPE, "application/json")], kept.body).into_response();
    let headers = response.headers_mut();
    if let Some(tag) = kept.etag.and_then(|tag| HeaderValue::from_str(&tag).ok()) {
        headers.insert(ETAG, tag);
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

fn entry_json(entry: Feedback) -> String {
    serde_json::to_string(&FeedbackResponse::from(entry)).unwrap_or_default()
}

/// An entry answer: its JSON and its `ETag`.
fn entry_response(status: StatusCode, entry: Feedback) -> Response {
    let tag = etag_value(entry.revision);
    let mut response = (status, Json(FeedbackResponse::from(entry))).into_response();
    response.headers_mut().insert(ETAG, tag);
    response
}

/// `PUT /api/v1/llm/feedback/{kind}/{id}`: applies the fields present,
/// atomically; with `If-Match`, only to the revision it names.
#[utoipa::path(
    put,
    path = "/llm/feedback/{kind}/{id}",
    tag = "feedback",
    summary = "Update feedback: absent fields stay, null clears, a value replaces",
    params(EntryPath, OnBehalfOf, IfMatchHeader),
    request_body = UpdateFeedbackBody,
    security(("bearer" = []), ("feedback_token" = [])),
    responses(
        (status = 200, description = "Updated", body = FeedbackResponse,
         headers(("ETag" = String, description = "The entry's revision tag"))),
        (status = 412, description = "`If-Match` does not match the current `ETag`; nothing changed", body = ErrorEnvelope),
    )
)]
pub(crate) async fn update_feedback(
    State(app): State<AppState>,
    caller: Caller,
    EntryParams(key): EntryParams,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateFeedbackBody>,
) -> Result<Response> {
    let expected = Condition::from_headers(&headers, IF_MATCH)?;
    let changes = FeedbackChanges::try_from(body)?;
    let expected = expected.map(|condition| condition.accepted_revisions());
    // `If-Match: *` asks only that the entry exists, as every update does.
    let expected = expected.flatten();
    let entry = match app
        .store
        .update_feedback(
            &caller.scope(),
            &key,
            &changes,
            &actor(&caller),
            expected.as_deref(),
        )
        .await?
    {
        Update::Updated(entry) => entry,
        Update::NotFound => return Err(AppError::NotFound(NO_SUCH_ENTRY)),
        Update::PreconditionFailed => return Err(AppError::PreconditionFailed),
    };
    count_write(FEEDBACK_UPDATED, &entry);
    Ok(entry_response(StatusCode::OK, entry))
}

/// `GET /api/v1/llm/feedback/{kind}/{id}`; `304` when `If-None-Match` matches.
#[utoipa::path(
    get,
    path = "/llm/feedback/{kind}/{id}",
    tag = "feedback",
    summary = "Get feedback",
    params(EntryPath, OnBehalfOf, IfNoneMatchHeader),
    security(("bearer" = []), ("feedback_token" = [])),
    responses(
        (status = 200, description = "The entry", body = FeedbackResponse,
         headers(("ETag" = String, description = "The entry's revision tag"))),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag`"),
    )
)]
pub(crate) async fn get_feedback(
    State(app): State<AppState>,
    caller: Caller,
    EntryParams(key): EntryParams,
    headers: HeaderMap,
) -> Result<Response> {
    let condition = Condition::from_headers(&headers, IF_NONE_MATCH)?;
    let entry = app
        .store
        .find_feedback(&caller.scope(), &key)
        .await?
        .ok_or(AppError::NotFound(NO_SUCH_ENTRY))?;
    if condition.is_some_and(|condition| condition.matches_weakly(entry.revision)) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(ETAG, etag_value(entry.revision))],
        )
            .into_response());
    }
    Ok(entry_response(StatusCode::OK, entry))
}

/// `GET /api/v1/llm/feedback/{kind}/batch`: the entry named `batch` (only
/// `POST` there is batch get).
#[utoipa::path(
    get,
    path = "/llm/feedback/{kind}/batch",
    tag = "feedback",
    summary = "Get the entry whose id is `batch`",
    params(KindPath, OnBehalfOf, IfNoneMatchHeader),
    security(("bearer" = []), ("feedback_token" = [])),
    responses(
        (status = 200, description = "The entry", body = FeedbackResponse),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag`"),
    )
)]
pub(crate) async fn get_feedback_named_batch(
    state: State<AppState>,
    caller: Caller,
    key: EntryParams,
    headers: HeaderMap,
) -> Result<Response> {
    get_feedback(state, caller, key, headers).await
}

/// `PUT /api/v1/llm/feedback/{kind}/batch`: updates the entry named `batch`.
#[utoipa::path(
    put,
    path = "/llm/feedback/{kind}/batch",
    tag = "feedback",
    summary = "Update the entry whose id is `batch`",
    params(KindPath, OnBehalfOf, IfMatchHeader),
    request_body = UpdateFeedbackBody,
    security(("bearer" = []), ("feedback_token" = [])),
    responses(
        (status = 200, description = "Updated", body = FeedbackResponse),
        (status = 412, description = "`If-Match` does not match the current `ETag`; nothing changed", body = ErrorEnvelope),
    )
)]
pub(crate) async fn update_feedback_named_batch(
    state: State<AppState>,
    caller: Caller,
    key: EntryParams,
    headers: HeaderMap,
    body: ApiJson<UpdateFeedbackBody>,
) -> Result<Response> {
    update_feedback(state, caller, key, headers, body).await
}

pub(crate) const NO_SUCH_ENTRY: &str = "no feedback for this output";

/// Counts a successful write by kind and resulting rating.
fn count_write(metric: &'static str, entry: &Feedback) {
    let rating = entry.rating.map_or("none", Rating::as_str);
    metrics::counter!(metric, "kind" => entry.kind.as_str(), "rating" => rating).increment(1);
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The outbox stores `entry_json`; the API answers `FeedbackResponse`:
        /// byte for byte the same text.
        #[test]
        fn the_outbox_entry_is_the_api_entry_byte_for_byte(
            rating in proptest::option::of(prop_oneof![Just(Rating::ThumbsUp), Just(Rating::ThumbsDown)]),
            description in proptest::option::of("\\PC{0,40}"),
            model in proptest::option::of("[a-z0-9.-]{1,20}"),
            created in 0_i64..4_000_000_000_000,
            later in 0_i64..1_000_000,
        ) {
            let entry = Feedback {
                kind: OutputKind::Responses,
                id: OutputId::parse("resp-1\"\\/é".to_owned()).unwrap(),
                rating,
                description: description.map(|text| Description::parse(text).unwrap()),
                model: model.map(|name| ModelName::parse(name).unwrap()),
                end_user: None,
                created_at: DateTime::from_timestamp_millis(created).unwrap(),
                updated_at: DateTime::from_timestamp_millis(created + later).unwrap(),
                revision: 1,
            };
            let outbox = crate::feedback::entry_json(&entry);
            let api = serde_json::to_string(&FeedbackResponse::from(entry)).unwrap();
            prop_assert_eq!(outbox, api);
        }
    }
}
