//! Microsoft Entra ID access tokens (Azure OpenAI, AI Foundry, Claude on Foundry), through
//! Microsoft's `azure_identity`.
//!
//! `auth.workloadIdentity` means Azure Workload Identity federation when
//! `AZURE_FEDERATED_TOKEN_FILE` is set (the AKS webhook sets it, with `AZURE_CLIENT_ID`,
//! `AZURE_TENANT_ID` and `AZURE_AUTHORITY_HOST`): the projected service-account token is
//! exchanged at `{authority}/{tenant}/oauth2/v2.0/token`. Otherwise it means a managed
//! identity (user-assigned when `AZURE_CLIENT_ID` is set).
//!
//! `azure_identity` talks HTTP through [`IdentityHttp`], our own reqwest client, so the extra
//! CA certificates (`--extra-ca-certs`) apply to the identity endpoint too. The library's
//! own cache refreshes any token with less than five minutes left, so [`EntraToken`] keeps a
//! cache in front of it: a token is reused until half its lifetime (at most five minutes
//! before expiry) is left, and one refresh at a time runs while concurrent requests wait for
//! it. Tokens are never logged.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::headers::{HeaderName as AzHeaderName, HeaderValue as AzHeaderValue};
use azure_core::http::{
    AsyncRawResponse, Body, ClientOptions, ExponentialRetryOptions, HttpClient,
    Request as AzRequest, RetryOptions, Transport,
};
use azure_identity::{
    ClientAssertionCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use tokio::sync::{OnceCell, RwLock};

use super::CredentialError;

/// Scope for Azure OpenAI deployment URLs (`…/openai/deployments/…`).
pub const COGNITIVE_SERVICES_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Scope for AI Foundry v1 URLs (`…/openai/v1`) and Claude on Foundry.
pub const AI_FOUNDRY_SCOPE: &str = "https://ai.azure.com/.default";

/// How long a request waits for a token to be minted.
const MINT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest margin before expiry at which a token is refreshed.
const MAX_MARGIN: Duration = Duration::from_secs(300);

static HTTP: OnceLock<reqwest::Client> = OnceLock::new();

/// The HTTP client identity requests use (set once by `serve`, with the extra CA
/// certificates); without it, a plain client with the system roots.
pub fn install_http_client(client: reqwest::Client) {
    let _ = HTTP.set(client);
}

fn http_client() -> reqwest::Client {
    HTTP.get_or_init(reqwest::Client::new).clone()
}

/// `azure_core`'s transport over our reqwest client.
#[derive(Debug)]
pub struct IdentityHttp(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for IdentityHttp {
    async fn execute_request(&self, request: &AzRequest) -> azure_core::Result<AsyncRawResponse> {
        use azure_core::error::{Error, ErrorKind};
        let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .map_err(|e| Error::with_error(ErrorKind::Other, e, "unsupported method"))?;
        let mut builder = self.0.request(method, request.url().as_str());
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = match request.body() {
            Body::Bytes(bytes) => bytes.to_vec(),
            #[allow(unreachable_patterns)]
            _ => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    "streaming bodies are not used by identity requests",
                ));
            }
        };
        let response = builder.body(body).send().await.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            Error::with_error(kind, e, "identity endpoint request failed")
        })?;
        let status = response.status().as_u16();
        let mut headers = azure_core::http::headers::Headers::new();
        for (name, value) in response.headers() {
            if let Ok(value) = value.to_str() {
                headers.insert(
                    AzHeaderName::from(name.as_str().to_owned()),
                    AzHeaderValue::from(value.to_owned()),
                );
            }
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::with_error(ErrorKind::Io, e, "identity response cut off"))?;
        Ok(AsyncRawResponse::from_bytes(status.into(), headers, bytes))
    }
}

struct Cached {
    value: HeaderValue,
    refresh_at: Instant,
}

/// A cached Entra ID token for one scope.
pub struct EntraToken {
    scope: String,
    credential: OnceCell<Arc<dyn TokenCredential>>,
    cache: RwLock<Option<Cached>>,
}

