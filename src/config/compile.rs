//! `compile()`: a pure function from the [`Index`] to routing tables plus problems, and
//! [`Compiler`], the same with memory: each object's last good version (contract §5a), the
//! results of unchanged inputs and the token caches of minted credentials.
//!
//! Every validation rule lives here, and each problem names the resource, the field, a
//! CamelCase reason (the one a status condition carries) and what to do about it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobSetBuilder};
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use url::Url;

use super::cloud;
use super::snapshot::{ModelPolicy, NotReady};
use super::{Index, ObjectKey, ProxyTable, SecretData, Upstream, virtual_models};
use crate::crd::{LlmProvider, LlmProxy, ProviderAuth, ProviderType};
use crate::credentials::{Credential, CredentialCache};
use crate::providers::{self, AuthForm};

/// Upstream timeout when `spec.timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Process-wide defaults that compilation depends on (read once from the environment by the
/// caller, so `compile` stays pure).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    /// Base-URL overrides by type (`PORTCULLIS_OLLAMA_BASE_URL`, `PORTCULLIS_VLLM_BASE_URL`).
    pub base_urls: BTreeMap<ProviderType, String>,
    /// Where minted cloud credentials may go besides the clouds' own service domains, and
    /// which extra Entra scopes may be minted (`--trusted-identity-hosts`,
    /// `--allowed-azure-scopes`): process settings, never from a manifest.
    pub identity: crate::credentials::trust::IdentityPolicy,
}

impl Defaults {
    /// Read the overrides from the process environment.
    pub fn from_env() -> Self {
        let base_urls = ProviderType::ALL
            .into_iter()
            .filter_map(|t| {
                let var = providers::info(t).base_url_env?;
                let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
                Some((t, value.trim().to_owned()))
            })
            .collect();
        Self {
            base_urls,
            identity: crate::credentials::trust::process_policy().clone(),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Problem {
    /// `LlmProvider` or `LlmProxy`.
    pub kind: &'static str,
    /// The object.
    pub object: ObjectKey,
    /// The field, as a path (`spec.auth.apiKey.secretRef`).
    pub field: String,
    /// CamelCase reason, as a status condition carries it.
    pub reason: &'static str,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}: {} ({})",
            self.kind, self.object, self.field, self.message, self.reason
        )
    }
}

/// The result of compiling an index.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// Every proxy the data plane serves: its newest version when that compiled, else its
    /// last good version.
    pub proxies: BTreeMap<ObjectKey, Arc<ProxyTable>>,
    /// Proxies whose newest version has problems (they serve their last good version, if any).
    pub failed: BTreeSet<ObjectKey>,
    /// Proxies whose newest version has problems and that serve their last good version.
    pub kept: BTreeSet<ObjectKey>,
    /// Proxies that never had a good version (not served).
    pub unserved: BTreeSet<ObjectKey>,
    /// Every problem, providers' and proxies'.
    pub problems: Vec<Problem>,
    /// Providers whose newest version compiled, whether or not a proxy uses them (for status).
    pub providers: BTreeMap<ObjectKey, Arc<Upstream>>,
    /// Providers whose newest version has problems and whose last good version serves.
    pub kept_providers: BTreeMap<ObjectKey, Arc<Upstream>>,
    /// `LlmBudget`s (compiled by [`super::budget::compile`]); a failed one keeps its last
    /// good version through [`crate::budget::merge`].
    pub budgets: crate::budget::Compiled,
}

impl Compiled {
    /// Problems of one object.
    pub fn problems_of<'a>(
        &'a self,
        kind: &'a str,
        key: &'a ObjectKey,
    ) -> impl Iterator<Item = &'a Problem> + 'a {
        self.problems
            .iter()
            .filter(move |p| p.kind == kind && &p.object == key)
    }
}

/// Compile every proxy and provider of the index, with nothing remembered: objects with
/// problems are left out (`portcullis check`, first loads, tests).
pub fn compile(index: &Index, defaults: &Defaults) -> Compiled {
    Compiler::new(defaults.clone()).compile(index)
}

/// What a provider compiled to.
type ProviderResult = Result<Arc<Upstream>, Vec<Problem>>;
/// What a proxy compiled to: its table and the problems of its references (provider entries
/// that serve a last good version or are not ready), or the problems that make it invalid.
type ProxyResult = Result<(Arc<ProxyTable>, Vec<Problem>), Vec<Problem>>;

/// The inputs of one provider's compilation, to recompile only what changed.
struct ProviderMemo {
    provider: Arc<LlmProvider>,
    secrets: Vec<Option<Arc<SecretData>>>,
    result: ProviderResult,
    /// The newest version that compiled.
    last_good: Option<Arc<Upstream>>,
}

/// How a proxy's provider entry resolved, as a proxy's compilation sees it.
#[derive(Clone)]
enum Resolution {
    /// The provider's newest version, or its last good version while the newest has problems.
    Serving {
        upstream: Arc<Upstream>,
        /// Problems of its newest version (empty when the newest serves).
        broken: Option<String>,
    },
    /// The provider exists but never had a good version.
    NotReady {
        provider_type: ProviderType,
        message: String,
    },
}

impl Resolution {
    fn same(&self, other: &Resolution) -> bool {
        match (self, other) {
            (
                Resolution::Serving {
                    upstream: a,
                    broken: x,
                },
                Resolution::Serving {
                    upstream: b,
                    broken: y,
                },
            ) => Arc::ptr_eq(a, b) && x == y,
            (
                Resolution::NotReady {
                    provider_type: a,
                    message: x,
                },
                Resolution::NotReady {
                    provider_type: b,
                    message: y,
                },
            ) => a == b && x == y,
            _ => false,
        }
    }
}

/// The inputs of one proxy version's compilation.
struct ProxyInput {
    proxy: Arc<LlmProxy>,
    entries: Vec<Option<Resolution>>,
    client_keys: Option<Arc<SecretData>>,
}

impl ProxyInput {
    fn matches(
        &self,
        proxy: &Arc<LlmProxy>,
        entries: &[Option<Resolution>],
        keys: Option<&Arc<SecretData>>,
    ) -> bool {
        (Arc::ptr_eq(&self.proxy, proxy)
            || (self.proxy.spec == proxy.spec
                && self.proxy.metadata.generation == proxy.metadata.generation))
            && same_secret(self.client_keys.as_ref(), keys)
            && self.entries.len() == entries.len()
            && self.entries.iter().zip(entries).all(|(a, b)| match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same(b),
                _ => false,
            })
    }
}

struct ProxyMemo {
    /// The newest version and what it compiled to (the last good one when it compiled).
    newest: (ProxyInput, ProxyResult),
    /// While the newest has problems: the last version that compiled, and what it compiles
    /// to against today's providers.
    last_good: Option<(ProxyInput, ProxyResult)>,
    /// The table served last (kept when even the last good version no longer compiles).
    served: Option<Arc<ProxyTable>>,
}

