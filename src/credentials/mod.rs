//! Upstream credentials: one abstraction, [`Credential::apply`], with one variant per kind.
//!
//! Values are built once when the configuration compiles (header values marked sensitive,
//! so `http`'s Debug never prints them); per request, applying a static key is a clone.
//! Kinds that mint tokens or sign requests (AWS SigV4, GCP OAuth, Entra ID) add a variant
//! holding an `Arc` of their cached state; `apply` is async for them, and [`Credential::check`]
//! obtains a credential for real (for the `CredentialsReady` condition).

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod trust;

use std::fmt;
use std::sync::Arc;

use http::Method;
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
    /// A Google OAuth access token (Vertex AI), cached by `google-cloud-auth`.
    Gcp(Arc<gcp::GcpToken>),
    /// A Microsoft Entra ID token (Azure OpenAI, AI Foundry, Claude on Foundry), cached here.
    Entra(Arc<azure::EntraToken>),
    /// AWS SigV4 with credentials from the AWS default chain (Bedrock `workloadIdentity`).
    AwsSigV4(Arc<aws::SigV4>),
}

/// One request about to go upstream, as a credential sees it. SigV4 signs all of it; bearer
/// and static keys only add a header.
pub struct Outgoing<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Full URL, query included.
    pub url: &'a str,
    /// Headers; the credential adds its own.
    pub headers: &'a mut HeaderMap,
    /// The body when it is known in full (signers that hash the payload need it).
    pub body: Option<&'a [u8]>,
}

/// A credential could not be obtained or applied. Messages never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The identity provider (STS, the metadata server, Entra ID, …) did not give a credential.
    #[error("could not obtain {kind} credentials: {detail}")]
    Unavailable {
        /// What kind (`AWS`, `GCP`, `Entra ID`).
        kind: &'static str,
        /// What went wrong, and what to check.
        detail: String,
    },
    /// The request could not be signed.
    #[error("could not sign the request: {0}")]
    Signing(String),
    /// A minted credential was about to leave for a host outside its cloud's service domains
    /// and the operator's trusted hosts; it was not sent.
    #[error(
        "the {cloud} credential is sent only to {domains} or a host named by --trusted-identity-hosts; `{host}` is neither, so nothing was sent"
    )]
    UntrustedHost {
        /// Which cloud's credential.
        cloud: &'static str,
        /// Its service domains.
        domains: String,
        /// The host it was meant for.
        host: String,
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

    /// Put the credential on an outgoing request. A minted credential goes only to its
    /// cloud's service domains or a host the operator trusts ([`trust`]); anything else is
    /// refused here, whatever the configuration said.
    pub async fn apply(&self, out: Outgoing<'_>) -> Result<(), CredentialError> {
        if let Some(cloud) = self.cloud() {
            let url = url::Url::parse(out.url).ok();
            if !url
                .as_ref()
                .is_some_and(|u| trust::process_policy().allows(cloud, u))
            {
                return Err(CredentialError::UntrustedHost {
                    cloud: cloud.name(),
                    domains: cloud.describe(),
                    host: url
                        .as_ref()
                        .and_then(|u| u.host_str())
                        .unwrap_or("?")
                        .to_owned(),
                });
            }
        }
        match self {
            Credential::None => Ok(()),
            Credential::Header { name, value } => {
                out.headers.insert(name.clone(), value.clone());
                Ok(())
            }
            Credential::Gcp(token) => token.apply(out.headers).await,
            Credential::Entra(token) => token.apply(out.headers).await,
            Credential::AwsSigV4(signer) => signer.apply(out).await,
        }
    }

    /// Obtain a credential for real (mint a token, ask STS), for status and `check --online`.
    /// A static key is only present here; whether the upstream accepts it shows in discovery.
    pub async fn check(&self) -> Result<(), CredentialError> {
        match self {
            Credential::None | Credential::Header { .. } => Ok(()),
            Credential::Gcp(token) => token.check().await,
            Credential::Entra(token) => token.check().await,
            Credential::AwsSigV4(signer) => signer.check().await,
        }
    }

    /// Whether the credential is obtained from an identity provider at run time (so
    /// [`Credential::check`] asks it), rather than configured.
    pub fn mints(&self) -> bool {
        match self {
            Credential::None | Credential::Header { .. } => false,
            Credential::AwsSigV4(_) | Credential::Gcp(_) | Credential::Entra(_) => true,
        }
    }

    /// The cloud whose identity this credential is (minted kinds only).
    pub fn cloud(&self) -> Option<trust::CloudIdentity> {
        match self {
            Credential::None | Credential::Header { .. } => None,
            Credential::Gcp(_) => Some(trust::CloudIdentity::Google),
            Credential::Entra(_) => Some(trust::CloudIdentity::Azure),
            Credential::AwsSigV4(_) => Some(trust::CloudIdentity::Aws),
        }
    }

    /// Whether the credential can be applied without knowing the body (static keys and
    /// bearer tokens); SigV4 hashes the body, so the native route buffers it for such kinds.
    pub fn needs_body(&self) -> bool {
        match self {
            Credential::None
            | Credential::Header { .. }
            | Credential::Gcp(_)
            | Credential::Entra(_) => false,
            Credential::AwsSigV4(_) => true,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Header { name, .. } => write!(f, "Header({name}: <redacted>)"),
            Credential::Gcp(token) => write!(f, "{token:?}"),
            Credential::Entra(token) => write!(f, "{token:?}"),
            Credential::AwsSigV4(signer) => write!(f, "AwsSigV4(region {})", signer.region()),
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

    #[tokio::test]
    async fn apply_sets_the_header() {
        let mut h = HeaderMap::new();
        if let Ok(c) = Credential::bearer(" sk-1\n") {
            let out = Outgoing {
                method: &Method::POST,
                url: "http://127.0.0.1/v1/chat/completions",
                headers: &mut h,
                body: None,
            };
            assert!(c.apply(out).await.is_ok());
        }
        assert_eq!(
            h.get(AUTHORIZATION).map(|v| v.as_bytes()),
            Some(&b"Bearer sk-1"[..])
        );
    }

    #[tokio::test]
    async fn a_minted_credential_never_goes_to_an_untrusted_host() {
        let c = Credential::Gcp(gcp::GcpToken::shared(gcp::GcpSource::Adc));
        for url in [
            "https://evil.example/v1/models",
            "http://169.254.169.254/computeMetadata/v1/",
            "not a url",
        ] {
            let mut h = HeaderMap::new();
            let out = Outgoing {
                method: &Method::GET,
                url,
                headers: &mut h,
                body: None,
            };
            let e = c.apply(out).await.err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(
                    |e| e.contains("*.googleapis.com") && e.contains("nothing was sent")
                ),
                "{url}: {e:?}"
            );
            assert!(h.is_empty(), "{url}: {h:?}");
        }
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(Credential::bearer("sk-1\nx-evil: 1").is_err());
    }
}
