//! The types of webhooks (issue 14): endpoints, deliveries, what the
//! delivery worker claims and what it records. Event types and secrets stay
//! strings here (their rules are `crate::webhook`'s).

use chrono::{DateTime, Utc};

use super::{StoreError, Timestamp};
use crate::feedback::TenantId;

/// A new endpoint as it is stored.
#[derive(Debug, Clone)]
pub struct NewWebhookEndpoint {
    /// `wh_…`
    pub id: String,
    /// The tenant whose changes it receives.
    pub tenant: TenantId,
    /// Where deliveries are posted (checked by `webhook::target`).
    pub url: String,
    /// The subscribed event types, comma-separated.
    pub events: String,
    /// `whsec_…`
    pub secret: String,
}

/// An endpoint as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// `wh_…`
    pub id: String,
    /// Its tenant.
    pub tenant: TenantId,
    /// Where deliveries are posted.
    pub url: String,
    /// The subscribed event types, comma-separated.
    pub events: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When a `410` disabled it, if one did.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// One delivery as `GET /webhooks/{id}/deliveries` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// `msg_…`, the `webhook-id` of every attempt.
    pub event_id: String,
    /// `feedback.created`, ...
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// The status of the last answer, if there was one.
    pub last_status_code: Option<i64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The change a delivery carries, as the `changes` row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredChange {
    /// `feedback.created`, ...
    pub event_type: String,
    /// `completions` or `responses`.
    pub kind: String,
    /// The output id.
    pub output_id: String,
    /// The end user, if the entry has one (and was not erased).
    pub end_user: Option<String>,
    /// The entry after the change, as JSON text; `None` for deletes and
    /// after an erasure.
    pub entry: Option<String>,
    /// When the change was made.
    pub occurred_at: DateTime<Utc>,
}

/// A delivery claimed by this replica until its lease runs out.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// The delivery row.
    pub id: i64,
    /// `msg_…`
    pub event_id: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// `wh_…`
    pub endpoint_id: String,
    /// Where to post.
    pub url: String,
    /// `whsec_…`
    pub secret: String,
    /// `None`: the change is no longer kept (change retention).
    pub change: Option<DeliveredChange>,
}

/// How one attempt ended, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A `2xx` within the timeout.
    Delivered {
        /// The status.
        status_code: u16,
    },
    /// Failed; tried again at `next_attempt_at`.
    Retry {
        /// The answer's status, if there was an answer.
        status_code: Option<u16>,
        /// Why.
        error: String,
        /// When to try again.
        next_attempt_at: DateTime<Utc>,
    },
    /// Failed for the last time.
    Failed {
        /// The answer's status, if there was an answer.
        status_code: Option<u16>,
        /// Why.
        error: String,
    },
    /// The receiver answered `410`: the endpoint is disabled and its pending
    /// deliveries fail.
    Gone,
}

/// One attempt of a claimed delivery, to record.
#[derive(Debug, Clone)]
pub struct WebhookAttempt<'a> {
    /// The claimed delivery.
    pub delivery: &'a ClaimedDelivery,
    /// The claim's token: an attempt whose lease ran out and was claimed
    /// again elsewhere is not recorded.
    pub lease_token: &'a str,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Now.
    pub at: DateTime<Utc>,
}

/// An endpoint row as both backends read it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EndpointRow {
    id: String,
    tenant: String,
    url: String,
    events: String,
    created_at: Timestamp,
    disabled_at: Option<Timestamp>,
}

impl TryFrom<EndpointRow> for WebhookEndpoint {
    type Error = StoreError;

    fn try_from(row: EndpointRow) -> Result<Self, Self::Error> {
        Ok(Self {
            id: row.id,
            tenant: TenantId::parse(row.tenant).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            url: row.url,
            events: row.events,
            created_at: row.created_at.0,
            disabled_at: row.disabled_at.map(|at| at.0),
        })
    }
}

/// A delivery row as listed.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DeliveryRow {
    event_id: String,
    event_type: String,
    status: String,
    attempts: i64,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    next_attempt_at: Option<Timestamp>,
}

impl From<DeliveryRow> for WebhookDelivery {
    fn from(row: DeliveryRow) -> Self {
        Self {
            event_id: row.event_id,
            event_type: row.event_type,
            status: row.status,
            attempts: row.attempts,
            last_status_code: row.last_status_code,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at.map(|at| at.0),
        }
    }
}

/// A claimed delivery with its endpoint and change, as both backends read it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ClaimedRow {
    id: i64,
    event_id: String,
    attempts: i64,
    endpoint_id: String,
    url: String,
    secret: String,
    change_type: Option<String>,
    kind: Option<String>,
    output_id: Option<String>,
    end_user: Option<String>,
    entry: Option<String>,
    occurred_at: Option<Timestamp>,
}

impl From<ClaimedRow> for ClaimedDelivery {
    fn from(row: ClaimedRow) -> Self {
        let change = match (row.change_type, row.kind, row.output_id, row.occurred_at) {
            (Some(event_type), Some(kind), Some(output_id), Some(occurred_at)) => {
                Some(DeliveredChange {
                    event_type,
                    kind,
                    output_id,
                    end_user: row.end_user,
                    entry: row.entry,
                    occurred_at: occurred_at.0,
                })
            }
            _ => None,
        };
        Self {
            id: row.id,
            event_id: row.event_id,
            attempts: row.attempts,
            endpoint_id: row.endpoint_id,
            url: row.url,
            secret: row.secret,
            change,
        }
    }
}
