//! Webhook endpoints: `POST /webhooks`, `GET /webhooks`, `DELETE
//! /webhooks/{id}`, `GET /webhooks/{id}/deliveries` (API.md, "Webhooks
//! (Standard Webhooks)"). A tenant key acting for the whole tenant only
//! (`Requirement::ManageWebhooks`; with `X-On-Behalf-Of`, `403`): endpoints
//! receive every change of the tenant. Delivery is `crate::webhook::delivery`'s.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::changes::ChangeTypeSchema;
use super::extract::ApiJson;
use super::feedback::format_timestamp;
use super::history::NotOnBehalfOf;
use super::{AppError, AppState, Result};
use crate::auth::Caller;
use crate::feedback::FieldError;
use crate::store::{NewWebhookEndpoint, WebhookDelivery, WebhookEndpoint};
use crate::webhook::target::{MAX_URL_CHARS, TargetUrl};
use crate::webhook::{EndpointSecret, EventTypes, new_endpoint_id};

/// The deliveries `GET /webhooks/{id}/deliveries` shows: the newest.
pub(crate) const RECENT_DELIVERIES: u32 = 100;
const NO_SUCH_ENDPOINT: &str = "no such webhook endpoint";

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
#[schema(as = CreateWebhook)]
pub(crate) struct CreateWebhookBody {
    /// Where deliveries are posted: `https://` (`http://` only with
    /// `WEBHOOK_ALLOW_PRIVATE_TARGETS=true`), at most 2048 characters, not
    /// naming or resolving to a loopback, private, link-local or metadata address.
    #[schema(
        required = true,
        max_length = 2048,
        example = "https://hooks.example.com/feedback"
    )]
    url: Option<String>,
    /// The event types to deliver; default: all.
    #[schema(value_type = Option<Vec<ChangeTypeSchema>>, min_items = 1, nullable = false)]
    events: Option<Vec<String>>,
}

/// An endpoint, as listed (without its secret).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookEndpoint)]
pub(crate) struct EndpointResponse {
    /// `wh_…`
    #[schema(example = "wh_4f6c2b0e9a1d4c3b8e7f6a5b4c3d2e1f")]
    id: String,
    url: String,
    #[schema(value_type = Vec<ChangeTypeSchema>)]
    events: Vec<String>,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2024-01-15T10:30:00.000Z")]
    created_at: String,
    /// When a `410` from the receiver disabled it; omitted while active.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    disabled_at: Option<String>,
}

impl From<WebhookEndpoint> for EndpointResponse {
    fn from(endpoint: WebhookEndpoint) -> Self {
        Self {
            id: endpoint.id,
            url: endpoint.url,
            events: endpoint.events.split(',').map(str::to_owned).collect(),
            created_at: format_timestamp(endpoint.created_at),
            disabled_at: endpoint.disabled_at.map(format_timestamp),
        }
    }
}

/// A new endpoint, with its secret: shown here only.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedWebhook)]
pub(crate) struct CreatedEndpointResponse {
    /// `wh_…`
    #[schema(example = "wh_4f6c2b0e9a1d4c3b8e7f6a5b4c3d2e1f")]
    id: String,
    url: String,
    #[schema(value_type = Vec<ChangeTypeSchema>)]
    events: Vec<String>,
    /// `whsec_…`: the Standard Webhooks signing secret; shown only in this answer.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2024-01-15T10:30:00.000Z")]
    created_at: String,
}

/// The endpoints of the tenant.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookEndpointList)]
pub(crate) struct EndpointList {
    /// Always `list`.
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<EndpointResponse>,
}

/// The status of a delivery.
#[derive(ToSchema, Deserialize)]
#[schema(as = WebhookDeliveryStatus)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "documentation only")]
pub(crate) enum DeliveryStatusSchema {
    Pending,
    Delivered,
    Failed,
}

/// One change's delivery to the endpoint.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub(crate) struct DeliveryResponse {
    /// `msg_…`: the `webhook-id` header of every attempt.
    event_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = ChangeTypeSchema)]
    event_type: String,
    #[schema(value_type = DeliveryStatusSchema)]
    status: String,
    /// Attempts made so far.
    attempts: i64,
    /// The status of the last answer; omitted when there was none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_status_code: Option<i64>,
    /// Why the last attempt failed; omitted when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_error: Option<String>,
    /// When the next attempt is due; pending deliveries only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    next_attempt_at: Option<String>,
}

impl From<WebhookDelivery> for DeliveryResponse {
    fn from(delivery: WebhookDelivery) -> Self {
        let pending = delivery.status == "pending";
        Self {
            event_id: delivery.event_id,
            event_type: delivery.event_type,
            status: delivery.status,
            attempts: delivery.attempts,
            last_status_code: delivery.last_status_code,
            last_error: delivery.last_error,
            next_attempt_at: delivery
                .next_attempt_at
                .filter(|_| pending)
                .map(format_timestamp),
        }
    }
}

/// An endpoint's recent deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookDeliveryList)]
pub(crate) struct DeliveryList {
    /// Always `list`.
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<DeliveryResponse>,
}

/// The caller of a webhook operation: a tenant key acting for the whole
/// tenant (with `X-On-Behalf-Of`, `403`, before the body is read).
pub(crate) struct TenantCaller(Caller);

impl<S: Send + Sync> FromRequestParts<S> for TenantCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.end_user.is_some() {
            return Err(AppError::Forbidden);
        }
        Ok(Self(caller))
    }
}

/// The `{id}` of an endpoint path; any value is a possible id (an unknown
/// one is `404`).
pub(crate) struct EndpointId(String);

impl<S: Send + Sync> FromRequestParts<S> for EndpointId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|_| AppError::NotFound(NO_SUCH_ENDPOINT))
    }
}

