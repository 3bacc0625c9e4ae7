//! The rule shared by identifiers: length in Unicode scalar values, no
//! control characters, no surrounding whitespace.

use validator::ValidateLength;

use super::FieldError;

/// Checks API.md's identifier rule: 1 to `max` characters, no character of
/// Unicode category Cc, no leading or trailing Unicode `White_Space`.
pub(super) fn check_identifier(field: &str, raw: &str, max: u64) -> Result<(), FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if !raw.validate_length(None, Some(max), None) {
        return Err(FieldError::too_long(field, max, raw.chars().count()));
    }
    if raw.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    // `char::is_whitespace` is exactly the Unicode White_Space property.
    if raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace) {
        return Err(FieldError::new(
            field,
            "must not start or end with whitespace",
        ));
    }
    Ok(())
}
