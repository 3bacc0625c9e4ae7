//! `AppError`: one variant per row of API.md's error table, one JSON envelope.

use axum::Json;
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::feedback::FieldError;
use crate::store::StoreError;

/// Results of handlers and extractors.
pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// Everything a request can fail with, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: bad JSON, types, fields, values or query.
    #[error("{message}")]
    InvalidRequest {
        /// A summary for humans.
        message: String,
        /// One item per bad field, where fields are known.
        details: Vec<FieldError>,
    },
    /// 401: missing, malformed, unknown or revoked key.
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// 403: a valid credential, for an operation it may not call.
    #[error("this credential may not call this operation")]
    Forbidden,
    /// 404: no such entry or route visible to the caller.
    #[error("{0}")]
    NotFound(&'static str),
    /// 405: known path, wrong method.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// 409: feedback for that output already exists.
    #[error("feedback for this output already exists; use PUT to change it")]
    Conflict,
    /// 409: a request with the same `Idempotency-Key` is still in flight.
    #[error("a request with this Idempotency-Key is still being processed; retry after 1 s")]
    IdempotencyInProgress,
    /// 410: a changes-feed cursor older than the changes' retention.
    #[error(
        "this cursor is older than the changes kept (CHANGE_RETENTION_DAYS); start again without `after`"
    )]
    CursorExpired,
    /// 412: `If-Match` does not match the entry's current `ETag`.
    #[error("the entry's current ETag does not match If-Match; nothing was changed")]
    PreconditionFailed,
    /// 422: the `Idempotency-Key` was used with a different request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// 413: body over the limit.
    #[error("request body is larger than 65536 bytes")]
    PayloadTooLarge,
    /// 415: body without a JSON content type.
    #[error("expected a request body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 429: over the rate limit.
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a request would be allowed.
        retry_after_secs: u64,
    },
    /// 503: the database cannot be reached or the service is overloaded.
    #[error("the service is temporarily unavailable; retry later")]
    Unavailable(String),
    /// 500: anything else; the cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// A 400 with a message and no field details.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The HTTP status of each variant.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict | Self::IdempotencyInProgress => StatusCode::CONFLICT,
            Self::CursorExpired => StatusCode::GONE,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error.code` of each variant.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::IdempotencyInProgress => "idempotency_in_progress",
            Self::CursorExpired => "cursor_expired",
            Self::PreconditionFailed => "precondition_failed",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<FieldError> for AppError {
    fn from(err: FieldError) -> Self {
        vec![err].into()
    }
}

impl From<Vec<FieldError>> for AppError {
    fn from(details: Vec<FieldError>) -> Self {
        let message = details
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Self::InvalidRequest { message, details }
    }
}

impl From<&StoreError> for AppError {
    fn from(err: &StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Self::Unavailable(err.to_string()),
            StoreError::Corrupt(_) | StoreError::Other(_) => Self::Internal(err.to_string()),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        Self::from(&err)
    }
}

/// The cause of a 5xx, for the request log only: rides in the response's
/// extensions and is written once by the request-log middleware.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ErrorResponse)]
pub(crate) struct ErrorEnvelope {
    error: ErrorBody,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// Machine-readable. An open set: later versions may add codes, so
    /// treat an unknown one by its HTTP status. Current codes:
    /// `invalid_request` (400), `unauthorized` (401), `forbidden` (403),
    /// `not_found` (404), `method_not_allowed` (405), `conflict` (409),
    /// `idempotency_in_progress` (409), `precondition_failed` (412),
    /// `idempotency_key_reused` (422), `payload_too_large` (413), `unsupported_media_type` (415),
    /// `rate_limited` (429), `internal` (500), `unavailable` (503).
    #[schema(example = "invalid_request")]
    code: &'static str,
    /// For humans; never internal detail.
    #[schema(example = "description: must be at most 2000 characters (got 2001)")]
    message: String,
    /// One item per bad field, where fields are known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    details: Vec<ErrorDetail>,
}

/// One bad field.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// The field as the client named it (`description`, `ids[3]`, `X-On-Behalf-Of`).
    field: String,
    /// What is wrong with it.
    message: String,
}

impl AppError {
    /// The envelope of this error, as bytes are sent (an idempotent create
    /// keeps the `409` it answered).
    pub(crate) fn envelope_json(&self) -> String {
        serde_json::to_string(&self.envelope()).unwrap_or_default()
    }

    fn envelope(&self) -> ErrorEnvelope {
        let details = match &self {
            Self::InvalidRequest { details, .. } => details
                .iter()
                .map(|d| ErrorDetail {
                    field: d.field.clone(),
                    message: d.message.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        ErrorEnvelope {
            error: ErrorBody {
                code: self.code(),
                message: self.to_string(),
                details,
            },
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.envelope())).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::IdempotencyInProgress => {
                headers.insert(RETRY_AFTER, HeaderValue::from(1_u64));
            }
            _ => {}
        }
        if let Self::Unavailable(cause) | Self::Internal(cause) = self {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        response
    }
}
