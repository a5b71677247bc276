//! Where a minted cloud credential may go: the cloud's own service domains, plus the hosts
//! the operator names at the process level (`--trusted-identity-hosts`). A manifest can never
//! widen this set.
//!
//! It is checked twice: when the configuration compiles (a provider pointed elsewhere is a
//! problem, so it is never served) and again when a credential is put on a request
//! ([`super::Credential::apply`]), so no code path can send a minted token to another host.
//! Static API keys are not concerned: they go wherever their provider points.

use std::sync::OnceLock;

use url::Url;

use super::azure::{AI_FOUNDRY_SCOPE, COGNITIVE_SERVICES_SCOPE};

/// Which cloud minted a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudIdentity {
    /// A Google OAuth access token.
    Google,
    /// A Microsoft Entra ID token.
    Azure,
    /// AWS SigV4 from the AWS credential chain.
    Aws,
}

impl CloudIdentity {
    /// The service domains of the cloud: a host must be a subdomain of one of them.
    pub fn domains(self) -> &'static [&'static str] {
        match self {
            CloudIdentity::Google => &["googleapis.com"],
            CloudIdentity::Azure => &[
                "openai.azure.com",
                "cognitiveservices.azure.com",
                "services.ai.azure.com",
            ],
            CloudIdentity::Aws => &["amazonaws.com"],
        }
    }

    /// `*.googleapis.com`, … for messages.
    pub fn describe(self) -> String {
        self.domains()
            .iter()
            .map(|d| format!("*.{d}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            CloudIdentity::Google => "Google Cloud",
            CloudIdentity::Azure => "Microsoft Entra ID",
            CloudIdentity::Aws => "AWS",
        }
    }
}

/// One operator-named host: `host`, `host:port`, `*.domain` or `*.domain:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostEntry {
    /// Lowercase host (for a wildcard, the domain after `*.`).
    host: String,
    /// Whether it names every subdomain of `host`.
    wildcard: bool,
    /// The only port allowed; any port when `None`.
    port: Option<u16>,
}

/// The process-level identity policy: trusted extra hosts and extra Entra scopes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    hosts: Vec<HostEntry>,
    /// Entra scopes allowed besides the two documented ones.
    azure_scopes: Vec<String>,
}

