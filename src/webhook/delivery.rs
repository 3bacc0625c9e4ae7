//! The delivery worker: one per replica, started by `Application` like the
//! retention worker. It claims due deliveries (a lease in the database:
//! PostgreSQL claims skip each other's rows, a crashed replica's claims run
//! out), posts each as Standard Webhooks v1 prescribes, and records the
//! outcome. Attempts run concurrently, at most [`MAX_IN_FLIGHT`] at once,
//! each in its own task, so one slow receiver holds only its own slot; no
//! API request ever waits for any of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::target::{CheckedResolver, TargetUrl};
use super::{EndpointSecret, RetrySchedule};
use crate::store::{AttemptOutcome, ClaimedDelivery, DeliveredChange, Store, WebhookAttempt};
use crate::telemetry;
use crate::worker::{WorkerContext, WorkerResult};

/// Attempts in flight at once per replica.
pub const MAX_IN_FLIGHT: usize = 64;
/// A claim outlives the attempt's timeout by this much, so that only a
/// replica that crashed (or lost the database) lets a claim run out.
pub const LEASE_MARGIN: Duration = Duration::from_secs(15);
/// Without a wake-up (a committed enqueue), the worker looks for due
/// deliveries (retries, other replicas' claims that ran out) this often.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often `webhook_queue_depth` is refreshed.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(5);
/// The most of a receiver's answer that is read (then dropped).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most of an error kept in `last_error`.
const MAX_ERROR_CHARS: usize = 500;

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// `WEBHOOK_ALLOW_PRIVATE_TARGETS`.
    pub allow_private: bool,
    /// `WEBHOOK_TIMEOUT_MS`: a `2xx` must come within it.
    pub timeout: Duration,
    /// `WEBHOOK_RETRY_SCHEDULE`.
    pub schedule: RetrySchedule,
}

/// The HTTP client of deliveries: the timeout, no redirects (a redirect is
/// a failed attempt), and the checked resolver (SSRF, after resolution).
pub fn client(settings: &DeliverySettings) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(CheckedResolver {
            allow_private: settings.allow_private,
        }))
        .user_agent(concat!("llm-feedback-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs until shutdown: claims what is due, as many as there are free
/// slots, and starts an attempt for each.
pub async fn deliver_webhooks(
    store: Arc<dyn Store>,
    settings: DeliverySettings,
    context: WorkerContext,
) -> WorkerResult {
    let client = client(&settings)?;
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut attempts = JoinSet::new();
    // The gauge is refreshed while there is work (and once it ran out), not
    // while idle: an idle worker touches no pooled connection.
    let mut depth_published = Instant::now();
    let mut depth_stale = true;
    // At start, wait and ask first (PostgreSQL: on the LISTEN session)
    // rather than claim: start-up stays light.
    let mut may_have_work = false;
    loop {
        while attempts.try_join_next().is_some() {}
        if depth_stale && depth_published.elapsed() >= QUEUE_DEPTH_INTERVAL {
            depth_stale = publish_queue_depth(store.as_ref()).await;
            depth_published = Instant::now();
        }
        if !may_have_work {
            tokio::select! {
                due = store.wait_for_deliveries(POLL_INTERVAL) => may_have_work = due,
                () = context.stopping() => break,
            }
            continue;
        }
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => drop(permit),
                () = context.stopping() => break,
            }
            continue;
        }
        let now = Utc::now();
        let lease_token = format!("{:032x}", rand::random::<u128>());
        let lease = chrono::Duration::from_std(settings.timeout + LEASE_MARGIN)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
        let asked = u32::try_from(free).unwrap_or(u32::MAX);
        let claimed = match store
            .claim_webhook_deliveries(now, now + lease, &lease_token, asked)
            .await
        {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(worker = context.name(), error = %err, "cannot claim webhook deliveries; retrying");
                Vec::new()
            }
        };
        let got = claimed.len();
        depth_stale |= got > 0;
        let lease_token: Arc<str> = lease_token.into();
        for delivery in claimed {
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                break;
            };
            let (store, client, settings, lease_token) = (
                Arc::clone(&store),
                client.clone(),
                Arc::clone(&settings),
                Arc::clone(&lease_token),
            );
            attempts.spawn(async move {
                attempt(store.as_ref(), &client, &settings, &delivery, &lease_token).await;
                drop(permit);
            });
        }
        // Fewer than asked: nothing more is due until a committed enqueue,
        // a retry falling due or a lease running out.
        may_have_work = got == free;
        if context.is_stopping() {
            break;
        }
    }
    // Attempts under way finish (each within the timeout); what they do not
    // record is claimed again once its lease runs out.
    while attempts.join_next().await.is_some() {}
    Ok(())
}

