//! Feedback tokens: what a browser holds instead of an API key (API.md,
//! "Feedback tokens and the browser widget").
//!
//! A token is `lft_<payload>.<mac>`, both parts base64url without padding:
//! the payload is a small JSON object (version, minting key id, tenant, kind,
//! output id, end user, expiry in Unix seconds), the MAC its HMAC-SHA256
//! under the deployment's signing secret, which lives in the database (one
//! row, created by whichever replica starts first) and is cached by every
//! replica. Verifying is one HMAC and one JSON parse, no I/O; whether the
//! minting key is still active is for the caller of [`TokenSigner::verify`]
//! (the key set in `auth`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::feedback::{EndUserId, FeedbackKey, OutputId, OutputKind, TenantId};
use crate::store::{KeyStore, StoreError};

/// Every token starts with this (API keys start with `lfk_`).
pub const TOKEN_PREFIX: &str = "lft_";
/// The shortest lifetime a token may be minted with, in seconds.
pub const MIN_TTL_SECONDS: u32 = 60;
/// The longest (7 days).
pub const MAX_TTL_SECONDS: u32 = 604_800;
/// The lifetime when none is asked for (1 hour).
pub const DEFAULT_TTL_SECONDS: u32 = 3600;
/// Longer strings are not tokens: the payload's fields are bounded (ids and
/// end users at most 256 characters), so a real token is far shorter. Checked
/// before anything is decoded.
const MAX_TOKEN_CHARS: usize = 4096;
/// The payload's format version; a token of another is malformed.
const VERSION: u8 = 1;
/// Random bytes in each token's payload.
const NONCE_BYTES: usize = 9;
/// Random bytes of a generated signing secret.
const SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// What a token grants, as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The public id of the API key that minted it: revoking that key
    /// revokes the token.
    pub key_id: String,
    /// The minting key's tenant.
    pub tenant: TenantId,
    /// The one output it may create, update and get.
    pub output: FeedbackKey,
    /// The end user it acts as (`None`: the whole tenant, as a key without
    /// `X-On-Behalf-Of`).
    pub end_user: Option<EndUserId>,
    /// When it stops working (whole seconds).
    pub expires_at: DateTime<Utc>,
}

/// Why a string is not a valid token (each a `401`; the reason is the
/// `auth_failures_total` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not shaped like a token: prefix, two parts, length.
    #[error("malformed token")]
    Malformed,
    /// Shaped like one, but the MAC does not decode or match: forged,
    /// altered, truncated, or signed with another secret.
    #[error("token signature does not match")]
    BadSignature,
    /// Authentic, but its payload is not one this version understands.
    #[error("unsupported token payload")]
    Unsupported,
    /// Authentic and past its expiry.
    #[error("token expired")]
    Expired,
}

impl TokenError {
    /// The `auth_failures_total` reason.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "token_malformed",
            Self::BadSignature => "token_bad_signature",
            Self::Unsupported => "token_unsupported",
            Self::Expired => "token_expired",
        }
    }
}

/// The payload as it is written (borrowing) ...
#[derive(Serialize)]
struct WirePayloadRef<'a> {
    v: u8,
    key: &'a str,
    tenant: &'a str,
    kind: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    exp: i64,
    /// Random: two tokens minted alike are still two tokens (each with its
    /// own rate limit).
    n: &'a str,
}

/// ... and as it is read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePayload {
    v: u8,
    key: String,
    tenant: String,
    kind: String,
    id: String,
    user: Option<String>,
    exp: i64,
    #[expect(dead_code, reason = "only makes each token unique")]
    n: String,
}

