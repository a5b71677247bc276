//! Google Cloud OAuth access tokens (Vertex AI), through Google's own auth library
//! `google-cloud-auth`.
//!
//! Two sources: `auth.workloadIdentity` is Application Default Credentials (the
//! `GOOGLE_APPLICATION_CREDENTIALS` file — service account, external account / workload
//! identity federation, user — or else the metadata server, which GKE Workload Identity
//! serves; `GCE_METADATA_HOST` overrides its address), and `auth.serviceAccountKey` is a
//! service-account JSON key from a Secret (the token comes from the key's `token_uri`).
//!
//! The library object is built on first use, never inside the pure `compile()`: it reads the
//! environment and starts a background task. The library caches the token and refreshes it
//! in one background task shortly before expiry (four minutes for ordinary tokens), so
//! concurrent requests share one refresh. Tokens are never logged: [`GcpToken`]'s `Debug`
//! names only the source.

use std::fmt;

use google_cloud_auth::credentials::{self, AccessTokenCredentials};
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::CredentialError;

/// The OAuth scope Vertex AI needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long a request waits for a token.
const MINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum GcpSource {
    /// Application Default Credentials (env file, gcloud file, or the metadata server).
    Adc,
    /// A service-account JSON key (already checked to be a JSON object).
    ServiceAccountKey(Value),
}

/// A cached Google access token for one provider.
pub struct GcpToken {
    source: GcpSource,
    credentials: OnceCell<AccessTokenCredentials>,
}

impl PartialEq for GcpToken {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for GcpToken {}

impl fmt::Debug for GcpToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            GcpSource::Adc => f.write_str("GcpToken(application default credentials)"),
            GcpSource::ServiceAccountKey(_) => f.write_str("GcpToken(service account key)"),
        }
    }
}

/// A service-account key is not usable. Messages never quote the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidServiceAccountKey(&'static str);

/// Check a service-account JSON key's shape (without echoing any of it).
pub fn parse_service_account_key(bytes: &[u8]) -> Result<Value, InvalidServiceAccountKey> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| {
        InvalidServiceAccountKey("is not JSON: it must hold the service-account key file")
    })?;
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("");
    if field("type") != "service_account" {
        return Err(InvalidServiceAccountKey(
            "is not a service-account key (`type` must be `service_account`)",
        ));
    }
    if field("client_email").is_empty() || field("private_key").is_empty() {
        return Err(InvalidServiceAccountKey(
            "lacks `client_email` or `private_key`: download a new JSON key for the service account",
        ));
    }
    Ok(value)
}

impl GcpToken {
    /// A token source, not yet used.
    pub fn new(source: GcpSource) -> Self {
        Self {
            source,
            credentials: OnceCell::new(),
        }
    }

    /// Where the token comes from.
    pub fn source(&self) -> &GcpSource {
        &self.source
    }

    fn unavailable(detail: String) -> CredentialError {
        CredentialError::Unavailable {
            kind: "GCP",
            detail,
        }
    }

    async fn credentials(&self) -> Result<&AccessTokenCredentials, CredentialError> {
        self.credentials
            .get_or_try_init(|| async {
                let scopes = [CLOUD_PLATFORM_SCOPE];
                let built = match &self.source {
                    GcpSource::Adc => credentials::Builder::default()
                        .with_scopes(scopes)
                        .build_access_token_credentials(),
                    GcpSource::ServiceAccountKey(key) => {
                        credentials::service_account::Builder::new(key.clone())
                            .with_access_specifier(
                                credentials::service_account::AccessSpecifier::from_scopes(scopes),
                            )
                            .build_access_token_credentials()
                    }
                };
                built.map_err(|e| {
                    Self::unavailable(format!(
                        "the credential could not be set up ({}); check GOOGLE_APPLICATION_CREDENTIALS, \
                         the metadata server (GCE_METADATA_HOST) or the service-account key",
                        super::azure::one_line(&super::azure::chain(&e))
                    ))
                })
            })
            .await
    }

    /// A current access token (from the library's cache, minted when needed).
    async fn token(&self) -> Result<HeaderValue, CredentialError> {
        let credentials = self.credentials().await?;
        let token = tokio::time::timeout(MINT_TIMEOUT, credentials.access_token())
            .await
            .map_err(|_| {
                Self::unavailable(format!(
                    "no access token within {}s; check that the metadata server or token \
                     endpoint is reachable",
                    MINT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| {
                Self::unavailable(format!(
                    "no access token ({}); check the metadata server (GKE Workload Identity, \
                     GCE_METADATA_HOST) or GOOGLE_APPLICATION_CREDENTIALS, and that the identity \
                     may use Vertex AI",
                    super::azure::one_line(&super::azure::chain(&e))
                ))
            })?;
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.token)).map_err(|_| {
                Self::unavailable("the token endpoint returned an unusable token".into())
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Put `Authorization: Bearer {token}` on a request.
    pub async fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        headers.insert(AUTHORIZATION, self.token().await?);
        Ok(())
    }

    /// Obtain a token for real.
    pub async fn check(&self) -> Result<(), CredentialError> {
        self.token().await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape_is_checked_without_echoing_it() {
        assert!(parse_service_account_key(b"not json PRIVATE").is_err());
        let e = parse_service_account_key(br#"{"type":"authorized_user","private_key":"PRIVATE"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("service_account") && !e.contains("PRIVATE"),
            "{e}"
        );
        assert!(
            parse_service_account_key(
                br#"{"type":"service_account","client_email":"a@b","private_key":"k"}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn debug_names_only_the_source() {
        let t = GcpToken::new(GcpSource::ServiceAccountKey(
            serde_json::json!({"private_key": "PRIVATE"}),
        ));
        let shown = format!("{t:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }
}
