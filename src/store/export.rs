//! The admin export's store side: the job rows (one `RUNNING` at a time
//! across every replica, see the migration's partial unique index) and the
//! rows of every tenant, read in keyset order. Implemented for both
//! databases in backend.rs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{StoreError, StoreResult, Timestamp};

/// An export job's lifecycle state, as stored and as API.md names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Being written by the replica that owns it.
    Running,
    /// Both files are written.
    Completed,
    /// It stopped with an error (or its replica died).
    Failed,
}

impl JobStatus {
    /// The stored (and wire) form.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    fn parse(text: &str) -> StoreResult<Self> {
        match text {
            "RUNNING" => Ok(Self::Running),
            "COMPLETED" => Ok(Self::Completed),
            "FAILED" => Ok(Self::Failed),
            other => Err(StoreError::Corrupt(format!("export status {other:?}"))),
        }
    }
}

/// Where a running export stands, as its owner last stored it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// `starting`, `fetching`, `uploading`, `completed` or `failed`.
    pub stage: String,
    /// A line for humans.
    pub message: String,
    /// Completion entries written so far.
    pub completion_count: i64,
    /// Response entries written so far.
    pub response_count: i64,
    /// Parquet bytes written so far (both files).
    pub parquet_bytes: i64,
}

/// Where a completed export's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFiles {
    /// The export location.
    pub output_path: String,
    /// The completions file (full path or URL).
    pub completions_file: String,
    /// The responses file (full path or URL).
    pub responses_file: String,
}

/// One export job, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportJob {
    /// Its id.
    pub id: String,
    /// Its state.
    pub status: JobStatus,
    /// The process that runs (or ran) it.
    pub owner: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The owner's last sign of life.
    pub heartbeat_at: DateTime<Utc>,
    /// When it completed or failed.
    pub closed_at: Option<DateTime<Utc>>,
    /// Its progress (the final one once closed).
    pub progress: JobProgress,
    /// Its files, once completed.
    pub files: Option<JobFiles>,
    /// How long it took, once completed.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The outcome of [`ExportStore::start_export_job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStart {
    /// The new job is the running one.
    Started(ExportJob),
    /// Another job was running (on this or another replica): nothing started.
    AlreadyRunning(ExportJob),
}

/// How a job ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Both files written.
    Completed {
        /// The final counts.
        progress: JobProgress,
        /// Where the files are.
        files: JobFiles,
        /// How long it took.
        duration_ms: i64,
    },
    /// Stopped with this error (final counts as they were).
    Failed {
        /// The counts reached.
        progress: JobProgress,
        /// Why (names the location, never credentials).
        error: String,
    },
}

/// One entry as the export writes it: every tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    /// Insertion order: the keyset cursor.
    pub seq: i64,
    /// Its tenant.
    pub tenant: String,
    /// `completions` or `responses`.
    pub kind: String,
    /// The output id.
    pub id: String,
    /// Unset values are `None` (nulls in Parquet).
    pub model: Option<String>,
    /// See `model`.
    pub rating: Option<String>,
    /// See `model`.
    pub description: Option<String>,
    /// See `model`.
    pub end_user: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The admin export's persistence.
#[async_trait]
pub trait ExportStore: Send + Sync {
    /// Marks `RUNNING` jobs whose heartbeat is older than `stale_before` as
    /// `FAILED` (their process died), then inserts job `id` as `RUNNING`
    /// for `owner` unless another is running: one transaction, and the
    /// partial unique index arbitrates between replicas.
    async fn start_export_job(
        &self,
        id: &str,
        owner: &str,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> StoreResult<JobStart>;

    /// Stores the progress and heartbeat of running job `id`; `false` if it
    /// is no longer running (another replica judged it dead).
    async fn heartbeat_export_job(
        &self,
        id: &str,
        progress: &JobProgress,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Closes running job `id` as completed or failed.
    async fn finish_export_job(
        &self,
        id: &str,
        end: &JobEnd,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// The latest job, after marking stale running ones `FAILED` (as
    /// [`Self::start_export_job`] does).
    async fn latest_export_job(
        &self,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> StoreResult<Option<ExportJob>>;

    /// A reader of every tenant's entries on a database connection of its
    /// own, outside the pools (one more than `DATABASE_MAX_CONNECTIONS`
    /// while an export runs). The connection belongs to the runtime and
    /// the thread that call this: the export reads on a thread of its own
    /// at a lower CPU priority, and on SQLite the connection's worker
    /// thread, started from that thread, inherits the priority. Never
    /// call the pooled methods from such a thread: a connection the pool
    /// opened there would be bound to a runtime that ends with the export.
    async fn export_reader(&self) -> StoreResult<Box<dyn ExportReader>>;
}

/// The rows of every tenant, for the admin export (see
/// [`ExportStore::export_reader`]).
#[async_trait]
pub trait ExportReader: Send {
    /// The highest `seq` now: an export writes the entries up to it.
    async fn max_seq(&mut self) -> StoreResult<i64>;

    /// Up to `limit` entries of every tenant with `after < seq <= upto`, by `seq`.
    async fn rows(&mut self, after: i64, upto: i64, limit: i64) -> StoreResult<Vec<ExportRow>>;

    /// Closes the connection.
    async fn close(self: Box<Self>);
}

/// An `export_jobs` row as both backends read it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ExportJobRow {
    id: String,
    status: String,
    owner: String,
    started_at: Timestamp,
    heartbeat_at: Timestamp,
    closed_at: Option<Timestamp>,
    stage: String,
    message: String,
    completion_count: i64,
    response_count: i64,
    parquet_bytes: i64,
    output_path: Option<String>,
    completions_file: Option<String>,
    responses_file: Option<String>,
    duration_ms: Option<i64>,
    error: Option<String>,
}

impl TryFrom<ExportJobRow> for ExportJob {
    type Error = StoreError;

    fn try_from(row: ExportJobRow) -> StoreResult<Self> {
        let files = match (row.output_path, row.completions_file, row.responses_file) {
            (Some(output_path), Some(completions_file), Some(responses_file)) => Some(JobFiles {
                output_path,
                completions_file,
                responses_file,
            }),
            _ => None,
        };
        Ok(Self {
            id: row.id,
            status: JobStatus::parse(&row.status)?,
            owner: row.owner,
            started_at: row.started_at.0,
            heartbeat_at: row.heartbeat_at.0,
            closed_at: row.closed_at.map(|at| at.0),
            progress: JobProgress {
                stage: row.stage,
                message: row.message,
                completion_count: row.completion_count,
                response_count: row.response_count,
                parquet_bytes: row.parquet_bytes,
            },
            files,
            duration_ms: row.duration_ms,
            error: row.error,
        })
    }
}

/// An export row as both backends read it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ExportRowRow {
    seq: i64,
    tenant: String,
    kind: String,
    output_id: String,
    model: Option<String>,
    rating: Option<String>,
    description: Option<String>,
    end_user: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<ExportRowRow> for ExportRow {
    fn from(row: ExportRowRow) -> Self {
        Self {
            seq: row.seq,
            tenant: row.tenant,
            kind: row.kind,
            id: row.output_id,
            model: row.model,
            rating: row.rating,
            description: row.description,
            end_user: row.end_user,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
        }
    }
}

/// The message a job judged dead is closed with.
pub(super) const STALE_JOB_ERROR: &str =
    "the replica running this export stopped (no heartbeat within the lease); start a new export";