/// `compile()` with memory: each object's last good version (contract §5a: a valid object is
/// served in its newest version, an invalid one keeps serving its last good version, one that
/// never was valid is left out), the results of unchanged inputs (so a one-object edit of a
/// large configuration recompiles that object and what uses it, and unchanged tables keep
/// their identity), and the token caches of minted credentials. One per configuration source.
///
/// The output is a function of the index and of what this compiler saw before; nothing here
/// does I/O.
#[derive(Default)]
pub struct Compiler {
    defaults: Defaults,
    providers: HashMap<ObjectKey, ProviderMemo>,
    proxies: HashMap<ObjectKey, ProxyMemo>,
    credentials: CredentialCache,
}

impl Compiler {
    /// A compiler with these process-wide defaults and no memory.
    pub fn new(defaults: Defaults) -> Self {
        Self {
            defaults,
            ..Self::default()
        }
    }

    /// The process-wide defaults compilation uses.
    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// Compile the index: every object in its newest version when that is valid, else in its
    /// last good version.
    pub fn compile(&mut self, index: &Index) -> Compiled {
        let mut out = Compiled::default();
        let mut resolved: HashMap<&ObjectKey, Resolution> =
            HashMap::with_capacity(index.providers().len());
        for (key, provider) in index.providers() {
            let secrets: Vec<Option<&Arc<SecretData>>> = provider_secrets(key, provider)
                .map(|k| index.secret_shared(&k))
                .collect();
            let fresh = self.providers.get_mut(key).is_some_and(|m| {
                let same = (Arc::ptr_eq(&m.provider, provider)
                    || (m.provider.spec == provider.spec
                        && m.provider.metadata.generation == provider.metadata.generation))
                    && m.secrets.len() == secrets.len()
                    && m.secrets
                        .iter()
                        .zip(&secrets)
                        .all(|(a, b)| same_secret(a.as_ref(), *b));
                if same {
                    // Hold the newest copies, so the older ones can go.
                    m.provider = provider.clone();
                    m.secrets = secrets.iter().map(|s| s.cloned()).collect();
                }
                same
            });
            if !fresh {
                let result =
                    compile_provider(key, provider, index, &self.defaults, &mut self.credentials)
                        .map(Arc::new);
                let last_good = match (&result, self.providers.remove(key)) {
                    (Ok(u), _) => Some(u.clone()),
                    (Err(_), old) => old.and_then(|m| m.last_good),
                };
                self.providers.insert(
                    key.clone(),
                    ProviderMemo {
                        provider: provider.clone(),
                        secrets: secrets.into_iter().map(|s| s.cloned()).collect(),
                        result,
                        last_good,
                    },
                );
            }
            let Some(memo) = self.providers.get(key) else {
                continue;
            };
            let resolution = match (&memo.result, &memo.last_good) {
                (Ok(u), _) => {
                    out.providers.insert(key.clone(), u.clone());
                    Resolution::Serving {
                        upstream: u.clone(),
                        broken: None,
                    }
                }
                (Err(problems), last_good) => {
                    out.problems.extend(problems.iter().cloned());
                    let message = problems
                        .iter()
                        .map(|p| format!("{}: {}", p.field, p.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    match last_good {
                        Some(u) => {
                            out.kept_providers.insert(key.clone(), u.clone());
                            Resolution::Serving {
                                upstream: u.clone(),
                                broken: Some(message),
                            }
                        }
                        None => Resolution::NotReady {
                            provider_type: provider.spec.provider_type,
                            message,
                        },
                    }
                }
            };
            resolved.insert(key, resolution);
        }

        for (key, proxy) in index.proxies() {
            let entries = entries_of(key, proxy, &resolved);
            let keys = client_keys_of(key, proxy, index);
            let input = |proxy: &Arc<LlmProxy>,
                         entries: Vec<Option<Resolution>>,
                         keys: Option<&Arc<SecretData>>| {
                ProxyInput {
                    proxy: proxy.clone(),
                    entries,
                    client_keys: keys.cloned(),
                }
            };
            let (newest, mut last_good, served) = match self.proxies.remove(key) {
                Some(mut m) if m.newest.0.matches(proxy, &entries, keys) => {
                    // Hold the newest copies, so the older ones can go.
                    m.newest.0.proxy = proxy.clone();
                    m.newest.0.client_keys = keys.cloned();
                    (m.newest, m.last_good, m.served)
                }
                old => {
                    let result = compile_proxy(key, proxy, &entries, index);
                    let (last_good, served) = match old {
                        // The version that compiled until now is the last good one.
                        Some(m) if m.newest.1.is_ok() => (Some(m.newest), m.served),
                        Some(m) => (m.last_good, m.served),
                        None => (None, None),
                    };
                    ((input(proxy, entries, keys), result), last_good, served)
                }
            };
            let table = match &newest.1 {
                Ok((table, ref_problems)) => {
                    out.problems.extend(ref_problems.iter().cloned());
                    last_good = None;
                    Some(table.clone())
                }
                Err(problems) => {
                    out.problems.extend(problems.iter().cloned());
                    out.failed.insert(key.clone());
                    // The last good version, compiled against today's providers; if even that
                    // no longer compiles, the table served last.
                    if let Some((old, _)) = &last_good {
                        let good = &old.proxy;
                        let entries = entries_of(key, good, &resolved);
                        let keys = client_keys_of(key, good, index);
                        if !old.matches(good, &entries, keys) {
                            let result = compile_proxy(key, good, &entries, index);
                            last_good = Some((input(good, entries, keys), result));
                        }
                    }
                    let table = match &last_good {
                        Some((_, Ok((table, _)))) => Some(table.clone()),
                        _ => served.clone(),
                    };
                    match &table {
                        Some(_) => out.kept.insert(key.clone()),
                        None => out.unserved.insert(key.clone()),
                    };
                    table
                }
            };
            if let Some(table) = &table {
                out.proxies.insert(key.clone(), table.clone());
            }
            self.proxies.insert(
                key.clone(),
                ProxyMemo {
                    newest,
                    last_good,
                    served: table,
                },
            );
        }
        // Every object of the index has its entry now: more entries mean deleted objects,
        // which forget their last good version.
        if self.providers.len() != index.providers().len() {
            self.providers
                .retain(|k, _| index.providers().contains_key(k));
        }
        if self.proxies.len() != index.proxies().len() {
            self.proxies.retain(|k, _| index.proxies().contains_key(k));
        }
        out.budgets = super::budget::compile(index, &mut out.problems);
        out
    }
}

/// The Secrets a provider reads (`auth.apiKey`, `auth.serviceAccountKey`).
fn provider_secrets<'a>(
    key: &'a ObjectKey,
    provider: &'a LlmProvider,
) -> impl Iterator<Item = ObjectKey> + 'a {
    let auth = provider.spec.auth.as_ref();
    [
        auth.and_then(|a| a.api_key.as_ref())
            .map(|s| &s.secret_ref.name),
        auth.and_then(|a| a.service_account_key.as_ref())
            .map(|s| &s.secret_ref.name),
    ]
    .into_iter()
    .flatten()
    .map(|name| ObjectKey::new(&key.namespace, name))
}

/// The client-key Secret a proxy reads (`clientAuth.apiKeys`).
fn client_keys_of<'a>(
    key: &ObjectKey,
    proxy: &LlmProxy,
    index: &'a Index,
) -> Option<&'a Arc<SecretData>> {
    let name = &proxy
        .spec
        .client_auth
        .as_ref()?
        .api_keys
        .as_ref()?
        .secret_ref
        .name;
    index.secret_shared(&ObjectKey::new(&key.namespace, name))
}

