//! Credentials and rights: API keys (generation, hashing, verification
//! against an in-memory key set), the [`Principal`] a verified credential
//! stands for, what each operation requires of it ([`Requirement`],
//! [`authorize`]), and the [`Caller`] that authorized requests carry.
//!
//! No HTTP here: `http::authn` reads the headers and maps [`AuthError`] to the
//! error envelope. A new kind of credential is a new [`Principal`] variant,
//! verified here; the compiler then asks for its row in [`authorize`].
//! Feedback tokens (`lft_…`, signed, see [`token`]) are the second kind.

pub mod token;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::future::Cache;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use self::token::{TokenClaims, TokenSigner};
use crate::feedback::{EndUserId, FeedbackKey, Scope, TenantId};
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
    generate(Some(tenant), name)
}

/// Generates a new admin key: no tenant, only the admin export
/// (`keys create --admin`).
#[must_use]
pub fn generate_admin_key(name: Option<String>) -> GeneratedKey {
    generate(None, name)
}

fn generate(tenant: Option<TenantId>, name: Option<String>) -> GeneratedKey {
    let random: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(SECRET_RANDOM_CHARS)
        .map(char::from)
        .collect();
    let secret = format!("{SECRET_PREFIX}{random}");
    let record = record(&secret, tenant, name);
    GeneratedKey { secret, record }
}

/// What to store for a given secret (generated, or provisioned by
/// `BOOTSTRAP_API_KEY`). The id derives from the hash, so every replica
/// provisioning the same secret computes the same row.
#[must_use]
pub fn key_record(secret: &str, tenant: TenantId, name: Option<String>) -> NewApiKey {
    record(secret, Some(tenant), name)
}

fn record(secret: &str, tenant: Option<TenantId>, name: Option<String>) -> NewApiKey {
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
    // Into a buffer, not `hex::encode`: its `char`-by-`char` collect cost
    // 1,600 instructions per request, 1.6 % of a `GET` (callgrind).
    let mut hex = [0_u8; 64];
    match hex::encode_to_slice(Sha256::digest(secret.as_bytes()), &mut hex) {
        Ok(()) => String::from_utf8_lossy(&hex).into_owned(),
        // 32 bytes always make 64 digits.
        Err(_) => hex::encode(Sha256::digest(secret.as_bytes())),
    }
}

/// The identity behind a valid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// The key's public id.
    pub key_id: String,
    /// The tenant it acts for.
    pub tenant: TenantId,
}

/// The identity behind a valid admin key (no tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminIdentity {
    /// The key's public id.
    pub key_id: String,
}

/// What an active key stands for: a tenant's key or an admin key.
#[derive(Debug, Clone)]
enum Holder {
    Tenant(Arc<KeyIdentity>),
    Admin(Arc<AdminIdentity>),
}

impl Holder {
    fn new(key_id: String, tenant: Option<TenantId>) -> Self {
        match tenant {
            Some(tenant) => Self::Tenant(Arc::new(KeyIdentity { key_id, tenant })),
            None => Self::Admin(Arc::new(AdminIdentity { key_id })),
        }
    }

    /// A tenant key's identity (what may mint tokens); `None` for an admin key.
    fn tenant_key(self) -> Option<Arc<KeyIdentity>> {
        match self {
            Self::Tenant(key) => Some(key),
            Self::Admin(_) => None,
        }
    }
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
    /// Verifies feedback tokens (and mints them).
    tokens: TokenSigner,
    keys: RwLock<KeySet>,
    /// Outcomes of lookups of keys missing from the set; concurrent lookups
    /// of one key share a single query.
    lookups: Cache<String, Option<Holder>>,
    /// The lookups' budget: per second, and at once.
    budget: DefaultDirectRateLimiter,
    slots: Semaphore,
}

