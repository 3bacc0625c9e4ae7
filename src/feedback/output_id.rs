use std::fmt;

use super::FieldError;
use super::text::check_identifier;

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The most characters (Unicode scalar values) a value may have.
            pub const MAX_CHARS: u64 = 256;

            /// Parses a raw value: 1 to 256 characters, no control characters,
            /// no leading or trailing whitespace.
            pub fn parse(raw: impl Into<String>) -> Result<Self, FieldError> {
                let raw = raw.into();
                check_identifier($field, &raw, Self::MAX_CHARS)?;
                Ok(Self(raw))
            }

            /// The value, exactly as given.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The value, exactly as given.
            #[must_use]
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.0).finish()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

identifier!(
    /// The id of a rated chat completion or agent response (not an HTTP request id).
    OutputId,
    "id"
);

identifier!(
    /// The name of the model that produced a rated output.
    ModelName,
    "model"
);

identifier!(
    /// The tenant an API key, and so every entry it creates, belongs to.
    TenantId,
    "tenant"
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn valid_ids_round_trip(raw in "[^\\p{Cc}\\s][^\\p{Cc}]{0,254}[^\\p{Cc}\\s]") {
            prop_assume!(raw.chars().count() <= 256);
            let id = OutputId::parse(raw.clone()).unwrap();
            prop_assert_eq!(id.as_str(), raw.as_str());
        }

        #[test]
        fn ids_longer_than_256_characters_fail(raw in "[a-zé😀]{257,400}") {
            prop_assert!(OutputId::parse(raw).is_err());
        }

        #[test]
        fn ids_with_a_control_character_fail(
            head in "[a-z]{0,10}",
            control in "\\p{Cc}",
            tail in "[a-z]{0,10}",
        ) {
            let raw = format!("x{head}{control}{tail}x");
            prop_assert!(OutputId::parse(raw).is_err());
        }

        #[test]
        fn ids_with_surrounding_whitespace_fail(core in "[a-z]{1,10}", ws in "[ \\t\u{a0}\u{2003}\u{3000}]") {
            let leading = format!("{ws}{core}");
            let trailing = format!("{core}{ws}");
            prop_assert!(OutputId::parse(leading).is_err());
            prop_assert!(OutputId::parse(trailing).is_err());
        }
    }

    #[test]
    fn empty_id_fails_and_inner_whitespace_is_fine() {
        assert!(OutputId::parse("").is_err());
        assert!(OutputId::parse("a b").is_ok());
        assert!(OutputId::parse("a/b%20c").is_ok());
    }

    #[test]
    fn exactly_256_multibyte_characters_pass() {
        assert!(ModelName::parse("é".repeat(256)).is_ok());
        assert!(ModelName::parse("é".repeat(257)).is_err());
    }
}