/// A `--trusted-identity-hosts` or `--allowed-azure-scopes` entry that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl IdentityPolicy {
    /// Parse `HOST[:PORT],...` (wildcards as `*.example.com`) and the extra Entra scopes.
    pub fn new<S: AsRef<str>>(hosts: &[S], azure_scopes: &[S]) -> Result<Self, PolicyError> {
        let mut policy = Self::default();
        for entry in hosts.iter().flat_map(|h| h.as_ref().split(',')) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            policy.hosts.push(parse_host(entry)?);
        }
        for scope in azure_scopes.iter().flat_map(|s| s.as_ref().split(',')) {
            let scope = scope.trim();
            if scope.is_empty() {
                continue;
            }
            if scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(PolicyError(format!(
                    "`{scope}` is not a scope such as `https://cognitiveservices.azure.com/.default`"
                )));
            }
            policy.azure_scopes.push(scope.to_owned());
        }
        Ok(policy)
    }

    /// Whether a credential of `cloud` may be sent to `url`: an `https` URL on a subdomain of
    /// the cloud's service domains (default port), or a host the operator trusts.
    pub fn allows(&self, cloud: CloudIdentity, url: &Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
            return false;
        };
        let host = host.trim_end_matches('.');
        let port = url.port_or_known_default();
        let own = url.scheme() == "https"
            && port == Some(443)
            && cloud
                .domains()
                .iter()
                .any(|d| host.len() > d.len() + 1 && host.ends_with(&format!(".{d}")));
        own || self.hosts.iter().any(|e| {
            let host_ok = if e.wildcard {
                host.len() > e.host.len() + 1 && host.ends_with(&format!(".{}", e.host))
            } else {
                host == e.host
            };
            host_ok && e.port.is_none_or(|p| Some(p) == port)
        })
    }

    /// The trusted extra hosts as written, for messages (`none` when there are none).
    pub fn describe_hosts(&self) -> String {
        if self.hosts.is_empty() {
            return "none".to_owned();
        }
        self.hosts
            .iter()
            .map(|e| {
                let host = if e.wildcard {
                    format!("*.{}", e.host)
                } else {
                    e.host.clone()
                };
                match e.port {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether an Entra scope may be minted: the two documented ones, or one the operator
    /// allows.
    pub fn allows_azure_scope(&self, scope: &str) -> bool {
        scope == COGNITIVE_SERVICES_SCOPE
            || scope == AI_FOUNDRY_SCOPE
            || self.azure_scopes.iter().any(|s| s == scope)
    }

    /// The Entra scopes allowed, for messages.
    pub fn describe_azure_scopes(&self) -> String {
        let mut all = vec![
            COGNITIVE_SERVICES_SCOPE.to_owned(),
            AI_FOUNDRY_SCOPE.to_owned(),
        ];
        all.extend(self.azure_scopes.iter().cloned());
        all.join(", ")
    }
}

fn parse_host(entry: &str) -> Result<HostEntry, PolicyError> {
    let bad = || {
        PolicyError(format!(
            "`{entry}` is not HOST[:PORT] (e.g. `vertex.internal.example:8443`, `*.corp.example`, `127.0.0.1`)"
        ))
    };
    if entry.contains("://") || entry.contains('/') || entry.contains('@') {
        return Err(bad());
    }
    let (wildcard, rest) = match entry.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let url = Url::parse(&format!("http://{rest}")).map_err(|_| bad())?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    if url.path() != "/" || url.query().is_some() || host.contains('*') {
        return Err(bad());
    }
    // A wildcard over a bare top-level label (`*.com`) would trust the whole internet.
    if wildcard && !host.contains('.') {
        return Err(bad());
    }
    Ok(HostEntry {
        host: host.trim_end_matches('.').to_ascii_lowercase(),
        wildcard,
        port: url.port(),
    })
}

static PROCESS_POLICY: OnceLock<IdentityPolicy> = OnceLock::new();

/// Install the process's policy, for the send-time check (once, at start-up; later calls are
/// ignored, so nothing can widen it afterwards).
pub fn install(policy: IdentityPolicy) {
    let _ = PROCESS_POLICY.set(policy);
}

/// The process's policy (the clouds' own domains only until [`install`] is called).
pub fn process_policy() -> &'static IdentityPolicy {
    static NONE: OnceLock<IdentityPolicy> = OnceLock::new();
    PROCESS_POLICY
        .get()
        .unwrap_or_else(|| NONE.get_or_init(IdentityPolicy::default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn each_cloud_only_to_its_own_domains() {
        let p = IdentityPolicy::default();
        assert!(p.allows(
            CloudIdentity::Google,
            &url("https://us-central1-aiplatform.googleapis.com/v1")
        ));
        assert!(!p.allows(CloudIdentity::Google, &url("https://googleapis.com/")));
        assert!(!p.allows(CloudIdentity::Google, &url("https://evilgoogleapis.com/")));
        assert!(!p.allows(
            CloudIdentity::Google,
            &url("https://x.googleapis.com.evil.example/")
        ));
        assert!(!p.allows(
            CloudIdentity::Google,
            &url("http://aiplatform.googleapis.com/")
        ));
        assert!(!p.allows(
            CloudIdentity::Google,
            &url("https://aiplatform.googleapis.com:8443/")
        ));
        assert!(!p.allows(CloudIdentity::Google, &url("https://r.openai.azure.com/")));
        assert!(p.allows(CloudIdentity::Azure, &url("https://r.openai.azure.com/")));
        assert!(p.allows(
            CloudIdentity::Azure,
            &url("https://r.services.ai.azure.com/anthropic")
        ));
        assert!(p.allows(
            CloudIdentity::Azure,
            &url("https://r.cognitiveservices.azure.com")
        ));
        assert!(!p.allows(CloudIdentity::Azure, &url("https://vault.azure.net/")));
        assert!(p.allows(
            CloudIdentity::Aws,
            &url("https://bedrock-runtime.us-east-1.amazonaws.com/")
        ));
        assert!(!p.allows(CloudIdentity::Aws, &url("http://169.254.169.254/")));
    }

    #[test]
    fn operator_hosts_with_and_without_port() {
        let p = IdentityPolicy::new(&["127.0.0.1:8443, *.corp.example", "[::1]"], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(p.allows(CloudIdentity::Google, &url("http://127.0.0.1:8443/x")));
        assert!(!p.allows(CloudIdentity::Google, &url("http://127.0.0.1:8444/x")));
        assert!(p.allows(CloudIdentity::Aws, &url("https://a.corp.example/")));
        assert!(!p.allows(CloudIdentity::Aws, &url("https://corp.example/")));
        assert!(p.allows(CloudIdentity::Azure, &url("http://[::1]:9/")));
        assert_eq!(p.describe_hosts(), "127.0.0.1:8443, *.corp.example, [::1]");
        for bad in ["http://x", "x/y", "*.com", "a*b", "u@h", "h:notaport"] {
            assert!(IdentityPolicy::new(&[bad], &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn azure_scopes_are_the_documented_two_unless_allowed() {
        let p = IdentityPolicy::default();
        assert!(p.allows_azure_scope(COGNITIVE_SERVICES_SCOPE));
        assert!(p.allows_azure_scope(AI_FOUNDRY_SCOPE));
        assert!(!p.allows_azure_scope("https://vault.azure.net/.default"));
        let p =
            IdentityPolicy::new(&[], &["api://custom/.default"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.allows_azure_scope("api://custom/.default"));
        assert!(IdentityPolicy::new(&[], &["a b"]).is_err());
    }
}