impl Verifier {
    /// The key that `find` picks from the key set, if the set is fresh; and
    /// whether it is.
    fn known<T: Clone>(&self, find: impl FnOnce(&KeySet) -> Option<&T>) -> (Option<T>, bool) {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let fresh = keys.is_fresh();
        let known = find(&keys).filter(|_| fresh).cloned();
        (known, fresh)
    }
}

/// The active keys by hash (for API keys) and by id (for the feedback
/// tokens they minted), as of one query.
#[derive(Default)]
struct KeySet {
    by_hash: HashMap<String, Holder>,
    by_id: HashMap<String, Arc<KeyIdentity>>,
    /// When the query that loaded it began; `None` until the first load.
    loaded_at: Option<Instant>,
}

impl KeySet {
    fn is_fresh(&self) -> bool {
        self.loaded_at
            .is_some_and(|loaded| loaded.elapsed() < KEY_CACHE_TTL)
    }
}

/// A secret shaped like a key that the key set does not hold (or the set is
/// stale), or an authentic token whose minting key it does not hold: the
/// store must be asked ([`Authenticator::look_up`]).
#[derive(Debug)]
pub struct Lookup {
    of: LookupOf,
    /// Whether the set was fresh: if so, a lookup over budget is refused.
    fresh: bool,
}

/// What a [`Lookup`] looks for.
#[derive(Debug)]
enum LookupOf {
    /// An API key, by the hash of its secret.
    Key { hash: String },
    /// The minting key of a token (created since the last load, or revoked).
    TokenKey(Box<(TokenClaims, String)>),
}

/// The principal of an authentic, unexpired token whose minting key is
/// `identity`, or `Unauthorized` (counted) if that key is not active.
fn token_principal(
    identity: Option<Arc<KeyIdentity>>,
    claims: TokenClaims,
    rate_key: String,
) -> Result<Principal, AuthError> {
    let Some(key) = identity.filter(|key| key.tenant == claims.tenant) else {
        metrics::counter!(AUTH_FAILURES, "reason" => "token_key_revoked").increment(1);
        return Err(AuthError::Unauthorized);
    };
    Ok(Principal::FeedbackToken(Arc::new(TokenGrant {
        key,
        claims,
        rate_key,
    })))
}

