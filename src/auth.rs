//! API keys: generation, hashing, verification with a short-lived cache, and
//! the `Caller` that authenticated requests carry.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::future::Cache;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::feedback::{EndUserId, FieldError, Scope, TenantId};
use crate::http::{AppError, AppState};
use crate::store::{NewApiKey, Store, StoreError};
use crate::telemetry::{AUTH_FAILURES, KEY_LOOKUPS};

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
/// How often the set of active keys is reloaded from the store.
pub const KEY_SET_REFRESH: Duration = Duration::from_secs(2);
/// How long a verified key is trusted without the database answering: the
/// in-memory key set is not used once its last load began longer ago than
/// this, so a revoked key stops working within this time on every replica,
/// even one that cannot reach the database.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(4);
/// Database lookups of keys that are not in the key set (created since the
/// last load, revoked, or made up), per second and process; also the burst.
/// Beyond it such keys are refused from memory.
const LOOKUPS_PER_SECOND: NonZeroU32 = NonZeroU32::new(10).expect("non-zero");
/// Of those lookups, how many may wait for the database at once: at most
/// this many pool connections ever serve keys missing from the set.
const LOOKUP_SLOTS: usize = 2;
/// A lookup not answered within this time is `503` (API.md: "within about
/// 2 seconds"; the pool's acquire timeout usually answers first).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Outcomes of those lookups remembered at once (for [`KEY_SET_REFRESH`]).
const LOOKUP_CACHE_CAPACITY: u64 = 10_000;

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

/// Verifies bearer secrets: against an in-memory set of the active keys'
/// hashes, reloaded every [`KEY_SET_REFRESH`], so that neither a valid key
/// nor a made-up one costs a database round trip; a key missing from the set
/// is looked up within a small budget (see README, "How keys are verified").
#[derive(Clone)]
pub struct Authenticator {
    shared: Arc<Verifier>,
}

struct Verifier {
    store: Arc<dyn Store>,
    keys: RwLock<KeySet>,
    /// Outcomes of lookups of keys missing from the set; concurrent lookups
    /// of one key share a single query.
    lookups: Cache<String, Option<Arc<KeyIdentity>>>,
    /// The lookups' budget: per second, and at once.
    budget: DefaultDirectRateLimiter,
    slots: Semaphore,
}

/// The active keys by hash, as of one query.
#[derive(Default)]
struct KeySet {
    by_hash: HashMap<String, Arc<KeyIdentity>>,
    /// When the query that loaded it began; `None` until the first load.
    loaded_at: Option<Instant>,
}

impl KeySet {
    fn is_fresh(&self) -> bool {
        self.loaded_at
            .is_some_and(|loaded| loaded.elapsed() < KEY_CACHE_TTL)
    }
}

/// Why a key missing from the set was not looked up.
#[derive(Debug)]
enum LookupError {
    OverBudget,
    Store(StoreError),
    TimedOut,
}

impl Authenticator {
    /// An authenticator over `store`. Its key set stays empty (every key is
    /// looked up one by one) until [`Self::reload_key_set`] runs: the
    /// application starts that as a background worker.
    #[must_use]
    pub fn new(store: Arc<dyn Store>) -> Self {
        let shared = Arc::new(Verifier {
            store,
            keys: RwLock::new(KeySet::default()),
            lookups: Cache::builder()
                .max_capacity(LOOKUP_CACHE_CAPACITY)
                .time_to_live(KEY_SET_REFRESH)
                .build(),
            budget: RateLimiter::direct(Quota::per_second(LOOKUPS_PER_SECOND)),
            slots: Semaphore::new(LOOKUP_SLOTS),
        });
        Self { shared }
    }

    /// Reloads the key set every [`KEY_SET_REFRESH`] (the first load at
    /// once) until the authenticator is dropped. Never fails: a failed load
    /// is logged once and retried at the next refresh.
    pub fn reload_key_set(&self) -> impl Future<Output = ()> + Send + use<> {
        reload_key_set(Arc::downgrade(&self.shared))
    }

