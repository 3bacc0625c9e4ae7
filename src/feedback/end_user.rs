use std::fmt;

use super::FieldError;

/// The end user a server-side caller acts for (`X-On-Behalf-Of`):
/// 1 to 256 printable ASCII characters (U+0020 to U+007E).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EndUserId(String);

impl EndUserId {
    /// The header that carries it.
    pub const HEADER: &'static str = "X-On-Behalf-Of";
    /// The most characters an end-user id may have.
    pub const MAX_CHARS: usize = 256;

    /// Parses a header value (HTTP has already stripped surrounding whitespace).
    pub fn parse(raw: impl Into<String>) -> Result<Self, FieldError> {
        let raw = raw.into();
        if raw.is_empty() {
            return Err(FieldError::new(Self::HEADER, "must not be empty"));
        }
        if raw.len() > Self::MAX_CHARS {
            return Err(FieldError::new(
                Self::HEADER,
                format!(
                    "must be at most {} characters (got {})",
                    Self::MAX_CHARS,
                    raw.chars().count()
                ),
            ));
        }
        if !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(FieldError::new(
                Self::HEADER,
                "must contain only printable ASCII characters",
            ));
        }
        Ok(Self(raw))
    }

    /// The value, exactly as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EndUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EndUserId").field(&self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn printable_ascii_up_to_256_round_trips(raw in "[ -~]{1,256}") {
            let user = EndUserId::parse(raw.clone()).unwrap();
            prop_assert_eq!(user.as_str(), raw.as_str());
        }

        #[test]
        fn longer_than_256_fails(raw in "[ -~]{257,300}") {
            prop_assert!(EndUserId::parse(raw).is_err());
        }

        #[test]
        fn anything_outside_printable_ascii_fails(
            head in "[a-z]{0,5}",
            bad in "[\u{0}-\u{1f}\u{7f}-\u{10ffff}]",
        ) {
            let raw = format!("{head}{bad}");
            prop_assert!(EndUserId::parse(raw).is_err());
        }
    }

    #[test]
    fn empty_fails() {
        assert!(EndUserId::parse("").is_err());
    }
}
