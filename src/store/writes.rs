//! The types of safe writes (issue 13): who wrote, what a conditional write
//! or a delete did, revisions, erasures, idempotent creates.

use chrono::{DateTime, Utc};

use super::{StoreError, Timestamp};
use crate::feedback::{Description, EndUserId, Rating};

/// Who made a write, as its revision records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A tenant API key, by its public id.
    ApiKey(String),
    /// A feedback token, minted by the key with this id (kept, not shown).
    Token(String),
    /// Written before revisions were recorded (the migration's first revision).
    Unknown,
}

impl Actor {
    /// The `actor_type` column.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::ApiKey(_) => "api_key",
            Self::Token(_) => "token",
            Self::Unknown => "migration",
        }
    }

    /// The `actor_key_id` column.
    pub(super) fn key_id(&self) -> Option<&str> {
        match self {
            Self::ApiKey(id) | Self::Token(id) => Some(id),
            Self::Unknown => None,
        }
    }

    fn from_columns(kind: &str, key_id: Option<String>) -> Result<Self, StoreError> {
        match (kind, key_id) {
            ("api_key", Some(id)) => Ok(Self::ApiKey(id)),
            ("token", Some(id)) => Ok(Self::Token(id)),
            ("migration", _) => Ok(Self::Unknown),
            (other, _) => Err(StoreError::Corrupt(format!("actor {other:?}"))),
        }
    }
}

/// Which revisions a conditional write accepts (`If-Match`); `None` where
/// it is taken: any.
pub type Expected<'a> = Option<&'a [i64]>;

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The entry is gone; its history ends with a `deleted` revision.
    Deleted,
    /// No entry is visible in scope under that key.
    NotFound,
    /// The entry exists, but not at a revision the caller named: nothing changed.
    PreconditionFailed,
}

/// One revision of an entry: its state after a write, and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// 1, 2, ... within the entry's history.
    pub revision: i64,
    /// The rating after the write.
    pub rating: Option<Rating>,
    /// The description after the write.
    pub description: Option<Description>,
    /// Whether the write deleted the entry.
    pub deleted: bool,
    /// Who wrote.
    pub actor: Actor,
    /// The end user the entry is recorded for.
    pub end_user: Option<EndUserId>,
    /// When.
    pub recorded_at: DateTime<Utc>,
}

/// A revision row as both backends read it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RevisionRow {
    revision: i64,
    rating: Option<String>,
    description: Option<String>,
    deleted: bool,
    actor_type: String,
    actor_key_id: Option<String>,
    end_user: Option<String>,
    recorded_at: Timestamp,
}

impl TryFrom<RevisionRow> for Revision {
    type Error = StoreError;

    fn try_from(row: RevisionRow) -> Result<Self, Self::Error> {
        let corrupt = |err: crate::feedback::FieldError| StoreError::Corrupt(err.to_string());
        Ok(Self {
            revision: row.revision,
            rating: row
                .rating
                .as_deref()
                .map(Rating::parse)
                .transpose()
                .map_err(corrupt)?,
            description: row
                .description
                .map(Description::parse)
                .transpose()
                .map_err(corrupt)?,
            deleted: row.deleted,
            actor: Actor::from_columns(&row.actor_type, row.actor_key_id)?,
            end_user: row
                .end_user
                .map(EndUserId::parse)
                .transpose()
                .map_err(corrupt)?,
            recorded_at: row.recorded_at.0,
        })
    }
}

/// What an erasure removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Entries of kind `completions`.
    pub completions: u64,
    /// Entries of kind `responses`.
    pub responses: u64,
}

/// A create that carries an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct IdempotentRequest<'a> {
    /// The key, as the client sent it (unquoted).
    pub key: &'a str,
    /// What identifies the request: kind, end user and parsed body, hashed.
    pub fingerprint: String,
    /// Outcomes kept before this are expired.
    pub kept_since: DateTime<Utc>,
}

/// An outcome as it is kept and replayed: status, body bytes, `ETag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptResponse {
    /// `201` or `409`.
    pub status: u16,
    /// The JSON body, exactly as first sent.
    pub body: String,
    /// The `ETag` header of a `201`.
    pub etag: Option<String>,
}

/// What an idempotent create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotentCreate {
    /// Processed now; its outcome is kept with it.
    Processed(KeptResponse),
    /// The same request was processed before: its kept outcome.
    Replayed(KeptResponse),
    /// A request with that key is being processed right now.
    InProgress,
    /// The key was used with a different request.
    KeyReused,
}

/// A kept outcome row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct KeptRow {
    pub(super) fingerprint: String,
    pub(super) status: i64,
    pub(super) body: String,
    pub(super) etag: Option<String>,
    pub(super) live: bool,
}
