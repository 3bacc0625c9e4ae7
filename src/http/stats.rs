//! `GET /api/v1/llm/feedback/stats`: counts, satisfaction and its Wilson
//! interval per model and/or UTC day.

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::Object;
use utoipa::{IntoParams, ToSchema};

use super::extract::QueryParams;
use super::openapi::{KindSchema, ModelNameSchema, OnBehalfOf, constant};
use super::{AppState, Result};
use crate::auth::Caller;
use crate::feedback::stats::{
    MILLIS_PER_DAY, StatsFilter, StatsGroup, StatsGrouping, ceil_millis, into_groups,
};
use crate::feedback::{FieldError, ModelName, OutputKind};

/// The longest range, in days, that may be grouped by day.
pub(crate) const MAX_DAY_GROUPED_DAYS: i64 = 366;

/// A validated statistics query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatsQuery {
    pub(crate) filter: StatsFilter,
    pub(crate) grouping: StatsGrouping,
}

impl StatsQuery {
    /// Parses and checks the query string; every problem is one `details` item.
    pub(crate) fn parse(raw: Option<&str>) -> Result<Self> {
        let params = QueryParams::parse(raw, &["kind", "group_by", "from", "to", "model"])?;
        let mut errors = Vec::new();
        let kind = match params.get("kind") {
            None => {
                errors.push(FieldError::required("kind"));
                None
            }
            Some(raw) => OutputKind::parse(raw).or_else(|| {
                errors.push(FieldError::new(
                    "kind",
                    "must be one of \"completions\", \"responses\"",
                ));
                None
            }),
        };
        let grouping = match params.get("group_by") {
            None => StatsGrouping::None,
            Some(raw) => StatsGrouping::parse(raw).unwrap_or_else(|| {
                errors.push(FieldError::new(
                    "group_by",
                    "must be one of \"model\", \"day\", \"model,day\"",
                ));
                StatsGrouping::None
            }),
        };
        let mut instant = |name: &str| {
            params.get(name).and_then(|raw| {
                DateTime::parse_from_rfc3339(raw)
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(|_| {
                        errors.push(FieldError::new(
                            name,
                            "must be an RFC 3339 timestamp, e.g. 2024-01-15T00:00:00Z",
                        ));
                    })
                    .ok()
            })
        };
        let from = instant("from");
        let to = instant("to");
        let model = params.get("model").and_then(|raw| {
            ModelName::parse(raw)
                .map_err(|err| errors.push(FieldError::new("model", err.message)))
                .ok()
        });
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                errors.push(FieldError::new("from", "must not be after to"));
            } else if grouping.by_day() && to - from > TimeDelta::days(MAX_DAY_GROUPED_DAYS) {
                errors.push(FieldError::new(
                    "to",
                    format!(
                        "grouped by day, the range from..to must be at most {MAX_DAY_GROUPED_DAYS} days"
                    ),
                ));
            }
        }
        match kind {
            Some(kind) if errors.is_empty() => Ok(Self {
                filter: StatsFilter {
                    kind,
                    from_millis: from.map(ceil_millis),
                    to_millis: to.map(ceil_millis),
                    model,
                },
                grouping,
            }),
            _ => Err(errors.into()),
        }
    }
}

/// Query of the statistics operation (documentation only: `StatsQuery`
/// parses it).
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct StatsParams {
    /// Which kind of output.
    kind: KindSchema,
    /// `model`, `day` or `model,day`; absent: one group of everything.
    #[param(value_type = Option<GroupBySchema>)]
    group_by: Option<String>,
    /// Entries created at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Entries created before this instant (RFC 3339); grouped by day, at
    /// most 366 days after `from`.
    #[param(format = DateTime)]
    to: Option<String>,
    /// Only this model's entries.
    #[param(value_type = Option<ModelNameSchema>)]
    model: Option<String>,
}

/// How groups are formed.
#[derive(ToSchema, Deserialize)]
#[schema(as = StatsGroupBy)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) enum GroupBySchema {
    #[serde(rename = "model")]
    Model,
    #[serde(rename = "day")]
    Day,
    #[serde(rename = "model,day")]
    ModelDay,
}

/// One group of the answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StatsGroup)]
pub(crate) struct GroupResponse {
    /// The model (`""` for entries without one); only when grouped by model.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    model: Option<String>,
    /// The UTC day, `YYYY-MM-DD`; only when grouped by day.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = Date)]
    day: Option<String>,
    /// Entries.
    total: i64,
    /// Rated `thumbs_up`.
    thumbs_up: i64,
    /// Rated `thumbs_down`.
    thumbs_down: i64,
    /// Without a rating.
    unrated: i64,
    /// With a description.
    with_description: i64,
    /// `thumbs_up / (thumbs_up + thumbs_down)`; `null` when none is rated.
    #[schema(minimum = 0, maximum = 1)]
    satisfaction: Option<f64>,
    /// The 95 % Wilson score interval `[low, high]` of `satisfaction`
    /// (z = 1.959964); `null` when none is rated.
    #[schema(min_items = 2, max_items = 2)]
    satisfaction_ci95: Option<[f64; 2]>,
}

