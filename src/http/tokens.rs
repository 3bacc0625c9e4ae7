//! Minting feedback tokens: `POST /api/v1/llm/feedback/tokens` (API.md,
//! "Feedback tokens and the browser widget"). Only a tenant key gets here
//! (`Requirement::MintTokens`); the token is signed in `auth::token`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiJson;
use super::feedback::format_timestamp;
use super::openapi::{KindSchema, OnBehalfOf, OutputIdSchema};
use super::{AppState, Result};
use crate::auth::Caller;
use crate::auth::token::{DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, MIN_TTL_SECONDS, TokenClaims};
use crate::feedback::{FeedbackKey, FieldError, OutputId, OutputKind};

/// What a token is for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
#[schema(as = CreateToken)]
pub(crate) struct CreateTokenBody {
    /// The kind of the one output the token may create, update and get.
    #[schema(value_type = KindSchema, required = true)]
    kind: Option<String>,
    /// That output's id.
    #[schema(value_type = OutputIdSchema, required = true, example = "resp-xyz789")]
    id: Option<String>,
    /// Lifetime in seconds, 60 to 604800 (7 days); default 3600. A JSON
    /// number (JSON Schema counts `60.0` as the integer 60, so do we).
    #[schema(value_type = Option<i64>, minimum = 60, maximum = 604_800, default = 3600)]
    ttl_seconds: Option<serde_json::Number>,
}

/// A minted token: the credential a browser sends as `Authorization: Bearer`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = FeedbackToken)]
pub(crate) struct TokenResponse {
    /// `lft_…`; shown once, stored nowhere.
    #[schema(example = "lft_eyJ2IjoxLC4uLn0.c2lnbmF0dXJl")]
    token: String,
    /// The output's kind.
    #[schema(value_type = KindSchema)]
    kind: &'static str,
    /// The output's id.
    #[schema(example = "resp-xyz789")]
    id: String,
    /// The end user the token acts as (`X-On-Behalf-Of` when minted);
    /// absent: the whole tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    end_user: Option<String>,
    /// When it stops working: RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2024-01-15T11:30:00.000Z")]
    expires_at: String,
}

/// The output and lifetime a valid body asks for; every bad field at once.
fn parse(body: CreateTokenBody) -> Result<(FeedbackKey, TimeDelta)> {
    let mut errors = Vec::new();
    let kind = match body.kind {
        None => Err(FieldError::required("kind")),
        Some(raw) => OutputKind::parse(&raw)
            .ok_or_else(|| FieldError::new("kind", "must be `completions` or `responses`")),
    }
    .map_err(|err| errors.push(err))
    .ok();
    let id = body
        .id
        .ok_or_else(|| FieldError::required("id"))
        .and_then(OutputId::parse)
        .map_err(|err| errors.push(err))
        .ok();
    let ttl = match body.ttl_seconds.as_ref().map(whole_seconds) {
        None => Some(TimeDelta::seconds(DEFAULT_TTL_SECONDS.into())),
        Some(Some(ttl))
            if (i64::from(MIN_TTL_SECONDS)..=i64::from(MAX_TTL_SECONDS)).contains(&ttl) =>
        {
            Some(TimeDelta::seconds(ttl))
        }
        Some(_) => {
            let got = body.ttl_seconds.map(|n| n.to_string()).unwrap_or_default();
            errors.push(FieldError::new(
                "ttl_seconds",
                format!(
                    "must be a whole number from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS} (got {got})"
                ),
            ));
            None
        }
    };
    match (kind, id, ttl) {
        (Some(kind), Some(id), Some(ttl)) if errors.is_empty() => {
            Ok((FeedbackKey { kind, id }, ttl))
        }
        _ => Err(errors.into()),
    }
}

/// A JSON number that is a whole number of seconds in range of `i64`
/// (`60` and `60.0` alike).
fn whole_seconds(number: &serde_json::Number) -> Option<i64> {
    if let Some(whole) = number.as_i64() {
        return Some(whole);
    }
    let float = number.as_f64()?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "whole and within ±2^53, so exact"
    )]
    (float.fract() == 0.0 && float.abs() < 9.0e15).then_some(float as i64)
}

/// Whole seconds: what the token carries.
fn expiry(now: DateTime<Utc>, ttl: TimeDelta) -> DateTime<Utc> {
    let at = now + ttl;
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

/// `POST /api/v1/llm/feedback/tokens`: a token for one output, as the end
/// user named in `X-On-Behalf-Of` (or the whole tenant).
#[utoipa::path(
    post,
    path = "/llm/feedback/tokens",
    tag = "tokens",
    summary = "Mint a feedback token for one output (tenant API key only)",
    params(OnBehalfOf),
    request_body = CreateTokenBody,
    responses((status = 201, description = "Minted", body = TokenResponse))
)]
pub(crate) async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTokenBody>,
) -> Result<(StatusCode, Json<TokenResponse>)> {
    let (output, ttl) = parse(body)?;
    let claims = TokenClaims {
        key_id: caller.key.key_id.clone(),
        tenant: caller.key.tenant.clone(),
        output,
        end_user: caller.end_user,
        expires_at: expiry(Utc::now(), ttl),
    };
    let token = app.authenticator.tokens().sign(&claims);
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            token,
            kind: claims.output.kind.as_str(),
            id: claims.output.id.into_inner(),
            end_user: claims.end_user.map(|user| user.as_str().to_owned()),
            expires_at: format_timestamp(claims.expires_at),
        }),
    ))
}
