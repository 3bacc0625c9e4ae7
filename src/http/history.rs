//! Delete, revision history and end-user erasure (API.md, "Revision
//! history", "Delete and end-user erasure").

use axum::Json;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::conditional::{Condition, IF_MATCH, IfMatchHeader};
use super::error::ErrorEnvelope;
use super::extract::{EntryParams, QueryParams};
use super::feedback::{NO_SUCH_ENTRY, actor, format_timestamp};
use super::list::{DEFAULT_LIMIT, MAX_LIMIT, parse_limit};
use super::openapi::{EntryPath, KindPath, OnBehalfOf, RatingSchema};
use super::{AppError, AppState, Result};
use crate::auth::Caller;
use crate::feedback::{Description, EndUserId, FieldError, Rating};
use crate::store::{Actor, Deletion, Revision};

/// `DELETE /api/v1/llm/feedback/{kind}/{id}`: the entry is gone, its history
/// ends with a `deleted` revision, the id can be created again.
#[utoipa::path(
    delete,
    path = "/llm/feedback/{kind}/{id}",
    tag = "feedback",
    summary = "Delete feedback (its history stays readable)",
    params(EntryPath, OnBehalfOf, IfMatchHeader),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 412, description = "`If-Match` does not match the current `ETag`; nothing changed", body = ErrorEnvelope),
    )
)]
pub(crate) async fn delete_feedback(
    State(app): State<AppState>,
    caller: Caller,
    EntryParams(key): EntryParams,
    headers: HeaderMap,
) -> Result<StatusCode> {
    let expected = Condition::from_headers(&headers, IF_MATCH)?
        .and_then(|condition| condition.accepted_revisions());
    match app
        .store
        .delete_feedback(&caller.scope(), &key, &actor(&caller), expected.as_deref())
        .await?
    {
        Deletion::Deleted => Ok(StatusCode::NO_CONTENT),
        Deletion::NotFound => Err(AppError::NotFound(NO_SUCH_ENTRY)),
        Deletion::PreconditionFailed => Err(AppError::PreconditionFailed),
    }
}

/// `DELETE /api/v1/llm/feedback/{kind}/batch`: deletes the entry named `batch`.
#[utoipa::path(
    delete,
    path = "/llm/feedback/{kind}/batch",
    tag = "feedback",
    summary = "Delete the entry whose id is `batch`",
    params(KindPath, OnBehalfOf, IfMatchHeader),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 412, description = "`If-Match` does not match the current `ETag`; nothing changed", body = ErrorEnvelope),
    )
)]
pub(crate) async fn delete_feedback_named_batch(
    state: State<AppState>,
    caller: Caller,
    key: EntryParams,
    headers: HeaderMap,
) -> Result<StatusCode> {
    delete_feedback(state, caller, key, headers).await
}

/// Who made a revision.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Actor)]
pub(crate) struct ActorResponse {
    /// `api_key`, `token` (a browser, as the token's end user), or
    /// `migration` (written before revisions were recorded).
    #[serde(rename = "type")]
    #[schema(value_type = ActorTypeSchema)]
    kind: &'static str,
    /// The key's public id (`keys list`), for `api_key` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    key_id: Option<String>,
}

/// The kinds of actor.
#[derive(ToSchema, Deserialize)]
#[schema(as = ActorType)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "documentation only")]
pub(crate) enum ActorTypeSchema {
    ApiKey,
    Token,
    Migration,
}

/// One revision: the entry's state after a write, and who made it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Revision)]
pub(crate) struct RevisionResponse {
    /// 1, 2, ...: also the entry's `ETag` (`"r<revision>"`) after that write.
    revision: i64,
    /// Omitted when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RatingSchema>, nullable = false)]
    rating: Option<&'static str>,
    /// Omitted when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    description: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2024-01-15T10:30:00.000Z")]
    recorded_at: String,
    actor: ActorResponse,
    /// The end user the entry is recorded for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    end_user: Option<String>,
    /// Present (`true`) on the revision that deleted the entry.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(value_type = Option<bool>, nullable = false)]
    deleted: bool,
}