/// Whether two versions of a Secret hold the same data.
fn same_secret(a: Option<&Arc<SecretData>>, b: Option<&Arc<SecretData>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

/// How each provider entry of a proxy resolves (`None`: no such provider).
fn entries_of(
    key: &ObjectKey,
    proxy: &LlmProxy,
    resolved: &HashMap<&ObjectKey, Resolution>,
) -> Vec<Option<Resolution>> {
    proxy
        .spec
        .providers
        .iter()
        .map(|e| {
            resolved
                .get(&ObjectKey::new(&key.namespace, &e.provider_ref.name))
                .cloned()
        })
        .collect()
}

pub(super) struct Problems {
    kind: &'static str,
    key: ObjectKey,
    list: Vec<Problem>,
}

impl Problems {
    fn new(kind: &'static str, key: &ObjectKey) -> Self {
        Self {
            kind,
            key: key.clone(),
            list: Vec::new(),
        }
    }

    pub(super) fn add(
        &mut self,
        field: impl Into<String>,
        reason: &'static str,
        message: impl Into<String>,
    ) {
        self.list.push(Problem {
            kind: self.kind,
            object: self.key.clone(),
            field: field.into(),
            reason,
            message: message.into(),
        });
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<Problem>> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(self.list)
        }
    }
}

fn auth_forms(auth: &ProviderAuth) -> Vec<AuthForm> {
    let mut forms = Vec::new();
    if auth.api_key.is_some() {
        forms.push(AuthForm::ApiKey);
    }
    if auth.workload_identity.is_some() {
        forms.push(AuthForm::WorkloadIdentity);
    }
    if auth.service_account_key.is_some() {
        forms.push(AuthForm::ServiceAccountKey);
    }
    if auth.none.is_some() {
        forms.push(AuthForm::None);
    }
    forms
}

fn compile_provider(
    key: &ObjectKey,
    provider: &LlmProvider,
    index: &Index,
    defaults: &Defaults,
    creds: &mut CredentialCache,
) -> Result<Upstream, Vec<Problem>> {
    let spec = &provider.spec;
    let t = spec.provider_type;
    let info = providers::info(t);
    let mut p = Problems::new("LlmProvider", key);

    if !info.implemented {
        p.add(
            "spec.type",
            "UnsupportedType",
            format!(
                "provider type `{t}` is not yet supported by this version of the gateway; \
                 use an OpenAI-compatible type or upgrade"
            ),
        );
        return Err(p.list);
    }

    // Type-specific blocks belong to their type only.
    for (present, block, owner) in [
        (spec.bedrock.is_some(), "bedrock", ProviderType::Bedrock),
        (spec.vertexai.is_some(), "vertexai", ProviderType::Vertexai),
        (spec.azure.is_some(), "azure", ProviderType::Azure),
        (
            spec.openrouter.is_some(),
            "openrouter",
            ProviderType::Openrouter,
        ),
    ] {
        if present && t != owner {
            p.add(
                format!("spec.{block}"),
                "InvalidSpec",
                format!("spec.{block} is only allowed with type: {owner}, not {t}"),
            );
        }
    }

    let bedrock = (t == ProviderType::Bedrock)
        .then(|| compile_bedrock(spec.bedrock.as_ref(), &mut p))
        .flatten();

    // Base URL.
    let base_url = spec
        .base_url
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| defaults.base_urls.get(&t).cloned())
        .or_else(|| info.default_base_url.map(str::to_owned))
        .or_else(|| cloud::default_base_url(spec))
        .or_else(|| {
            bedrock
                .as_ref()
                .map(|b| providers::bedrock::runtime_url(&b.region))
        });
    let base_url = match base_url {
        // A bedrock provider without a usable region already has its problem.
        None if t == ProviderType::Bedrock => None,
        None => {
            let hint = info
                .base_url_env
                .map(|v| format!(" (or set {v})"))
                .unwrap_or_default();
            p.add(
                "spec.baseUrl",
                "InvalidBaseUrl",
                format!("type `{t}` has no default base URL: set spec.baseUrl{hint}"),
            );
            None
        }
        Some(raw) => match parse_base_url(&raw) {
            Ok(url) => Some(url),
            Err(why) => {
                // A URL with credentials in it is not echoed: the message ends up in logs and status.
                let shown = Url::parse(&raw)
                    .ok()
                    .filter(|u| !u.username().is_empty() || u.password().is_some())
                    .map_or(raw.as_str(), |_| "the base URL");
                p.add("spec.baseUrl", "InvalidBaseUrl", format!("`{shown}` {why}"));
                None
            }
        },
    };

    // Auth.
    let auth = spec.auth.clone().unwrap_or_default();
    let forms = auth_forms(&auth);
    let form = match forms.as_slice() {
        [] => AuthForm::None,
        [one] => *one,
        _ => {
            p.add(
                "spec.auth",
                "InvalidAuth",
                "auth takes exactly one of apiKey, workloadIdentity, serviceAccountKey, none",
            );
            AuthForm::None
        }
    };
    let mut credential = Credential::None;
    let cloud_auth = matches!(
        form,
        AuthForm::WorkloadIdentity | AuthForm::ServiceAccountKey
    ) && info.auth_forms.contains(&form);
    if cloud_auth && t == ProviderType::Bedrock {
        if let Some(b) = &bedrock {
            credential =
                Credential::AwsSigV4(Arc::new(crate::credentials::aws::SigV4::new(&b.region)));
        }
    } else if cloud_auth
        && matches!(
            t,
            ProviderType::Vertexai | ProviderType::Azure | ProviderType::Anthropic
        )
    {
        credential = cloud::credential(
            &mut p,
            key,
            index,
            t,
            form,
            &auth,
            spec,
            base_url.as_ref(),
            creds,
        );
    } else if cloud_auth {
        p.add(
            format!("spec.auth.{}", form.field()),
            "UnsupportedAuth",
            format!(
                "auth.{} is not yet supported by this version of the gateway; use auth.apiKey",
                form.field()
            ),
        );
    } else if forms.len() <= 1 && !info.auth_forms.contains(&form) {
        let allowed: Vec<_> = info.auth_forms.iter().map(|f| f.field()).collect();
        let field = if forms.is_empty() {
            "spec.auth".to_owned()
        } else {
            format!("spec.auth.{}", form.field())
        };
        p.add(
            field,
            "UnsupportedAuth",
            format!(
                "type `{t}` needs auth.{}; it accepts: {}",
                allowed.first().copied().unwrap_or("none"),
                allowed.join(", ")
            ),
        );
    } else if let (AuthForm::ApiKey, Some(source)) = (form, &auth.api_key) {
        let field = "spec.auth.apiKey.secretRef";
        let secret_key = ObjectKey::new(&key.namespace, &source.secret_ref.name);
        let data_key = source.secret_ref.key.as_deref().unwrap_or("apiKey");
        match index.secret(&secret_key) {
            None => p.add(
                field,
                "SecretNotFound",
                format!("Secret {secret_key} not found; create it with the key `{data_key}`"),
            ),
            Some(data) => match data.0.get(data_key) {
                None => p.add(
                    field,
                    "SecretKeyNotFound",
                    format!("Secret {secret_key} has no key `{data_key}`"),
                ),
                Some(bytes) => match std::str::from_utf8(bytes).map(str::trim) {
                    Ok("") => p.add(
                        field,
                        "InvalidSecret",
                        format!("key `{data_key}` of Secret {secret_key} is empty"),
                    ),
                    Ok(value) => match api_key_credential(info.key_header, value) {
                        Ok(c) => credential = c,
                        Err(e) => p.add(
                            field,
                            "InvalidSecret",
                            format!("key `{data_key}` of Secret {secret_key}: {e}"),
                        ),
                    },
                    Err(_) => p.add(
                        field,
                        "InvalidSecret",
                        format!("key `{data_key}` of Secret {secret_key} is not UTF-8 text"),
                    ),
                },
            },
        }
    }

    // Models.
    let models = match &spec.models {
        None => ModelPolicy::Any,
        Some(m) => match (&m.r#static, &m.allow) {
            (Some(_), Some(_)) => {
                p.add(
                    "spec.models",
                    "InvalidSpec",
                    "set either models.static or models.allow, not both",
                );
                ModelPolicy::Any
            }
            (Some(list), None) => {
                let list: Vec<String> = list
                    .iter()
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect();
                if list.is_empty() {
                    p.add(
                        "spec.models.static",
                        "InvalidSpec",
                        "models.static is empty: list at least one model, or remove it to discover models",
                    );
                }
                ModelPolicy::Static(list.into())
            }
            (None, Some(patterns)) => {
                let mut builder = GlobSetBuilder::new();
                for (i, pattern) in patterns.iter().enumerate() {
                    match Glob::new(pattern) {
                        Ok(g) => {
                            builder.add(g);
                        }
                        Err(e) => p.add(
                            format!("spec.models.allow[{i}]"),
                            "InvalidSpec",
                            format!("`{pattern}` is not a valid glob: {}", e.kind()),
                        ),
                    }
                }
                match builder.build() {
                    Ok(set) => ModelPolicy::Allow {
                        patterns: patterns.clone().into(),
                        set,
                    },
                    Err(_) => ModelPolicy::Any,
                }
            }
            (None, None) => ModelPolicy::Any,
        },
    };

    // Timeout.
    let timeout = match spec.timeout.as_deref() {
        None => DEFAULT_TIMEOUT,
        Some(raw) => match humantime::parse_duration(raw.trim()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                p.add(
                    "spec.timeout",
                    "InvalidSpec",
                    format!("`{raw}` is not a positive duration such as `600s` or `10m`"),
                );
                DEFAULT_TIMEOUT
            }
        },
    };

    // Attribution headers (OpenRouter).
    let mut extra_headers = Vec::new();
    if let Some(or) = &spec.openrouter {
        for (name, value, field) in [
            ("http-referer", &or.site_url, "spec.openrouter.siteUrl"),
            ("x-title", &or.app_name, "spec.openrouter.appName"),
        ] {
            if let Some(value) = value {
                match HeaderValue::from_str(value) {
                    Ok(v) => extra_headers.push((HeaderName::from_static(name), v)),
                    Err(_) => p.add(
                        field,
                        "InvalidSpec",
                        "must be printable text without newlines",
                    ),
                }
            }
        }
    }

    let passthrough = compile_passthrough(spec.passthrough.as_deref().unwrap_or_default(), &mut p);

    let Some(base_url) = base_url else {
        return Err(p.list);
    };
    let mut hasher = DefaultHasher::new();
    (key, t.as_str(), base_url.as_str()).hash(&mut hasher);
    if let Credential::Header { name, value } = &credential {
        (name.as_str(), value.as_bytes()).hash(&mut hasher);
    }
    format!("{credential:?}").hash(&mut hasher);
    let cloud = cloud::settings(&mut p, spec, &base_url);
    cloud::guard_identity(&mut p, &credential, &base_url, bedrock.as_deref(), defaults);
    if let Some(b) = &bedrock {
        b.hash(&mut hasher);
    }
    if let Credential::AwsSigV4(signer) = &credential {
        signer.region().hash(&mut hasher);
    }
    let catalog_key = hasher.finish();
    p.finish(Upstream {
        provider: key.clone(),
        generation: provider.metadata.generation,
        provider_type: t,
        info,
        base_url,
        credential,
        extra_headers,
        models,
        timeout,
        bedrock,
        catalog_key,
        cloud,
        passthrough,
    })
}