/// The principal of a verified key, or `Unauthorized` (counted).
fn principal(identity: Option<Holder>) -> Result<Principal, AuthError> {
    match identity {
        Some(Holder::Tenant(key)) => Ok(Principal::TenantKey(key)),
        Some(Holder::Admin(key)) => Ok(Principal::AdminKey(key)),
        None => {
            metrics::counter!(AUTH_FAILURES, "reason" => "unknown_or_revoked").increment(1);
            Err(AuthError::Unauthorized)
        }
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
    /// An authenticator over `store`, verifying feedback tokens with
    /// `tokens`. Its key set stays empty (every key is looked up one by one)
    /// until [`Self::reload_key_set`] runs: the application starts that as a
    /// background worker.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, tokens: TokenSigner) -> Self {
        let shared = Arc::new(Verifier {
            store,
            tokens,
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

    /// The principal behind a bearer secret, when the key set can tell
    /// without I/O: a key in the (fresh) set, or a secret not shaped like
    /// a key (`Unauthorized`). Any other secret is a [`Lookup`] for
    /// [`Self::look_up`].
    pub fn authenticate(&self, secret: &str) -> Result<Result<Principal, AuthError>, Lookup> {
        if token::is_token(secret) {
            return self.authenticate_token(secret);
        }
        if check_secret(secret).is_err() {
            return Ok(principal(None));
        }
        let hash = hash_secret(secret);
        let (known, fresh) = self.shared.known(|keys| keys.by_hash.get(&hash));
        if known.is_some() {
            return Ok(principal(known));
        }
        Err(Lookup {
            of: LookupOf::Key { hash },
            fresh,
        })
    }

    /// [`Self::authenticate`] for a token: its MAC and expiry, then its
    /// minting key in the key set. No I/O unless that key is missing from
    /// the set (a [`Lookup`]).
    fn authenticate_token(&self, secret: &str) -> Result<Result<Principal, AuthError>, Lookup> {
        let claims = match self.shared.tokens.verify(secret, Utc::now()) {
            Ok(claims) => claims,
            Err(err) => {
                metrics::counter!(AUTH_FAILURES, "reason" => err.reason()).increment(1);
                return Ok(Err(AuthError::Unauthorized));
            }
        };
        // The MAC tells tokens apart: what the per-token rate limit counts.
        let rate_key = secret
            .rsplit_once('.')
            .map(|(_, mac)| mac.to_owned())
            .unwrap_or_default();
        let (known, fresh) = self.shared.known(|keys| keys.by_id.get(&claims.key_id));
        if known.is_some() {
            return Ok(token_principal(known, claims, rate_key));
        }
        Err(Lookup {
            of: LookupOf::TokenKey(Box::new((claims, rate_key))),
            fresh,
        })
    }

    /// Mints feedback tokens (`POST /tokens`).
    #[must_use]
    pub fn tokens(&self) -> &TokenSigner {
        &self.shared.tokens
    }

    /// The principal behind a key missing from the set, looked up in the
    /// store if the lookup budget allows; if it does not, the key is refused
    /// (`Unauthorized`) while the set is fresh, and `Unavailable` otherwise
    /// (the database has not answered for a while: we cannot tell).
    pub async fn look_up(&self, lookup: Lookup) -> Result<Principal, AuthError> {
        let Lookup { of, fresh } = lookup;
        match of {
            LookupOf::Key { hash } => principal(self.find(KeyRef::Hash(hash), fresh).await?),
            LookupOf::TokenKey(token) => {
                let (claims, rate_key) = *token;
                let key_id = KeyRef::Id(claims.key_id.clone());
                let minter = self.find(key_id, fresh).await?.and_then(Holder::tenant_key);
                token_principal(minter, claims, rate_key)
            }
        }
    }

    /// The identity of a key missing from the set (`None`: unknown or
    /// revoked), within the lookup budget.
    async fn find(&self, key: KeyRef, fresh: bool) -> Result<Option<Holder>, AuthError> {
        let shared = &self.shared;
        // Hashes are hex, ids start with `key_`: one cache holds both.
        let cache_key = match &key {
            KeyRef::Hash(hash) => hash.clone(),
            KeyRef::Id(id) => format!("id:{id}"),
        };
        // Errors are not cached: the next request asks again.
        let outcome = shared
            .lookups
            .try_get_with(cache_key, async {
                // A slot first, so that a lookup refused for want of one
                // spends no token.
                let Ok(_slot) = shared.slots.try_acquire() else {
                    return Err(LookupError::OverBudget);
                };
                if shared.budget.check().is_err() {
                    return Err(LookupError::OverBudget);
                }
                let fetch = async {
                    match &key {
                        KeyRef::Hash(hash) => shared.store.find_api_key(hash).await,
                        KeyRef::Id(id) => shared.store.find_api_key_by_id(id).await,
                    }
                };
                let record = tokio::time::timeout(LOOKUP_TIMEOUT, fetch)
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
                    .map(|r| Holder::new(r.id, r.tenant)))
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
                        Err(AuthError::Unavailable(
                            "cannot verify the API key: the key set is stale and the lookup budget is spent"
                                .to_owned(),
                        ))
                    }
                }
                LookupError::Store(err) => Err(AuthError::from(err)),
                LookupError::TimedOut => Err(AuthError::Unavailable(format!(
                    "API key lookup: no answer within {} s",
                    LOOKUP_TIMEOUT.as_secs()
                ))),
            },
        }
    }
}

