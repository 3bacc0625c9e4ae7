//! The headers of safe writes (API.md, "Conditional requests" and
//! "Idempotent creates"): `ETag`, `If-Match`, `If-None-Match` (RFC 9110
//! §8.8.3, §13.1) and `Idempotency-Key`.
//!
//! An entry's tag is its revision, `"r<n>"`: strong, and different after
//! every write, even two in one millisecond.

use axum::http::{HeaderMap, HeaderValue};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppError;
use crate::feedback::FieldError;

/// `If-Match`.
pub(crate) const IF_MATCH: &str = "If-Match";
/// `If-None-Match`.
pub(crate) const IF_NONE_MATCH: &str = "If-None-Match";
/// `Idempotency-Key`.
pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Set on a replayed outcome.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The `ETag` of an entry at `revision`.
#[must_use]
pub(crate) fn etag(revision: i64) -> String {
    format!("\"r{revision}\"")
}

/// [`etag`] as a header value.
pub(crate) fn etag_value(revision: i64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&etag(revision)).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// One entity tag of a conditional header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntityTag {
    /// `W/` prefixed.
    pub(crate) weak: bool,
    /// Between the quotes.
    pub(crate) opaque: String,
}

impl EntityTag {
    /// The revision this tag names, if it is one of ours.
    fn revision(&self) -> Option<i64> {
        let digits = self.opaque.strip_prefix('r')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

/// The value of `If-Match` or `If-None-Match`: `*` or a list of tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    /// `*`: any current representation.
    Any,
    /// One or more tags.
    Tags(Vec<EntityTag>),
}

impl Condition {
    /// Parses every field line of header `name` together (a list may span
    /// lines); `None` when absent. Malformed: `400` naming the header.
    pub(crate) fn from_headers(
        headers: &HeaderMap,
        name: &'static str,
    ) -> Result<Option<Self>, AppError> {
        let mut lines = headers.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            return Ok(None);
        }
        let mut joined = Vec::new();
        for (i, line) in lines.enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            joined.extend_from_slice(line.as_bytes());
        }
        Self::parse(&joined)
            .map(Some)
            .map_err(|message| FieldError::new(name, message).into())
    }

    /// `"*" / #entity-tag` (RFC 9110 §13.1.1): list elements separated by
    /// commas and optional whitespace, empty elements allowed (so an empty
    /// value is an empty list, which no entry matches).
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        let trimmed = trim_ows(raw);
        if trimmed == b"*" {
            return Ok(Self::Any);
        }
        let mut tags = Vec::new();
        let mut rest = trimmed;
        loop {
            rest = skip_separators(rest);
            if rest.is_empty() {
                break;
            }
            let (tag, after) = entity_tag(rest)?;
            tags.push(tag);
            let after = trim_start_ows(after);
            match after.first() {
                None => break,
                Some(b',') => rest = after,
                Some(_) => {
                    return Err(
                        "must be * or a comma-separated list of entity tags (\"...\" or W/\"...\")",
                    );
                }
            }
        }
        // An empty list is valid (RFC 9110 §5.6.1): it matches nothing.
        Ok(Self::Tags(tags))
    }

    /// `If-Match` (strong comparison: a weak tag never matches): the
    /// revisions it accepts; `None` for `*` (any existing entry).
    pub(crate) fn accepted_revisions(&self) -> Option<Vec<i64>> {
        match self {
            Self::Any => None,
            Self::Tags(tags) => Some(
                tags.iter()
                    .filter(|tag| !tag.weak)
                    .filter_map(EntityTag::revision)
                    .collect(),
            ),
        }
    }

    /// `If-None-Match` (weak comparison): whether it matches an entry at `revision`.
    pub(crate) fn matches_weakly(&self, revision: i64) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|tag| tag.revision() == Some(revision)),
        }
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_start_ows(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|&b| !is_ows(b)).unwrap_or(raw.len());
    &raw[start..]
}

fn trim_ows(raw: &[u8]) -> &[u8] {
    let raw = trim_start_ows(raw);
    let end = raw.iter().rposition(|&b| !is_ows(b)).map_or(0, |i| i + 1);
    &raw[..end]
}

fn skip_separators(raw: &[u8]) -> &[u8] {
    let start = raw
        .iter()
        .position(|&b| !is_ows(b) && b != b',')
        .unwrap_or(raw.len());
    &raw[start..]
}