impl PartialEq for EntraToken {
    fn eq(&self, other: &Self) -> bool {
        self.scope == other.scope
    }
}

impl Eq for EntraToken {}

impl fmt::Debug for EntraToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntraToken(scope {})", self.scope)
    }
}

fn unavailable(detail: String) -> CredentialError {
    CredentialError::Unavailable {
        kind: "Entra ID",
        detail,
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl EntraToken {
    /// A token source for one scope, not yet used.
    pub fn new(scope: impl Into<String>) -> Self {
        Self {
            scope: scope.into(),
            credential: OnceCell::new(),
            cache: RwLock::new(None),
        }
    }

    /// The scope tokens are requested for.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    async fn credential(&self) -> Result<&Arc<dyn TokenCredential>, CredentialError> {
        self.credential
            .get_or_try_init(|| async {
                // A few quick retries: a request waits for its token, and a TLS or DNS
                // failure does not heal in the library's default minute of backoff.
                let retry = RetryOptions::exponential(ExponentialRetryOptions {
                    initial_delay: azure_core::time::Duration::milliseconds(200),
                    max_retries: 2,
                    max_total_elapsed: azure_core::time::Duration::seconds(10),
                    max_delay: azure_core::time::Duration::seconds(2),
                });
                let client_options = ClientOptions {
                    transport: Some(Transport::new(Arc::new(IdentityHttp(http_client())))),
                    retry,
                    ..ClientOptions::default()
                };
                let built: azure_core::Result<Arc<dyn TokenCredential>> =
                    if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
                        WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                            credential_options: ClientAssertionCredentialOptions { client_options },
                            ..WorkloadIdentityCredentialOptions::default()
                        }))
                        .map(|c| c as Arc<dyn TokenCredential>)
                    } else {
                        ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                            user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
                            client_options,
                        }))
                        .map(|c| c as Arc<dyn TokenCredential>)
                    };
                built.map_err(|e| {
                    unavailable(format!(
                        "the credential could not be set up ({}); for workload identity set \
                         AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID and AZURE_TENANT_ID (the AKS \
                         webhook does), else the pod needs a managed identity",
                        one_line(&e.to_string())
                    ))
                })
            })
            .await
    }

    /// A current `Bearer` header value: cached, or minted once while concurrent callers wait.
    async fn token(&self) -> Result<HeaderValue, CredentialError> {
        if let Some(c) = self.cache.read().await.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.value.clone());
        }
        let mut slot = self.cache.write().await;
        if let Some(c) = slot.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.value.clone());
        }
        let credential = self.credential().await?;
        let token = tokio::time::timeout(
            MINT_TIMEOUT,
            credential.get_token(&[self.scope.as_str()], None),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "the identity endpoint did not answer within {}s",
                MINT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            unavailable(format!(
                "no token for scope {} ({}); check the federated credential of the managed \
                     identity or app registration, and for a private authority host its CA \
                     (--extra-ca-certs)",
                self.scope,
                one_line(&chain(&e))
            ))
        })?;
        let now_utc = azure_core::time::OffsetDateTime::now_utc();
        let left = (token.expires_on - now_utc).whole_milliseconds().max(0);
        let lifetime = Duration::from_millis(u64::try_from(left).unwrap_or(0));
        let margin = (lifetime / 2).min(MAX_MARGIN);
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.token.secret()))
            .map_err(|_| unavailable("the token endpoint returned an unusable token".into()))?;
        value.set_sensitive(true);
        *slot = Some(Cached {
            value: value.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        });
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

/// An error and its causes, `: `-separated.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Keep library error texts to one short line.
pub(super) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(600)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_only_the_scope() {
        let t = EntraToken::new(AI_FOUNDRY_SCOPE);
        assert_eq!(
            format!("{t:?}"),
            "EntraToken(scope https://ai.azure.com/.default)"
        );
    }
}
