//! AWS SigV4 for Bedrock: credentials from the AWS default chain, cached, refreshed before
//! they expire, and used to sign each request for service `bedrock` in the provider's region.
//!
//! ```text
//! aws-config default chain (env → profile → web identity (IRSA) → container (EKS Pod
//! Identity / ECS) → IMDS)
//!        │ one refresh at a time (single flight), shared by every request of the region
//!        ▼
//! Cache { credentials, fetched_at } ──sign(method, url, content-type, body)──▶ headers
//! ```
//!
//! aws-config's `DefaultCredentialsChain` itself does not cache (the SDK clients cache in
//! their orchestrator), so the cache lives here: a request takes the cached credentials when
//! they are fresh; otherwise it takes the refresh lock, and only the first waiter calls the
//! chain — the others find the new credentials when the lock frees.
//!
//! Credentials refresh when less than [`REFRESH_BEFORE`], or half their lifetime, is left:
//! STS credentials live at least 15 minutes, so in production that is 5 minutes ahead.
//!
//! The chain is process-wide per region (a pod has one identity), so a configuration reload
//! keeps the cached credentials. Secrets never leave this module: errors carry the chain's
//! messages (which name the failing source, never a key) and `Debug` shows only the region.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};

use super::{CredentialError, Outgoing};

/// The SigV4 service name of Bedrock (runtime and control plane alike).
pub const SERVICE: &str = "bedrock";

/// Refresh credentials this long before they expire (or at half their lifetime, if shorter).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Headers a client's own SigV4 signature leaves on a request; they are removed before the
/// gateway signs with its own credentials.
pub const CLIENT_SIGNATURE_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// SigV4 signing for one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigV4 {
    region: String,
}

struct Cached {
    credentials: Credentials,
    fetched_at: SystemTime,
}

impl Cached {
    fn fresh(&self, now: SystemTime) -> bool {
        let Some(expiry) = self.credentials.expiry() else {
            return true; // static credentials (environment, profile) do not expire
        };
        let lifetime = expiry
            .duration_since(self.fetched_at)
            .unwrap_or(Duration::ZERO);
        let margin = REFRESH_BEFORE.min(lifetime / 2);
        now + margin < expiry
    }
}

/// The default chain of one region and its cached credentials.
struct Chain {
    provider: Option<SharedCredentialsProvider>,
    cached: ArcSwapOption<Cached>,
    refresh: tokio::sync::Mutex<()>,
    /// The last failure, so requests queued behind a failed refresh share its answer instead
    /// of asking the chain again one after the other.
    failed: ArcSwapOption<(Instant, String)>,
}

/// How long a failed refresh answers for the requests that waited on it.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// PEM certificates trusted besides the system roots (`--extra-ca-certs`).
static EXTRA_CA_CERTS: OnceLock<Vec<u8>> = OnceLock::new();

/// Trust these PEM certificates, besides the system roots, for the AWS identity endpoints
/// (STS, the container credentials endpoint). Call once, before the first request; the bundle
/// must already be checked to be PEM certificates.
pub fn trust_extra_ca_certs(pem: Vec<u8>) {
    let _ = EXTRA_CA_CERTS.set(pem);
}

impl Chain {
    async fn new(region: &str) -> Self {
        // The HTTP client aws-config uses: hyper + rustls with ring, TCP_NODELAY, extra CAs.
        use aws_smithy_http_client::tls;
        let builder = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ));
        let context = EXTRA_CA_CERTS.get().map(|pem| {
            tls::TlsContext::builder()
                .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem.clone()))
                .build()
        });
        let http = match context {
            None => builder.build_https(),
            Some(Ok(context)) => builder.tls_context(context).build_https(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "extra CA certificates not usable for AWS identity endpoints");
                builder.build_https()
            }
        };
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .http_client(http)
            .load()
            .await;
        let provider = config.credentials_provider();
        Self {
            provider,
            cached: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
            failed: ArcSwapOption::empty(),
        }
    }

    async fn credentials(&self) -> Result<Credentials, CredentialError> {
        if let Some(c) = self
            .cached
            .load_full()
            .filter(|c| c.fresh(SystemTime::now()))
        {
            return Ok(c.credentials.clone());
        }
        let waited_since = Instant::now();
        let _single_flight = self.refresh.lock().await;
        // Another request may have refreshed while this one waited.
        if let Some(c) = self
            .cached
            .load_full()
            .filter(|c| c.fresh(SystemTime::now()))
        {
            return Ok(c.credentials.clone());
        }
        // Or failed to, just now: share that answer rather than ask again.
        let recent = waited_since
            .checked_sub(FAILURE_HOLD)
            .unwrap_or(waited_since);
        if let Some(failure) = self.failed.load_full().filter(|f| f.0 >= recent) {
            return Err(CredentialError::Unavailable {
                kind: "AWS",
                detail: failure.1.clone(),
            });
        }
        let Some(provider) = &self.provider else {
            return Err(CredentialError::Unavailable {
                kind: "AWS",
                detail: "the AWS configuration has no credential provider".to_owned(),
            });
        };
        let fetched_at = SystemTime::now();
        match provider.provide_credentials().await {
            Ok(credentials) => {
                tracing::info!(
                    expires_in_s = credentials
                        .expiry()
                        .and_then(|e| e.duration_since(fetched_at).ok())
                        .map(|d| d.as_secs()),
                    "obtained AWS credentials"
                );
                self.cached.store(Some(Arc::new(Cached {
                    credentials: credentials.clone(),
                    fetched_at,
                })));
                Ok(credentials)
            }
            Err(e) => {
                // Credentials that have not expired yet still sign.
                if let Some(c) = self.cached.load_full().filter(|c| {
                    c.credentials
                        .expiry()
                        .is_none_or(|exp| SystemTime::now() < exp)
                }) {
                    tracing::warn!(error = %chain_error(&e), "AWS credential refresh failed; using the current credentials until they expire");
                    return Ok(c.credentials.clone());
                }
                let detail = chain_error(&e);
                self.failed
                    .store(Some(Arc::new((Instant::now(), detail.clone()))));
                Err(CredentialError::Unavailable {
                    kind: "AWS",
                    detail,
                })
            }
        }
    }
}