/// `spec.passthrough`: known methods and path globs that cannot climb out of the base path.
fn compile_passthrough(
    rules: &[crate::crd::PassthroughRule],
    p: &mut Problems,
) -> Arc<[crate::config::snapshot::Passthrough]> {
    const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.passthrough[{i}]");
        let mut ok = true;
        if rule.methods.is_empty() {
            p.add(
                format!("{field}.methods"),
                "InvalidSpec",
                "list at least one method",
            );
            ok = false;
        }
        for m in &rule.methods {
            if !METHODS.contains(&m.to_ascii_uppercase().as_str()) {
                p.add(
                    format!("{field}.methods"),
                    "InvalidSpec",
                    format!("`{m}` is not one of {}", METHODS.join(", ")),
                );
                ok = false;
            }
        }
        let path = rule.path.trim_matches('/');
        let climbs = path
            .split('/')
            .any(|s| matches!(s, "" | "." | "..") || s.contains(['%', '\\', '?', '#']));
        if climbs {
            p.add(
                format!("{field}.path"),
                "InvalidSpec",
                format!("`{}` is not a relative path glob such as `files/*` (no empty, `.`, `..` or encoded segments)", rule.path),
            );
            ok = false;
        }
        let glob = globset::GlobBuilder::new(path)
            .literal_separator(true)
            .build()
            .map(|g| g.compile_matcher());
        match glob {
            Ok(glob) if ok => out.push(crate::config::snapshot::Passthrough {
                methods: rule
                    .methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase())
                    .collect(),
                path: glob,
            }),
            Ok(_) => {}
            Err(e) => p.add(
                format!("{field}.path"),
                "InvalidSpec",
                format!("`{}` is not a valid glob: {}", rule.path, e.kind()),
            ),
        }
    }
    out.into()
}

/// `spec.bedrock`: the region is required (it names the endpoints and the signing region).
fn compile_bedrock(
    spec: Option<&crate::crd::BedrockSpec>,
    p: &mut Problems,
) -> Option<Arc<providers::bedrock::Settings>> {
    let Some(spec) = spec else {
        p.add(
            "spec.bedrock",
            "InvalidSpec",
            "type `bedrock` needs spec.bedrock.region (e.g. `bedrock: {region: us-east-1}`)",
        );
        return None;
    };
    let region = spec.region.trim();
    if !providers::bedrock::valid_region(region) {
        p.add(
            "spec.bedrock.region",
            "InvalidSpec",
            format!("`{region}` is not an AWS region name such as `us-east-1`"),
        );
        return None;
    }
    let control = spec
        .control_plane_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| providers::bedrock::control_plane_url(region));
    let control_plane_url = match parse_base_url(&control) {
        Ok(url) => url,
        Err(why) => {
            let shown = Url::parse(&control)
                .ok()
                .filter(|u| !u.username().is_empty() || u.password().is_some())
                .map_or(control.as_str(), |_| "the control-plane URL");
            p.add(
                "spec.bedrock.controlPlaneUrl",
                "InvalidBaseUrl",
                format!("`{shown}` {why}"),
            );
            return None;
        }
    };
    let lower = |list: &Option<Vec<String>>| {
        list.as_ref().map(|l| {
            l.iter()
                .map(|v| v.trim().to_ascii_lowercase())
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
        })
    };
    Some(Arc::new(providers::bedrock::Settings {
        region: region.to_owned(),
        control_plane_url,
        allowed_providers: lower(&spec.allowed_providers),
        allowed_inference_regions: lower(&spec.allowed_inference_regions),
    }))
}

