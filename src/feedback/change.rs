//! Changes of entries, as the outbox records them and the changes feed and
//! webhooks carry them (API.md, "Changes feed").

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::{EndUserId, Feedback, OutputId, OutputKind};

/// What a write did to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeType {
    /// A create (also the first answer of an idempotent create).
    Created,
    /// An update.
    Updated,
    /// A delete, an erasure or retention; such changes carry no entry.
    Deleted,
}

impl ChangeType {
    /// The event type on the wire and in the `type` column.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "feedback.created",
            Self::Updated => "feedback.updated",
            Self::Deleted => "feedback.deleted",
        }
    }

    /// Parses the event type; anything else is not one.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "feedback.created" => Some(Self::Created),
            "feedback.updated" => Some(Self::Updated),
            "feedback.deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// Where a change stands in the feed: by the time it took its place, ties
/// broken by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangePosition {
    /// When the change took its place (milliseconds).
    pub occurred_at: DateTime<Utc>,
    /// Its sequence number in the outbox.
    pub seq: i64,
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its place in the feed (the cursor after it).
    pub position: ChangePosition,
    /// What happened.
    pub change_type: ChangeType,
    /// The entry's kind.
    pub kind: OutputKind,
    /// The entry's id.
    pub id: OutputId,
    /// The end user the entry was recorded for.
    pub end_user: Option<EndUserId>,
    /// The entry after the change as the API serialises it (JSON); `None`
    /// for deletes and for every change of an erased end user.
    pub entry: Option<String>,
}

/// One page of the changes feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangesRequest {
    /// Only changes strictly after this position.
    pub after: Option<ChangePosition>,
    /// Only changes of this kind.
    pub kind: Option<OutputKind>,
    /// At most this many changes.
    pub limit: u32,
}

/// RFC 3339, UTC with `Z`, milliseconds: `2024-01-15T10:30:00.000Z`.
#[must_use]
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON of an entry exactly as the API serialises it (API.md,
/// "Resources"); `http::feedback::FeedbackResponse` is the same shape, and a
/// test there holds the two equal.
#[must_use]
pub fn entry_json(entry: &Feedback) -> String {
    /// Field for field (and in the same order) `FeedbackResponse`.
    #[derive(Serialize)]
    struct EntryJson<'a> {
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        rating: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        #[serde(rename = "createdAt")]
        created_at_camel: &'a str,
        #[serde(rename = "updatedAt")]
        updated_at_camel: &'a str,
        created_at: &'a str,
        updated_at: &'a str,
    }
    let created_at = format_timestamp(entry.created_at);
    let updated_at = format_timestamp(entry.updated_at);
    let json = EntryJson {
        id: entry.id.as_str(),
        rating: entry.rating.map(super::Rating::as_str),
        description: entry.description.as_ref().map(super::Description::as_str),
        model: entry.model.as_ref().map(super::ModelName::as_str),
        created_at_camel: &created_at,
        updated_at_camel: &updated_at,
        created_at: &created_at,
        updated_at: &updated_at,
    };
    // Strings and options only: serialising cannot fail.
    serde_json::to_string(&json).unwrap_or_default()
}
