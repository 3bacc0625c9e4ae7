//! MKA1's admin export: `POST /api/v1/llm/feedback/export` and
//! `GET /api/v1/llm/feedback/export/status` (API.md, "admin export (MKA1)").
//! Only admin keys get here (`Requirement::AllTenants`); the work is done
//! in `crate::admin_export`. Field names and types are those of
//! `meetkai-mka1==0.12.128` (`StartExportFeedbackResponse`,
//! `GetExportStatusResponse`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::feedback::format_timestamp;
use super::{AppState, Result};
use crate::store::{ExportJob, JobProgress, JobStart, JobStatus};

/// Where an export stands.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ExportProgress)]
pub(crate) struct Progress {
    /// `starting`, `fetching`, `converting`, `uploading`, `completed` or `failed`.
    #[schema(example = "fetching")]
    stage: String,
    /// A line for humans.
    message: String,
    /// Entries written so far (both kinds).
    record_count: i64,
    /// Completion entries written so far.
    completion_count: i64,
    /// Response entries written so far.
    response_count: i64,
    /// Parquet bytes written so far (both files).
    parquet_bytes: i64,
}

impl From<&JobProgress> for Progress {
    fn from(progress: &JobProgress) -> Self {
        Self {
            stage: progress.stage.clone(),
            message: progress.message.clone(),
            record_count: progress.completion_count + progress.response_count,
            completion_count: progress.completion_count,
            response_count: progress.response_count,
            parquet_bytes: progress.parquet_bytes,
        }
    }
}

/// A completed export's files and counts.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ExportResult)]
pub(crate) struct ExportResult {
    /// The export location (`EXPORT_LOCATION`).
    output_path: String,
    /// The completions file (path or `s3://` URL).
    completions_file: String,
    /// The responses file.
    responses_file: String,
    /// Entries exported (both kinds).
    record_count: i64,
    /// Completion entries exported.
    completion_feedback_count: i64,
    /// Response entries exported.
    response_feedback_count: i64,
    /// When it completed: RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime)]
    exported_at: String,
    /// How long it took.
    duration_ms: i64,
}

/// `POST /export`'s answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StartExport)]
pub(crate) struct StartResponse {
    /// `false`: an export was already running (anywhere); its status follows.
    started: bool,
    /// `RUNNING` (or, rarely, the state the new job already reached).
    #[schema(example = "RUNNING")]
    status: &'static str,
    progress: Progress,
}

/// `GET /export/status`'s answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ExportStatus)]
pub(crate) struct StatusResponse {
    /// `NOT_FOUND` (never exported), `RUNNING`, `COMPLETED` or `FAILED`.
    #[schema(example = "COMPLETED")]
    status: &'static str,
    /// When the latest export started: RFC 3339, UTC, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    start_time: Option<String>,
    /// When it completed or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    close_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    progress: Option<Progress>,
    /// Present when `COMPLETED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    result: Option<ExportResult>,
    /// Present when `FAILED`: why (names the location, never credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    error: Option<String>,
}

impl From<ExportJob> for StatusResponse {
    fn from(job: ExportJob) -> Self {
        let result = match (&job.status, &job.files, job.closed_at) {
            (JobStatus::Completed, Some(files), Some(closed_at)) => Some(ExportResult {
                output_path: files.output_path.clone(),
                completions_file: files.completions_file.clone(),
                responses_file: files.responses_file.clone(),
                record_count: job.progress.completion_count + job.progress.response_count,
                completion_feedback_count: job.progress.completion_count,
                response_feedback_count: job.progress.response_count,
                exported_at: format_timestamp(closed_at),
                duration_ms: job.duration_ms.unwrap_or_default(),
            }),
            _ => None,
        };
        Self {
            status: job.status.as_str(),
            start_time: Some(format_timestamp(job.started_at)),
            close_time: job.closed_at.map(format_timestamp),
            progress: Some(Progress::from(&job.progress)),
            result,
            error: job.error.filter(|_| job.status == JobStatus::Failed),
        }
    }
}

/// `POST /api/v1/llm/feedback/export`: starts exporting every tenant's
/// entries to Parquet in the background, unless an export is running.
#[utoipa::path(
    post,
    path = "/llm/feedback/export",
    tag = "admin",
    summary = "Start the admin Parquet export of all tenants (admin key only)",
    responses((status = 202, description = "Started, or already running (`started: false`)", body = StartResponse))
)]
pub(crate) async fn start_export(
    State(app): State<AppState>,
) -> Result<(StatusCode, Json<StartResponse>)> {
    let (started, job) = match app.exporter.start().await? {
        JobStart::Started(job) => (true, job),
        JobStart::AlreadyRunning(job) => (false, job),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(StartResponse {
            started,
            status: job.status.as_str(),
            progress: Progress::from(&job.progress),
        }),
    ))
}

/// `GET /api/v1/llm/feedback/export/status`: the latest export's state.
#[utoipa::path(
    get,
    path = "/llm/feedback/export/status",
    tag = "admin",
    summary = "Status of the latest admin export (admin key only)",
    responses((status = 200, description = "The latest export", body = StatusResponse))
)]
pub(crate) async fn export_status(State(app): State<AppState>) -> Result<Json<StatusResponse>> {
    let status = match app.exporter.status().await? {
        Some(job) => StatusResponse::from(job),
        None => StatusResponse {
            status: "NOT_FOUND",
            start_time: None,
            close_time: None,
            progress: None,
            result: None,
            error: None,
        },
    };
    Ok(Json(status))
}
