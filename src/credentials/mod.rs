//! Upstream credentials: one abstraction, [`Credential::apply`], with one variant per kind.
//!
//! Values are built once when the configuration compiles (header values marked sensitive,
//! so `http`'s Debug never prints them); per request, applying a credential is a clone.

use std::fmt;

use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

/// How the gateway proves itself to an upstream.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credential (a local Ollama, say).
    None,
    /// A static key sent in one header (`Authorization: Bearer …`, `x-api-key`, `api-key`).
    Header {
        /// Header name.
        name: HeaderName,
        /// Full header value, marked sensitive.
        value: HeaderValue,
    },
}

/// A static key could not be turned into a header value.
#[derive(Debug, thiserror::Error)]
#[error(
    "the key holds characters that cannot be sent in an HTTP header (newline or control characters); check the Secret's value"
)]
pub struct InvalidKey;

impl Credential {
    /// `Authorization: Bearer {key}`.
    pub fn bearer(key: &str) -> Result<Self, InvalidKey> {
        Self::header(AUTHORIZATION, &format!("Bearer {}", key.trim()))
    }

    /// `{name}: {key}`.
    pub fn header(name: HeaderName, value: &str) -> Result<Self, InvalidKey> {
        let mut value = HeaderValue::from_str(value.trim()).map_err(|_| InvalidKey)?;
        value.set_sensitive(true);
        Ok(Self::Header { name, value })
    }

    /// Put the credential on an outgoing request's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        match self {
            Credential::None => {}
            Credential::Header { name, value } => {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Header { name, .. } => write!(f, "Header({name}: <redacted>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let c = Credential::bearer("sk-very-secret").unwrap_or(Credential::None);
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("authorization"));
    }

    #[test]
    fn apply_sets_the_header() {
        let mut h = HeaderMap::new();
        if let Ok(c) = Credential::bearer(" sk-1\n") {
            c.apply(&mut h);
        }
        assert_eq!(
            h.get(AUTHORIZATION).map(|v| v.as_bytes()),
            Some(&b"Bearer sk-1"[..])
        );
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(Credential::bearer("sk-1\nx-evil: 1").is_err());
    }
}
