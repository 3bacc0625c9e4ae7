//! Back-pressure: a bound on requests in flight, a deadline per request, and
//! an optional per-key rate limit.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppError;
use crate::telemetry::{RATE_LIMITED, REQUEST_TIMEOUTS, REQUESTS_SHED};

/// The concurrency bound and the deadline, shared by every request.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    timeout: Duration,
}

impl Limits {
    pub(crate) fn new(max_in_flight: usize, timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            timeout,
        }
    }
}

/// API layer: requests beyond the bound are answered 503 at once rather
/// than queued without limit. Only the API router carries it: operational
/// endpoints are not shed, so probes see the process as it is. Inside
/// authentication, so that refused credentials never hold a slot.
pub(crate) async fn bound_in_flight(
    State(limits): State<Limits>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = Arc::clone(&limits.permits).try_acquire_owned() else {
        metrics::counter!(REQUESTS_SHED).increment(1);
        return AppError::Unavailable(format!(
            "overloaded: {} requests in flight",
            limits.max_in_flight
        ))
        .into_response();
    };
    let response = next.run(request).await;
    if response.body().size_hint().exact().is_some() {
        return response;
    }
    // A streamed body (an export) counts until its last byte.
    response.map(|body| {
        Body::new(InFlightUntilEnd {
            body,
            permit: Some(permit),
        })
    })
}

/// Every request past its deadline gets 503 (the API's and the operational
/// routes' alike).
pub(crate) async fn deadline(
    State(limits): State<Limits>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(response) = tokio::time::timeout(limits.timeout, next.run(request)).await else {
        metrics::counter!(REQUEST_TIMEOUTS).increment(1);
        return AppError::Unavailable(format!(
            "request timed out after {} ms",
            limits.timeout.as_millis()
        ))
        .into_response();
    };
    response
}

/// A response body that holds its request's in-flight slot until it ends,
/// fails or is dropped (the client went away).
struct InFlightUntilEnd {
    body: Body,
    permit: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for InFlightUntilEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A token bucket per API key.
pub struct KeyRateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for KeyRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRateLimiter")
    }
}

impl KeyRateLimiter {
    /// `per_second` tokens refill each second, up to `burst` (default: one
    /// second's worth).
    #[must_use]
    pub fn new(per_second: NonZeroU32, burst: Option<NonZeroU32>) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst.unwrap_or(per_second));
        Self {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// Takes a token for `key_id`, or says how long until one is there.
    pub fn check(&self, key_id: &str) -> Result<(), AppError> {
        match self.limiter.check_key(&key_id.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                metrics::counter!(RATE_LIMITED).increment(1);
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                // Retry-After has whole seconds: round up, never 0.
                let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(AppError::RateLimited {
                    retry_after_secs: retry_after_secs.max(1),
                })
            }
        }
    }
}