/// How a lookup names a key.
enum KeyRef {
    /// The hash of an API key's secret.
    Hash(String),
    /// A key's public id (a token's minting key).
    Id(String),
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
                let mut by_hash = HashMap::with_capacity(active.len());
                let mut by_id = HashMap::with_capacity(active.len());
                for key in active {
                    let holder = Holder::new(key.id, key.tenant);
                    if let Holder::Tenant(identity) = &holder {
                        by_id.insert(identity.key_id.clone(), Arc::clone(identity));
                    }
                    by_hash.insert(key.secret_hash, holder);
                }
                let count = by_hash.len();
                *shared.keys.write().unwrap_or_else(PoisonError::into_inner) = KeySet {
                    by_hash,
                    by_id,
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

/// Why a request was not authenticated or not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No valid credential: missing, malformed, unknown or revoked.
    #[error("no valid credential")]
    Unauthorized,
    /// A valid credential, for an operation it may not call.
    #[error("the credential may not call this operation")]
    Forbidden,
    /// The credential cannot be checked right now (the database is away or
    /// slow); the cause is for the log.
    #[error("cannot verify the credential: {0}")]
    Unavailable(String),
    /// The store failed otherwise; the cause is for the log.
    #[error("cannot verify the credential: {0}")]
    Internal(String),
}

impl From<&StoreError> for AuthError {
    fn from(err: &StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Self::Unavailable(err.to_string()),
            StoreError::Corrupt(_) | StoreError::Other(_) => Self::Internal(err.to_string()),
        }
    }
}

/// Who a verified credential stands for (API.md, "Who may do what").
///
/// [`authorize`] and [`Principal::act_for`] say what each may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant API key: every operation on its tenant's feedback.
    TenantKey(Arc<KeyIdentity>),
    /// An admin key: only the admin export, across all tenants.
    AdminKey(Arc<AdminIdentity>),
    /// A feedback token: create, update and get of one output of the
    /// minting key's tenant, as the end user it names.
    FeedbackToken(Arc<TokenGrant>),
}

/// A verified feedback token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The (active) key that minted it.
    pub key: Arc<KeyIdentity>,
    /// What it grants.
    pub claims: TokenClaims,
    /// What the per-token rate limit counts (its MAC, unique per token).
    pub rate_key: String,
}

impl Principal {
    /// The tenant of the key the credential was verified as, or that minted
    /// the token (what the request log names); `None` for an admin key.
    #[must_use]
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Self::TenantKey(key) => Some(&key.tenant),
            Self::AdminKey(_) => None,
            Self::FeedbackToken(grant) => Some(&grant.key.tenant),
        }
    }

    /// The caller of an authorized request, acting for `end_user` (from
    /// `X-On-Behalf-Of`) or for the whole tenant. A token acts as its own
    /// end user and refuses any other here (`Forbidden`); an admin key acts
    /// for no tenant (`Forbidden`: it is never a tenant operation's caller).
    pub fn act_for(&self, end_user: Option<EndUserId>) -> Result<Caller, AuthError> {
        match self {
            Self::AdminKey(_) => Err(AuthError::Forbidden),
            Self::TenantKey(key) => Ok(Caller {
                key: Arc::clone(key),
                end_user,
                output: None,
            }),
            Self::FeedbackToken(grant) => {
                let own = grant.claims.end_user.as_ref();
                if end_user.as_ref().is_some_and(|named| Some(named) != own) {
                    return Err(AuthError::Forbidden);
                }
                Ok(Caller {
                    key: Arc::clone(&grant.key),
                    end_user: own.cloned(),
                    output: Some(grant.claims.output.clone()),
                })
            }
        }
    }
}

/// What an operation requires of its caller; each `/api/v1` route states
/// one (`http::authn::require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Create, update or get the feedback of one output (what a feedback
    /// token will be allowed, for its own output).
    OneOutput,
    /// Any other operation on the tenant's feedback: list, batch get, export, stats.
    TenantFeedback,
    /// Minting feedback tokens (only a tenant key: a token mints none).
    MintTokens,
    /// Erasing everything the tenant holds about one end user (only a
    /// tenant key, acting for the whole tenant).
    EraseEndUsers,
    /// Managing the tenant's webhook endpoints (only a tenant key; the
    /// handlers refuse `X-On-Behalf-Of`).
    ManageWebhooks,
    /// The admin operations across all tenants (the admin export): only
    /// admin keys.
    AllTenants,
}

