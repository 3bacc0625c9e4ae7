//! CSV export, streamed from the database in chunks.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use super::extract::{KindParam, QueryParams};
use super::feedback::format_timestamp;
use super::list::parse_order_and_rating;
use super::openapi::{ExportParams, ExportTruncatedSchema, KindPath, OnBehalfOf};
use super::{AppError, AppState, Result};
use crate::auth::Caller;
use crate::feedback::{Feedback, FeedbackFilter, PageRequest, Scope, SortOrder};
use crate::store::{MAX_PAGE_ROWS, Store, StoreError};

/// Set (to `true`) when the row cap cut rows off.
const EXPORT_TRUNCATED_HEADER: HeaderName = HeaderName::from_static("x-export-truncated");

/// CSV exports one process streams at once; beyond, `503 unavailable`.
pub(crate) const MAX_CONCURRENT_EXPORTS: usize = 4;

/// The bound on exports running at once, and the deadline of each chunk
/// query (an export's body outlives the request deadline).
pub(crate) struct ExportLimits {
    slots: Arc<Semaphore>,
    chunk_timeout: Duration,
}

impl ExportLimits {
    pub(crate) fn new(chunk_timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_EXPORTS)),
            chunk_timeout,
        }
    }
}

/// The header row (API.md).
const CSV_HEADER: [&str; 7] = [
    "id",
    "model",
    "rating",
    "description",
    "user",
    "created_at",
    "updated_at",
];

