//! Authentication and authorization of `/api/v1` requests, as two layers.
//!
//! [`AuthenticateLayer`] wraps the whole API router (unknown paths under
//! `/api/v1` too): it reads `Authorization`, asks `auth` for the
//! [`Principal`], applies the per-key rate limit and leaves the principal in
//! the request. [`require`] is a route layer that each API route carries with
//! the [`Requirement`] it states ([`Require`]): it runs [`auth::authorize`] (`403`) before
//! any of the route's extractors, reads `X-On-Behalf-Of` and leaves the
//! [`Caller`] that handlers extract.

use std::future::{Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tower::{Layer, Service};

use super::trace::RequestSpan;
use super::{AppError, AppState};
use crate::auth::{self, AuthError, Caller, Principal, Requirement};
use crate::feedback::{EndUserId, FieldError};
use crate::telemetry::AUTH_FAILURES;

/// Outer API layer: authenticates every request before anything else about
/// it is looked at (API.md: nothing is revealed before authentication).
#[derive(Clone)]
pub(crate) struct AuthenticateLayer(pub(crate) AppState);

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            state: self.0.clone(),
        }
    }
}

/// A service behind [`AuthenticateLayer`].
#[derive(Clone)]
pub(crate) struct Authenticate<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Authenticate<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<
        Either<Ready<Result<Response, S::Error>>, S::Future>,
        Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let refuse = |err: AppError| Either::Left(Either::Left(ready(Ok(err.into_response()))));
        let secret = match bearer_secret(request.headers()) {
            Ok(secret) => secret,
            Err(err) => return refuse(err),
        };
        // The common case, a key in the key set, needs no I/O: no box, no
        // clone of the route.
        let lookup = match self.state.authenticator.authenticate(secret) {
            Ok(outcome) => {
                return match admit(&self.state, outcome, &mut request) {
                    Ok(()) => Either::Left(Either::Right(self.inner.call(request))),
                    Err(err) => refuse(err),
                };
            }
            Err(lookup) => lookup,
        };
        // The service that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Either::Right(Box::pin(async move {
            let outcome = state.authenticator.look_up(lookup).await;
            match admit(&state, outcome, &mut request) {
                Ok(()) => inner.call(request).await,
                Err(err) => Ok(err.into_response()),
            }
        }))
    }
}

/// Once the credential is verified: takes a token of its rate limit and
/// leaves the principal in the request.
fn admit(
    state: &AppState,
    outcome: Result<Principal, AuthError>,
    request: &mut Request,
) -> Result<(), AppError> {
    let principal = outcome?;
    if let Some(tenant) = principal.tenant() {
        RequestSpan::record(request, "tenant", tenant.as_str());
    }
    // A token counts in its own bucket only: browsers cannot spend the
    // minting backend's.
    let (limiter, counted) = match &principal {
        Principal::TenantKey(key) => (&state.rate_limiters.keys, &key.key_id),
        Principal::AdminKey(key) => (&state.rate_limiters.keys, &key.key_id),
        Principal::FeedbackToken(grant) => (&state.rate_limiters.tokens, &grant.rate_key),
    };
    if let Some(limiter) = limiter {
        limiter.check(counted)?;
    }
    request.extensions_mut().insert(principal);
    Ok(())
}

/// The secret of the request's `Authorization: Bearer` header; `401` (and
/// counted) without one.
fn bearer_secret(headers: &HeaderMap) -> Result<&str, AppError> {
    if let Some(secret) = bearer_token(headers) {
        return Ok(secret);
    }
    let reason = if headers.contains_key(AUTHORIZATION) {
        "malformed"
    } else {
        "missing"
    };
    metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
    Err(AppError::Unauthorized)
}

/// The route layer that states what a route requires: a principal without
/// that right gets `403` before the route's path, query or body is read.
/// A plain `tower` layer: the check needs no I/O, so it costs no box and no
/// clone of the route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Require(pub(crate) Requirement);

impl<S> Layer<S> for Require {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            requirement: self.0,
        }
    }
}

/// A route behind [`Require`].
#[derive(Debug, Clone)]
pub(crate) struct Authorized<S> {
    inner: S,
    requirement: Requirement,
}

impl<S> Service<Request> for Authorized<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match caller(self.requirement, &request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Either::Right(self.inner.call(request))
            }
            Err(err) => Either::Left(ready(Ok(err.into_response()))),
        }
    }
}

/// The caller of a request to a route that requires `requirement`; `None`
/// for the admin operations, which act for no tenant.
fn caller(requirement: Requirement, request: &Request) -> Result<Option<Caller>, AppError> {
    // Left by `authenticate`, which wraps every API route.
    let principal = request
        .extensions()
        .get::<Principal>()
        .ok_or(AppError::Unauthorized)?;
    auth::authorize(principal, requirement)?;
    let end_user = end_user(request.headers())?;
    if requirement == Requirement::AllTenants {
        // An admin key acts for no end user either.
        return match end_user {
            Some(_) => Err(AppError::Forbidden),
            None => Ok(None),
        };
    }
    Ok(Some(principal.act_for(end_user)?))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Left by `require`, which every API route carries.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(AppError::Unauthorized)
    }
}

impl From<AuthError> for AppError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthorized => Self::Unauthorized,
            AuthError::Forbidden => Self::Forbidden,
            AuthError::Unavailable(cause) => Self::Unavailable(cause),
            AuthError::Internal(cause) => Self::Internal(cause),
        }
    }
}

/// The secret of an `Authorization: Bearer <secret>` header (scheme name
/// case-insensitive), if there is exactly one such header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, secret) = value.to_str().ok()?.split_once(' ')?;
    let secret = secret.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

/// The `X-On-Behalf-Of` end user, if the header is present.
fn end_user(headers: &HeaderMap) -> Result<Option<EndUserId>, AppError> {
    let mut values = headers.get_all(EndUserId::HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(FieldError::new(EndUserId::HEADER, "must be given at most once").into());
    }
    let raw = value.to_str().ok().ok_or_else(|| {
        FieldError::new(
            EndUserId::HEADER,
            "must contain only printable ASCII characters",
        )
    })?;
    Ok(Some(EndUserId::parse(raw)?))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bEaReR abc"));
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }
}
