//! The immutable routing table the data plane serves: proxies → prefixes → upstreams.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use globset::GlobSet;
use http::{HeaderName, HeaderValue};
use url::Url;

use super::ObjectKey;
use crate::crd::ProviderType;
use crate::credentials::Credential;
use crate::providers::ProviderInfo;

/// Which models a provider serves.
#[derive(Clone, Debug)]
pub enum ModelPolicy {
    /// Every model the upstream lists or accepts.
    Any,
    /// Exactly these models (`models.static`); no discovery.
    Static(Arc<[String]>),
    /// Discovered models matching these globs (`models.allow`).
    Allow {
        /// The patterns as written, for messages.
        patterns: Arc<[String]>,
        /// The compiled patterns.
        set: GlobSet,
    },
}

impl ModelPolicy {
    /// Whether a request may name this model.
    pub fn permits(&self, model: &str) -> bool {
        match self {
            ModelPolicy::Any => true,
            ModelPolicy::Static(models) => models.iter().any(|m| m == model),
            ModelPolicy::Allow { set, .. } => set.is_match(model),
        }
    }

    /// Whether models come from the upstream's list API.
    pub fn discovers(&self) -> bool {
        !matches!(self, ModelPolicy::Static(_))
    }
}

/// One provider, compiled: everything a request needs to reach it.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The `LlmProvider` it came from.
    pub provider: ObjectKey,
    /// `metadata.generation` of the `LlmProvider` compiled (an older one than the newest when
    /// the newest has problems and this is its last good version).
    pub generation: Option<i64>,
    /// Provider type.
    pub provider_type: ProviderType,
    /// Static facts of the type.
    pub info: ProviderInfo,
    /// Base URL, without a trailing slash.
    pub base_url: Url,
    /// Credential injected into every request.
    pub credential: Credential,
    /// Headers added to every request (attribution and the like).
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Which models it serves.
    pub models: ModelPolicy,
    /// Connect / first-byte / idle timeout.
    pub timeout: Duration,
    /// Bedrock settings (type `bedrock` only).
    pub bedrock: Option<Arc<crate::providers::bedrock::Settings>>,
    /// Identity of the discovery cache: equal for two compilations of an unchanged provider,
    /// so a reload keeps its discovered models.
    pub catalog_key: u64,
    /// Cloud-specific addressing (Vertex AI project and location, Azure URL style).
    pub cloud: Cloud,
    /// `spec.passthrough`: native endpoints forwarded unread besides the known ones.
    pub passthrough: Arc<[Passthrough]>,
}

/// One compiled `spec.passthrough` rule.
#[derive(Clone, Debug)]
pub struct Passthrough {
    /// Upper-case methods.
    pub methods: Vec<String>,
    /// The path glob.
    pub path: globset::GlobMatcher,
}

impl Upstream {
    /// The API surface of the upstream's format (Azure resource URLs and Vertex AI have
    /// their own paths).
    pub fn surface(&self) -> crate::formats::Surface {
        use crate::formats::Surface;
        match &self.cloud {
            Cloud::None => Surface::Standard,
            Cloud::Vertex { .. } => Surface::Vertex,
            Cloud::Azure { v1: true, .. } => Surface::Standard,
            Cloud::Azure { v1: false, .. } => Surface::AzureResource,
        }
    }

    /// The native endpoints this upstream knows.
    pub fn endpoints(&self) -> &'static [crate::formats::endpoints::Endpoint] {
        self.info.format.endpoints(self.surface())
    }

    /// Whether a `spec.passthrough` rule admits `method` on `rest`.
    pub fn passes_through(&self, method: &str, rest: &str) -> bool {
        self.passthrough.iter().any(|rule| {
            crate::formats::endpoints::passthrough_matches(&rule.methods, &rule.path, method, rest)
        })
    }
}

/// Addressing that only some provider types have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Cloud {
    /// Nothing beyond the base URL.
    #[default]
    None,
    /// Vertex AI: Gemini paths live under the project and location.
    Vertex {
        /// Google Cloud project ID.
        project: String,
        /// Vertex AI location (`us-central1`, `global`).
        location: String,
    },
    /// Azure OpenAI / AI Foundry.
    Azure {
        /// Foundry v1 URL (`…/openai/v1`: OpenAI paths under the base URL); otherwise a
        /// resource URL with deployment paths and an `api-version`.
        v1: bool,
        /// `api-version` for deployment paths.
        api_version: String,
    },
}

/// `api-version` of the Azure OpenAI deployments list (the data-plane list API that still
/// answers it; newer versions dropped the list).
pub const AZURE_DEPLOYMENTS_API_VERSION: &str = "2022-12-01";

