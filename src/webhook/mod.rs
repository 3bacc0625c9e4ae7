//! Webhooks (API.md, "Webhooks (Standard Webhooks)"): event types, endpoint
//! secrets and signatures (Standard Webhooks v1), the retry schedule, the
//! target rules against SSRF (`target`), and the delivery worker
//! (`delivery`). No HTTP server or SQL here: the store holds the rows, the
//! `http` layer the routes.

pub mod delivery;
pub mod target;

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A change an endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    /// An entry was created.
    Created,
    /// An entry was updated.
    Updated,
    /// An entry was deleted (also by erasure or retention).
    Deleted,
}

impl EventType {
    /// Every event type, in the order listings show them.
    pub const ALL: [Self; 3] = [Self::Created, Self::Updated, Self::Deleted];

    /// The wire name (`feedback.created`, ...), also the `changes.type` column.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "feedback.created",
            Self::Updated => "feedback.updated",
            Self::Deleted => "feedback.deleted",
        }
    }

    /// The event type of a wire name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == raw)
    }
}

/// The event types an endpoint subscribes to: at least one, each once, in
/// [`EventType::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes(Vec<EventType>);

impl EventTypes {
    /// Every event type (the default of a new endpoint).
    #[must_use]
    pub fn all() -> Self {
        Self(EventType::ALL.to_vec())
    }

    /// The set named by `names`; `Err` names the first unknown one, or says
    /// the list is empty.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut events = Vec::new();
        for name in names {
            let name = name.as_ref();
            let event = EventType::parse(name).ok_or_else(|| {
                format!(
                    "unknown event type {name:?}; expected one of {}",
                    EventType::ALL.map(EventType::as_str).join(", ")
                )
            })?;
            events.push(event);
        }
        if events.is_empty() {
            return Err("must name at least one event type".to_owned());
        }
        events.sort_unstable();
        events.dedup();
        Ok(Self(events))
    }

    /// The stored form: comma-separated wire names (the enqueue statement
    /// matches `,type,` in `,events,`).
    #[must_use]
    pub fn to_column(&self) -> String {
        self.names().join(",")
    }

    /// The stored form read back; unknown names are an error.
    pub fn from_column(column: &str) -> Result<Self, String> {
        Self::parse(&column.split(',').collect::<Vec<_>>())
    }

    /// The wire names.
    #[must_use]
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|event| event.as_str()).collect()
    }
}

/// The prefix of endpoint secrets (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new secret (the specification asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// An endpoint's signing secret, `whsec_` + base64 of its key bytes;
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSecret(String);

impl EndpointSecret {
    /// A new random secret.
    #[must_use]
    pub fn generate() -> Self {
        let bytes: [u8; SECRET_BYTES] = rand::random();
        Self(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
    }

    /// A stored secret.
    #[must_use]
    pub fn from_stored(secret: String) -> Self {
        Self(secret)
    }

    /// The secret as shown once and stored.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The HMAC key: the base64 after `whsec_`.
    fn key(&self) -> Option<Vec<u8>> {
        let encoded = self.0.strip_prefix(SECRET_PREFIX).unwrap_or(&self.0);
        STANDARD.decode(encoded).ok()
    }

    /// The `webhook-signature` header value of one attempt: `v1,` + base64
    /// HMAC-SHA256 of `{id}.{timestamp}.{body}` (Standard Webhooks v1).
    #[must_use]
    pub fn sign(&self, event_id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = self.key().unwrap_or_else(|| self.0.as_bytes().to_vec());
        // HMAC takes keys of any length: `new_from_slice` cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return String::new();
        };
        mac.update(event_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointSecret(***)")
    }
}

/// A new endpoint id, `wh_` + a UUIDv7 in hex: unguessable (74 random
/// bits) and, within a process, in creation order even within one
/// millisecond, so that `GET /webhooks` (by `created_at`, then id) lists
/// endpoints oldest first.
#[must_use]
pub fn new_endpoint_id() -> String {
    format!("wh_{}", uuid::Uuid::now_v7().simple())
}

/// The waits between attempts: after the first failed attempt the first
/// wait, and so on; once every wait is used, the delivery is `failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl Default for RetrySchedule {
    /// API.md: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
    fn default() -> Self {
        let minute = 60;
        let hour = 3600;
        Self(
            [
                5,
                5 * minute,
                30 * minute,
                2 * hour,
                5 * hour,
                10 * hour,
                14 * hour,
                20 * hour,
                24 * hour,
            ]
            .map(Duration::from_secs)
            .to_vec(),
        )
    }
}

