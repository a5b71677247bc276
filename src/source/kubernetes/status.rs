//! Status of `LlmProvider` and `LlmProxy` objects: pure functions from what is known (the
//! compile result, the served snapshot, model discovery, credential checks) to the status
//! the lease holder writes. No I/O here; `writer` does the writing.
//!
//! Conditions follow Gateway API: `type`, `status`, a CamelCase `reason`, a `message` saying
//! what to do, `observedGeneration`, and a `lastTransitionTime` that moves only when the
//! status flips ([`keep_transition_times`]). A failure is `status: "False"` with a specific
//! reason, never `True` with a caveat.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::config::compile::Problem;
use crate::config::{Compiled, ObjectKey, ProxyTable, Upstream};
use crate::crd::{LlmProvider, LlmProviderStatus, LlmProxy, LlmProxyStatus};

/// Condition types.
pub const ACCEPTED: &str = "Accepted";
/// Every reference resolves.
pub const RESOLVED_REFS: &str = "ResolvedRefs";
/// A credential was obtained.
pub const CREDENTIALS_READY: &str = "CredentialsReady";
/// The last model discovery succeeded.
pub const MODELS_DISCOVERED: &str = "ModelsDiscovered";
/// The data plane serves this generation.
pub const PROGRAMMED: &str = "Programmed";

/// Problem reasons about a provider's references (its Secrets), reported in `ResolvedRefs`.
const PROVIDER_REF_REASONS: [&str; 3] = ["SecretNotFound", "SecretKeyNotFound", "InvalidSecret"];
/// Problem reasons about a proxy's references (its providers and their prefixes).
const PROXY_REF_REASONS: [&str; 3] = ["ProviderNotFound", "ProviderInvalid", "DuplicatePrefix"];

/// What is known of a provider's credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialState {
    /// Not checked yet.
    Unchecked,
    /// Obtained (or, for a static key, present).
    Ready {
        /// CamelCase reason.
        reason: &'static str,
        /// What it means.
        message: String,
    },
    /// Could not be obtained.
    Failed {
        /// CamelCase reason.
        reason: &'static str,
        /// What went wrong (never a secret).
        message: String,
    },
}

/// What is known of a provider's models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelsState {
    /// `models.static`: this many, no discovery.
    Static(usize),
    /// No proxy serves the provider, so nothing discovers its models.
    NotInUse,
    /// Discovery has not answered yet.
    Pending,
    /// The last good list (this many models after `models.allow`), and the error of the
    /// latest refresh when it failed.
    Discovered {
        /// Models served.
        count: usize,
        /// Error of the latest refresh.
        error: Option<String>,
    },
    /// Discovery never succeeded.
    Failed(String),
}