/// `GET /api/v1/llm/feedback/export/{kind}`: every visible entry (up to the
/// cap) as RFC 4180 CSV, read from the database a chunk at a time so that
/// memory does not grow with the number of rows.
#[utoipa::path(
    get,
    path = "/llm/feedback/export/{kind}",
    tag = "feedback",
    summary = "Export feedback as CSV (streamed)",
    params(KindPath, ExportParams, OnBehalfOf),
    responses((
        status = 200,
        description = "RFC 4180 CSV with the header row id,model,rating,description,user,created_at,updated_at; cells that could start a spreadsheet formula are prefixed with '",
        content_type = "text/csv",
        body = String,
        headers(
            ("X-Export-Truncated" = inline(ExportTruncatedSchema), description = "`true` when the row cap cut rows off; absent otherwise"),
            ("Content-Disposition" = String, description = "attachment; filename=\"feedback-KIND-YYYY-MM-DD.csv\"")
        )
    ))
)]
pub(crate) async fn export_feedback(
    State(app): State<AppState>,
    caller: Caller,
    KindParam(kind): KindParam,
    RawQuery(raw_query): RawQuery,
) -> Result<Response> {
    let params = QueryParams::parse(raw_query.as_deref(), &["order", "rating"])?;
    let mut errors = Vec::new();
    let (order, rating) = parse_order_and_rating(&params, &mut errors);
    if !errors.is_empty() {
        return Err(errors.into());
    }
    // Held by the body until its last chunk, or until the client goes away.
    let slot = Arc::clone(&app.exports.slots)
        .try_acquire_owned()
        .map_err(|_| {
            AppError::Unavailable(format!(
                "overloaded: {MAX_CONCURRENT_EXPORTS} exports are streaming"
            ))
        })?;
    let scope = caller.scope();
    let filter = FeedbackFilter { kind, rating };
    let cap = app.export_max_rows;
    // The newest matching entry bounds the export: entries created while it
    // streams are left out, so the truncation header, sent first, stays true.
    let newest = app
        .store
        .list_feedback(
            &scope,
            &PageRequest {
                filter,
                after: None,
                until: None,
                order: SortOrder::Desc,
                limit: 1,
                settled_only: false,
            },
        )
        .await?
        .first()
        .map(|(position, _)| *position);
    let is_truncated = match newest {
        Some(until) => {
            app.store
                .count_feedback(&scope, filter, until, cap.saturating_add(1))
                .await?
                > cap
        }
        None => false,
    };
    let rows = ExportRows {
        store: Arc::clone(&app.store),
        scope,
        page: PageRequest {
            filter,
            after: None,
            until: newest,
            order,
            limit: MAX_PAGE_ROWS,
            settled_only: false,
        },
        remaining: if newest.is_some() { cap } else { 0 },
        wrote_header: false,
        chunk_timeout: app.exports.chunk_timeout,
        _slot: slot,
    };
    let file_name = format!(
        "feedback-{}-{}.csv",
        kind.as_str(),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    // The body is read after this handler returned, outside the request's
    // span: each chunk runs in it again, so its errors carry the request id.
    let span = tracing::Span::current();
    let chunks = stream::try_unfold(rows, move |rows| rows.next_chunk().instrument(span.clone()));
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    if is_truncated {
        headers.insert(EXPORT_TRUNCATED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The state of an export between chunks.
struct ExportRows {
    store: Arc<dyn Store>,
    scope: Scope,
    page: PageRequest,
    remaining: u64,
    wrote_header: bool,
    chunk_timeout: Duration,
    /// One of the `MAX_CONCURRENT_EXPORTS`, freed when the body ends.
    _slot: OwnedSemaphorePermit,
}

impl ExportRows {
    /// The next chunk of CSV, or `None` when done. A database error or a
    /// chunk query past `chunk_timeout` ends the body early (the status is
    /// already sent): the client sees a truncated transfer, and the error is
    /// logged.
    async fn next_chunk(mut self) -> Result<Option<(Bytes, Self)>, std::io::Error> {
        let mut csv = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::with_capacity(64 * 1024));
        if !self.wrote_header {
            self.wrote_header = true;
            csv.write_record(CSV_HEADER)
                .map_err(std::io::Error::other)?;
            if self.remaining == 0 {
                return Ok(Some((into_bytes(csv)?, self)));
            }
        }
        if self.remaining == 0 {
            return Ok(None);
        }
        self.page.limit =
            u32::try_from(self.remaining.min(u64::from(MAX_PAGE_ROWS))).unwrap_or(MAX_PAGE_ROWS);
        let rows = tokio::time::timeout(
            self.chunk_timeout,
            self.store.list_feedback(&self.scope, &self.page),
        )
        .await
        .map_err(|_| {
            let timeout_ms = self.chunk_timeout.as_millis();
            tracing::error!(
                timeout_ms,
                "export stopped: a chunk query ran past the timeout"
            );
            std::io::Error::from(std::io::ErrorKind::TimedOut)
        })?
        .map_err(|err: StoreError| {
            tracing::error!(error.cause = %err, "export stopped: database error");
            std::io::Error::other(err)
        })?;
        if rows.len() < self.page.limit as usize {
            self.remaining = 0;
        } else {
            self.remaining -= rows.len() as u64;
        }
        let Some((last, _)) = rows.last() else {
            return Ok(None);
        };
        self.page.after = Some(*last);
        for (_, entry) in &rows {
            write_entry(&mut csv, entry)?;
        }
        Ok(Some((into_bytes(csv)?, self)))
    }
}

fn into_bytes(csv: csv::Writer<Vec<u8>>) -> Result<Bytes, std::io::Error> {
    csv.into_inner()
        .map(Bytes::from)
        .map_err(|err| std::io::Error::other(err.to_string()))
}

fn write_entry(csv: &mut csv::Writer<Vec<u8>>, entry: &Feedback) -> Result<(), std::io::Error> {
    let created_at = format_timestamp(entry.created_at);
    let updated_at = format_timestamp(entry.updated_at);
    let cells = [
        entry.id.as_str(),
        entry.model.as_ref().map_or("", |m| m.as_str()),
        entry.rating.map_or("", |r| r.as_str()),
        entry.description.as_ref().map_or("", |d| d.as_str()),
        entry.end_user.as_ref().map_or("", |u| u.as_str()),
        &created_at,
        &updated_at,
    ];
    csv.write_record(cells.map(defuse_formula).iter().map(|cell| cell.as_bytes()))
        .map_err(std::io::Error::other)
}

/// Spreadsheets run cells that start with `=`, `+`, `-`, `@`, a tab or a
/// carriage return as formulas; a leading `'` makes them text (OWASP).
fn defuse_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn formula_cells_are_quote_prefixed() {
        for risky in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(defuse_formula(risky), format!("'{risky}"));
        }
        assert_eq!(defuse_formula("plain"), "plain");
        assert_eq!(defuse_formula(""), "");
    }

    proptest! {
        #[test]
        fn defused_cells_never_start_a_formula_and_keep_their_text(cell in "\\PC*") {
            let defused = defuse_formula(&cell);
            prop_assert!(!defused.starts_with(['=', '+', '-', '@', '\t', '\r']));
            prop_assert!(defused.ends_with(cell.as_str()));
        }
    }
}