/// `[W/] DQUOTE *etagc DQUOTE`, etagc = `%x21 / %x23-7E / obs-text`.
fn entity_tag(raw: &[u8]) -> Result<(EntityTag, &[u8]), &'static str> {
    let (weak, raw) = match raw.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let Some(body) = raw.strip_prefix(b"\"") else {
        return Err("an entity tag must be a quoted string, optionally prefixed with W/");
    };
    let Some(end) = body.iter().position(|&b| b == b'"') else {
        return Err("an entity tag is missing its closing quote");
    };
    let opaque = &body[..end];
    if !opaque
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return Err("an entity tag may not contain spaces, control characters or quotes");
    }
    let tag = EntityTag {
        weak,
        opaque: String::from_utf8_lossy(opaque).into_owned(),
    };
    Ok((tag, &body[end + 1..]))
}

/// An `Idempotency-Key`: 1 to 255 printable ASCII characters, or the same
/// as a structured-field string (`"..."`, with `\"` and `\\` escapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The most characters a key may have.
    pub(crate) const MAX_CHARS: usize = 255;

    /// The key of the request, if it carries one; malformed: `400` naming the header.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, AppError> {
        let mut lines = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(first) = lines.next() else {
            return Ok(None);
        };
        if lines.next().is_some() {
            return Err(FieldError::new(IDEMPOTENCY_KEY, "must be given once").into());
        }
        Self::parse(first.as_bytes())
            .map(Some)
            .map_err(|message| FieldError::new(IDEMPOTENCY_KEY, message).into())
    }

    /// Parses one header value.
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        let raw = trim_ows(raw);
        let key = if raw.first() == Some(&b'"') {
            unquote_sf_string(raw)?
        } else {
            raw.to_vec()
        };
        if key.is_empty() {
            return Err("must not be empty");
        }
        if key.len() > Self::MAX_CHARS {
            return Err("must be at most 255 characters");
        }
        if !key.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err("must contain only printable ASCII characters");
        }
        // Checked above: ASCII.
        Ok(Self(String::from_utf8_lossy(&key).into_owned()))
    }

    /// The key, unquoted.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// RFC 9651 §3.3.3 sf-string: `DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE`.
fn unquote_sf_string(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    const BAD: &str =
        "a quoted key must be a structured-field string (\"...\", with \\\" and \\\\ escapes)";
    let inner = raw
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .ok_or(BAD)?;
    let mut key = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(escaped),
                _ => return Err(BAD),
            },
            b'"' => return Err(BAD),
            0x20..=0x7e => key.push(b),
            _ => return Err(BAD),
        }
    }
    Ok(key)
}

/// The headers of safe writes, for the OpenAPI document.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct IfMatchHeader {
    /// Apply only if the entry's current `ETag` is one of these (strong
    /// comparison), or `*`; else `412`.
    #[param(
        rename = "If-Match",
        pattern = r#"^(\*|[ \t,]*((W/)?"[!#-~]*"([ \t]*,[ \t,]*(W/)?"[!#-~]*")*[ \t,]*)?)$"#
    )]
    if_match: Option<String>,
}

/// `If-None-Match` on get.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct IfNoneMatchHeader {
    /// `304` without a body when the entry's current `ETag` is one of these
    /// (weak comparison), or `*`.
    #[param(
        rename = "If-None-Match",
        pattern = r#"^(\*|[ \t,]*((W/)?"[!#-~]*"([ \t]*,[ \t,]*(W/)?"[!#-~]*")*[ \t,]*)?)$"#
    )]
    if_none_match: Option<String>,
}

