use serde::{Deserialize, Deserializer};

/// One field of a `PUT` body: absent, `null` or a value.
///
/// Use with `#[serde(default)]`: absence is the default, `Unchanged`; `null`
/// deserializes to `Clear` and anything else to `Set` (serde issue #1042).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Patch<T> {
    /// The field was absent: leave it as it is.
    #[default]
    Unchanged,
    /// The field was `null`: clear it.
    Clear,
    /// The field had a value: replace it.
    Set(T),
}

impl<T> Patch<T> {
    /// Converts the value of `Set`, keeping the other states.
    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Patch<U>, E> {
        Ok(match self {
            Self::Unchanged => Patch::Unchanged,
            Self::Clear => Patch::Clear,
            Self::Set(value) => Patch::Set(f(value)?),
        })
    }

    /// `None` for `Unchanged`, else the new value (`None` meaning cleared).
    #[must_use]
    pub fn as_change(&self) -> Option<Option<&T>> {
        match self {
            Self::Unchanged => None,
            Self::Clear => Some(None),
            Self::Set(value) => Some(Some(value)),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Option::<T>::deserialize(deserializer)?.map_or(Self::Clear, Self::Set))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default)]
        field: Patch<String>,
    }

    fn parse(json: &str) -> Patch<String> {
        serde_json::from_str::<Body>(json).unwrap().field
    }

    #[test]
    fn absent_null_and_value_are_three_states() {
        assert_eq!(parse("{}"), Patch::Unchanged);
        assert_eq!(parse(r#"{"field":null}"#), Patch::Clear);
        assert_eq!(parse(r#"{"field":""}"#), Patch::Set(String::new()));
    }

    proptest! {
        #[test]
        fn any_string_value_round_trips(value in ".*") {
            let json = serde_json::json!({ "field": value }).to_string();
            prop_assert_eq!(parse(&json), Patch::Set(value));
        }
    }
}
