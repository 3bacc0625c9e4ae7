use std::fmt;

use validator::ValidateLength;

use super::FieldError;

/// A comment on an output: at most 2000 Unicode scalar values; empty is allowed.
///
/// U+0000 is refused: PostgreSQL `text` cannot hold it, and both stores must
/// accept exactly the same values.
#[derive(Clone, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    /// The most characters (Unicode scalar values) a description may have.
    pub const MAX_CHARS: u64 = 2000;

    /// Parses a raw description.
    pub fn parse(raw: impl Into<String>) -> Result<Self, FieldError> {
        let raw = raw.into();
        if !raw.validate_length(None, Some(Self::MAX_CHARS), None) {
            return Err(FieldError::too_long(
                "description",
                Self::MAX_CHARS,
                raw.chars().count(),
            ));
        }
        if raw.contains('\0') {
            return Err(FieldError::new(
                "description",
                "must not contain the NUL character (U+0000)",
            ));
        }
        Ok(Self(raw))
    }

    /// The text, exactly as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, exactly as given.
    #[must_use]
    pub fn into_inner(self) -> String {
        self.0
    }
}

// Descriptions are end users' words: keep them out of logs and panics.
impl fmt::Debug for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Description(<{} chars>)", self.0.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn up_to_2000_characters_parse_and_round_trip(raw in "[^\u{0}]{0,2000}") {
            let description = Description::parse(raw.clone()).unwrap();
            prop_assert_eq!(description.as_str(), raw.as_str());
        }

        #[test]
        fn more_than_2000_characters_fail(raw in "[a-zé😀\n\"]{2001,2100}") {
            let err = Description::parse(raw.clone()).unwrap_err();
            prop_assert_eq!(err.field, "description");
            let expected = format!("must be at most 2000 characters (got {})", raw.chars().count());
            prop_assert_eq!(err.message, expected);
        }
    }

    #[test]
    fn the_boundary_counts_scalar_values_not_bytes() {
        assert!(Description::parse("😀".repeat(2000)).is_ok());
        assert!(Description::parse("a".repeat(2001)).is_err());
        assert!(Description::parse("").is_ok());
    }

    #[test]
    fn debug_never_shows_the_text() {
        let description = Description::parse("secret words").unwrap();
        assert!(!format!("{description:?}").contains("secret"));
    }
}
