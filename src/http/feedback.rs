//! Create, update and get of feedback entries, and their wire shapes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, EntryParams, KindParam};
use super::openapi::{
    EntryPath, KindPath, ModelNameSchema, OnBehalfOf, OutputIdSchema, RatingSchema,
};
use super::{AppError, AppState, Result};
use crate::auth::Caller;
use crate::feedback::{
    Description, Feedback, FeedbackChanges, FeedbackKey, FieldError, ModelName, NewFeedback,
    OutputId, OutputKind, Patch, Rating,
};
use crate::store::{Insertion, Update};
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

/// RFC 3339, UTC with `Z`, milliseconds: `2024-01-15T10:30:00.000Z`.
#[must_use]
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

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

/// `POST /api/v1/llm/feedback/{kind}`: records feedback once per output.
#[utoipa::path(
    post,
    path = "/llm/feedback/{kind}",
    tag = "feedback",
    summary = "Create feedback for an output",
    params(KindPath, OnBehalfOf),
    request_body = CreateFeedbackBody,
    security(("bearer" = []), ("feedback_token" = [])),
    responses((status = 201, description = "Created", body = FeedbackResponse))
)]
pub(crate) async fn create_feedback(
    State(app): State<AppState>,
    caller: Caller,
    KindParam(kind): KindParam,
    ApiJson(body): ApiJson<CreateFeedbackBody>,
) -> Result<(StatusCode, Json<FeedbackResponse>)> {
    let new = body.parse(kind)?;
    // The output is known only now: a token may create only its own.
    caller.authorize_output(&new.key)?;
    let Insertion::Inserted(entry) = app.store.insert_feedback(&caller.scope(), &new).await? else {
        return Err(AppError::Conflict);
    };
    count_write(FEEDBACK_CREATED, &entry);
    Ok((StatusCode::CREATED, Json(entry.into())))
}

/// `PUT /api/v1/llm/feedback/{kind}/{id}`: applies the fields present, atomically.
#[utoipa::path(
    put,
    path = "/llm/feedback/{kind}/{id}",
    tag = "feedback",
    summary = "Update feedback: absent fields stay, null clears, a value replaces",
    params(EntryPath, OnBehalfOf),
    request_body = UpdateFeedbackBody,
    security(("bearer" = []), ("feedback_token" = [])),
    responses((status = 200, description = "Updated", body = FeedbackResponse))
)]
pub(crate) async fn update_feedback(
    State(app): State<AppState>,
    caller: Caller,
    EntryParams(key): EntryParams,
    ApiJson(body): ApiJson<UpdateFeedbackBody>,
) -> Result<Json<FeedbackResponse>> {
    let changes = FeedbackChanges::try_from(body)?;
    let entry = match app
        .store
        .update_feedback(&caller.scope(), &key, &changes)
        .await?
    {
        Update::Updated(entry) => entry,
        Update::NotFound => return Err(AppError::NotFound(NO_SUCH_ENTRY)),
    };
    count_write(FEEDBACK_UPDATED, &entry);
    Ok(Json(entry.into()))
}

/// `GET /api/v1/llm/feedback/{kind}/{id}`.
#[utoipa::path(
    get,
    path = "/llm/feedback/{kind}/{id}",
    tag = "feedback",
    summary = "Get feedback",
    params(EntryPath, OnBehalfOf),
    security(("bearer" = []), ("feedback_token" = [])),
    responses((status = 200, description = "The entry", body = FeedbackResponse))
)]
pub(crate) async fn get_feedback(
    State(app): State<AppState>,
    caller: Caller,
    EntryParams(key): EntryParams,
) -> Result<Json<FeedbackResponse>> {
    let entry = app
        .store
        .find_feedback(&caller.scope(), &key)
        .await?
        .ok_or(AppError::NotFound(NO_SUCH_ENTRY))?;
    Ok(Json(entry.into()))
}

/// `GET /api/v1/llm/feedback/{kind}/batch`: the entry named `batch` (only
/// `POST` there is batch get).
#[utoipa::path(
    get,
    path = "/llm/feedback/{kind}/batch",
    tag = "feedback",
    summary = "Get the entry whose id is `batch`",
    params(KindPath, OnBehalfOf),
    security(("bearer" = []), ("feedback_token" = [])),
    responses((status = 200, description = "The entry", body = FeedbackResponse))
)]
pub(crate) async fn get_feedback_named_batch(
    state: State<AppState>,
    caller: Caller,
    key: EntryParams,
) -> Result<Json<FeedbackResponse>> {
    get_feedback(state, caller, key).await
}

/// `PUT /api/v1/llm/feedback/{kind}/batch`: updates the entry named `batch`.
#[utoipa::path(
    put,
    path = "/llm/feedback/{kind}/batch",
    tag = "feedback",
    summary = "Update the entry whose id is `batch`",
    params(KindPath, OnBehalfOf),
    request_body = UpdateFeedbackBody,
    security(("bearer" = []), ("feedback_token" = [])),
    responses((status = 200, description = "Updated", body = FeedbackResponse))
)]
pub(crate) async fn update_feedback_named_batch(
    state: State<AppState>,
    caller: Caller,
    key: EntryParams,
    body: ApiJson<UpdateFeedbackBody>,
) -> Result<Json<FeedbackResponse>> {
    update_feedback(state, caller, key, body).await
}

const NO_SUCH_ENTRY: &str = "no feedback for this output";

/// Counts a successful write by kind and resulting rating.
fn count_write(metric: &'static str, entry: &Feedback) {
    let rating = entry.rating.map_or("none", Rating::as_str);
    metrics::counter!(metric, "kind" => entry.kind.as_str(), "rating" => rating).increment(1);
}
