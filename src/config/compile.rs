//! `compile()`: a pure function from the [`Index`] to routing tables plus problems.
//!
//! Every validation rule lives here, and each problem names the resource, the field, a
//! CamelCase reason (the one a status condition carries) and what to do about it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobSetBuilder};
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use url::Url;

use super::cloud;
use super::snapshot::ModelPolicy;
use super::{Index, ObjectKey, ProxyTable, Upstream, virtual_models};
use crate::crd::{LlmProvider, LlmProxy, ProviderAuth, ProviderType};
use crate::credentials::Credential;
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// Proxies that compiled cleanly.
    pub proxies: BTreeMap<ObjectKey, Arc<ProxyTable>>,
    /// Proxies that have problems (they keep their last good version, if any).
    pub failed: BTreeSet<ObjectKey>,
    /// Every problem, providers' and proxies'.
    pub problems: Vec<Problem>,
    /// Providers that compiled cleanly, whether or not a proxy uses them (for status).
    pub providers: BTreeMap<ObjectKey, Arc<Upstream>>,
    /// `LlmBudget`s (compiled by [`crate::budget::compile`]).
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

/// Compile every proxy and provider of the index.
pub fn compile(index: &Index, defaults: &Defaults) -> Compiled {
    let mut out = Compiled::default();
    let mut upstreams: BTreeMap<&ObjectKey, Result<Arc<Upstream>, ()>> = BTreeMap::new();
    for (key, provider) in index.providers() {
        let result = compile_provider(key, provider, index, defaults);
        upstreams.insert(
            key,
            match result {
                Ok(u) => {
                    let u = Arc::new(u);
                    out.providers.insert(key.clone(), u.clone());
                    Ok(u)
                }
                Err(problems) => {
                    out.problems.extend(problems);
                    Err(())
                }
            },
        );
    }
    for (key, proxy) in index.proxies() {
        match compile_proxy(key, proxy, &upstreams, index) {
            Ok(table) => {
                out.proxies.insert(key.clone(), Arc::new(table));
            }
            Err(problems) => {
                out.problems.extend(problems);
                out.failed.insert(key.clone());
            }
        }
    }
    out.budgets = crate::budget::compile(index, &mut out.problems);
    out
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
        credential = cloud::credential(&mut p, key, index, t, form, &auth, spec, base_url.as_ref());
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
    upstreams: &BTreeMap<&ObjectKey, Result<Arc<Upstream>, ()>>,
    index: &Index,
) -> Result<ProxyTable, Vec<Problem>> {
    let mut p = Problems::new("LlmProxy", key);
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
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    for (i, entry) in proxy.spec.providers.iter().enumerate() {
        let field = format!("spec.providers[{i}]");
        let provider_key = ObjectKey::new(&key.namespace, &entry.provider_ref.name);
        let upstream = match upstreams.get(&provider_key) {
            None => {
                p.add(
                    format!("{field}.providerRef"),
                    "ProviderNotFound",
                    format!("LlmProvider {provider_key} not found"),
                );
                None
            }
            Some(Err(())) => {
                p.add(
                    format!("{field}.providerRef"),
                    "ProviderInvalid",
                    format!("LlmProvider {provider_key} has problems (see its own messages)"),
                );
                None
            }
            Some(Ok(u)) => Some(u.clone()),
        };
        let prefix = match (&entry.prefix, &upstream) {
            (Some(prefix), _) => Some(prefix.clone()),
            (None, Some(u)) => Some(u.provider_type.as_str().to_owned()),
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
        if let (Some(prefix), Some(upstream)) = (prefix, upstream) {
            entries.push((i, prefix, upstream));
        }
    }
    // Entries sharing a prefix form a pool; then virtual models, retry and the default model.
    let mut routes = virtual_models::pools(entries, &mut p);
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
    p.finish(ProxyTable {
        key: key.clone(),
        generation: proxy.metadata.generation,
        routes,
        default_model,
        policy: Arc::new(policy),
        failover: Arc::new(failover),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Store;
    use crate::config::store::ApplyMode;
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

    #[test]
    fn a_broken_proxy_keeps_its_last_good_version_and_others_move_on() {
        let store = Store::default();
        let good = format!(
            "{}{}{}",
            provider("o", "{type: ollama, models: {static: [a]}}"),
            proxy("p", "[{providerRef: {name: o}}]"),
            proxy("q", "[{providerRef: {name: o}}]")
        );
        let report = store.apply(&run(&good));
        assert!(report.kept.is_empty());
        assert_eq!(store.load().proxies.len(), 2);

        // p breaks (missing provider); q changes prefix; p keeps serving its old table.
        let edit = format!(
            "{}{}{}",
            provider("o", "{type: ollama, models: {static: [a]}}"),
            proxy("p", "[{providerRef: {name: gone}}]"),
            proxy("q", "[{providerRef: {name: o}, prefix: local}]")
        );
        let report = store.apply(&run(&edit));
        assert_eq!(report.kept, ["ai.p"]);
        let snap = store.load();
        assert_eq!(
            snap.proxy("ai.p").map(|t| t.routes[0].prefix.as_str()),
            Some("ollama")
        );
        assert_eq!(
            snap.proxy("q").map(|t| t.routes[0].prefix.as_str()),
            Some("local")
        );

        // In whole mode the same edit is refused entirely: q keeps its old prefix too.
        let whole = Store::default();
        whole.apply_with(&run(&good), ApplyMode::Whole);
        let report = whole.apply_with(&run(&edit), ApplyMode::Whole);
        assert!(report.rejected);
        assert_eq!(
            whole.load().proxy("q").map(|t| t.routes[0].prefix.as_str()),
            Some("ollama")
        );

        // Deleting a proxy removes it.
        let report = store.apply(&run(&provider("o", "{type: ollama}")));
        assert!(report.kept.is_empty());
        assert!(store.load().proxies.is_empty());
        assert!(store.is_ready());
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
