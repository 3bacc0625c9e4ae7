//! The changes feed (API.md, "Changes feed: `GET /changes`"): every write of
//! the tenant's entries, in commit order, behind opaque cursors.

use axum::Json;
use axum::extract::{RawQuery, State};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::Object;
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorEnvelope;
use super::extract::QueryParams;
use super::feedback::{FeedbackResponse, format_timestamp};
use super::openapi::{KindSchema, OnBehalfOf, constant};
use super::{AppError, AppState, Result};
use crate::auth::Caller;
use crate::feedback::{Change, ChangePosition, ChangesRequest, FieldError, OutputKind};
use crate::store::ChangesPage;

/// Default and bounds of `limit`.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// What a cursor's text says before it is encoded: a version, then the
/// position of the last change seen, or `start` (nothing seen yet).
const CURSOR_VERSION: &str = "c1:";
const START: &str = "start";

/// A point of the feed that a cursor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Before the oldest change kept.
    Start,
    /// Just after this change.
    After(ChangePosition),
}

impl Cursor {
    /// The opaque text: base64url of `c1:<occurred_at ms>:<seq>` (or `c1:start`).
    fn encode(self) -> String {
        let text = match self {
            Self::Start => format!("{CURSOR_VERSION}{START}"),
            Self::After(position) => format!(
                "{CURSOR_VERSION}{}:{}",
                position.occurred_at.timestamp_millis(),
                position.seq
            ),
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Only what [`encode`](Self::encode) writes; anything else is `None`.
    fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = std::str::from_utf8(&bytes)
            .ok()?
            .strip_prefix(CURSOR_VERSION)?;
        if text == START {
            return Some(Self::Start);
        }
        let (millis, seq) = text.split_once(':')?;
        let number = |digits: &str| {
            (!digits.is_empty() && digits.len() <= 19 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<i64>().ok())
                .flatten()
        };
        let position = ChangePosition {
            occurred_at: DateTime::from_timestamp_millis(number(millis)?)?,
            seq: number(seq).filter(|seq| *seq > 0)?,
        };
        // Canonical text only: one cursor per position.
        let cursor = Self::After(position);
        (cursor.encode() == raw).then_some(cursor)
    }
}

/// A validated changes query.
struct ChangesQuery {
    after: Cursor,
    kind: Option<OutputKind>,
    limit: u32,
}

impl ChangesQuery {
    fn parse(raw: Option<&str>) -> Result<Self> {
        let params = QueryParams::parse(raw, &["after", "limit", "kind"])?;
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
        let kind = params.get("kind").and_then(|raw| {
            OutputKind::parse(raw).or_else(|| {
                errors.push(FieldError::new(
                    "kind",
                    "must be one of \"completions\", \"responses\"",
                ));
                None
            })
        });
        let after = match params.get("after") {
            None => Cursor::Start,
            Some(raw) => Cursor::decode(raw).unwrap_or_else(|| {
                errors.push(FieldError::new(
                    "after",
                    "is not a cursor issued by this service (use a next_cursor or a cursor of a change)",
                ));
                Cursor::Start
            }),
        };
        if !errors.is_empty() {
            return Err(errors.into());
        }
        Ok(Self { after, kind, limit })
    }
}

/// Plain decimal digits only (no sign, no spaces), from 1 to [`MAX_LIMIT`].
fn parse_limit(raw: &str) -> Option<u32> {
    if raw.is_empty() || raw.len() > 4 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
}

/// Query of the changes feed.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct ChangesParams {
    /// Continue after this cursor (`next_cursor` of the previous page, or a
    /// change's `cursor`); absent: from the oldest change kept.
    after: Option<String>,
    /// Changes per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// Only changes of entries of this kind.
    kind: Option<KindSchema>,
}

/// One change of an entry.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Change)]
pub(crate) struct ChangeItem {
    /// The cursor just after this change.
    cursor: String,
    /// What happened.
    #[serde(rename = "type")]
    #[schema(value_type = ChangeTypeSchema)]
    change_type: &'static str,
    /// The entry's kind.
    #[schema(value_type = KindSchema)]
    kind: &'static str,
    /// The entry's id.
    id: String,
    /// The end user the entry is recorded for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    end_user: Option<String>,
    /// When the change took its place in the feed: RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2024-01-15T10:30:00.000Z")]
    occurred_at: String,
    /// The entry after the change; absent for `feedback.deleted`, and for
    /// every change of an erased end user.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<FeedbackResponse>, nullable = false)]
    entry: Option<serde_json::Value>,
}

/// The three event types: of a change, and of the webhook event that
/// delivers it.
#[derive(ToSchema, Deserialize)]
#[schema(as = ChangeType)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) enum ChangeTypeSchema {
    #[serde(rename = "feedback.created")]
    Created,
    #[serde(rename = "feedback.updated")]
    Updated,
    #[serde(rename = "feedback.deleted")]
    Deleted,
}