    /// The identity of an active key, `None` for unknown or revoked ones.
    ///
    /// A key in the (fresh) set costs no I/O. Any other key is looked up in
    /// the store, if the lookup budget allows; if it does not, the key is
    /// refused (`None`) while the set is fresh, and `503` otherwise (the
    /// database has not answered for a while: we cannot tell).
    pub async fn verify(&self, secret: &str) -> Result<Option<Arc<KeyIdentity>>, AppError> {
        if check_secret(secret).is_err() {
            return Ok(None);
        }
        let hash = hash_secret(secret);
        let fresh = {
            let keys = self
                .shared
                .keys
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let fresh = keys.is_fresh();
            if let Some(identity) = keys.by_hash.get(&hash).filter(|_| fresh) {
                return Ok(Some(Arc::clone(identity)));
            }
            fresh
        };
        let shared = &self.shared;
        // Errors are not cached: the next request asks again.
        let outcome = shared
            .lookups
            .try_get_with(hash.clone(), async {
                // A slot first, so that a lookup refused for want of one
                // spends no token.
                let Ok(_slot) = shared.slots.try_acquire() else {
                    return Err(LookupError::OverBudget);
                };
                if shared.budget.check().is_err() {
                    return Err(LookupError::OverBudget);
                }
                let record = tokio::time::timeout(LOOKUP_TIMEOUT, shared.store.find_api_key(&hash))
                    .await
                    .map_err(|_| LookupError::TimedOut);
                let outcome = match &record {
                    Ok(Ok(Some(record))) if !record.is_revoked() => "found",
                    Ok(Ok(_)) => "not_found",
                    _ => "error",
                };
                metrics::counter!(KEY_LOOKUPS, "outcome" => outcome).increment(1);
                Ok(record?
                    .map_err(LookupError::Store)?
                    .filter(|r| !r.is_revoked())
                    .map(|r| {
                        Arc::new(KeyIdentity {
                            key_id: r.id,
                            tenant: r.tenant,
                        })
                    }))
            })
            .await;
        match outcome {
            Ok(identity) => Ok(identity),
            Err(err) => match &*err {
                LookupError::OverBudget => {
                    metrics::counter!(KEY_LOOKUPS, "outcome" => "over_budget").increment(1);
                    if fresh {
                        Ok(None)
                    } else {
                        Err(AppError::Unavailable(
                            "cannot verify the API key: the key set is stale and the lookup budget is spent"
                                .to_owned(),
                        ))
                    }
                }
                LookupError::Store(err) => Err(AppError::from(err)),
                LookupError::TimedOut => Err(AppError::Unavailable(format!(
                    "API key lookup: no answer within {} s",
                    LOOKUP_TIMEOUT.as_secs()
                ))),
            },
        }
    }
}

/// Reloads the key set every [`KEY_SET_REFRESH`] (from the start of one
/// load to the start of the next) for as long as the authenticator lives.
async fn reload_key_set(verifier: Weak<Verifier>) {
    let mut failing = false;
    loop {
        let Some(shared) = verifier.upgrade() else {
            return;
        };
        let started = Instant::now();
        // Bounded, so that a hung query cannot stop the reloads.
        match tokio::time::timeout(KEY_CACHE_TTL, shared.store.active_api_keys()).await {
            Ok(Ok(active)) => {
                let by_hash: HashMap<String, Arc<KeyIdentity>> = active
                    .into_iter()
                    .map(|key| {
                        let identity = Arc::new(KeyIdentity {
                            key_id: key.id,
                            tenant: key.tenant,
                        });
                        (key.secret_hash, identity)
                    })
                    .collect();
                let count = by_hash.len();
                *shared.keys.write().unwrap_or_else(PoisonError::into_inner) = KeySet {
                    by_hash,
                    loaded_at: Some(started),
                };
                if failing {
                    tracing::info!(keys = count, "the API key set is loaded again");
                    failing = false;
                }
            }
            outcome => {
                if !failing {
                    let error = match outcome {
                        Ok(Err(err)) => err.to_string(),
                        _ => format!("no answer within {} s", KEY_CACHE_TTL.as_secs()),
                    };
                    tracing::warn!(
                        %error,
                        "cannot reload the API key set; keys are looked up one by one until it is"
                    );
                    failing = true;
                }
            }
        }
        drop(shared);
        tokio::time::sleep_until((started + KEY_SET_REFRESH).into()).await;
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
pub(crate) async fn require_api_key<F, Fut>(
    state: &AppState,
    mut request: Request,
    next: F,
) -> Result<Response, AppError>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let path = request.uri().path();
    if !(path == "/api/v1" || path.starts_with("/api/v1/")) {
        return Ok(next(request).await);
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
    let verified = state.authenticator.verify(secret).await?;
    let Some(key) = verified else {
        metrics::counter!(AUTH_FAILURES, "reason" => "unknown_or_revoked").increment(1);
        return Err(AppError::Unauthorized);
    };
    tracing::Span::current().record("tenant", key.tenant.as_str());
    let mut response = match admit(state, &key, &mut request) {
        Ok(()) => next(request).await,
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
