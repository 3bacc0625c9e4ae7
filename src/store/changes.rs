//! The types of the outbox (issue 14): a change as written and as read.

use super::{StoreError, Timestamp};
use crate::feedback::{Change, ChangePosition, ChangeType, EndUserId, OutputId, OutputKind};

/// A change as a write records it, in the write's transaction
/// (`record_change` in backend.rs).
#[derive(Debug, Clone, Copy)]
pub(super) struct NewChange<'a> {
    /// What happened.
    pub(super) change_type: ChangeType,
    /// The entry's kind, as stored.
    pub(super) kind: &'a str,
    /// The entry's id.
    pub(super) output_id: &'a str,
    /// The end user the entry is recorded for.
    pub(super) end_user: Option<&'a str>,
    /// The entry after the change as the API serialises it; `None` for deletes.
    pub(super) entry: Option<&'a str>,
}

/// What a page of the changes feed found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesPage {
    /// The changes after the cursor, oldest first.
    Changes(Vec<Change>),
    /// The cursor names no change of the tenant (never issued, or purged).
    UnknownCursor,
}

/// A change row as both backends read it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ChangeRow {
    seq: i64,
    kind: String,
    output_id: String,
    end_user: Option<String>,
    #[sqlx(rename = "type")]
    change_type: String,
    entry: Option<String>,
    occurred_at: Timestamp,
}

impl TryFrom<ChangeRow> for Change {
    type Error = StoreError;

    fn try_from(row: ChangeRow) -> Result<Self, Self::Error> {
        let corrupt = |err: crate::feedback::FieldError| StoreError::Corrupt(err.to_string());
        Ok(Self {
            position: ChangePosition {
                occurred_at: row.occurred_at.0,
                seq: row.seq,
            },
            change_type: ChangeType::parse(&row.change_type)
                .ok_or_else(|| StoreError::Corrupt(format!("change type {:?}", row.change_type)))?,
            kind: OutputKind::parse(&row.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("kind {:?}", row.kind)))?,
            id: OutputId::parse(row.output_id).map_err(corrupt)?,
            end_user: row
                .end_user
                .map(EndUserId::parse)
                .transpose()
                .map_err(corrupt)?,
            entry: row.entry,
        })
    }
}
