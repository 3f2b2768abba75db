//! The API token type. It is the only place that holds the secret, and its `Debug`/`Display`
//! never show it (only the `Authorization` header and the configuration file
//! `aksync connect` writes get the value), so the token cannot leak into logs, errors, reports or the database.

use std::fmt;

/// An Authentik API token. Only [`ApiToken::bearer_header`] reveals the value, for the
/// `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(value: impl Into<String>) -> ApiToken {
        ApiToken(value.into())
    }

    pub fn bearer_header(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// The value, for the one file that keeps it: the source's own configuration file that
    /// `aksync connect` writes, readable by its owner only.
    pub(crate) fn config_value(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let token = ApiToken::new("s3cr3t-value");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert!(!format!("{token}").contains("s3cr3t"));
        assert_eq!(token.bearer_header(), "Bearer s3cr3t-value");
    }
}