fn api_key_credential(
    how: providers::KeyHeader,
    key: &str,
) -> Result<Credential, crate::credentials::InvalidKey> {
    match how {
        providers::KeyHeader::Bearer => Credential::bearer(key),
        providers::KeyHeader::Named(name) => Credential::header(HeaderName::from_static(name), key),
    }
}

/// A base URL must be absolute http(s), with a host and without credentials, query or fragment.
fn parse_base_url(raw: &str) -> Result<Url, &'static str> {
    let url = Url::parse(raw)
        .map_err(|_| "is not an absolute URL (expected e.g. https://api.example.com/v1)")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must use http or https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry credentials: put the key in a Secret and reference it from spec.auth",
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment");
    }
    Ok(url)
}

/// A prefix: lowercase letters, digits and `-`, not starting or ending with `-`.
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 63
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !prefix.starts_with('-')
        && !prefix.ends_with('-')
}

fn compile_proxy(
    key: &ObjectKey,
    proxy: &LlmProxy,
    entries: &[Option<Resolution>],
    index: &Index,
) -> ProxyResult {
    let mut p = Problems::new("LlmProxy", key);
    // Problems of the objects the entries name: reported, but the proxy itself is valid.
    let mut refs = Problems::new("LlmProxy", key);
    if key.namespace.contains('.') {
        p.add(
            "metadata.namespace",
            "InvalidSpec",
            "namespace must not contain a dot (proxy IDs are `{namespace}.{name}`)",
        );
    }
    if proxy.spec.providers.is_empty() {
        p.add(
            "spec.providers",
            "EmptyProxy",
            "a proxy needs at least one provider in spec.providers",
        );
    }
    let mut pool_entries = Vec::new();
    let mut not_ready = Vec::new();
    let mut seen = HashSet::new();
    for (i, entry) in proxy.spec.providers.iter().enumerate() {
        let field = format!("spec.providers[{i}]");
        let provider_key = ObjectKey::new(&key.namespace, &entry.provider_ref.name);
        let resolution = entries.get(i).cloned().flatten();
        let (upstream, provider_type, problem) = match resolution {
            None => {
                let message = format!("LlmProvider {provider_key} not found");
                refs.add(
                    format!("{field}.providerRef"),
                    "ProviderNotFound",
                    format!("{message}; this entry answers 503 provider_not_ready"),
                );
                (None, None, Some(message))
            }
            Some(Resolution::NotReady {
                provider_type,
                message,
            }) => {
                refs.add(
                    format!("{field}.providerRef"),
                    "ProviderInvalid",
                    format!(
                        "LlmProvider {provider_key} has no good version ({message}); this entry answers 503 provider_not_ready"
                    ),
                );
                (
                    None,
                    Some(provider_type),
                    Some(format!(
                        "LlmProvider {provider_key} is not ready: {message}"
                    )),
                )
            }
            Some(Resolution::Serving { upstream, broken }) => {
                if let Some(message) = broken {
                    refs.add(
                        format!("{field}.providerRef"),
                        "ProviderInvalid",
                        format!(
                            "LlmProvider {provider_key} has problems ({message}); its last good version (generation {}) keeps serving",
                            upstream
                                .generation
                                .map_or_else(|| "?".to_owned(), |g| g.to_string())
                        ),
                    );
                }
                let t = upstream.provider_type;
                (Some(upstream), Some(t), None)
            }
        };
        let prefix = match (&entry.prefix, provider_type) {
            (Some(prefix), _) => Some(prefix.clone()),
            (None, Some(t)) => Some(t.as_str().to_owned()),
            // A missing provider has no type to name its prefix after: its entry answers
            // under the provider's name, so a caller learns what is missing.
            (None, None) if valid_prefix(&entry.provider_ref.name) => {
                Some(entry.provider_ref.name.clone())
            }
            (None, None) => None,
        };
        if let Some(prefix) = &prefix {
            if !valid_prefix(prefix) {
                p.add(
                    format!("{field}.prefix"),
                    "InvalidPrefix",
                    format!("prefix `{prefix}` must be lowercase letters, digits and `-`"),
                );
            } else if prefix == "model-router" {
                p.add(
                    format!("{field}.prefix"),
                    "InvalidPrefix",
                    "prefix `model-router` is reserved for the Model Router route",
                );
            } else {
                seen.insert(prefix.clone());
            }
        }
        match (prefix, upstream, problem) {
            (Some(prefix), Some(upstream), _) => pool_entries.push((i, prefix, upstream)),
            (Some(prefix), None, Some(message)) => not_ready.push(NotReady {
                prefix,
                provider: provider_key,
                provider_type,
                message,
            }),
            _ => {}
        }
    }
    // Entries sharing a prefix form a pool; then virtual models, retry and the default model.
    let mut routes = virtual_models::pools(pool_entries, &mut p);
    let (default_model, failover) =
        virtual_models::compile(&proxy.spec, &mut routes, &seen, &mut p);
    let secrets = |name: &str| {
        index
            .secret(&ObjectKey::new(&key.namespace, name))
            .map(|data| &data.0)
    };
    let policy = match crate::policy::compile_policy(&key.namespace, &proxy.spec, &secrets) {
        Ok(policy) => policy,
        Err(problems) => {
            for (field, reason, message) in problems {
                p.add(field, reason, message);
            }
            crate::policy::ProxyPolicy::default()
        }
    };
    let table = p.finish(ProxyTable {
        key: key.clone(),
        generation: proxy.metadata.generation,
        routes,
        not_ready,
        default_model,
        policy: Arc::new(policy),
        failover: Arc::new(failover),
    })?;
    Ok((Arc::new(table), refs.list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Store;
    use crate::source::files::parse;

    const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: key, namespace: ai}\nstringData: {apiKey: sk-1}\n---\n";

    fn provider(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {{name: {name}, namespace: ai}}\nspec: {spec}\n---\n"
        )
    }

    fn proxy(name: &str, providers: &str) -> String {
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {{name: {name}, namespace: ai}}\nspec: {{providers: {providers}}}\n---\n"
        )
    }

    fn run(yaml: &str) -> Compiled {
        let objects = match parse(yaml) {
            Ok(o) => o,
            Err(e) => panic!("{e:?}"),
        };
        compile(&Index::from_objects(objects), &Defaults::default())
    }

    fn reasons(c: &Compiled) -> Vec<(&str, &str)> {
        c.problems
            .iter()
            .map(|p| (p.field.as_str(), p.reason))
            .collect()
    }

    const OPENAI: &str = "{type: openai, auth: {apiKey: {secretRef: {name: key}}}}";

    #[test]
    fn a_clean_configuration_compiles() {
        let c = run(&format!(
            "{SECRET}{}{}",
            provider("openai", OPENAI),
            proxy("team-a", "[{providerRef: {name: openai}}]")
        ));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let table = &c.proxies[&ObjectKey::new("ai", "team-a")];
        let route = &table.routes[0];
        assert_eq!(route.prefix, "openai");
        assert_eq!(
            route.upstream.base_url.as_str(),
            "https://api.openai.com/v1"
        );
        assert_eq!(
            route.upstream.url("chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(route.upstream.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn missing_secret_and_key_are_named() {
        let c = run(&provider(
            "a",
            "{type: openai, auth: {apiKey: {secretRef: {name: nope}}}}",
        ));
        assert_eq!(
            reasons(&c),
            [("spec.auth.apiKey.secretRef", "SecretNotFound")]
        );
        assert!(c.problems[0].message.contains("ai/nope"));
        let c = run(&format!(
            "{SECRET}{}",
            provider(
                "a",
                "{type: openai, auth: {apiKey: {secretRef: {name: key, key: other}}}}"
            )
        ));
        assert_eq!(
            reasons(&c),
            [("spec.auth.apiKey.secretRef", "SecretKeyNotFound")]
        );
    }

    #[test]
    fn base_urls_are_required_and_checked() {
        let c = run(&provider("a", "{type: vllm}"));
        assert_eq!(reasons(&c), [("spec.baseUrl", "InvalidBaseUrl")]);
        assert!(c.problems[0].message.contains("PORTCULLIS_VLLM_BASE_URL"));
        for bad in [
            "not a url",
            "ftp://x/v1",
            "http://user:pw@x/v1",
            "http://x/v1?key=1",
        ] {
            let c = run(&provider(
                "a",
                &format!("{{type: vllm, baseUrl: \"{bad}\"}}"),
            ));
            assert_eq!(reasons(&c), [("spec.baseUrl", "InvalidBaseUrl")], "{bad}");
            assert!(
                !c.problems[0].message.contains("pw@") || bad.contains("pw"),
                ""
            );
        }
        let mut defaults = Defaults::default();
        defaults
            .base_urls
            .insert(ProviderType::Vllm, "http://vllm:8000/v1".to_owned());
        let objects = parse(&provider("a", "{type: vllm}")).unwrap_or_default();
        let c = compile(&Index::from_objects(objects), &defaults);
        assert!(c.problems.is_empty());
    }

    #[test]
    fn auth_forms_the_type_does_not_take_are_refused() {
        let c = run(&provider("a", "{type: openai}"));
        assert_eq!(reasons(&c), [("spec.auth", "UnsupportedAuth")]);
        let c = run(&provider("a", "{type: groq, auth: {workloadIdentity: {}}}"));
        assert_eq!(
            reasons(&c),
            [("spec.auth.workloadIdentity", "UnsupportedAuth")]
        );
        let c = run(&format!(
            "{SECRET}{}",
            provider(
                "a",
                "{type: ollama, auth: {none: {}, apiKey: {secretRef: {name: key}}}}"
            )
        ));
        assert_eq!(reasons(&c), [("spec.auth", "InvalidAuth")]);
        let c = run(&provider("a", "{type: ollama}"));
        assert!(c.problems.is_empty(), "ollama needs no auth");
    }

    #[test]
    fn every_type_of_the_schema_is_implemented() {
        for t in ProviderType::ALL {
            assert!(providers::info(t).implemented, "{t} is not implemented");
        }
    }

    fn bedrock_upstream(c: &Compiled) -> Arc<Upstream> {
        let table = &c.proxies[&ObjectKey::new("ai", "p")];
        table.routes[0].upstream.clone()
    }

    #[test]
    fn bedrock_with_workload_identity_signs_in_its_region() {
        let c = run(&format!(
            "{}{}",
            provider(
                "b",
                "{type: bedrock, auth: {workloadIdentity: {}}, bedrock: {region: eu-west-3, allowedProviders: [Anthropic]}}"
            ),
            proxy("p", "[{providerRef: {name: b}}]")
        ));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let u = bedrock_upstream(&c);
        assert_eq!(
            u.base_url.as_str(),
            "https://bedrock-runtime.eu-west-3.amazonaws.com/"
        );
        assert!(u.credential.needs_body());
        let b = u.bedrock.clone().unwrap_or_else(|| panic!("no settings"));
        assert_eq!(
            b.control_plane_url.as_str(),
            "https://bedrock.eu-west-3.amazonaws.com/"
        );
        assert_eq!(b.allowed_providers, Some(vec!["anthropic".to_owned()]));
        assert!(matches!(&u.credential, Credential::AwsSigV4(s) if s.region() == "eu-west-3"));
    }

    #[test]
    fn bedrock_api_key_is_a_bearer_token() {
        let c = run(&format!(
            "{SECRET}{}{}",
            provider(
                "b",
                "{type: bedrock, auth: {apiKey: {secretRef: {name: key}}}, bedrock: {region: us-east-1}, baseUrl: 'http://127.0.0.1:9'}"
            ),
            proxy("p", "[{providerRef: {name: b}}]")
        ));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let u = bedrock_upstream(&c);
        assert!(!u.credential.needs_body());
        assert!(
            matches!(&u.credential, Credential::Header { name, .. } if name == "authorization")
        );
    }

    #[test]
    fn bedrock_needs_a_valid_region_and_control_plane_url() {
        let c = run(&provider(
            "b",
            "{type: bedrock, auth: {workloadIdentity: {}}}",
        ));
        assert_eq!(reasons(&c), [("spec.bedrock", "InvalidSpec")]);
        let c = run(&provider(
            "b",
            "{type: bedrock, auth: {workloadIdentity: {}}, bedrock: {region: 'evil.com/x'}}",
        ));
        assert_eq!(reasons(&c), [("spec.bedrock.region", "InvalidSpec")]);
        let c = run(&provider(
            "b",
            "{type: bedrock, auth: {workloadIdentity: {}}, bedrock: {region: us-east-1, controlPlaneUrl: 'ftp://x'}}",
        ));
        assert_eq!(
            reasons(&c),
            [("spec.bedrock.controlPlaneUrl", "InvalidBaseUrl")]
        );
        let c = run(&provider(
            "b",
            "{type: bedrock, bedrock: {region: us-east-1}}",
        ));
        assert_eq!(reasons(&c), [("spec.auth", "UnsupportedAuth")]);
    }

    #[test]
    fn proxy_problems() {
        let ok = provider("o", "{type: ollama}");
        let c = run(&format!("{ok}{}", proxy("p", "[]")));
        assert_eq!(reasons(&c), [("spec.providers", "EmptyProxy")]);
        assert!(c.failed.contains(&ObjectKey::new("ai", "p")));
        let c = run(&format!(
            "{ok}{}",
            proxy("p", "[{providerRef: {name: missing}}]")
        ));
        assert_eq!(
            reasons(&c),
            [("spec.providers[0].providerRef", "ProviderNotFound")]
        );
        let c = run(&format!(
            "{ok}{}",
            proxy("p", "[{providerRef: {name: o}}, {providerRef: {name: o}}]")
        ));
        assert_eq!(
            reasons(&c),
            [("spec.providers[1].prefix", "DuplicatePrefix")]
        );
        let c = run(&format!(
            "{ok}{}",
            proxy(
                "p",
                "[{providerRef: {name: o}}, {providerRef: {name: o}, prefix: local}]"
            )
        ));
        assert!(c.problems.is_empty());
        let c = run(&format!(
            "{ok}{}",
            proxy("p", "[{providerRef: {name: o}, prefix: Bad_Prefix}]")
        ));
        assert_eq!(reasons(&c), [("spec.providers[0].prefix", "InvalidPrefix")]);
        let c = run(&format!(
            "{}{}",
            provider("v", "{type: vllm}"),
            proxy("p", "[{providerRef: {name: v}}]")
        ));
        assert_eq!(
            reasons(&c),
            [
                ("spec.baseUrl", "InvalidBaseUrl"),
                ("spec.providers[0].providerRef", "ProviderInvalid")
            ]
        );
    }

    #[test]
    fn default_model_must_use_a_prefix_of_the_proxy() {
        let ok = provider("o", "{type: ollama}");
        let yaml = format!("{ok}{}", proxy("p", "[{providerRef: {name: o}}]"));
        let with = |dm: &str| {
            run(&yaml.replace(
                "spec: {providers:",
                &format!("spec: {{defaultModel: \"{dm}\", providers:"),
            ))
        };
        assert!(with("ollama:llama3").problems.is_empty());
        assert_eq!(
            reasons(&with("openai:gpt")),
            [("spec.defaultModel", "InvalidDefaultModel")]
        );
        assert_eq!(
            reasons(&with("llama3")),
            [("spec.defaultModel", "InvalidDefaultModel")]
        );
    }

    #[test]
    fn models_and_timeout() {
        let c = run(&provider("o", "{type: ollama, models: {static: []}}"));
        assert_eq!(reasons(&c), [("spec.models.static", "InvalidSpec")]);
        let c = run(&provider(
            "o",
            "{type: ollama, models: {allow: [\"gpt-[\"]}}",
        ));
        assert_eq!(reasons(&c), [("spec.models.allow[0]", "InvalidSpec")]);
        let c = run(&provider("o", "{type: ollama, timeout: soon}"));
        assert_eq!(reasons(&c), [("spec.timeout", "InvalidSpec")]);
        let c = run(&format!(
            "{}{}",
            provider(
                "o",
                "{type: ollama, timeout: 90s, models: {allow: [\"llama*\"]}}"
            ),
            proxy("p", "[{providerRef: {name: o}}]")
        ));
        let u = &c.proxies[&ObjectKey::new("ai", "p")].routes[0].upstream;
        assert_eq!(u.timeout, Duration::from_secs(90));
        assert!(u.models.permits("llama3.2") && !u.models.permits("qwen"));
    }

    /// Compile with memory (as a configuration source does) and swap into a store.
    fn step(compiler: &mut Compiler, store: &Store, yaml: &str) -> Compiled {
        let objects = parse(yaml).unwrap_or_else(|e| panic!("{e:?}"));
        let compiled = compiler.compile(&Index::from_objects(objects));
        store.apply(&compiled);
        compiled
    }

    fn prefixes(store: &Store, proxy: &str) -> Option<Vec<String>> {
        store
            .load()
            .proxy(proxy)
            .map(|t| t.routes.iter().map(|r| r.prefix.clone()).collect())
    }

    #[test]
    fn a_broken_proxy_keeps_its_last_good_version_and_others_move_on() {
        let store = Store::default();
        let mut compiler = Compiler::default();
        let good = format!(
            "{}{}{}",
            provider("o", "{type: ollama, models: {static: [a]}}"),
            proxy("p", "[{providerRef: {name: o}}]"),
            proxy("q", "[{providerRef: {name: o}}]")
        );
        let c = step(&mut compiler, &store, &good);
        assert!(c.kept.is_empty() && c.problems.is_empty());
        assert_eq!(store.load().proxies.len(), 2);

        // p breaks (an invalid prefix); q changes prefix; p keeps serving its old table.
        let edit = format!(
            "{}{}{}",
            provider("o", "{type: ollama, models: {static: [a]}}"),
            proxy("p", "[{providerRef: {name: o}, prefix: Bad_Prefix}]"),
            proxy("q", "[{providerRef: {name: o}, prefix: local}]")
        );
        let c = step(&mut compiler, &store, &edit);
        assert_eq!(c.kept, [ObjectKey::new("ai", "p")].into());
        assert!(c.failed.contains(&ObjectKey::new("ai", "p")));
        assert_eq!(prefixes(&store, "ai.p"), Some(vec!["ollama".to_owned()]));
        assert_eq!(prefixes(&store, "q"), Some(vec!["local".to_owned()]));

        // Files behave the same as Kubernetes: the same edit from a fresh compiler (a first
        // load) leaves p out, reported, and serves q.
        let fresh = Store::default();
        let c = step(&mut Compiler::default(), &fresh, &edit);
        assert_eq!(c.unserved, [ObjectKey::new("ai", "p")].into());
        assert_eq!(prefixes(&fresh, "ai.p"), None);
        assert_eq!(prefixes(&fresh, "q"), Some(vec!["local".to_owned()]));

        // Deleting a proxy removes it (a deleted object has no last good version).
        step(&mut compiler, &store, &provider("o", "{type: ollama}"));
        assert!(store.load().proxies.is_empty());
        assert!(store.is_ready());
    }

    const ALT_SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: key, namespace: ai}\nstringData: {apiKey: sk-2}\n---\n";

    fn route_of(store: &Store, proxy: &str, prefix: &str) -> Option<crate::config::Route> {
        store.load().proxy(proxy)?.route(prefix).cloned()
    }

    fn bearer(route: &crate::config::Route) -> String {
        match &route.upstream.credential {
            Credential::Header { value, .. } => value.to_str().unwrap_or_default().to_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_broken_provider_freezes_nothing_else_of_its_proxy() {
        // The issue-11 scenario: proxy p has a good provider `a` and a provider `b` whose
        // Secret is missing. Edits of a's baseUrl, p's access, p's client keys and a's Secret
        // each take effect; b is reported and its entry answers provider_not_ready.
        let store = Store::default();
        let mut compiler = Compiler::default();
        let clients = |key: &str| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: clients, namespace: ai}}\nstringData: {{app: {key}}}\n---\n"
            )
        };
        let config = |secret: &str, base: &str, access: &str, client_key: &str| {
            format!(
                "{secret}{}{}{}apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {{name: p, namespace: ai}}\nspec: {{providers: [{{providerRef: {{name: a}}}}, {{providerRef: {{name: b}}, prefix: b}}], clientAuth: {{apiKeys: {{secretRef: {{name: clients}}}}}}{access}}}\n---\n",
                provider(
                    "a",
                    &format!(
                        "{{type: openai, baseUrl: '{base}', auth: {{apiKey: {{secretRef: {{name: key}}}}}}}}"
                    )
                ),
                provider(
                    "b",
                    "{type: openai, auth: {apiKey: {secretRef: {name: missing}}}}"
                ),
                clients(client_key),
            )
        };
        let c = step(
            &mut compiler,
            &store,
            &config(SECRET, "http://one.example/v1", "", "ck-1"),
        );
        assert_eq!(
            reasons(&c),
            [
                ("spec.auth.apiKey.secretRef", "SecretNotFound"),
                ("spec.providers[1].providerRef", "ProviderInvalid")
            ]
        );
        assert!(c.failed.is_empty(), "the proxy itself is valid");
        let snap = store.load();
        let table = snap.proxy("ai.p").unwrap_or_else(|| panic!("p not served"));
        let b = table
            .not_ready("b")
            .unwrap_or_else(|| panic!("b not flagged"));
        assert!(b.message.contains("ai/missing"), "{}", b.message);
        assert!(table.route("b").is_none());
        assert_eq!(
            route_of(&store, "ai.p", "openai").map(|r| r.upstream.base_url.to_string()),
            Some("http://one.example/v1".to_owned())
        );
        let identify = |store: &Store, key: &str| {
            store
                .load()
                .proxy("ai.p")
                .and_then(|t| t.policy.auth.clone())
                .and_then(|a| a.api_keys)
                .and_then(|k| k.identify(key).map(str::to_owned))
        };
        assert_eq!(identify(&store, "ck-1").as_deref(), Some("app"));

        // a's baseUrl moves: served at once.
        step(
            &mut compiler,
            &store,
            &config(SECRET, "http://two.example/v1", "", "ck-1"),
        );
        assert_eq!(
            route_of(&store, "ai.p", "openai").map(|r| r.upstream.base_url.to_string()),
            Some("http://two.example/v1".to_owned())
        );
        // p's access is tightened: served at once.
        let access = ", access: [{identities: [app], models: ['openai:gpt-5']}]";
        step(
            &mut compiler,
            &store,
            &config(SECRET, "http://two.example/v1", access, "ck-1"),
        );
        assert_eq!(
            store.load().proxy("ai.p").map(|t| t.policy.access.len()),
            Some(1)
        );
        // p's client key rotates: served at once.
        step(
            &mut compiler,
            &store,
            &config(SECRET, "http://two.example/v1", access, "ck-2"),
        );
        assert_eq!(identify(&store, "ck-2").as_deref(), Some("app"));
        assert_eq!(identify(&store, "ck-1"), None);
        // a's Secret rotates: served at once.
        step(
            &mut compiler,
            &store,
            &config(ALT_SECRET, "http://two.example/v1", access, "ck-2"),
        );
        let a = route_of(&store, "ai.p", "openai").unwrap_or_else(|| panic!("a gone"));
        assert_eq!(bearer(&a), "Bearer sk-2");
        // b is still reported and still not ready.
        assert!(
            store
                .load()
                .proxy("ai.p")
                .is_some_and(|t| t.not_ready("b").is_some())
        );

        // Now a breaks (its Secret disappears): its last good version keeps serving, with the
        // key it had, and the problem is reported on a and on p.
        let without_a_key = config("", "http://three.example/v1", access, "ck-2");
        let c = step(&mut compiler, &store, &without_a_key);
        assert!(c.kept_providers.contains_key(&ObjectKey::new("ai", "a")));
        let a = route_of(&store, "ai.p", "openai").unwrap_or_else(|| panic!("a gone"));
        assert_eq!(bearer(&a), "Bearer sk-2");
        assert_eq!(a.upstream.base_url.as_str(), "http://two.example/v1");
        assert!(c.problems.iter().any(|p| p.kind == "LlmProxy"
            && p.reason == "ProviderInvalid"
            && p.message.contains("last good version")));
    }

    #[test]
    fn a_broken_proxy_serves_its_last_good_spec_with_todays_providers() {
        let store = Store::default();
        let mut compiler = Compiler::default();
        let yaml = |base: &str, prefix: &str| {
            format!(
                "{}{}",
                provider("o", &format!("{{type: vllm, baseUrl: '{base}'}}")),
                proxy(
                    "p",
                    &format!("[{{providerRef: {{name: o}}, prefix: {prefix}}}]")
                )
            )
        };
        step(
            &mut compiler,
            &store,
            &yaml("http://one.example/v1", "good"),
        );
        // p breaks; o moves: p's last good spec serves o's newest version.
        let c = step(
            &mut compiler,
            &store,
            &yaml("http://two.example/v1", "Bad_"),
        );
        assert!(c.kept.contains(&ObjectKey::new("ai", "p")));
        assert_eq!(
            route_of(&store, "ai.p", "good").map(|r| r.upstream.base_url.to_string()),
            Some("http://two.example/v1".to_owned())
        );
        // Fixed: the newest version serves.
        step(
            &mut compiler,
            &store,
            &yaml("http://two.example/v1", "fixed"),
        );
        assert!(route_of(&store, "ai.p", "fixed").is_some());
        assert!(route_of(&store, "ai.p", "good").is_none());
    }

    #[test]
    fn unchanged_objects_keep_their_compiled_tables() {
        let store = Store::default();
        let mut compiler = Compiler::default();
        let yaml = |static_: &str| {
            format!(
                "{}{}{}{}",
                provider("o", "{type: ollama}"),
                provider(
                    "v",
                    &format!(
                        "{{type: vllm, baseUrl: 'http://v.example/v1', models: {{static: [{static_}]}}}}"
                    )
                ),
                proxy("p", "[{providerRef: {name: o}}]"),
                proxy("q", "[{providerRef: {name: v}}]")
            )
        };
        step(&mut compiler, &store, &yaml("m1"));
        let before = store.load();
        // The same configuration again: no swap at all.
        step(&mut compiler, &store, &yaml("m1"));
        assert!(Arc::ptr_eq(&before, &store.load()));
        // One provider changes: only the proxy using it gets a new table.
        let report = {
            let objects = parse(&yaml("m2")).unwrap_or_default();
            store.apply(&compiler.compile(&Index::from_objects(objects)))
        };
        assert_eq!(report.changed, [ObjectKey::new("ai", "q")]);
        let after = store.load();
        assert!(Arc::ptr_eq(
            &before.proxies[&ObjectKey::new("ai", "p")],
            &after.proxies[&ObjectKey::new("ai", "p")]
        ));
    }

    #[test]
    fn bare_names_resolve_only_when_unique() {
        let yaml = format!(
            "{}{}{}",
            provider("o", "{type: ollama}"),
            proxy("p", "[{providerRef: {name: o}}]"),
            "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: o, namespace: other}\nspec: {type: ollama}\n---\napiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {name: p, namespace: other}\nspec: {providers: [{providerRef: {name: o}}]}\n"
        );
        let store = Store::default();
        store.apply(&run(&yaml));
        let snap = store.load();
        assert!(snap.proxy("ai.p").is_some());
        assert!(snap.proxy("other.p").is_some());
        assert!(snap.proxy("p").is_none(), "ambiguous bare name");
    }

    #[test]
    fn secrets_never_appear_in_problems() {
        let yaml = "apiVersion: v1\nkind: Secret\nmetadata: {name: key, namespace: ai}\nstringData: {apiKey: \"sk-LEAK\\nx\"}\n---\n".to_owned()
            + &provider("a", OPENAI);
        let c = run(&yaml);
        assert_eq!(
            reasons(&c),
            [("spec.auth.apiKey.secretRef", "InvalidSecret")]
        );
        assert!(!format!("{:?}", c.problems).contains("sk-LEAK"));
    }
}