/// Publishes the queue depth; whether it is worth reading again (not 0).
async fn publish_queue_depth(store: &dyn Store) -> bool {
    match store.webhook_queue_depth().await {
        Ok(depth) => {
            #[expect(clippy::cast_precision_loss, reason = "a gauge")]
            metrics::gauge!(telemetry::WEBHOOK_QUEUE_DEPTH).set(depth as f64);
            depth > 0
        }
        Err(err) => {
            tracing::debug!(error = %err, "cannot read the webhook queue depth");
            true
        }
    }
}

/// The body of a delivery: `{"type", "timestamp", "data": {"kind", "id",
/// "end_user"?, "entry"?}}`, from the change as the store holds it now.
#[must_use]
pub fn payload(change: &DeliveredChange) -> Vec<u8> {
    let mut data = Map::new();
    data.insert("kind".into(), Value::String(change.kind.clone()));
    data.insert("id".into(), Value::String(change.output_id.clone()));
    if let Some(end_user) = &change.end_user {
        data.insert("end_user".into(), Value::String(end_user.clone()));
    }
    if let Some(entry) = change
        .entry
        .as_deref()
        .and_then(|entry| serde_json::from_str::<Value>(entry).ok())
    {
        data.insert("entry".into(), entry);
    }
    let body = json!({
        "type": change.event_type,
        "timestamp": change.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    });
    body.to_string().into_bytes()
}

/// How an attempt's HTTP exchange went, before the schedule is applied.
enum Exchange {
    Success(u16),
    Gone,
    Failure { status: Option<u16>, error: String },
}

/// One attempt: post, classify, record, count, log.
async fn attempt(
    store: &dyn Store,
    client: &reqwest::Client,
    settings: &DeliverySettings,
    delivery: &ClaimedDelivery,
    lease_token: &str,
) {
    let started = Instant::now();
    let exchange = match &delivery.change {
        None => Exchange::Failure {
            status: None,
            error: "the change is no longer kept (CHANGE_RETENTION_DAYS)".to_owned(),
        },
        Some(change) => post(client, settings, delivery, change).await,
    };
    let latency = started.elapsed();
    let attempts = u32::try_from(delivery.attempts)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let now = Utc::now();
    let (outcome, label) = match exchange {
        Exchange::Success(status_code) => (AttemptOutcome::Delivered { status_code }, "delivered"),
        Exchange::Gone => (AttemptOutcome::Gone, "disabled"),
        Exchange::Failure { status, error } => {
            let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
            let expired = delivery.change.is_none();
            match settings.schedule.wait_after(attempts).filter(|_| !expired) {
                Some(wait) => (
                    AttemptOutcome::Retry {
                        status_code: status,
                        error,
                        next_attempt_at: now
                            + chrono::Duration::from_std(wait)
                                .unwrap_or_else(|_| chrono::Duration::days(1)),
                    },
                    "retried",
                ),
                None => (
                    AttemptOutcome::Failed {
                        status_code: status,
                        error,
                    },
                    "failed",
                ),
            }
        }
    };
    metrics::counter!(telemetry::WEBHOOK_DELIVERIES, "outcome" => label).increment(1);
    metrics::histogram!(telemetry::WEBHOOK_DELIVERY_SECONDS).record(latency.as_secs_f64());
    let (status, error) = match &outcome {
        AttemptOutcome::Delivered { status_code } => (Some(*status_code), None),
        AttemptOutcome::Gone => (Some(410), None),
        AttemptOutcome::Retry {
            status_code, error, ..
        }
        | AttemptOutcome::Failed { status_code, error } => (*status_code, Some(error.as_str())),
    };
    // One line per attempt: ids, status, latency; never the secret or the body.
    tracing::info!(
        event_id = %delivery.event_id,
        endpoint_id = %delivery.endpoint_id,
        attempt = attempts,
        status = status.unwrap_or(0),
        outcome = label,
        latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        error = error.unwrap_or(""),
        "webhook attempt"
    );
    let record = WebhookAttempt {
        delivery,
        lease_token,
        outcome,
        at: now,
    };
    if let Err(err) = store.record_webhook_attempt(&record).await {
        // The lease runs out and the delivery is attempted again: at least once.
        tracing::warn!(event_id = %delivery.event_id, error = %err, "cannot record a webhook attempt");
    }
}