impl From<Revision> for RevisionResponse {
    fn from(revision: Revision) -> Self {
        Self {
            revision: revision.revision,
            rating: revision.rating.map(Rating::as_str),
            description: revision.description.map(Description::into_inner),
            recorded_at: format_timestamp(revision.recorded_at),
            actor: match revision.actor {
                Actor::ApiKey(key_id) => ActorResponse {
                    kind: "api_key",
                    key_id: Some(key_id),
                },
                Actor::Token(_) => ActorResponse {
                    kind: "token",
                    key_id: None,
                },
                Actor::Unknown => ActorResponse {
                    kind: "migration",
                    key_id: None,
                },
            },
            end_user: revision.end_user.map(|user| user.as_str().to_owned()),
            deleted: revision.deleted,
        }
    }
}

/// A page of revisions, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RevisionList)]
pub(crate) struct RevisionList {
    /// Always `list`.
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<RevisionResponse>,
    /// Whether revisions follow `last_id`.
    has_more: bool,
    /// The first revision number of the page; omitted on an empty page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    first_id: Option<i64>,
    /// The last revision number of the page (the next page's `after`);
    /// omitted on an empty page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_id: Option<i64>,
}

/// Query of the revisions operation.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct RevisionParams {
    /// Continue after this revision number (the `last_id` of the previous page).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Revisions per page.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<u32>,
}

fn parse_revision_query(raw: Option<&str>) -> Result<(i64, u32)> {
    let params = QueryParams::parse(raw, &["after", "limit"])?;
    let mut errors = Vec::new();
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => parse_limit(raw).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "limit",
                format!("must be an integer from 1 to {MAX_LIMIT}"),
            ));
            DEFAULT_LIMIT
        }),
    };
    let after = match params.get("after") {
        None => 0,
        Some(raw) => parse_revision_number(raw).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "after",
                "must be a revision number (a non-negative integer)",
            ));
            0
        }),
    };
    if !errors.is_empty() {
        return Err(errors.into());
    }
    Ok((after, limit))
}

/// Plain decimal digits (no sign, no spaces) of a 64-bit integer.
fn parse_revision_number(raw: &str) -> Option<i64> {
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// `GET /api/v1/llm/feedback/{kind}/{id}/revisions`: the entry's history.
#[utoipa::path(
    get,
    path = "/llm/feedback/{kind}/{id}/revisions",
    tag = "feedback",
    summary = "Revision history of an entry (also once deleted)",
    params(EntryPath, OnBehalfOf, RevisionParams),
    security(("bearer" = [])),
    responses((status = 200, description = "Revisions, oldest first", body = RevisionList))
)]
pub(crate) async fn list_revisions(
    State(app): State<AppState>,
    caller: Caller,
    EntryParams(key): EntryParams,
    RawQuery(raw_query): RawQuery,
) -> Result<Json<RevisionList>> {
    let (after, limit) = parse_revision_query(raw_query.as_deref())?;
    let mut revisions = app
        .store
        .list_revisions(&caller.scope(), &key, after, limit + 1)
        .await?
        .ok_or(AppError::NotFound(NO_SUCH_ENTRY))?;
    let has_more = revisions.len() > limit as usize;
    revisions.truncate(limit as usize);
    Ok(Json(RevisionList {
        object: "list",
        first_id: revisions.first().map(|r| r.revision),
        last_id: revisions.last().map(|r| r.revision),
        has_more,
        data: revisions.into_iter().map(RevisionResponse::from).collect(),
    }))
}