impl WirePayload {
    fn into_claims(self) -> Option<TokenClaims> {
        if self.v != VERSION || self.key.is_empty() {
            return None;
        }
        Some(TokenClaims {
            key_id: self.key,
            tenant: TenantId::parse(self.tenant).ok()?,
            output: FeedbackKey {
                kind: OutputKind::parse(&self.kind)?,
                id: OutputId::parse(self.id).ok()?,
            },
            end_user: self.user.map(EndUserId::parse).transpose().ok()?,
            expires_at: DateTime::from_timestamp(self.exp, 0)?,
        })
    }
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    /// The keyed HMAC state; cloned per token (no secret copied around).
    mac: HmacSha256,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer with `secret` (any length; the stored one is 32 bytes).
    #[must_use]
    #[expect(
        clippy::expect_used,
        reason = "HMAC takes keys of any length: new_from_slice never fails"
    )]
    pub fn new(secret: &[u8]) -> Self {
        Self {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length"),
        }
    }

    /// A signer with a secret as the database stores it (hex).
    pub fn from_stored(secret: &str) -> Result<Self, StoreError> {
        let bytes = hex::decode(secret)
            .ok()
            .filter(|bytes| bytes.len() >= SECRET_BYTES)
            .ok_or_else(|| {
                StoreError::Corrupt("the token signing secret is not 32 or more hex bytes".into())
            })?;
        Ok(Self::new(&bytes))
    }

    /// A new random secret, as the database stores it.
    #[must_use]
    pub fn generate_secret() -> String {
        let mut bytes = [0_u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// The signer of the deployment: the stored secret, or a new one stored
    /// now if there is none (race-free across replicas, see
    /// [`KeyStore::token_signing_secret`]).
    pub async fn load(store: &dyn KeyStore) -> Result<Self, StoreError> {
        let secret = store.token_signing_secret(&Self::generate_secret()).await?;
        Self::from_stored(&secret)
    }

    /// The token for `claims`.
    #[must_use]
    pub fn sign(&self, claims: &TokenClaims) -> String {
        let mut nonce = [0_u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let payload = WirePayloadRef {
            n: &nonce,
            v: VERSION,
            key: &claims.key_id,
            tenant: claims.tenant.as_str(),
            kind: claims.output.kind.as_str(),
            id: claims.output.id.as_str(),
            user: claims.end_user.as_ref().map(EndUserId::as_str),
            exp: claims.expires_at.timestamp(),
        };
        // Serializing strings and integers cannot fail.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = self.tag(&payload).finalize().into_bytes();
        format!("{TOKEN_PREFIX}{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The claims of `token` if it is authentic and not expired at `now`.
    /// The MAC is checked (in constant time) before the payload is decoded.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<TokenClaims, TokenError> {
        let (payload, tag) = split(token).ok_or(TokenError::Malformed)?;
        // A MAC part that does not even decode is a bad signature too (a
        // truncated token often ends in bits base64 cannot hold).
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::BadSignature)?;
        self.tag(payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Unsupported)?;
        let claims = serde_json::from_slice::<WirePayload>(&json)
            .ok()
            .and_then(WirePayload::into_claims)
            .ok_or(TokenError::Unsupported)?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// The HMAC state over the payload's text (what is signed).
    fn tag(&self, payload: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac
    }
}

/// The payload and MAC texts of a string shaped like a token.
fn split(token: &str) -> Option<(&str, &str)> {
    if token.len() > MAX_TOKEN_CHARS {
        return None;
    }
    let (payload, tag) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    (!payload.is_empty() && !tag.is_empty()).then_some((payload, tag))
}

/// Whether `secret` claims to be a token (by its prefix): a token is then
/// never tried as an API key.
#[must_use]
pub fn is_token(secret: &str) -> bool {
    secret.starts_with(TOKEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use proptest::prelude::*;

    use super::*;

    fn claims(end_user: Option<&str>, expires_at: DateTime<Utc>) -> TokenClaims {
        TokenClaims {
            key_id: "key_0123456789abcdef".to_owned(),
            tenant: TenantId::parse("acme").unwrap(),
            output: FeedbackKey {
                kind: OutputKind::Responses,
                id: OutputId::parse("resp-1").unwrap(),
            },
            end_user: end_user.map(|user| EndUserId::parse(user).unwrap()),
            expires_at,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_token_verifies_until_its_expiry_and_not_after() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let expiry = at(1_800_000_000);
        let token = signer.sign(&claims(Some("u-1"), expiry));
        assert!(token.starts_with(TOKEN_PREFIX));

        let just_before = expiry - Duration::milliseconds(1);
        assert_eq!(
            signer.verify(&token, just_before),
            Ok(claims(Some("u-1"), expiry))
        );
        assert_eq!(signer.verify(&token, expiry), Err(TokenError::Expired));
        assert_eq!(
            signer.verify(&token, expiry + Duration::days(1)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn forged_truncated_and_resigned_tokens_are_refused() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let other = TokenSigner::new(b"another secret, another deployment");
        let now = at(1_700_000_000);
        let token = signer.sign(&claims(None, at(1_800_000_000)));

        assert_eq!(
            signer.verify(&other.sign(&claims(None, at(1_800_000_000))), now),
            Err(TokenError::BadSignature)
        );
        let truncated = &token[..token.len() - 3];
        assert_eq!(signer.verify(truncated, now), Err(TokenError::BadSignature));
        let (payload, tag) = token.split_once('.').unwrap();
        assert_eq!(signer.verify(payload, now), Err(TokenError::Malformed));
        // Another payload with the old MAC: a longer expiry, say.
        let forged_payload = URL_SAFE_NO_PAD.encode(
            br#"{"v":1,"key":"key_0123456789abcdef","tenant":"acme","kind":"responses","id":"resp-2","exp":1900000000,"n":"x"}"#,
        );
        assert_eq!(
            signer.verify(&format!("{TOKEN_PREFIX}{forged_payload}.{tag}"), now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            signer.verify(&format!("{payload}.{tag}!"), now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            signer.verify("lfk_not-a-token", now),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn an_authentic_payload_of_another_shape_is_unsupported() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let payload = URL_SAFE_NO_PAD.encode(
            br#"{"v":2,"key":"k","tenant":"acme","kind":"responses","id":"r","exp":1900000000}"#,
        );
        let tag = URL_SAFE_NO_PAD.encode(signer.tag(&payload).finalize().into_bytes());
        assert_eq!(
            signer.verify(&format!("{TOKEN_PREFIX}{payload}.{tag}"), at(0)),
            Err(TokenError::Unsupported)
        );
    }

    #[test]
    fn a_stored_secret_must_be_long_hex() {
        assert!(TokenSigner::from_stored(&TokenSigner::generate_secret()).is_ok());
        assert!(TokenSigner::from_stored("abcd").is_err());
        assert!(TokenSigner::from_stored(&"zz".repeat(32)).is_err());
    }

    proptest! {
        #[test]
        fn any_string_verifies_or_is_refused_without_panicking(raw in ".{0,300}") {
            let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
            let _ = signer.verify(&raw, at(0));
            let _ = signer.verify(&format!("{TOKEN_PREFIX}{raw}"), at(0));
        }

        #[test]
        fn claims_round_trip_and_any_changed_character_is_refused(
            id in "[a-zA-Z0-9_.:-]{1,64}",
            user in proptest::option::of("[ -~]{0,40}[!-~]"),
            exp in 1_i64..4_000_000_000,
            flip in any::<prop::sample::Index>(),
            with in any::<char>(),
        ) {
            let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
            let user = user.map(|user| user.trim().to_owned()).filter(|user| !user.is_empty());
            let mut claims = claims(user.as_deref(), at(exp));
            claims.output.id = OutputId::parse(id).unwrap();
            let token = signer.sign(&claims);
            prop_assert_eq!(signer.verify(&token, at(exp - 1)), Ok(claims));

            let mut chars: Vec<char> = token.chars().collect();
            let index = flip.index(chars.len());
            prop_assume!(chars[index] != with);
            chars[index] = with;
            let changed: String = chars.into_iter().collect();
            prop_assert!(signer.verify(&changed, at(exp - 1)).is_err());
        }
    }
}
