use std::fmt;

use super::FieldError;

/// An end user's verdict on an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rating {
    /// `thumbs_up`
    ThumbsUp,
    /// `thumbs_down`
    ThumbsDown,
}

impl Rating {
    /// Every rating, in a fixed order.
    pub const ALL: [Self; 2] = [Self::ThumbsUp, Self::ThumbsDown];

    /// Parses the wire value; the error names the allowed values.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        match raw {
            "thumbs_up" => Ok(Self::ThumbsUp),
            "thumbs_down" => Ok(Self::ThumbsDown),
            _ => Err(FieldError::new(
                "rating",
                "must be one of \"thumbs_up\", \"thumbs_down\"",
            )),
        }
    }

    /// The wire value, also the value stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ThumbsUp => "thumbs_up",
            Self::ThumbsDown => "thumbs_down",
        }
    }
}

impl fmt::Display for Rating {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn wire_values_round_trip() {
        for rating in Rating::ALL {
            assert_eq!(Rating::parse(rating.as_str()).unwrap(), rating);
        }
    }

    proptest! {
        #[test]
        fn anything_else_fails_naming_the_allowed_values(raw in ".*") {
            prop_assume!(raw != "thumbs_up" && raw != "thumbs_down");
            let err = Rating::parse(&raw).unwrap_err();
            prop_assert!(err.message.contains("thumbs_up") && err.message.contains("thumbs_down"));
        }
    }
}