impl From<StatsGroup> for GroupResponse {
    fn from(group: StatsGroup) -> Self {
        let counts = group.counts;
        Self {
            model: group.model,
            day: group.day.map(format_day),
            total: counts.total,
            thumbs_up: counts.thumbs_up,
            thumbs_down: counts.thumbs_down,
            unrated: counts.unrated,
            with_description: counts.with_description,
            satisfaction: counts.satisfaction(),
            satisfaction_ci95: counts.satisfaction_ci95().map(|(low, high)| [low, high]),
        }
    }
}

/// A day number as `YYYY-MM-DD`.
fn format_day(day: i64) -> String {
    DateTime::from_timestamp_millis(day.saturating_mul(MILLIS_PER_DAY))
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Stats)]
pub(crate) struct StatsResponse {
    /// Always `stats`.
    #[schema(schema_with = stats_object_constant)]
    object: &'static str,
    /// The kind counted.
    #[schema(value_type = KindSchema)]
    kind: &'static str,
    /// Ordered by model, then day.
    groups: Vec<GroupResponse>,
}

fn stats_object_constant() -> Object {
    constant("stats", "Always `stats`.")
}

/// `GET /api/v1/llm/feedback/stats`.
#[utoipa::path(
    get,
    path = "/llm/feedback/stats",
    tag = "feedback",
    summary = "Counts, satisfaction and its 95 % Wilson interval per model and/or day",
    params(StatsParams, OnBehalfOf),
    responses((status = 200, description = "The groups", body = StatsResponse))
)]
pub(crate) async fn feedback_stats(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(raw_query): RawQuery,
) -> Result<Json<StatsResponse>> {
    let query = StatsQuery::parse(raw_query.as_deref())?;
    let counts = app
        .store
        .feedback_stats(&caller.scope(), &query.filter)
        .await?;
    Ok(Json(StatsResponse {
        object: "stats",
        kind: query.filter.kind.as_str(),
        groups: into_groups(&counts, query.grouping)
            .into_iter()
            .map(GroupResponse::from)
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::AppError;
    use proptest::prelude::*;

    fn details(raw: &str) -> Vec<String> {
        match StatsQuery::parse(Some(raw)) {
            Err(AppError::InvalidRequest { details, .. }) => {
                details.into_iter().map(|detail| detail.field).collect()
            }
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn bad_queries_name_their_fields() {
        assert_eq!(details(""), ["kind"]);
        assert_eq!(details("kind=completions&group_by=week"), ["group_by"]);
        assert_eq!(details("kind=completions&group_by=day,model"), ["group_by"]);
        assert_eq!(details("kind=completions&from=yesterday"), ["from"]);
        assert_eq!(details("kind=completions&to=2024-01-01"), ["to"]);
        assert_eq!(
            details("kind=completions&from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z"),
            ["from"]
        );
        assert_eq!(
            details(
                "kind=completions&group_by=day&from=2024-01-01T00:00:00Z&to=2025-01-02T00:00:01Z"
            ),
            ["to"]
        );
        assert_eq!(details("kind=completions&kind=responses"), ["kind"]);
        assert_eq!(details("kind=completions&limit=3"), ["limit"]);
        assert_eq!(details("kind=Completions&model=%20x"), ["kind", "model"]);
    }

    #[test]
    fn a_good_query_is_parsed_exactly() {
        let query = StatsQuery::parse(Some(
            "kind=responses&group_by=model%2Cday&from=2024-01-01T00:00:00.0005%2B01:00&to=2024-12-31T00:00:00Z&model=gpt-4o",
        ))
        .unwrap();
        assert_eq!(query.grouping, StatsGrouping::ModelDay);
        assert_eq!(query.filter.kind, OutputKind::Responses);
        // 2023-12-31T23:00:00.0005Z, rounded up to the next whole millisecond.
        assert_eq!(query.filter.from_millis, Some(1_704_063_600_001));
        assert_eq!(query.filter.to_millis, Some(1_735_603_200_000));
        assert_eq!(query.filter.model.unwrap().as_str(), "gpt-4o");
        // 366 days exactly is allowed.
        StatsQuery::parse(Some(
            "kind=responses&group_by=day&from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z",
        ))
        .unwrap();
    }

    proptest! {
        #[test]
        fn any_query_string_parses_or_is_a_400(raw in "[a-z_=&%,:.0-9TZ+-]{0,80}") {
            match StatsQuery::parse(Some(&raw)) {
                Ok(query) => {
                    if let (Some(from), Some(to)) = (query.filter.from_millis, query.filter.to_millis) {
                        prop_assert!(from <= to);
                    }
                }
                Err(AppError::InvalidRequest { details, .. }) => prop_assert!(!details.is_empty()),
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }

        #[test]
        fn ranges_and_groupings_are_checked(
            from_secs in 0_i64..4_000_000_000,
            span_secs in -40_000_000_i64..40_000_000,
            group in prop::sample::select(vec!["", "model", "day", "model,day"]),
        ) {
            let from = DateTime::from_timestamp(from_secs, 0).unwrap();
            let to = from + TimeDelta::seconds(span_secs);
            let group_by = if group.is_empty() { String::new() } else { format!("&group_by={}", group.replace(',', "%2C")) };
            let raw = format!(
                "kind=completions{group_by}&from={}&to={}",
                from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            );
            let by_day = group.contains("day");
            let ok = span_secs >= 0 && !(by_day && span_secs > MAX_DAY_GROUPED_DAYS * 86_400);
            prop_assert_eq!(StatsQuery::parse(Some(&raw)).is_ok(), ok, "{}", raw);
        }
    }
}
