//! API keys: generation, hashing, verification with a short-lived cache, and
//! the `Caller` that authenticated requests carry.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use moka::future::Cache;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

use crate::feedback::{EndUserId, FieldError, Scope, TenantId};
use crate::http::{AppError, AppState};
use crate::store::{NewApiKey, Store, StoreError};
use crate::telemetry::{AUTH_FAILURES, RequestContext};

/// Every generated secret starts with this, so leaked keys are recognisable
/// (secret scanners, logs).
pub const SECRET_PREFIX: &str = "lfk_";
/// Random characters after the prefix: 40 alphanumerics, about 238 bits.
const SECRET_RANDOM_CHARS: usize = 40;
/// How many leading characters of a secret listings show.
const SHOWN_PREFIX_CHARS: usize = 12;
/// Bounds on any secret accepted, generated or provisioned.
pub const MIN_SECRET_CHARS: usize = 32;
/// See [`MIN_SECRET_CHARS`].
pub const MAX_SECRET_CHARS: usize = 256;
/// How long a verified (or rejected) key is trusted without asking the
/// database: a revoked key stops working within this time plus one query.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(3);
/// Distinct keys remembered at once; bounds memory under a flood of bad keys.
const KEY_CACHE_CAPACITY: u64 = 10_000;

/// A freshly generated key: the secret, to show once, and what is stored.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The secret; never stored, never logged.
    pub secret: String,
    /// What the store keeps.
    pub record: NewApiKey,
}

/// Generates a new key for `tenant`.
#[must_use]
pub fn generate_key(tenant: TenantId, name: Option<String>) -> GeneratedKey {
    let random: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(SECRET_RANDOM_CHARS)
        .map(char::from)
        .collect();
    let secret = format!("{SECRET_PREFIX}{random}");
    let record = key_record(&secret, tenant, name);
    GeneratedKey { secret, record }
}

/// What to store for a given secret (generated, or provisioned by
/// `BOOTSTRAP_API_KEY`). The id derives from the hash, so every replica
/// provisioning the same secret computes the same row.
#[must_use]
pub fn key_record(secret: &str, tenant: TenantId, name: Option<String>) -> NewApiKey {
    let secret_hash = hash_secret(secret);
    NewApiKey {
        id: format!("key_{}", &secret_hash[..16]),
        tenant,
        name,
        prefix: secret.chars().take(SHOWN_PREFIX_CHARS).collect(),
        secret_hash,
    }
}

/// Checks that a provisioned secret is as strong as the keys we generate.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&secret.len())
        || !secret.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "an API key must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// Hex SHA-256: the secrets are long and random, so a fast hash is enough
/// (no dictionary to guess from), and lookups stay one indexed query.
#[must_use]
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The identity behind a valid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// The key's public id.
    pub key_id: String,
    /// The tenant it acts for.
    pub tenant: TenantId,
}

/// Verifies bearer secrets against the store, remembering answers briefly so
/// that the hot path costs no database round trip.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    cache: Cache<String, Option<Arc<KeyIdentity>>>,
}

impl Authenticator {
    /// An authenticator over `store`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>) -> Self {
        let cache = Cache::builder()
            .max_capacity(KEY_CACHE_CAPACITY)
            .time_to_live(KEY_CACHE_TTL)
            .build();
        Self { store, cache }
    }

    /// The identity of an active key, `None` for unknown or revoked ones.
    /// Concurrent misses for one key share a single query and its error.
    pub async fn verify(&self, secret: &str) -> Result<Option<Arc<KeyIdentity>>, Arc<StoreError>> {
        if check_secret(secret).is_err() {
            return Ok(None);
        }
        let hash = hash_secret(secret);
        // Store errors are not cached: the next request asks again.
        self.cache
            .try_get_with(hash.clone(), async {
                let record = self.store.find_api_key(&hash).await?;
                Ok::<_, StoreError>(record.filter(|r| !r.is_revoked()).map(|r| {
                    Arc::new(KeyIdentity {
                        key_id: r.id,
                        tenant: r.tenant,
                    })
                }))
            })
            .await
    }
}

/// Who is calling: the key's tenant and, with `X-On-Behalf-Of`, the end user.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key that authenticated the request.
    pub key: Arc<KeyIdentity>,
    /// The end user the caller acts for, if any.
    pub end_user: Option<EndUserId>,
}

impl Caller {
    /// The scope every store query of this request is confined to.
    #[must_use]
    pub fn scope(&self) -> Scope {
        Scope {
            tenant: self.key.tenant.clone(),
            end_user: self.end_user.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Set by `require_api_key`, which guards every `/api/v1` route.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(AppError::Unauthorized)
    }
}

/// Authenticates every request under `/api/v1` before anything else about
/// it is looked at, then reads `X-On-Behalf-Of`.
pub(crate) async fn require_api_key(
    state: &AppState,
    mut request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let path = request.uri().path();
    if !(path == "/api/v1" || path.starts_with("/api/v1/")) {
        return Ok(next.run(request).await);
    }
    let Some(secret) = bearer_secret(request.headers()) else {
        let reason = if request.headers().contains_key(AUTHORIZATION) {
            "malformed"
        } else {
            "missing"
        };
        metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
        return Err(AppError::Unauthorized);
    };
    let verified = state
        .authenticator
        .verify(secret)
        .await
        .map_err(|shared| AppError::from(&*shared))?;
    let Some(key) = verified else {
        metrics::counter!(AUTH_FAILURES, "reason" => "unknown_or_revoked").increment(1);
        return Err(AppError::Unauthorized);
    };
    RequestContext::record_tenant(&key);
    let mut response = match admit(state, &key, &mut request) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    };
    // For the request's log line, written after the response.
    response.extensions_mut().insert(key);
    Ok(response)
}

/// What is checked once the key is known: its rate limit, `X-On-Behalf-Of`.
fn admit(state: &AppState, key: &Arc<KeyIdentity>, request: &mut Request) -> Result<(), AppError> {
    if let Some(limiter) = &state.rate_limiter {
        limiter.check(&key.key_id)?;
    }
    let end_user = end_user(request.headers())?;
    request.extensions_mut().insert(Caller {
        key: Arc::clone(key),
        end_user,
    });
    Ok(())
}

/// The secret of an `Authorization: Bearer <secret>` header (scheme name
/// case-insensitive), if there is exactly one such header.
fn bearer_secret(headers: &HeaderMap) -> Option<&str> {
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
    fn generated_keys_are_prefixed_unique_and_hashed() {
        let tenant = TenantId::parse("t").unwrap();
        let a = generate_key(tenant.clone(), None);
        let b = generate_key(tenant, None);
        assert!(a.secret.starts_with(SECRET_PREFIX));
        assert_eq!(a.secret.len(), SECRET_PREFIX.len() + SECRET_RANDOM_CHARS);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.record.secret_hash, hash_secret(&a.secret));
        assert!(!a.record.secret_hash.contains(&a.secret));
        assert!(a.secret.starts_with(&a.record.prefix));
        assert!(check_secret(&a.secret).is_ok());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bEaReR abc"));
        assert_eq!(bearer_secret(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_secret(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_secret(&headers), None);
    }
}