/// Now, at the one-second precision Kubernetes stores.
pub fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub(super) fn condition(
    type_: &str,
    status: Option<bool>,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: match status {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .to_owned(),
        reason: reason.to_owned(),
        message: truncate(message.into()),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Condition messages are at most 32768 bytes in the API; ours stay far shorter.
fn truncate(mut message: String) -> String {
    const MAX: usize = 4096;
    if message.len() > MAX {
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// A failed condition from problems: the first problem's reason, every message.
pub(super) fn failed(
    type_: &str,
    problems: &[(&'static str, String)],
    generation: Option<i64>,
    now: &Time,
) -> Option<Condition> {
    let (reason, _) = problems.first()?;
    let message = problems
        .iter()
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Some(condition(
        type_,
        Some(false),
        reason,
        message,
        generation,
        now,
    ))
}

pub(super) fn with_field(p: &Problem) -> String {
    format!("{}: {}", p.field, p.message)
}

/// The status of one provider that has no last good version serving.
pub fn provider_status(
    provider: &LlmProvider,
    problems: &[&Problem],
    credential: &CredentialState,
    models: &ModelsState,
    now: &Time,
) -> LlmProviderStatus {
    provider_status_serving(provider, problems, credential, models, None, now)
}

/// The status of one provider; `last_good` is the version serving while the newest has
/// problems.
pub fn provider_status_serving(
    provider: &LlmProvider,
    problems: &[&Problem],
    credential: &CredentialState,
    models: &ModelsState,
    last_good: Option<&Upstream>,
    now: &Time,
) -> LlmProviderStatus {
    let generation = provider.metadata.generation;
    let (refs, spec): (Vec<_>, Vec<_>) = problems
        .iter()
        .map(|p| (p.reason, with_field(p)))
        .partition(|(reason, _)| PROVIDER_REF_REASONS.contains(reason));
    let accepted = failed(ACCEPTED, &spec, generation, now).unwrap_or_else(|| {
        condition(
            ACCEPTED,
            Some(true),
            "Accepted",
            "the spec is valid",
            generation,
            now,
        )
    });
    let names_secret = provider
        .spec
        .auth
        .as_ref()
        .is_some_and(|a| a.api_key.is_some() || a.service_account_key.is_some());
    let resolved = failed(RESOLVED_REFS, &refs, generation, now).unwrap_or_else(|| {
        let message = if names_secret {
            "the Secret it names exists and holds the key"
        } else {
            "it names no Secret"
        };
        condition(
            RESOLVED_REFS,
            Some(true),
            "ResolvedRefs",
            message,
            generation,
            now,
        )
    });
    // A provider with problems has no credential and serves no models in this generation.
    let blocking: Vec<(&'static str, String)> = refs.iter().chain(spec.iter()).cloned().collect();
    let (credentials, discovered, count) = if let Some((reason, _)) = blocking.first() {
        let why = blocking
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        (
            condition(
                CREDENTIALS_READY,
                Some(false),
                reason,
                format!("no credential for this generation: {why}"),
                generation,
                now,
            ),
            condition(
                MODELS_DISCOVERED,
                Some(false),
                reason,
                match last_good {
                    Some(u) => format!(
                        "this generation is not served: {why}; its last good version (generation {}) keeps serving",
                        u.generation
                            .map_or_else(|| "?".to_owned(), |g| g.to_string())
                    ),
                    None => format!(
                        "this generation is not served: {why}; it never had a good version, so proxy entries naming it answer 503 provider_not_ready"
                    ),
                },
                generation,
                now,
            ),
            None,
        )
    } else {
        let credentials = match credential {
            CredentialState::Unchecked => condition(
                CREDENTIALS_READY,
                None,
                "Pending",
                "the credential has not been checked yet",
                generation,
                now,
            ),
            CredentialState::Ready { reason, message } => condition(
                CREDENTIALS_READY,
                Some(true),
                reason,
                message.clone(),
                generation,
                now,
            ),
            CredentialState::Failed { reason, message } => condition(
                CREDENTIALS_READY,
                Some(false),
                reason,
                message.clone(),
                generation,
                now,
            ),
        };
        let (discovered, count) = models_condition(models, generation, now);
        (credentials, discovered, count)
    };
    LlmProviderStatus {
        observed_generation: generation,
        conditions: vec![accepted, resolved, credentials, discovered],
        models: count,
    }
}

fn models_condition(
    models: &ModelsState,
    generation: Option<i64>,
    now: &Time,
) -> (Condition, Option<i64>) {
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    match models {
        ModelsState::Static(n) => (
            condition(
                MODELS_DISCOVERED,
                Some(true),
                "StaticModels",
                format!("{n} model(s) listed in spec.models.static; no discovery"),
                generation,
                now,
            ),
            Some(as_i64(*n)),
        ),
        ModelsState::NotInUse => (
            condition(
                MODELS_DISCOVERED,
                None,
                "NotInUse",
                "no LlmProxy serves this provider, so its models are not discovered",
                generation,
                now,
            ),
            None,
        ),
        ModelsState::Pending => (
            condition(
                MODELS_DISCOVERED,
                None,
                "Pending",
                "the upstream's model list has not answered yet",
                generation,
                now,
            ),
            None,
        ),
        ModelsState::Discovered { count, error: None } => (
            condition(
                MODELS_DISCOVERED,
                Some(true),
                "Discovered",
                format!("{count} model(s) discovered from the upstream's model list"),
                generation,
                now,
            ),
            Some(as_i64(*count)),
        ),
        ModelsState::Discovered {
            count,
            error: Some(e),
        } => (
            condition(
                MODELS_DISCOVERED,
                Some(false),
                "DiscoveryFailed",
                format!(
                    "the latest refresh failed: {e}; the last good list of {count} model(s) keeps serving"
                ),
                generation,
                now,
            ),
            Some(as_i64(*count)),
        ),
        ModelsState::Failed(e) => (
            condition(
                MODELS_DISCOVERED,
                Some(false),
                "DiscoveryFailed",
                format!("model discovery failed: {e}"),
                generation,
                now,
            ),
            Some(0),
        ),
    }
}

/// The status of one proxy. `served` is its table in the snapshot serving now; `url` is its
/// in-cluster Model Router URL.
pub fn proxy_status(
    proxy: &LlmProxy,
    key: &ObjectKey,
    compiled: &Compiled,
    served: Option<&ProxyTable>,
    url: &str,
    now: &Time,
) -> LlmProxyStatus {
    let generation = proxy.metadata.generation;
    let mut refs = Vec::new();
    let mut spec = Vec::new();
    for p in compiled.problems_of("LlmProxy", key) {
        if p.reason == "ProviderInvalid" {
            // Say why the provider is unusable, with its own reason (SecretNotFound, ...).
            let provider = ObjectKey::new(
                &key.namespace,
                provider_name_of(proxy, &p.field).unwrap_or_default(),
            );
            let mut own: Vec<&Problem> = compiled.problems_of("LlmProvider", &provider).collect();
            own.sort_by_key(|q| !PROVIDER_REF_REASONS.contains(&q.reason));
            if own.is_empty() {
                refs.push((p.reason, with_field(p)));
            }
            for q in own {
                refs.push((
                    q.reason,
                    format!("{}: LlmProvider {provider}: {}", p.field, with_field(q)),
                ));
            }
        } else if PROXY_REF_REASONS.contains(&p.reason) || PROVIDER_REF_REASONS.contains(&p.reason)
        {
            // Its providers, and its own Secret (the client keys of `clientAuth.apiKeys`).
            refs.push((p.reason, with_field(p)));
        } else {
            spec.push((p.reason, with_field(p)));
        }
    }
    let accepted = failed(ACCEPTED, &spec, generation, now).unwrap_or_else(|| {
        // Say plainly who may call: "anonymous" when the proxy has no clientAuth.
        let clients = compiled
            .proxies
            .get(key)
            .map(|t| t.policy.describe_auth())
            .unwrap_or_default();
        condition(
            ACCEPTED,
            Some(true),
            "Accepted",
            format!("the spec is valid; callers: {clients}"),
            generation,
            now,
        )
    });
    let resolved = failed(RESOLVED_REFS, &refs, generation, now).unwrap_or_else(|| {
        condition(
            RESOLVED_REFS,
            Some(true),
            "ResolvedRefs",
            "every provider it names exists and is valid, and prefixes are unique",
            generation,
            now,
        )
    });
    // Problems of this proxy's own spec: its last good version serves (if any). Problems of
    // the providers it names only hold back those entries.
    let invalid = compiled.failed.contains(key);
    let programmed = match served {
        Some(table) if table.generation == generation && !invalid => {
            let last_good: Vec<String> = table
                .routes
                .iter()
                .filter(|r| {
                    compiled
                        .providers
                        .get(&r.upstream.provider)
                        .is_none_or(|newest| !std::sync::Arc::ptr_eq(newest, &r.upstream))
                })
                .map(|r| {
                    format!(
                        "entry `{}` uses the last good version (generation {}) of LlmProvider {}",
                        r.prefix,
                        r.upstream
                            .generation
                            .map_or_else(|| "?".to_owned(), |g| g.to_string()),
                        r.upstream.provider
                    )
                })
                .collect();
            let last_good = if last_good.is_empty() {
                String::new()
            } else {
                format!("; {}", last_good.join("; "))
            };
            if table.not_ready.is_empty() {
                condition(
                    PROGRAMMED,
                    Some(true),
                    "Programmed",
                    format!("the data plane serves this generation at {url}{last_good}"),
                    generation,
                    now,
                )
            } else {
                let entries: Vec<String> = table
                    .not_ready
                    .iter()
                    .map(|n| format!("`{}` ({})", n.prefix, n.message))
                    .collect();
                condition(
                    PROGRAMMED,
                    Some(false),
                    "ProviderNotReady",
                    format!(
                        "the data plane serves this generation at {url}, but these provider entries answer 503 provider_not_ready: {}{last_good}",
                        entries.join("; ")
                    ),
                    generation,
                    now,
                )
            }
        }
        Some(table) if invalid => condition(
            PROGRAMMED,
            Some(false),
            "Invalid",
            format!(
                "this generation has problems (see Accepted and ResolvedRefs); its last good version, generation {}, keeps serving",
                table
                    .generation
                    .map_or_else(|| "?".to_owned(), |g| g.to_string())
            ),
            generation,
            now,
        ),
        None if invalid => condition(
            PROGRAMMED,
            Some(false),
            "Invalid",
            "not served: this generation has problems (see Accepted and ResolvedRefs) and no earlier one was good",
            generation,
            now,
        ),
        _ => condition(
            PROGRAMMED,
            Some(false),
            "Pending",
            "the data plane does not serve this generation yet",
            generation,
            now,
        ),
    };
    LlmProxyStatus {
        observed_generation: generation,
        conditions: vec![accepted, resolved, programmed],
        url: served.map(|_| url.to_owned()),
    }
}

/// The provider named by a problem field `spec.providers[i].providerRef`.
fn provider_name_of<'a>(proxy: &'a LlmProxy, field: &str) -> Option<&'a str> {
    let i: usize = field
        .strip_prefix("spec.providers[")?
        .split(']')
        .next()?
        .parse()
        .ok()?;
    proxy
        .spec
        .providers
        .get(i)
        .map(|p| p.provider_ref.name.as_str())
}

/// Keep each condition's `lastTransitionTime` from the observed status unless its status
/// flipped (Gateway API / `meta.SetStatusCondition` semantics).
pub fn keep_transition_times(desired: &mut [Condition], observed: &[Condition]) {
    for c in desired {
        if let Some(old) = observed.iter().find(|o| o.type_ == c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// The failure conditions that are new compared with the observed ones (for Events): a
/// condition that is `False` now with a reason it did not have before.
pub fn new_failures<'a>(desired: &'a [Condition], observed: &[Condition]) -> Vec<&'a Condition> {
    desired
        .iter()
        .filter(|c| c.status == "False")
        .filter(|c| {
            !observed
                .iter()
                .any(|o| o.type_ == c.type_ && o.status == "False" && o.reason == c.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Defaults, Index, Object, SecretData, Snapshot, Store, compile};
    use crate::crd::{LlmProviderSpec, LlmProxySpec};

    fn provider(name: &str, yaml_spec: &str, generation: i64) -> LlmProvider {
        let spec: LlmProviderSpec =
            serde_yaml::from_str(yaml_spec).unwrap_or_else(|e| panic!("{e}"));
        let mut p = LlmProvider::new(name, spec);
        p.metadata.namespace = Some("ai".into());
        p.metadata.generation = Some(generation);
        p
    }

    fn proxy(name: &str, yaml_spec: &str, generation: i64) -> LlmProxy {
        let spec: LlmProxySpec = serde_yaml::from_str(yaml_spec).unwrap_or_else(|e| panic!("{e}"));
        let mut p = LlmProxy::new(name, spec);
        p.metadata.namespace = Some("ai".into());
        p.metadata.generation = Some(generation);
        p
    }

    fn secret(name: &str, key: &str) -> Object {
        let mut data = std::collections::BTreeMap::new();
        data.insert("apiKey".to_owned(), key.as_bytes().to_vec());
        Object::Secret(ObjectKey::new("ai", name), SecretData(data))
    }

    const OPENAI: &str = "type: openai\nbaseUrl: http://127.0.0.1:9/v1\nauth: {apiKey: {secretRef: {name: key}}}\nmodels: {static: [a, b]}\n";
    const PROXY: &str = "providers: [{providerRef: {name: openai}}]\n";
    const URL: &str = "http://portcullis.gw.svc:8080/v1/model-router/ai.team";

    fn cond<'a>(conditions: &'a [Condition], t: &str) -> &'a Condition {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} in {conditions:?}"))
    }

    fn key_ready() -> CredentialState {
        CredentialState::Ready {
            reason: "KeyPresent",
            message: "present".into(),
        }
    }

    #[test]
    fn healthy_provider_and_programmed_proxy() {
        let index = Index::from_objects([
            secret("key", "sk-1"),
            Object::Provider(std::sync::Arc::new(provider("openai", OPENAI, 2))),
            Object::Proxy(std::sync::Arc::new(proxy("team", PROXY, 5))),
        ]);
        let compiled = compile(&index, &Defaults::default());
        let store = Store::default();
        store.apply(&compiled);
        let snapshot = store.load();
        let now = now();
        let key = ObjectKey::new("ai", "openai");
        let problems: Vec<_> = compiled.problems_of("LlmProvider", &key).collect();
        let p = provider_status(
            &index.providers()[&key],
            &problems,
            &key_ready(),
            &ModelsState::Static(2),
            &now,
        );
        assert_eq!(p.observed_generation, Some(2));
        assert_eq!(p.models, Some(2));
        for t in [
            ACCEPTED,
            RESOLVED_REFS,
            CREDENTIALS_READY,
            MODELS_DISCOVERED,
        ] {
            let c = cond(&p.conditions, t);
            assert_eq!(c.status, "True", "{c:?}");
            assert_eq!(c.observed_generation, Some(2));
        }
        let pk = ObjectKey::new("ai", "team");
        let x = proxy_status(
            &index.proxies()[&pk],
            &pk,
            &compiled,
            snapshot.proxies.get(&pk).map(|t| &**t),
            URL,
            &now,
        );
        assert_eq!(x.url.as_deref(), Some(URL));
        assert_eq!(cond(&x.conditions, PROGRAMMED).status, "True");
        assert_eq!(cond(&x.conditions, PROGRAMMED).observed_generation, Some(5));
        let accepted = &cond(&x.conditions, ACCEPTED).message;
        assert!(accepted.contains("anonymous"), "{accepted}");
    }

    #[test]
    fn programmed_only_once_the_served_table_has_this_generation() {
        let index = Index::from_objects([
            secret("key", "sk-1"),
            Object::Provider(std::sync::Arc::new(provider("openai", OPENAI, 1))),
            Object::Proxy(std::sync::Arc::new(proxy("team", PROXY, 1))),
        ]);
        let store = Store::default();
        store.apply(&compile(&index, &Defaults::default()));
        let served_gen1 = store.load();
        // Generation 2 compiled cleanly but not swapped in yet.
        let mut next = index.clone();
        next.apply(Object::Proxy(std::sync::Arc::new(proxy("team", PROXY, 2))));
        let compiled = compile(&next, &Defaults::default());
        let pk = ObjectKey::new("ai", "team");
        let old = served_gen1.proxies.get(&pk).map(|t| &**t);
        let x = proxy_status(&next.proxies()[&pk], &pk, &compiled, old, URL, &now());
        let p = cond(&x.conditions, PROGRAMMED);
        assert_eq!((p.status.as_str(), p.reason.as_str()), ("False", "Pending"));
        assert_eq!(p.observed_generation, Some(2));
        // After the swap it is.
        store.apply(&compiled);
        let swapped = store.load();
        let x = proxy_status(
            &next.proxies()[&pk],
            &pk,
            &compiled,
            swapped.proxies.get(&pk).map(|t| &**t),
            URL,
            &now(),
        );
        assert_eq!(cond(&x.conditions, PROGRAMMED).status, "True");
    }

    #[test]
    fn missing_secret_is_resolved_refs_false_on_provider_and_proxy() {
        let good = Index::from_objects([
            secret("key", "sk-1"),
            Object::Provider(std::sync::Arc::new(provider("openai", OPENAI, 1))),
            Object::Proxy(std::sync::Arc::new(proxy("team", PROXY, 1))),
        ]);
        let store = Store::default();
        let mut compiler = crate::config::Compiler::default();
        store.apply(&compiler.compile(&good));
        // The provider now names a Secret that does not exist.
        let mut index = good.clone();
        index.apply(Object::Provider(std::sync::Arc::new(provider(
            "openai",
            &OPENAI.replace("name: key", "name: gone"),
            2,
        ))));
        let compiled = compiler.compile(&index);
        store.apply(&compiled);
        let snapshot = store.load();
        let pk = ObjectKey::new("ai", "team");
        let served = snapshot.proxies.get(&pk).map(|t| &**t);
        assert!(served.is_some(), "the last good version keeps serving");
        let x = proxy_status(&index.proxies()[&pk], &pk, &compiled, served, URL, &now());
        let r = cond(&x.conditions, RESOLVED_REFS);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(r.message.contains("ai/gone"), "{}", r.message);
        // Its own spec did not change: this generation is served, and the status says which
        // provider entry uses its provider's last good version.
        assert_eq!(cond(&x.conditions, ACCEPTED).status, "True");
        let prog = cond(&x.conditions, PROGRAMMED);
        assert_eq!(
            (prog.status.as_str(), prog.reason.as_str()),
            ("True", "Programmed")
        );
        assert!(
            prog.message.contains(
                "entry `openai` uses the last good version (generation 1) of LlmProvider ai/openai"
            ),
            "{}",
            prog.message
        );
        // With no good version ever (a fresh start), the entry is not ready and says why.
        let fresh = compile(&index, &Defaults::default());
        let fresh_store = Store::default();
        fresh_store.apply(&fresh);
        let snap = fresh_store.load();
        let x = proxy_status(
            &index.proxies()[&pk],
            &pk,
            &fresh,
            snap.proxies.get(&pk).map(|t| &**t),
            URL,
            &now(),
        );
        let prog = cond(&x.conditions, PROGRAMMED);
        assert_eq!(
            (prog.status.as_str(), prog.reason.as_str()),
            ("False", "ProviderNotReady")
        );
        assert!(prog.message.contains("ai/gone"), "{}", prog.message);

        let key = ObjectKey::new("ai", "openai");
        let problems: Vec<_> = compiled.problems_of("LlmProvider", &key).collect();
        let p = provider_status(
            &index.providers()[&key],
            &problems,
            &key_ready(),
            &ModelsState::Static(2),
            &now(),
        );
        let r = cond(&p.conditions, RESOLVED_REFS);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(r.message.contains("ai/gone"));
        assert_eq!(cond(&p.conditions, ACCEPTED).status, "True");
        let c = cond(&p.conditions, CREDENTIALS_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert_eq!(p.models, None);
    }

    #[test]
    fn missing_client_key_secret_is_resolved_refs_false_on_the_proxy() {
        let guarded = "providers: [{providerRef: {name: openai}}]\nclientAuth: {apiKeys: {secretRef: {name: clients}}}\n";
        let index = Index::from_objects([
            secret("key", "sk-1"),
            Object::Provider(std::sync::Arc::new(provider("openai", OPENAI, 1))),
            Object::Proxy(std::sync::Arc::new(proxy("team", guarded, 1))),
        ]);
        let compiled = compile(&index, &Defaults::default());
        let pk = ObjectKey::new("ai", "team");
        let x = proxy_status(&index.proxies()[&pk], &pk, &compiled, None, URL, &now());
        let r = cond(&x.conditions, RESOLVED_REFS);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(r.message.contains("clients"), "{}", r.message);
        assert_eq!(cond(&x.conditions, ACCEPTED).status, "True");
        assert_eq!(cond(&x.conditions, PROGRAMMED).status, "False");
    }

    #[test]
    fn invalid_spec_is_accepted_false_and_unserved_proxy_not_programmed() {
        let index = Index::from_objects([
            Object::Provider(std::sync::Arc::new(provider(
                "openai",
                "type: openai-compatible\nauth: {none: {}}\n",
                1,
            ))),
            Object::Proxy(std::sync::Arc::new(proxy("team", PROXY, 1))),
        ]);
        let compiled = compile(&index, &Defaults::default());
        let snapshot = Snapshot::default();
        let pk = ObjectKey::new("ai", "team");
        let x = proxy_status(
            &index.proxies()[&pk],
            &pk,
            &compiled,
            snapshot.proxies.get(&pk).map(|t| &**t),
            URL,
            &now(),
        );
        let r = cond(&x.conditions, RESOLVED_REFS);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "InvalidBaseUrl")
        );
        assert_eq!(cond(&x.conditions, PROGRAMMED).status, "False");
        assert_eq!(x.url, None);

        let key = ObjectKey::new("ai", "openai");
        let problems: Vec<_> = compiled.problems_of("LlmProvider", &key).collect();
        let p = provider_status(
            &index.providers()[&key],
            &problems,
            &CredentialState::Unchecked,
            &ModelsState::Pending,
            &now(),
        );
        let a = cond(&p.conditions, ACCEPTED);
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("False", "InvalidBaseUrl")
        );
        assert!(a.message.contains("spec.baseUrl"), "{}", a.message);
        assert_eq!(cond(&p.conditions, RESOLVED_REFS).status, "True");
    }

    #[test]
    fn unknown_provider_and_models_states() {
        let index =
            Index::from_objects([Object::Proxy(std::sync::Arc::new(proxy("team", PROXY, 3)))]);
        let compiled = compile(&index, &Defaults::default());
        let pk = ObjectKey::new("ai", "team");
        let x = proxy_status(&index.proxies()[&pk], &pk, &compiled, None, URL, &now());
        let r = cond(&x.conditions, RESOLVED_REFS);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "ProviderNotFound")
        );
        assert!(r.message.contains("ai/openai"));

        let p = provider("openai", OPENAI, 1);
        let failed = provider_status(
            &p,
            &[],
            &key_ready(),
            &ModelsState::Discovered {
                count: 3,
                error: Some("GET http://x/models answered 401".into()),
            },
            &now(),
        );
        let m = cond(&failed.conditions, MODELS_DISCOVERED);
        assert_eq!(
            (m.status.as_str(), m.reason.as_str()),
            ("False", "DiscoveryFailed")
        );
        assert!(m.message.contains("401") && m.message.contains("3 model"));
        assert_eq!(failed.models, Some(3));
        let unused = provider_status(&p, &[], &key_ready(), &ModelsState::NotInUse, &now());
        assert_eq!(
            cond(&unused.conditions, MODELS_DISCOVERED).status,
            "Unknown"
        );
        let bad = provider_status(
            &p,
            &[],
            &CredentialState::Failed {
                reason: "TokenExchangeFailed",
                message: "STS said no".into(),
            },
            &ModelsState::Static(1),
            &now(),
        );
        let c = cond(&bad.conditions, CREDENTIALS_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "TokenExchangeFailed")
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let old_time = Time(Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH));
        let p = provider("openai", OPENAI, 1);
        let mut observed =
            provider_status(&p, &[], &key_ready(), &ModelsState::Static(2), &old_time);
        let later = now();
        // Same statuses, new message and generation: times kept, so no write is needed.
        let mut again = provider_status(&p, &[], &key_ready(), &ModelsState::Static(2), &later);
        keep_transition_times(&mut again.conditions, &observed.conditions);
        assert_eq!(again, observed);
        // Credentials fail: only that condition's time moves.
        let mut failed = provider_status(
            &p,
            &[],
            &CredentialState::Failed {
                reason: "TokenExchangeFailed",
                message: "no".into(),
            },
            &ModelsState::Static(2),
            &later,
        );
        keep_transition_times(&mut failed.conditions, &observed.conditions);
        assert_eq!(
            cond(&failed.conditions, CREDENTIALS_READY).last_transition_time,
            later
        );
        assert_eq!(
            cond(&failed.conditions, ACCEPTED).last_transition_time,
            old_time
        );
        let news = new_failures(&failed.conditions, &observed.conditions);
        assert_eq!(news.len(), 1);
        assert_eq!(news[0].reason, "TokenExchangeFailed");
        // Once reported, the same failure is not new.
        observed = failed.clone();
        assert!(new_failures(&failed.conditions, &observed.conditions).is_empty());
    }
}