/// The HTTP exchange of one attempt.
async fn post(
    client: &reqwest::Client,
    settings: &DeliverySettings,
    delivery: &ClaimedDelivery,
    change: &DeliveredChange,
) -> Exchange {
    // A literal address never reaches the resolver: checked here, at every
    // send, like resolved ones.
    if let Err(reason) = TargetUrl::parse(&delivery.url, settings.allow_private) {
        return Exchange::Failure {
            status: None,
            error: format!("url {reason}"),
        };
    }
    let body = payload(change);
    let timestamp = Utc::now().timestamp();
    let signature = EndpointSecret::from_stored(delivery.secret.clone()).sign(
        &delivery.event_id,
        timestamp,
        &body,
    );
    let sent = client
        .post(&delivery.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &delivery.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(err) => {
            return Exchange::Failure {
                status: None,
                error: describe(&err, settings.timeout),
            };
        }
    };
    let status = response.status();
    // Read (a bounded part of) the answer so that the connection can be
    // reused; the timeout covers it.
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    let code = status.as_u16();
    if status.is_success() {
        Exchange::Success(code)
    } else if code == 410 {
        Exchange::Gone
    } else if status.is_redirection() {
        Exchange::Failure {
            status: Some(code),
            error: format!("answered {code}, a redirect (redirects are not followed)"),
        }
    } else {
        Exchange::Failure {
            status: Some(code),
            error: format!("answered {code}"),
        }
    }
}

/// A failed exchange in a few words, with its causes (never the body).
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let what = if err.is_connect() {
        "cannot connect"
    } else {
        "the exchange failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_carries_the_change_and_the_entry_when_there_is_one() {
        let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let mut change = DeliveredChange {
            event_type: "feedback.created".into(),
            kind: "responses".into(),
            output_id: "resp-1".into(),
            end_user: Some("u-1".into()),
            entry: Some(r#"{"id":"resp-1","rating":"thumbs_up"}"#.into()),
            occurred_at: at,
        };
        let body: Value = serde_json::from_slice(&payload(&change)).unwrap();
        assert_eq!(
            body,
            json!({"type": "feedback.created", "timestamp": "2023-11-14T22:13:20.123Z",
                   "data": {"kind": "responses", "id": "resp-1", "end_user": "u-1",
                            "entry": {"id": "resp-1", "rating": "thumbs_up"}}})
        );
        change.entry = None;
        change.end_user = None;
        let body: Value = serde_json::from_slice(&payload(&change)).unwrap();
        assert_eq!(body["data"], json!({"kind": "responses", "id": "resp-1"}));
    }
}