/// `GET /api/v1/llm/feedback/{kind}/batch/revisions`: the history of the entry named `batch`.
#[utoipa::path(
    get,
    path = "/llm/feedback/{kind}/batch/revisions",
    tag = "feedback",
    summary = "Revision history of the entry whose id is `batch`",
    params(KindPath, OnBehalfOf, RevisionParams),
    security(("bearer" = [])),
    responses((status = 200, description = "Revisions, oldest first", body = RevisionList))
)]
pub(crate) async fn list_revisions_named_batch(
    state: State<AppState>,
    caller: Caller,
    key: EntryParams,
    query: RawQuery,
) -> Result<Json<RevisionList>> {
    list_revisions(state, caller, key, query).await
}

/// The `{end_user}` path segment, held to `X-On-Behalf-Of`'s rules (`400`
/// naming the path parameter).
#[derive(Debug)]
pub(crate) struct EndUserPath(EndUserId);

/// The name of the path parameter, as `details` report it.
const END_USER_PARAM: &str = "end_user";

impl<S: Send + Sync> FromRequestParts<S> for EndUserPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                AppError::from(FieldError::new(
                    END_USER_PARAM,
                    "is not valid UTF-8 once percent-decoded",
                ))
            })?;
        EndUserId::parse(raw)
            .map(Self)
            .map_err(|err| FieldError::new(END_USER_PARAM, err.message).into())
    }
}

/// `{end_user}` in the OpenAPI document.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct EndUserParam {
    /// The end user, as `X-On-Behalf-Of` names it (1 to 256 printable ASCII
    /// characters, percent-encoded in the path).
    #[param(min_length = 1, max_length = 256, pattern = "^[ -~]+$")]
    end_user: String,
}

/// `X-On-Behalf-Of` on erasure, documented for what it does there.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct NotOnBehalfOf {
    /// Must be absent: this operation (an erasure, a webhook endpoint's
    /// management) is the tenant's, never an end user's (`403` when present).
    #[param(
        rename = "X-On-Behalf-Of",
        min_length = 1,
        max_length = 256,
        pattern = "^[ -~]+$"
    )]
    on_behalf_of: Option<String>,
}

/// How many entries of each kind an erasure removed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErasedCounts {
    completions: u64,
    responses: u64,
}

/// The receipt of an erasure.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ErasureReceipt)]
pub(crate) struct ErasureReceipt {
    /// The end user erased.
    end_user: String,
    /// Entries erased, by kind (their revisions and kept idempotent
    /// outcomes went with them).
    deleted: ErasedCounts,
    /// `era_` and 32 hexadecimal digits: quote it to show the erasure happened.
    #[schema(example = "era_0f1e2d3c4b5a69788796a5b4c3d2e1f0")]
    receipt: String,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2024-01-15T10:30:00.000Z")]
    erased_at: String,
}

/// `DELETE /api/v1/llm/feedback/end-users/{end_user}`: erases everything the
/// tenant holds about one end user.
#[utoipa::path(
    delete,
    path = "/llm/feedback/end-users/{end_user}",
    tag = "feedback",
    summary = "Erase an end user's feedback, history and kept outcomes",
    params(EndUserParam, NotOnBehalfOf),
    security(("bearer" = [])),
    responses((status = 200, description = "Erased (a second call erases 0)", body = ErasureReceipt))
)]
pub(crate) async fn erase_end_user(
    State(app): State<AppState>,
    caller: Caller,
    EndUserPath(end_user): EndUserPath,
) -> Result<Json<ErasureReceipt>> {
    // Erasure is the whole tenant's decision, never one end user's.
    if caller.end_user.is_some() {
        return Err(AppError::Forbidden);
    }
    let tenant = &caller.key.tenant;
    let erasure = app.store.erase_end_user(tenant, &end_user).await?;
    let receipt = format!("era_{:032x}", rand::random::<u128>());
    tracing::info!(
        %receipt,
        completions = erasure.completions,
        responses = erasure.responses,
        "end user erased"
    );
    Ok(Json(ErasureReceipt {
        end_user: end_user.as_str().to_owned(),
        deleted: ErasedCounts {
            completions: erasure.completions,
            responses: erasure.responses,
        },
        receipt,
        erased_at: format_timestamp(Utc::now()),
    }))
}
