//! List (keyset-paginated) and batch get.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::schema::Object;

use super::extract::{ApiJson, KindParam, QueryParams};
use super::feedback::{FeedbackResponse, format_timestamp};
use super::openapi::{KindPath, ListParams, OnBehalfOf, OutputIdSchema, RatingSchema, constant};
use super::{AppError, AppState, Result};
use crate::auth::Caller;
use crate::feedback::{
    Description, Feedback, FeedbackFilter, FeedbackKey, FieldError, ModelName, OutputId,
    OutputKind, PageRequest, Rating, SortOrder,
};

/// Default and bounds of `limit`.
pub(crate) const DEFAULT_LIMIT: u32 = 20;
pub(crate) const MAX_LIMIT: u32 = 100;
/// Bounds of a batch get.
const MAX_BATCH_IDS: usize = 100;

/// `order` and `rating`, shared by list and export.
pub(crate) fn parse_order_and_rating(
    params: &QueryParams,
    errors: &mut Vec<FieldError>,
) -> (SortOrder, Option<Rating>) {
    let order = match params.get("order") {
        None => SortOrder::default(),
        Some(raw) => SortOrder::parse(raw).unwrap_or_else(|| {
            errors.push(FieldError::new("order", "must be one of \"asc\", \"desc\""));
            SortOrder::default()
        }),
    };
    let rating = params
        .get("rating")
        .and_then(|raw| Rating::parse(raw).map_err(|err| errors.push(err)).ok());
    (order, rating)
}

/// A validated list query.
struct ListQuery {
    after: Option<OutputId>,
    limit: u32,
    order: SortOrder,
    rating: Option<Rating>,
}

impl ListQuery {
    fn parse(raw: Option<&str>) -> Result<Self> {
        let params = QueryParams::parse(raw, &["after", "limit", "order", "rating"])?;
        let mut errors = Vec::new();
        let (order, rating) = parse_order_and_rating(&params, &mut errors);
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
        let after = params.get("after").and_then(|raw| {
            OutputId::parse(raw)
                .map_err(|err| errors.push(FieldError::new("after", err.message)))
                .ok()
        });
        if !errors.is_empty() {
            return Err(errors.into());
        }
        Ok(Self {
            after,
            limit,
            order,
            rating,
        })
    }
}

/// Plain decimal digits only (no sign, no spaces), within bounds.
pub(crate) fn parse_limit(raw: &str) -> Option<u32> {
    if raw.is_empty() || raw.len() > 3 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
}

/// A list item: MKA1's list shape (snake_case timestamps, `model` always).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ListItem {
    /// The rated output's id.
    id: String,
    /// The model given at creation, `""` when none was.
    model: String,
    /// Omitted when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RatingSchema>, nullable = false)]
    rating: Option<&'static str>,
    /// Omitted when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, max_length = 2000)]
    description: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime)]
    created_at: String,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<Feedback> for ListItem {
    fn from(entry: Feedback) -> Self {
        Self {
            id: entry.id.into_inner(),
            model: entry.model.map(ModelName::into_inner).unwrap_or_default(),
            rating: entry.rating.map(Rating::as_str),
            description: entry.description.map(Description::into_inner),
            created_at: format_timestamp(entry.created_at),
            updated_at: format_timestamp(entry.updated_at),
        }
    }
}

/// A page of a listing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = FeedbackList)]
pub(crate) struct ListResponse {
    /// Always `list`.
    #[schema(schema_with = list_object_constant)]
    object: &'static str,
    /// The page, in the requested order.
    data: Vec<ListItem>,
    /// The first item's id; omitted on an empty page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    first_id: Option<String>,
    /// The last item's id (the next page's `after`); omitted on an empty page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_id: Option<String>,
    /// Whether another page follows.
    has_more: bool,
}

/// `GET /api/v1/llm/feedback/{kind}`: one page, newest first by default.
#[utoipa::path(
    get,
    path = "/llm/feedback/{kind}",
    tag = "feedback",
    summary = "List feedback, keyset-paginated",
    params(KindPath, ListParams, OnBehalfOf),
    responses((status = 200, description = "One page", body = ListResponse))
)]
pub(crate) async fn list_feedback(
    State(app): State<AppState>,
    caller: Caller,
    KindParam(kind): KindParam,
    RawQuery(raw_query): RawQuery,
) -> Result<Json<ListResponse>> {
    let query = ListQuery::parse(raw_query.as_deref())?;
    let scope = caller.scope();
    let after = match query.after {
        None => None,
        Some(id) => Some(
            app.store
                .find_position(&scope, &FeedbackKey { kind, id })
                .await?
                .ok_or_else(|| {
                    AppError::from(FieldError::new("after", "does not name an entry"))
                })?,
        ),
    };
    // One row more than asked tells whether another page follows.
    let mut rows = app
        .store
        .list_feedback(
            &scope,
            &PageRequest {
                filter: FeedbackFilter {
                    kind,
                    rating: query.rating,
                },
                after,
                until: None,
                order: query.order,
                limit: query.limit + 1,
                settled_only: true,
            },
        )
        .await?;
    let has_more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    let data: Vec<ListItem> = rows.into_iter().map(|(_, entry)| entry.into()).collect();
    Ok(Json(ListResponse {
        object: "list",
        first_id: data.first().map(|item| item.id.clone()),
        last_id: data.last().map(|item| item.id.clone()),
        data,
        has_more,
    }))
}