/// `Idempotency-Key` on create.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "documentation only")]
pub(crate) struct IdempotencyKeyHeader {
    /// 1 to 255 printable ASCII characters (or a structured-field string):
    /// a retry with the same key and request gets the first outcome again.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 512,
        pattern = r#"^([!#-~][ -~]{0,254}|"([ !#-\[\]-~]|\\["\\]){1,255}")$"#
    )]
    idempotency_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tag(weak: bool, opaque: &str) -> EntityTag {
        EntityTag {
            weak,
            opaque: opaque.to_owned(),
        }
    }

    #[test]
    fn conditions_follow_rfc_9110() {
        assert_eq!(Condition::parse(b"*"), Ok(Condition::Any));
        assert_eq!(Condition::parse(b" * "), Ok(Condition::Any));
        assert_eq!(
            Condition::parse(b"\"r1\", W/\"r2\" ,,\"\""),
            Ok(Condition::Tags(vec![
                tag(false, "r1"),
                tag(true, "r2"),
                tag(false, "")
            ]))
        );
        // Empty lists are valid and match nothing.
        for empty in [&b""[..], b" ", b",", b" , ,"] {
            assert_eq!(Condition::parse(empty), Ok(Condition::Tags(vec![])));
        }
        for bad in [
            &b"r1"[..],
            b"\"r1",
            b"\"r 1\"",
            b"w/\"r1\"",
            b"*, \"r1\"",
            b"\"r1\" \"r2\"",
            b"\"r1\"x",
            b"W/ \"r1\"",
        ] {
            assert!(
                Condition::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn if_match_compares_strongly_and_if_none_match_weakly() {
        let condition = Condition::parse(b"W/\"r3\", \"r4\", \"x7\", \"r05\"").unwrap();
        assert_eq!(condition.accepted_revisions(), Some(vec![4, 5]));
        assert!(condition.matches_weakly(3));
        assert!(condition.matches_weakly(4));
        assert!(!condition.matches_weakly(7));
        assert_eq!(Condition::Any.accepted_revisions(), None);
        assert!(Condition::Any.matches_weakly(1));
    }

    #[test]
    fn idempotency_keys_are_printable_ascii_or_sf_strings() {
        let ok = |raw: &[u8]| IdempotencyKey::parse(raw).map(|key| key.0);
        assert_eq!(ok(b"abc-123"), Ok("abc-123".to_owned()));
        assert_eq!(ok(b"a b"), Ok("a b".to_owned()));
        assert_eq!(ok(b"\"abc\""), Ok("abc".to_owned()));
        assert_eq!(ok(b"\"a\\\"b\\\\\""), Ok("a\"b\\".to_owned()));
        assert_eq!(ok(&[b'k'; 255]), Ok("k".repeat(255)));
        for bad in [
            &b""[..],
            b"\"\"",
            b"\"abc",
            b"\"a\\b\"",
            b"\"a\"b\"",
            &[b'k'; 256],
            b"caf\xc3\xa9",
            b"a\x01",
        ] {
            assert!(
                IdempotencyKey::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn a_list_of_tags_round_trips(
            tags in proptest::collection::vec((any::<bool>(), "[!#-~]{0,12}"), 1..6),
            separator in "[ \t]{0,2},[ \t]{0,2}(,[ \t]{0,2}){0,2}",
        ) {
            let written: Vec<String> = tags
                .iter()
                .map(|(weak, opaque)| format!("{}\"{opaque}\"", if *weak { "W/" } else { "" }))
                .collect();
            let parsed = Condition::parse(written.join(&separator).as_bytes()).unwrap();
            let expected: Vec<EntityTag> =
                tags.iter().map(|(weak, opaque)| tag(*weak, opaque)).collect();
            prop_assert_eq!(parsed, Condition::Tags(expected));
        }

        #[test]
        fn our_tags_match_exactly_their_revision(revision in 0_i64..i64::MAX, other in 0_i64..i64::MAX) {
            let ours = Condition::parse(etag(revision).as_bytes()).unwrap();
            prop_assert_eq!(ours.accepted_revisions(), Some(vec![revision]));
            prop_assert_eq!(ours.matches_weakly(other), other == revision);
            let weak = Condition::parse(format!("W/{}", etag(revision)).as_bytes()).unwrap();
            prop_assert_eq!(weak.accepted_revisions(), Some(vec![]));
            prop_assert!(weak.matches_weakly(revision));
        }

        #[test]
        fn parsing_never_panics_and_errors_are_400s(raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Condition::parse(&raw);
            let _ = IdempotencyKey::parse(&raw);
        }

        #[test]
        fn any_printable_key_is_accepted_bare_and_quoted(key in "[ -~]{1,255}") {
            let trimmed = key.trim_matches(|c| c == ' ');
            prop_assume!(!trimmed.is_empty() && !trimmed.starts_with('"'));
            prop_assert_eq!(IdempotencyKey::parse(trimmed.as_bytes()).unwrap().0, trimmed);
            let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
            prop_assert_eq!(IdempotencyKey::parse(quoted.as_bytes()).unwrap().0, key);
        }

        #[test]
        fn keys_with_anything_but_printable_ascii_are_refused(
            prefix in "[a-z]{0,5}", bad in prop_oneof![0_u8..0x20, 0x7f_u8..=0xff], suffix in "[a-z]{1,5}",
        ) {
            let mut raw = prefix.into_bytes();
            raw.push(bad);
            raw.extend(suffix.into_bytes());
            prop_assume!(bad != b'\t');
            prop_assert!(IdempotencyKey::parse(&raw).is_err());
        }
    }
}