/// `{id}` in the OpenAPI document.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct EndpointPath {
    /// The endpoint's id (`wh_…`).
    id: String,
}

/// The URL and event types a valid body asks for; every bad field at once.
async fn parse(body: CreateWebhookBody, allow_private: bool) -> Result<(TargetUrl, EventTypes)> {
    let mut errors = Vec::new();
    let url = match body.url {
        None => Err(FieldError::required("url")),
        Some(raw) => TargetUrl::parse(&raw, allow_private).map_err(|reason| {
            if raw.chars().count() > MAX_URL_CHARS {
                FieldError::too_long("url", MAX_URL_CHARS as u64, raw.chars().count())
            } else {
                FieldError::new("url", reason)
            }
        }),
    }
    .map_err(|err| errors.push(err))
    .ok();
    let events = match &body.events {
        None => Some(EventTypes::all()),
        Some(names) => EventTypes::parse(names)
            .map_err(|reason| errors.push(FieldError::new("events", reason)))
            .ok(),
    };
    // Resolution only for a URL that passed everything else.
    let url = match url {
        Some(url) if errors.is_empty() => match url.check_resolved(allow_private).await {
            Ok(()) => Some(url),
            Err(reason) => {
                errors.push(FieldError::new("url", reason));
                None
            }
        },
        other => other,
    };
    match (url, events) {
        (Some(url), Some(events)) if errors.is_empty() => Ok((url, events)),
        _ => Err(errors.into()),
    }
}

/// `POST /api/v1/llm/feedback/webhooks`: registers an endpoint for the
/// tenant's changes; its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/llm/feedback/webhooks",
    tag = "webhooks",
    summary = "Register a webhook endpoint (Standard Webhooks; the secret is shown once)",
    params(NotOnBehalfOf),
    request_body = CreateWebhookBody,
    responses((status = 201, description = "Registered", body = CreatedEndpointResponse))
)]
pub(crate) async fn create_webhook(
    State(app): State<AppState>,
    TenantCaller(caller): TenantCaller,
    ApiJson(body): ApiJson<CreateWebhookBody>,
) -> Result<(StatusCode, Json<CreatedEndpointResponse>)> {
    let (url, events) = parse(body, app.webhook_allow_private).await?;
    let secret = EndpointSecret::generate();
    let endpoint = app
        .store
        .insert_webhook_endpoint(&NewWebhookEndpoint {
            id: new_endpoint_id(),
            tenant: caller.key.tenant.clone(),
            url: url.as_str().to_owned(),
            events: events.to_column(),
            secret: secret.expose().to_owned(),
        })
        .await?;
    tracing::info!(endpoint_id = %endpoint.id, "webhook endpoint registered");
    let listed = EndpointResponse::from(endpoint);
    Ok((
        StatusCode::CREATED,
        Json(CreatedEndpointResponse {
            id: listed.id,
            url: listed.url,
            events: listed.events,
            secret: secret.expose().to_owned(),
            created_at: listed.created_at,
        }),
    ))
}

/// `GET /api/v1/llm/feedback/webhooks`: the tenant's endpoints, oldest first.
#[utoipa::path(
    get,
    path = "/llm/feedback/webhooks",
    tag = "webhooks",
    summary = "List the webhook endpoints (without secrets)",
    params(NotOnBehalfOf),
    responses((status = 200, description = "The endpoints", body = EndpointList))
)]
pub(crate) async fn list_webhooks(
    State(app): State<AppState>,
    TenantCaller(caller): TenantCaller,
) -> Result<Json<EndpointList>> {
    let endpoints = app
        .store
        .list_webhook_endpoints(Some(&caller.key.tenant))
        .await?;
    Ok(Json(EndpointList {
        object: "list",
        data: endpoints.into_iter().map(EndpointResponse::from).collect(),
    }))
}

/// `DELETE /api/v1/llm/feedback/webhooks/{id}`: removes the endpoint and its
/// deliveries; nothing more is sent to it.
#[utoipa::path(
    delete,
    path = "/llm/feedback/webhooks/{id}",
    tag = "webhooks",
    summary = "Remove a webhook endpoint",
    params(EndpointPath, NotOnBehalfOf),
    responses((status = 204, description = "Removed"))
)]
pub(crate) async fn delete_webhook(
    State(app): State<AppState>,
    TenantCaller(caller): TenantCaller,
    EndpointId(id): EndpointId,
) -> Result<StatusCode> {
    if app
        .store
        .delete_webhook_endpoint(Some(&caller.key.tenant), &id)
        .await?
    {
        tracing::info!(endpoint_id = %id, "webhook endpoint removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound(NO_SUCH_ENDPOINT))
    }
}

/// `GET /api/v1/llm/feedback/webhooks/{id}/deliveries`: the endpoint's
/// newest deliveries (at most 100), newest first.
#[utoipa::path(
    get,
    path = "/llm/feedback/webhooks/{id}/deliveries",
    tag = "webhooks",
    summary = "List an endpoint's recent deliveries, newest first",
    params(EndpointPath, NotOnBehalfOf),
    responses((status = 200, description = "The newest deliveries (at most 100)", body = DeliveryList))
)]
pub(crate) async fn list_webhook_deliveries(
    State(app): State<AppState>,
    TenantCaller(caller): TenantCaller,
    EndpointId(id): EndpointId,
) -> Result<Json<DeliveryList>> {
    let deliveries = app
        .store
        .list_webhook_deliveries(&caller.key.tenant, &id, RECENT_DELIVERIES)
        .await?
        .ok_or(AppError::NotFound(NO_SUCH_ENDPOINT))?;
    Ok(Json(DeliveryList {
        object: "list",
        data: deliveries.into_iter().map(DeliveryResponse::from).collect(),
    }))
}
