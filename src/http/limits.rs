//! Back-pressure: a bound on requests in flight, a deadline per request, and
//! an optional per-key rate limit.

use std::future::{Ready, ready};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body::{Body as _, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Timeout;
use tower::{Layer, Service};

use super::AppError;
use super::on_response::{OnResponse, Then};
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
#[derive(Debug, Clone)]
pub(crate) struct InFlightLayer(pub(crate) Limits);

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            limits: self.0.clone(),
        }
    }
}

/// A service behind [`InFlightLayer`].
#[derive(Debug, Clone)]
pub(crate) struct InFlight<S> {
    inner: S,
    limits: Limits,
}

impl<S> Service<Request> for InFlight<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, Then<S::Future, HoldSlot>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.limits.permits).try_acquire_owned() else {
            metrics::counter!(REQUESTS_SHED).increment(1);
            let shed = AppError::Unavailable(format!(
                "overloaded: {} requests in flight",
                self.limits.max_in_flight
            ));
            return Either::Left(ready(Ok(shed.into_response())));
        };
        Either::Right(Then::new(self.inner.call(request), Some(HoldSlot(permit))))
    }
}

/// Holds the request's slot until the response, or, for a streamed body
/// (an export), until its last byte.
pub(crate) struct HoldSlot(OwnedSemaphorePermit);

impl OnResponse for HoldSlot {
    fn on_response(self, response: Response) -> Response {
        if response.body().size_hint().exact().is_some() {
            return response;
        }
        response.map(|body| {
            Body::new(InFlightUntilEnd {
                body,
                permit: Some(self.0),
            })
        })
    }
}

/// Layer: every request past its deadline gets 503 (the API's and the
/// operational routes' alike).
#[derive(Debug, Clone)]
pub(crate) struct DeadlineLayer(pub(crate) Limits);

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.0.timeout,
        }
    }
}

/// A service behind [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Deadline<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = WithinDeadline<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        WithinDeadline {
            inner: tokio::time::timeout(self.timeout, self.inner.call(request)),
            timeout: self.timeout,
        }
    }
}

pin_project! {
    /// The response future of [`Deadline`].
    pub(crate) struct WithinDeadline<F> {
        #[pin]
        inner: Timeout<F>,
        timeout: Duration,
    }
}

impl<F, E> Future for WithinDeadline<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(outcome) = ready!(this.inner.poll(cx)) else {
            metrics::counter!(REQUEST_TIMEOUTS).increment(1);
            let timed_out = AppError::Unavailable(format!(
                "request timed out after {} ms",
                this.timeout.as_millis()
            ));
            return Poll::Ready(Ok(timed_out.into_response()));
        };
        Poll::Ready(outcome)
    }
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

/// A token bucket per API key (or per feedback token).
pub struct KeyRateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    /// For keys that come and go (feedback tokens): when full buckets were
    /// last forgotten. `None`: never forget (API keys are few and stay).
    forgotten_at: Option<Mutex<Instant>>,
}

/// How often a limiter of feedback tokens forgets its full buckets.
const FORGET_FULL_BUCKETS_EVERY: Duration = Duration::from_secs(60);

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
            forgotten_at: None,
        }
    }

    /// `per_minute` requests a minute, all of them at once at most (the
    /// feedback tokens' limit).
    #[must_use]
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            forgotten_at: Some(Mutex::new(Instant::now())),
        }
    }

    /// Forgets the buckets that are full again (no request for a whole
    /// refill), at most once a minute, from whichever request comes first
    /// after that: feedback tokens are many and short-lived, so without this
    /// the map would keep one entry per token ever used. The walk is over
    /// the tokens used in about the last minute, once a minute.
    fn forget_full_buckets(&self) {
        let Some(forgotten_at) = &self.forgotten_at else {
            return;
        };
        let Ok(mut at) = forgotten_at.try_lock() else {
            return;
        };
        if at.elapsed() >= FORGET_FULL_BUCKETS_EVERY {
            *at = Instant::now();
            drop(at);
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// How many keys have a bucket now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key has a bucket.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Takes a token for `key_id`, or says how long until one is there.
    pub fn check(&self, key_id: &str) -> Result<(), AppError> {
        self.forget_full_buckets();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_limiter_forgets_full_buckets_once_a_minute() {
        // One request every 0.5 s; governor tells a bucket from a full one
        // until a request's cell and one more have been refilled (1 s here).
        let limiter = KeyRateLimiter::per_minute(NonZeroU32::new(120).unwrap());
        limiter.check("old").unwrap();
        // Full again; a minute has not passed yet.
        std::thread::sleep(Duration::from_millis(1300));
        limiter.check("new").unwrap();
        assert_eq!(limiter.len(), 2);

        let forgotten_at = limiter.forgotten_at.as_ref().unwrap();
        *forgotten_at.lock().unwrap() = Instant::now()
            .checked_sub(FORGET_FULL_BUCKETS_EVERY)
            .unwrap();
        limiter.check("newer").unwrap();
        // "old" was full again; "new" and "newer" are spent.
        assert_eq!(limiter.len(), 2);
        assert!(limiter.check("old").is_ok());
    }

    #[test]
    fn an_api_key_limiter_keeps_its_buckets() {
        let limiter = KeyRateLimiter::new(NonZeroU32::new(1000).unwrap(), None);
        limiter.check("key").unwrap();
        assert!(limiter.forgotten_at.is_none());
        assert!(!limiter.is_empty());
    }
}