/// Whether a model / deployment ID is safe as one URL path segment.
pub fn is_model_segment(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && id != "."
        && id != ".."
}

impl Upstream {
    /// `{base_url}/{path}` (path without a leading slash).
    pub fn url(&self, path: &str) -> String {
        let base = self.base_url.as_str().trim_end_matches('/');
        format!("{base}/{path}")
    }

    /// Where an OpenAI-format chat request for `model` goes: `{base}/chat/completions`, or for
    /// an Azure resource URL the deployment's path with its `api-version`. `None` when the
    /// model cannot be a deployment name.
    pub fn chat_url(&self, model: &str) -> Option<String> {
        match &self.cloud {
            Cloud::Azure {
                v1: false,
                api_version,
            } => is_model_segment(model).then(|| {
                self.url(&format!(
                    "openai/deployments/{model}/chat/completions?api-version={api_version}"
                ))
            }),
            _ => Some(self.url("chat/completions")),
        }
    }

    /// The Vertex AI path of a Gemini model's `generateContent` / `streamGenerateContent`.
    pub fn vertex_path(&self, model: &str, stream: bool) -> String {
        let (project, location) = match &self.cloud {
            Cloud::Vertex { project, location } => (project.as_str(), location.as_str()),
            _ => ("-", "-"),
        };
        let method = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        format!(
            "v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}"
        )
    }
}

/// One prefix of a proxy.
#[derive(Clone, Debug)]
pub struct Route {
    /// Model-ID prefix and native-route segment.
    pub prefix: String,
    /// Where it goes (a pool's first member).
    pub upstream: Arc<Upstream>,
    /// Every provider under this prefix, `upstream` first: more than one is a pool, balanced
    /// and failed over (all of one type).
    pub pool: Arc<[Arc<Upstream>]>,
    /// Retry rules of requests naming this prefix (the proxy's `retry`, else three tries for
    /// a pool and one for a single provider).
    pub retry: crate::routing::RetryPolicy,
}

impl Route {
    /// A route to one provider.
    pub fn single(prefix: String, upstream: Arc<Upstream>) -> Self {
        Self {
            prefix,
            pool: Arc::from([upstream.clone()]),
            upstream,
            retry: crate::routing::RetryPolicy::single(),
        }
    }

    /// Whether more than one provider serves this prefix.
    pub fn is_pool(&self) -> bool {
        self.pool.len() > 1
    }
}

/// A provider entry of a proxy whose `LlmProvider` never had a good version (or is missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReady {
    /// The entry's prefix.
    pub prefix: String,
    /// The `LlmProvider` the entry names.
    pub provider: ObjectKey,
    /// Its type, when it exists (for the error shape of its native route).
    pub provider_type: Option<ProviderType>,
    /// What is wrong with it (never a secret).
    pub message: String,
}

/// One proxy, compiled.
#[derive(Clone, Debug)]
pub struct ProxyTable {
    /// The `LlmProxy` it came from.
    pub key: ObjectKey,
    /// `metadata.generation` compiled (for `Programmed`).
    pub generation: Option<i64>,
    /// Routes in the order the spec lists them.
    pub routes: Vec<Route>,
    /// Provider entries that have no good version: their prefix answers 503
    /// `provider_not_ready` naming the problem.
    pub not_ready: Vec<NotReady>,
    /// `defaultModel`, split into prefix and model.
    pub default_model: Option<(String, String)>,
    /// Client auth, access rules, tool guardrails and audit settings.
    pub policy: Arc<crate::policy::ProxyPolicy>,
    /// Virtual models and retry rules.
    pub failover: Arc<super::virtual_models::Failover>,
}

impl ProxyTable {
    /// The model a request that names none asks for: the default virtual model (`virtual`:
    /// endpoints that serve virtual models), else `spec.defaultModel` as `prefix:model`.
    pub fn default_asked(&self, virtual_models: bool) -> Option<String> {
        self.failover
            .default_virtual
            .clone()
            .filter(|_| virtual_models)
            .or_else(|| self.default_model.as_ref().map(|(p, m)| format!("{p}:{m}")))
    }