impl TryFrom<Change> for ChangeItem {
    type Error = AppError;

    fn try_from(change: Change) -> Result<Self> {
        let entry = change
            .entry
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|err| AppError::Internal(format!("a stored change's entry: {err}")))?;
        Ok(Self {
            cursor: Cursor::After(change.position).encode(),
            change_type: change.change_type.as_str(),
            kind: change.kind.as_str(),
            id: change.id.into_inner(),
            end_user: change.end_user.map(|user| user.as_str().to_owned()),
            occurred_at: format_timestamp(change.position.occurred_at),
            entry,
        })
    }
}

/// A page of the changes feed.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ChangeList)]
pub(crate) struct ChangesResponse {
    /// Always `list`.
    #[schema(schema_with = list_object_constant)]
    object: &'static str,
    /// The changes, in commit order.
    data: Vec<ChangeItem>,
    /// The next page's `after`: the last change's cursor, or on an empty
    /// page the cursor asked with.
    next_cursor: String,
    /// Whether more changes follow right now.
    has_more: bool,
}

fn list_object_constant() -> Object {
    constant("list", "Always `list`.")
}

/// `GET /api/v1/llm/feedback/changes`: every write, in commit order; a
/// reader following `next_cursor` sees each change once.
#[utoipa::path(
    get,
    path = "/llm/feedback/changes",
    tag = "feedback",
    summary = "The changes feed: every create, update and delete, in commit order",
    params(ChangesParams, OnBehalfOf),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page, oldest first", body = ChangesResponse),
        (status = 410, description = "`cursor_expired`: the cursor is older than the changes kept", body = ErrorEnvelope),
    )
)]
pub(crate) async fn list_changes(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(raw_query): RawQuery,
) -> Result<Json<ChangesResponse>> {
    let query = ChangesQuery::parse(raw_query.as_deref())?;
    let after = match query.after {
        Cursor::Start => None,
        Cursor::After(position) => {
            let kept_since =
                Utc::now() - chrono::Duration::days(i64::from(app.change_retention_days));
            if position.occurred_at < kept_since {
                return Err(AppError::CursorExpired);
            }
            Some(position)
        }
    };
    // One row more than asked tells whether another page follows.
    let request = ChangesRequest {
        after,
        kind: query.kind,
        limit: query.limit + 1,
    };
    let mut changes = match app.store.list_changes(&caller.scope(), &request).await? {
        ChangesPage::Changes(changes) => changes,
        ChangesPage::UnknownCursor => {
            return Err(FieldError::new("after", "is not a cursor issued by this service").into());
        }
    };
    let has_more = changes.len() > query.limit as usize;
    changes.truncate(query.limit as usize);
    let next_cursor = changes
        .last()
        .map_or(query.after, |last| Cursor::After(last.position))
        .encode();
    let data = changes
        .into_iter()
        .map(ChangeItem::try_from)
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(ChangesResponse {
        object: "list",
        data,
        next_cursor,
        has_more,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn cursors_round_trip_and_nothing_else_decodes() {
        let position = ChangePosition {
            occurred_at: DateTime::from_timestamp_millis(1_764_000_000_123).unwrap(),
            seq: 42,
        };
        for cursor in [Cursor::Start, Cursor::After(position)] {
            assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        }
        for bad in [
            "",
            "start",
            "42",
            &URL_SAFE_NO_PAD.encode("c1:1764000000123:0"),
            &URL_SAFE_NO_PAD.encode("c1:1764000000123:-1"),
            &URL_SAFE_NO_PAD.encode("c1:+1764000000123:1"),
            &URL_SAFE_NO_PAD.encode("c2:1764000000123:1"),
            &URL_SAFE_NO_PAD.encode("c1:01764000000123:1"),
            &URL_SAFE_NO_PAD.encode("c1:1764000000123"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn changes_queries_reject_bad_limits_kinds_and_unknown_parameters() {
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=+5",
            "kind=Completions",
            "kind=",
            "after=",
            "after=xyz",
            "order=asc",
            "limit=5&limit=6",
        ] {
            assert!(ChangesQuery::parse(Some(bad)).is_err(), "{bad}");
        }
        let ok = ChangesQuery::parse(Some("limit=1000&kind=responses")).unwrap();
        assert_eq!((ok.limit, ok.kind), (1000, Some(OutputKind::Responses)));
        assert_eq!(ChangesQuery::parse(None).unwrap().limit, 100);
    }

    proptest! {
        #[test]
        fn any_text_decodes_to_a_cursor_or_is_refused_without_panicking(raw in "\\PC{0,80}") {
            if let Some(cursor) = Cursor::decode(&raw) {
                prop_assert_eq!(cursor.encode(), raw);
            }
        }
    }
}