/// The error and its sources, one line (the chain's messages name sources, never keys).
fn chain_error(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out.push_str(
        " (set up IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE), EKS Pod Identity, or an instance role for the gateway's pod)",
    );
    out
}

type Chains = tokio::sync::Mutex<HashMap<String, Arc<Chain>>>;

fn chains() -> &'static Chains {
    static CHAINS: OnceLock<Chains> = OnceLock::new();
    CHAINS.get_or_init(Chains::default)
}

async fn chain(region: &str) -> Arc<Chain> {
    let mut all = chains().lock().await;
    if let Some(c) = all.get(region) {
        return c.clone();
    }
    let c = Arc::new(Chain::new(region).await);
    all.insert(region.to_owned(), c.clone());
    c
}

impl SigV4 {
    /// Signing for service `bedrock` in `region`.
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
        }
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Sign an outgoing request: drop any client signature, then add `x-amz-date`,
    /// `x-amz-content-sha256`, `x-amz-security-token` (temporary credentials) and
    /// `authorization`. The body must be known in full.
    pub async fn apply(&self, out: Outgoing<'_>) -> Result<(), CredentialError> {
        for name in CLIENT_SIGNATURE_HEADERS {
            out.headers.remove(name);
        }
        let credentials = chain(&self.region).await.credentials().await?;
        let body = out.body.ok_or_else(|| {
            CredentialError::Signing(
                "the request body must be read in full before it is signed".to_owned(),
            )
        })?;
        let content_type = out
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let signed = sign_request(
            &credentials,
            &self.region,
            SystemTime::now(),
            out.method.as_str(),
            out.url,
            content_type.as_deref(),
            body,
        )?;
        for (name, value) in signed {
            out.headers.insert(name, value);
        }
        Ok(())
    }

    /// Obtain credentials from the chain for real.
    pub async fn check(&self) -> Result<(), CredentialError> {
        chain(&self.region).await.credentials().await.map(|_| ())
    }
}

/// The SigV4 headers for one request. Signed: `host` (from the URL), `content-type` when
/// present, `x-amz-date`, `x-amz-content-sha256` and `x-amz-security-token`; other headers
/// travel unsigned, so nothing on the way can break the signature by adding one.
pub fn sign_request(
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<(HeaderName, HeaderValue)>, CredentialError> {
    let signing_error = |e: &dyn std::fmt::Display| CredentialError::Signing(e.to_string());
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| signing_error(&e))?
        .into();
    let headers = content_type.map(|v| ("content-type", v));
    let request = SignableRequest::new(method, url, headers.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| signing_error(&e))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| signing_error(&e))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    let mut out = Vec::new();
    for header in headers {
        let name =
            HeaderName::from_bytes(header.name().as_bytes()).map_err(|e| signing_error(&e))?;
        let mut value = HeaderValue::from_str(header.value()).map_err(|e| signing_error(&e))?;
        if header.sensitive() || name == AUTHORIZATION {
            value.set_sensitive(true);
        }
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn creds(expiry: Option<SystemTime>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("token".into()),
            expiry,
            "test",
        )
    }

    #[test]
    fn refreshes_at_half_life_or_five_minutes_ahead() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let short = Cached {
            credentials: creds(Some(t0 + Duration::from_secs(4))),
            fetched_at: t0,
        };
        assert!(short.fresh(t0 + Duration::from_secs(1)));
        assert!(!short.fresh(t0 + Duration::from_secs(2)));
        let hour = Cached {
            credentials: creds(Some(t0 + Duration::from_secs(3600))),
            fetched_at: t0,
        };
        assert!(hour.fresh(t0 + Duration::from_secs(3299)));
        assert!(!hour.fresh(t0 + Duration::from_secs(3300)));
        let forever = Cached {
            credentials: creds(None),
            fetched_at: t0,
        };
        assert!(forever.fresh(t0 + Duration::from_secs(1 << 30)));
    }

    #[test]
    fn signs_with_the_session_token_and_payload_hash() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = sign_request(
            &creds(None),
            "us-east-1",
            t,
            "POST",
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/a.b-v1%3A0/converse",
            Some("application/json"),
            b"{}",
        )
        .unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        let auth = get("authorization").unwrap();
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request"
        ));
        assert!(auth.contains(
            "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
        ));
        assert_eq!(get("x-amz-security-token").as_deref(), Some("token"));
        assert_eq!(get("x-amz-date").as_deref(), Some("20231114T221320Z"));
        // sha256("{}")
        assert_eq!(
            get("x-amz-content-sha256").as_deref(),
            Some("44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
        );
        assert!(!format!("{headers:?}").contains("secret"));
    }
}