    /// The route for a prefix.
    pub fn route(&self, prefix: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.prefix == prefix)
    }

    /// The entry of a prefix that is not ready (no good version of its provider).
    pub fn not_ready(&self, prefix: &str) -> Option<&NotReady> {
        self.not_ready.iter().find(|n| n.prefix == prefix)
    }

    /// The prefixes, comma-separated, for error messages.
    pub fn prefixes(&self) -> String {
        self.routes
            .iter()
            .map(|r| r.prefix.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The whole routing table at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Proxies by key.
    pub proxies: BTreeMap<ObjectKey, Arc<ProxyTable>>,
    /// Bare proxy names → keys with that name (a bare name resolves only when unique).
    by_name: HashMap<String, Vec<ObjectKey>>,
    /// Increases with every swap.
    pub version: u64,
    /// Budgets being served (`LlmBudget`), by proxy.
    pub budgets: Arc<crate::budget::BudgetTable>,
}

impl Snapshot {
    /// A snapshot of these proxies.
    pub fn new(proxies: BTreeMap<ObjectKey, Arc<ProxyTable>>, version: u64) -> Self {
        let mut by_name: HashMap<String, Vec<ObjectKey>> = HashMap::new();
        for key in proxies.keys() {
            by_name
                .entry(key.name.clone())
                .or_default()
                .push(key.clone());
        }
        Self {
            proxies,
            by_name,
            version,
            budgets: Arc::default(),
        }
    }

    /// Resolve a proxy ID from a URL: `{namespace}.{name}`, or a bare `{name}` that is unique.
    pub fn proxy(&self, id: &str) -> Option<&Arc<ProxyTable>> {
        if let Some((namespace, name)) = id.split_once('.')
            && let Some(table) = self.proxies.get(&ObjectKey::new(namespace, name))
        {
            return Some(table);
        }
        match self.by_name.get(id).map(Vec::as_slice) {
            Some([only]) => self.proxies.get(only),
            _ => None,
        }
    }

    /// The qualified IDs a bare name stands for when more than one proxy has it (so it
    /// resolves to none of them); `None` when it is unique, unknown or qualified.
    pub fn ambiguous(&self, id: &str) -> Option<Vec<String>> {
        if self.proxy(id).is_some() {
            return None;
        }
        match self.by_name.get(id) {
            Some(keys) if keys.len() > 1 => Some(keys.iter().map(ObjectKey::proxy_id).collect()),
            _ => None,
        }
    }

    /// Distinct upstreams of every proxy, by catalog key.
    pub fn upstreams(&self) -> BTreeMap<u64, Arc<Upstream>> {
        self.proxies
            .values()
            .flat_map(|p| p.routes.iter())
            .flat_map(|r| r.pool.iter())
            .map(|u| (u.catalog_key, u.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(keys: &[(&str, &str)]) -> Snapshot {
        let proxies = keys
            .iter()
            .map(|(ns, name)| {
                let key = ObjectKey::new(*ns, *name);
                let table = ProxyTable {
                    key: key.clone(),
                    generation: None,
                    routes: Vec::new(),
                    not_ready: Vec::new(),
                    default_model: None,
                    policy: Arc::default(),
                    failover: Arc::default(),
                };
                (key, Arc::new(table))
            })
            .collect();
        Snapshot::new(proxies, 1)
    }

    fn resolved(s: &Snapshot, id: &str) -> Option<String> {
        s.proxy(id).map(|t| t.key.proxy_id())
    }

    #[test]
    fn a_bare_name_works_only_while_one_proxy_has_it() {
        let s = snapshot(&[("ai", "team-a"), ("ml", "team-b")]);
        assert_eq!(resolved(&s, "team-a").as_deref(), Some("ai.team-a"));
        assert_eq!(s.ambiguous("team-a"), None);
        let s = snapshot(&[("ai", "team-a"), ("other", "team-a")]);
        assert_eq!(resolved(&s, "team-a"), None);
        assert_eq!(
            s.ambiguous("team-a"),
            Some(vec!["ai.team-a".to_owned(), "other.team-a".to_owned()])
        );
        assert_eq!(resolved(&s, "ai.team-a").as_deref(), Some("ai.team-a"));
        assert_eq!(
            resolved(&s, "other.team-a").as_deref(),
            Some("other.team-a")
        );
        assert_eq!(s.ambiguous("ai.team-a"), None);
        assert_eq!(s.ambiguous("nope"), None);
    }

    #[test]
    fn qualified_ids_split_at_the_first_dot_so_names_may_hold_dots() {
        let s = snapshot(&[("ai", "team.a"), ("ai", "x")]);
        assert_eq!(resolved(&s, "ai.team.a").as_deref(), Some("ai.team.a"));
        assert_eq!(resolved(&s, "team.a").as_deref(), Some("ai.team.a"));
        // A qualified ID never falls back to another proxy's bare name.
        let s = snapshot(&[("ai", "team.a"), ("team", "a")]);
        assert_eq!(resolved(&s, "team.a").as_deref(), Some("team.a"));
        assert_eq!(resolved(&s, "ai.team.a").as_deref(), Some("ai.team.a"));
    }
}