/// The ids to fetch (the body of batch get).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
#[schema(as = BatchGet)]
pub(crate) struct BatchGetBody {
    /// 1 to 100 output ids; duplicates are answered each time.
    #[schema(value_type = Vec<OutputIdSchema>, required = true, min_items = 1, max_items = 100)]
    ids: Option<Vec<String>>,
}

impl BatchGetBody {
    fn parse(self) -> Result<Vec<OutputId>> {
        let ids = self.ids.ok_or_else(|| FieldError::required("ids"))?;
        if ids.is_empty() || ids.len() > MAX_BATCH_IDS {
            return Err(FieldError::new(
                "ids",
                format!("must hold 1 to {MAX_BATCH_IDS} ids (got {})", ids.len()),
            )
            .into());
        }
        let mut errors = Vec::new();
        let parsed: Vec<OutputId> = ids
            .into_iter()
            .enumerate()
            .filter_map(|(index, raw)| {
                OutputId::parse(raw)
                    .map_err(|err| {
                        errors.push(FieldError::new(format!("ids[{index}]"), err.message));
                    })
                    .ok()
            })
            .collect();
        if errors.is_empty() {
            Ok(parsed)
        } else {
            Err(errors.into())
        }
    }
}

/// One answer of a batch get: the entry, or a `not_found` marker.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum BatchResult {
    // The entry.
    Found(FeedbackResponse),
    // No entry visible to the caller has that id.
    Missing(BatchNotFound),
}

/// The answer for an id that names no entry visible to the caller.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchNotFound {
    /// The id asked for.
    id: String,
    /// Always `not_found`.
    #[schema(schema_with = not_found_constant)]
    error: &'static str,
}

fn not_found_constant() -> Object {
    constant("not_found", "Always `not_found`.")
}

fn list_object_constant() -> Object {
    constant("list", "Always `list`.")
}

/// Body of the batch get answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BatchGetResults)]
pub(crate) struct BatchGetResponse {
    /// One item per id asked for, in the same order.
    results: Vec<BatchResult>,
}

/// `POST /api/v1/llm/feedback/{kind}/batch`: up to 100 entries in one query,
/// answered in the order asked (duplicates answered each time).
#[utoipa::path(
    post,
    path = "/llm/feedback/{kind}/batch",
    tag = "feedback",
    summary = "Get up to 100 entries at once",
    params(KindPath, OnBehalfOf),
    request_body = BatchGetBody,
    responses((status = 200, description = "One result per id, in order", body = BatchGetResponse))
)]
pub(crate) async fn batch_get_feedback(
    State(app): State<AppState>,
    caller: Caller,
    KindParam(kind): KindParam,
    ApiJson(body): ApiJson<BatchGetBody>,
) -> Result<Json<BatchGetResponse>> {
    let ids = body.parse()?;
    let found = app
        .store
        .find_feedback_batch(&caller.scope(), kind, &ids)
        .await?;
    Ok(Json(BatchGetResponse {
        results: answer_in_order(kind, &ids, &found),
    }))
}

fn answer_in_order(kind: OutputKind, ids: &[OutputId], found: &[Feedback]) -> Vec<BatchResult> {
    let by_id: std::collections::HashMap<&str, &Feedback> = found
        .iter()
        .filter(|entry| entry.kind == kind)
        .map(|entry| (entry.id.as_str(), entry))
        .collect();
    ids.iter()
        .map(|id| match by_id.get(id.as_str()) {
            Some(entry) => BatchResult::Found((*entry).clone().into()),
            None => BatchResult::Missing(BatchNotFound {
                id: id.as_str().to_owned(),
                error: "not_found",
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn limits_from_1_to_100_parse_and_nothing_else_does(raw in "\\PC{0,5}") {
            let expected = raw.bytes().all(|b| b.is_ascii_digit())
                && !raw.is_empty()
                && raw.parse::<u32>().is_ok_and(|n| (1..=100).contains(&n));
            prop_assert_eq!(parse_limit(&raw).is_some(), expected);
        }
    }

    #[test]
    fn list_queries_reject_unknown_repeated_empty_and_miscased_values() {
        for bad in [
            "limit=0",
            "limit=101",
            "limit=+5",
            "limit=5.0",
            "order=ASC",
            "order=",
            "after=",
            "rating=up",
            "foo=1",
            "limit=5&limit=6",
            "rating=THUMBS_UP",
        ] {
            assert!(ListQuery::parse(Some(bad)).is_err(), "{bad}");
        }
        let ok =
            ListQuery::parse(Some("limit=100&order=asc&rating=thumbs_down&after=a%2Fb")).unwrap();
        assert_eq!(ok.limit, 100);
        assert_eq!(ok.order, SortOrder::Asc);
        assert_eq!(ok.rating, Some(Rating::ThumbsDown));
        assert_eq!(ok.after.unwrap().as_str(), "a/b");
        assert_eq!(ListQuery::parse(None).unwrap().limit, 20);
    }
}