impl Requirement {
    /// Every requirement, for exhaustive tests.
    pub const ALL: [Self; 6] = [
        Self::OneOutput,
        Self::TenantFeedback,
        Self::MintTokens,
        Self::EraseEndUsers,
        Self::ManageWebhooks,
        Self::AllTenants,
    ];
}

/// The one authorization step: may `principal` call an operation that
/// requires `requirement`? No wildcard arm, so that a new principal or
/// requirement must be decided for every pair. Which output a
/// [`Requirement::OneOutput`] operation addresses is known only once its path
/// or body is read: [`Caller::authorize_output`] decides that part.
pub fn authorize(principal: &Principal, requirement: Requirement) -> Result<(), AuthError> {
    match (principal, requirement) {
        (
            Principal::TenantKey(_),
            Requirement::OneOutput
            | Requirement::TenantFeedback
            | Requirement::MintTokens
            | Requirement::EraseEndUsers
            | Requirement::ManageWebhooks,
        )
        | (Principal::FeedbackToken(_), Requirement::OneOutput)
        | (Principal::AdminKey(_), Requirement::AllTenants) => Ok(()),
        (Principal::TenantKey(_), Requirement::AllTenants)
        | (
            Principal::AdminKey(_),
            Requirement::OneOutput
            | Requirement::TenantFeedback
            | Requirement::MintTokens
            | Requirement::EraseEndUsers
            | Requirement::ManageWebhooks,
        )
        | (
            Principal::FeedbackToken(_),
            Requirement::TenantFeedback
            | Requirement::MintTokens
            | Requirement::EraseEndUsers
            | Requirement::ManageWebhooks
            | Requirement::AllTenants,
        ) => Err(AuthError::Forbidden),
    }
}