impl RetrySchedule {
    /// Parses `WEBHOOK_RETRY_SCHEDULE`: comma-separated durations, each a
    /// whole number with a unit (`ms`, `s`, `m`, `h`), e.g. `1s,2s,4s`; an
    /// empty list means no retry.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(Self(Vec::new()));
        }
        raw.split(',')
            .map(|part| {
                let part = part.trim();
                let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let unit = &part[digits.len()..];
                let value: u64 = digits
                    .parse()
                    .map_err(|_| format!("{part:?} is not a duration such as 5s or 30m"))?;
                let seconds = match unit {
                    "ms" => return Ok(Duration::from_millis(value)),
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    _ => return Err(format!("{part:?}: the unit must be ms, s, m or h")),
                };
                Ok(Duration::from_secs(value.saturating_mul(seconds)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// The wait after `attempts` attempts failed; `None`: give up.
    #[must_use]
    pub fn wait_after(&self, attempts: u32) -> Option<Duration> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.0.get(index).copied()
    }

    /// The most attempts a delivery gets.
    #[must_use]
    pub fn max_attempts(&self) -> usize {
        self.0.len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids_made_one_after_another_sort_in_creation_order() {
        let ids: Vec<String> = (0..10_000).map(|_| new_endpoint_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        assert!(ids.iter().all(|id| id.len() == 35 && id.starts_with("wh_")));
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks specification's reference libraries.
        let secret = EndpointSecret::from_stored("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn generated_secrets_are_prefixed_base64_of_32_bytes() {
        let secret = EndpointSecret::generate();
        let key = secret.key().unwrap();
        assert_eq!(key.len(), 32);
        assert!(secret.expose().starts_with("whsec_"));
        assert_ne!(secret, EndpointSecret::generate());
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }

    #[test]
    fn event_types_parse_dedupe_and_refuse_unknown_ones() {
        assert_eq!(
            EventTypes::parse(&["feedback.deleted", "feedback.created", "feedback.deleted"])
                .unwrap()
                .names(),
            ["feedback.created", "feedback.deleted"]
        );
        assert!(EventTypes::parse(&["feedback.exploded"]).is_err());
        assert!(EventTypes::parse::<&str>(&[]).is_err());
        let all = EventTypes::all();
        assert_eq!(EventTypes::from_column(&all.to_column()).unwrap(), all);
    }

    #[test]
    fn the_schedule_parses_and_ends() {
        let schedule = RetrySchedule::parse("1s, 2s,500ms,1m").unwrap();
        assert_eq!(schedule.wait_after(1), Some(Duration::from_secs(1)));
        assert_eq!(schedule.wait_after(3), Some(Duration::from_millis(500)));
        assert_eq!(schedule.wait_after(4), Some(Duration::from_secs(60)));
        assert_eq!(schedule.wait_after(5), None);
        assert_eq!(schedule.max_attempts(), 5);
        assert!(RetrySchedule::parse("1x").is_err());
        assert!(RetrySchedule::parse("s").is_err());
        assert_eq!(RetrySchedule::default().max_attempts(), 10);
        assert_eq!(
            RetrySchedule::default().wait_after(9),
            Some(Duration::from_secs(86_400))
        );
    }
}
