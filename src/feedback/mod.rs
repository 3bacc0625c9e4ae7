//! The domain: feedback entries and the values they are made of.
//!
//! Nothing here knows about HTTP or SQL. Every rule of API.md about a single
//! value lives in exactly one constructor (`parse`), so holding a value of one
//! of these types proves that its rule held.

mod change;
mod description;
mod end_user;
mod error;
mod output_id;
mod patch;
mod rating;
pub mod stats;
mod text;

use chrono::{DateTime, Utc};

pub use change::{
    Change, ChangePosition, ChangeType, ChangesRequest, entry_json, format_timestamp,
};
pub use description::Description;
pub use end_user::EndUserId;
pub use error::FieldError;
pub use output_id::{ModelName, OutputId, TenantId};
pub use patch::Patch;
pub use rating::Rating;

/// The two namespaces of rated outputs: `completions` and `responses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// A chat completion (`chatcmpl-...`).
    Completions,
    /// An agent response (`resp-...`).
    Responses,
}

impl OutputKind {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 2] = [Self::Completions, Self::Responses];

    /// Parses the path segment; anything else is not a kind.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "completions" => Some(Self::Completions),
            "responses" => Some(Self::Responses),
            _ => None,
        }
    }

    /// The path segment, also the value stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completions => "completions",
            Self::Responses => "responses",
        }
    }
}

/// Whose request this is: every store query is confined to one tenant and,
/// when the caller acts for an end user, to that end user's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The tenant of the API key.
    pub tenant: TenantId,
    /// The end user named in `X-On-Behalf-Of`, if any.
    pub end_user: Option<EndUserId>,
}

/// Names one entry within a scope: `(kind, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackKey {
    /// The namespace of the output.
    pub kind: OutputKind,
    /// The output's id.
    pub id: OutputId,
}

/// A stored feedback entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// The namespace of the rated output.
    pub kind: OutputKind,
    /// The rated output's id.
    pub id: OutputId,
    /// Thumbs up or down, if set.
    pub rating: Option<Rating>,
    /// The end user's comment, if set.
    pub description: Option<Description>,
    /// The model that produced the output, if given at creation.
    pub model: Option<ModelName>,
    /// The end user the entry was recorded for, if any.
    pub end_user: Option<EndUserId>,
    /// When the entry was created (millisecond precision, never changes).
    pub created_at: DateTime<Utc>,
    /// When the entry was created or last updated (millisecond precision).
    pub updated_at: DateTime<Utc>,
    /// Its revision: 1 on creation, one more on each update (its `ETag`);
    /// a create after a delete continues the numbering.
    pub revision: i64,
}

/// Where an entry stands in the stable order of a listing: by creation time,
/// ties broken by insertion order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// When the entry was created.
    pub created_at: DateTime<Utc>,
    /// Its insertion sequence number: unique and increasing.
    pub seq: i64,
}

/// Which way a listing runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Oldest first.
    Asc,
    /// Newest first (the default).
    #[default]
    Desc,
}

impl SortOrder {
    /// Parses `asc` or `desc` (exactly, lowercase).
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "asc" => Some(Self::Asc),
            "desc" => Some(Self::Desc),
            _ => None,
        }
    }
}

/// Which entries of a scope a listing or export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackFilter {
    /// The namespace listed.
    pub kind: OutputKind,
    /// Only entries with this rating.
    pub rating: Option<Rating>,
}

/// One page of a keyset-paginated listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Which entries.
    pub filter: FeedbackFilter,
    /// Only entries strictly after this position (in `order`).
    pub after: Option<Position>,
    /// Only entries at or before this position in the stable order (an
    /// export's snapshot: entries created while it runs are not in it).
    pub until: Option<Position>,
    /// Which way.
    pub order: SortOrder,
    /// At most this many entries.
    pub limit: u32,
    /// In ascending order, only entries behind which no create still in
    /// flight can land (list pages; an export bounds itself by `until`).
    pub settled_only: bool,
}

/// A validated create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFeedback {
    /// Which entry to create.
    pub key: FeedbackKey,
    /// The initial rating.
    pub rating: Option<Rating>,
    /// The initial comment.
    pub description: Option<Description>,
    /// The model that produced the output; never changes once set.
    pub model: Option<ModelName>,
}

/// A validated partial update: each field is left alone, cleared or replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedbackChanges {
    /// What to do with the rating.
    pub rating: Patch<Rating>,
    /// What to do with the description.
    pub description: Patch<Description>,
}
