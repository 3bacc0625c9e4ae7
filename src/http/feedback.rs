//! Create, update and get of feedback entries, and their wire shapes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, EntryParams, KindParam};
use super::{AppError, AppState, Result};
use crate::auth::Caller;
use crate::feedback::{
    Description, Feedback, FeedbackChanges, FeedbackKey, FieldError, ModelName, NewFeedback,
    OutputId, OutputKind, Patch, Rating,
};

/// Body of `POST /{kind}`: raw values, parsed into `NewFeedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
pub(crate) struct CreateFeedbackBody {
    id: Option<String>,
    rating: Option<String>,
    description: Option<String>,
    model: Option<String>,
}

/// Body of `PUT /{kind}/{id}`: each field absent, `null` or a value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
pub(crate) struct UpdateFeedbackBody {
    #[serde(default)]
    rating: Patch<String>,
    #[serde(default)]
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

/// An entry on the wire: unset fields omitted, camelCase millisecond timestamps.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FeedbackResponse {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rating: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    created_at: String,
    updated_at: String,
}

/// RFC 3339, UTC with `Z`, milliseconds: `2024-01-15T10:30:00.000Z`.
#[must_use]
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<Feedback> for FeedbackResponse {
    fn from(entry: Feedback) -> Self {
        Self {
            id: entry.id.into_inner(),
            rating: entry.rating.map(Rating::as_str),
            description: entry.description.map(Description::into_inner),
            model: entry.model.map(ModelName::into_inner),
            created_at: format_timestamp(entry.created_at),
            updated_at: format_timestamp(entry.updated_at),
        }
    }
}

/// `POST /api/v1/llm/feedback/{kind}`: records feedback once per output.
pub(crate) async fn create_feedback(
    State(app): State<AppState>,
    caller: Caller,
    KindParam(kind): KindParam,
    ApiJson(body): ApiJson<CreateFeedbackBody>,
) -> Result<(StatusCode, Json<FeedbackResponse>)> {
    let new = body.parse(kind)?;
    let entry = app
        .store
        .insert_feedback(&caller.scope(), &new)
        .await?
        .ok_or(AppError::Conflict)?;
    Ok((StatusCode::CREATED, Json(entry.into())))
}

/// `PUT /api/v1/llm/feedback/{kind}/{id}`: applies the fields present, atomically.
pub(crate) async fn update_feedback(
    State(app): State<AppState>,
    caller: Caller,
    EntryParams(key): EntryParams,
    ApiJson(body): ApiJson<UpdateFeedbackBody>,
) -> Result<Json<FeedbackResponse>> {
    let changes = FeedbackChanges::try_from(body)?;
    let entry = app
        .store
        .update_feedback(&caller.scope(), &key, &changes)
        .await?
        .ok_or(AppError::NotFound(NO_SUCH_ENTRY))?;
    Ok(Json(entry.into()))
}

/// `GET /api/v1/llm/feedback/{kind}/{id}`.
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

const NO_SUCH_ENTRY: &str = "no feedback for this output";
