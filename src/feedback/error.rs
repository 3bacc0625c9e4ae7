use std::fmt;

/// Why one field of a request was rejected: becomes one `details` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field as the client named it (`description`, `X-On-Behalf-Of`, ...).
    pub field: String,
    /// What is wrong, without repeating the field name.
    pub message: String,
}

impl FieldError {
    /// A field error with a free-form message.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The value has more characters than allowed.
    #[must_use]
    pub fn too_long(field: &str, max: u64, got: usize) -> Self {
        Self::new(
            field,
            format!("must be at most {max} characters (got {got})"),
        )
    }

    /// A required field is missing or `null`.
    #[must_use]
    pub fn required(field: &str) -> Self {
        Self::new(field, "is required")
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}