/// Who is calling: the key's tenant and, with `X-On-Behalf-Of`, the end user.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key that authenticated the request.
    pub key: Arc<KeyIdentity>,
    /// The end user the caller acts for, if any.
    pub end_user: Option<EndUserId>,
    /// The one output the caller may address (a token's); `None`: any.
    pub output: Option<FeedbackKey>,
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

    /// The second half of [`authorize`] for a [`Requirement::OneOutput`]
    /// operation, once the output it addresses is known (from the path, or
    /// from a create's body): a token may address only its own.
    pub fn authorize_output(&self, key: &FeedbackKey) -> Result<(), AuthError> {
        match &self.output {
            Some(own) if own != key => Err(AuthError::Forbidden),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
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

    /// What each kind of principal may call: one row per kind, one entry
    /// per requirement. A new kind or requirement fails this test until its
    /// row is written.
    fn rights(principal: &Principal, requirement: Requirement) -> Result<(), AuthError> {
        let allowed: &[Requirement] = match principal {
            Principal::TenantKey(_) => &[
                Requirement::OneOutput,
                Requirement::TenantFeedback,
                Requirement::MintTokens,
                Requirement::EraseEndUsers,
                Requirement::ManageWebhooks,
            ],
            Principal::AdminKey(_) => &[Requirement::AllTenants],
            Principal::FeedbackToken(_) => &[Requirement::OneOutput],
        };
        if allowed.contains(&requirement) {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        }
    }

    fn tenant_key(tenant: &str, key_id: &str) -> Principal {
        Principal::TenantKey(Arc::new(KeyIdentity {
            key_id: key_id.to_owned(),
            tenant: TenantId::parse(tenant).unwrap(),
        }))
    }

    fn output(id: &str) -> FeedbackKey {
        FeedbackKey {
            kind: crate::feedback::OutputKind::Responses,
            id: crate::feedback::OutputId::parse(id).unwrap(),
        }
    }

    fn feedback_token(end_user: Option<&str>) -> Principal {
        let Principal::TenantKey(key) = tenant_key("t", "key_0") else {
            unreachable!()
        };
        Principal::FeedbackToken(Arc::new(TokenGrant {
            key,
            claims: TokenClaims {
                key_id: "key_0".to_owned(),
                tenant: TenantId::parse("t").unwrap(),
                output: output("resp-1"),
                end_user: end_user.map(|user| EndUserId::parse(user).unwrap()),
                expires_at: chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
            },
            rate_key: "mac".to_owned(),
        }))
    }

    proptest::proptest! {
        #[test]
        fn authorize_grants_exactly_each_principals_rights(
            tenant in "[a-z][a-z0-9_-]{0,20}",
            key_id in "key_[0-9a-f]{16}",
            requirement in proptest::sample::select(Requirement::ALL.to_vec()),
        ) {
            let principal = tenant_key(&tenant, &key_id);
            proptest::prop_assert_eq!(
                authorize(&principal, requirement),
                rights(&principal, requirement)
            );
        }
    }

    #[test]
    fn every_principal_kind_and_requirement_pair_is_decided() {
        let principals = [
            tenant_key("t", "key_0"),
            Principal::AdminKey(Arc::new(AdminIdentity {
                key_id: "key_1".to_owned(),
            })),
            feedback_token(Some("u-1")),
        ];
        let mut refused = 0;
        for principal in &principals {
            for requirement in Requirement::ALL {
                let outcome = authorize(principal, requirement);
                assert_eq!(
                    outcome,
                    rights(principal, requirement),
                    "{principal:?} {requirement:?}"
                );
                refused += usize::from(outcome.is_err());
            }
        }
        // A tenant key may not call the admin operations; an admin key
        // only them; a token only reaches its one output.
        assert_eq!(refused, 11);
    }

    #[test]
    fn a_token_acts_as_its_end_user_on_its_output_only() {
        let principal = feedback_token(Some("u-1"));
        let user = EndUserId::parse("u-1").unwrap();
        for named in [None, Some(user.clone())] {
            let caller = principal.act_for(named).unwrap();
            assert_eq!(caller.scope().tenant.as_str(), "t");
            assert_eq!(caller.scope().end_user, Some(user.clone()));
            assert_eq!(caller.authorize_output(&output("resp-1")), Ok(()));
            assert_eq!(
                caller.authorize_output(&output("resp-2")),
                Err(AuthError::Forbidden)
            );
            let other_kind = FeedbackKey {
                kind: crate::feedback::OutputKind::Completions,
                id: crate::feedback::OutputId::parse("resp-1").unwrap(),
            };
            assert_eq!(
                caller.authorize_output(&other_kind),
                Err(AuthError::Forbidden)
            );
        }
        let someone_else = EndUserId::parse("u-2").unwrap();
        assert_eq!(
            principal.act_for(Some(someone_else.clone())).err(),
            Some(AuthError::Forbidden)
        );
        // A token for the whole tenant may not pick an end user either.
        assert_eq!(
            feedback_token(None).act_for(Some(someone_else)).err(),
            Some(AuthError::Forbidden)
        );
        assert_eq!(
            feedback_token(None).act_for(None).unwrap().scope().end_user,
            None
        );
        // A tenant key may address any output.
        let caller = tenant_key("t", "key_0").act_for(None).unwrap();
        assert_eq!(caller.authorize_output(&output("resp-2")), Ok(()));
    }

    #[test]
    fn a_tenant_key_acts_for_the_end_user_it_names() {
        let principal = tenant_key("t", "key_0");
        let user = EndUserId::parse("u-1").unwrap();
        let caller = principal.act_for(Some(user.clone())).unwrap();
        assert_eq!(caller.scope().tenant.as_str(), "t");
        assert_eq!(caller.scope().end_user, Some(user));
        assert_eq!(principal.act_for(None).unwrap().scope().end_user, None);
    }
}
