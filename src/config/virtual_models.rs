//! Compiling a proxy's provider pools, virtual models (`spec.models`), retry rules
//! (`spec.retry`) and default model, with a problem for each thing wrong:
//!
//! - pools: entries sharing a prefix must be providers of one type, each listed once;
//! - virtual models: a name without a colon that no prefix serves, targets and fallbacks
//!   `prefix:model` with a prefix of the proxy and a model it serves, no duplicates, no
//!   nesting (a virtual model naming one, a cycle when it comes back to itself), at least
//!   one non-zero weight;
//! - retry: `attempts` ≥ 1, `firstByteTimeout` a positive duration;
//! - `defaultModel`: `prefix:model` or a virtual model's name; omitted on a proxy with an
//!   OpenRouter provider, `openrouter:openrouter/free` (OpenRouter's free-model picker).
//!
//! Called from one place in [`super::compile`]; the result lives in
//! [`super::ProxyTable::failover`] and the routes' [`super::Route::pool`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::compile::Problems;
use super::{Route, Upstream};
use crate::crd::{LlmProxySpec, ProviderType, RetrySpec};
use crate::routing::{RetryPolicy, RetrySet};

/// Most virtual models per proxy.
pub const MAX_VIRTUAL_MODELS: usize = 256;
/// Most targets (and, separately, fallbacks) per virtual model.
pub const MAX_TARGETS: usize = 32;
/// Most tries per request.
pub const MAX_ATTEMPTS: u32 = 10;
/// Model OpenRouter picks a free model for; the default of a proxy with an OpenRouter provider.
pub const OPENROUTER_FREE: &str = "openrouter/free";

/// A provider-qualified model: `prefix:model`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    /// The proxy's prefix (a provider or a pool).
    pub prefix: String,
    /// The model as that provider names it.
    pub model: String,
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.prefix, self.model)
    }
}

/// One weighted target of a virtual model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where it goes.
    pub model: ModelRef,
    /// Its share of the traffic.
    pub weight: u32,
}

/// A virtual model, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualModel {
    /// The name clients ask for.
    pub name: String,
    /// Weighted targets.
    pub targets: Vec<Target>,
    /// Tried in order, once each, after the targets.
    pub fallbacks: Vec<ModelRef>,
    /// Its retry rules (its own `retry`, else the proxy's, else the default for several targets).
    pub retry: RetryPolicy,
}

/// A proxy's failover settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failover {
    /// Virtual models by name.
    pub models: BTreeMap<String, Arc<VirtualModel>>,
    /// `spec.retry`, compiled (`None`: not set).
    pub retry: Option<RetryPolicy>,
    /// `defaultModel` when it names a virtual model.
    pub default_virtual: Option<String>,
}

impl Failover {
    /// The retry rules of a request to a prefix: the proxy's `retry`, else three tries for a
    /// pool and one for a single provider (as compiled into [`Route::retry`]).
    pub fn policy_for(&self, route: &Route) -> RetryPolicy {
        route.retry.clone()
    }

    /// The virtual model of this name.
    pub fn model(&self, name: &str) -> Option<&Arc<VirtualModel>> {
        self.models.get(name)
    }
}

/// Group provider entries `(index in spec.providers, prefix, upstream)` into routes, in the
/// order prefixes first appear; entries sharing a prefix form a pool.
pub(super) fn pools(entries: Vec<(usize, String, Arc<Upstream>)>, p: &mut Problems) -> Vec<Route> {
    let mut grouped: Vec<(String, Vec<Arc<Upstream>>)> = Vec::new();
    for (i, prefix, upstream) in entries {
        let field = format!("spec.providers[{i}].prefix");
        match grouped.iter_mut().find(|(pfx, _)| *pfx == prefix) {
            None => grouped.push((prefix, vec![upstream])),
            Some((_, members)) => {
                let first = &members[0];
                if members.iter().any(|m| m.provider == upstream.provider) {
                    p.add(
                        field,
                        "DuplicatePrefix",
                        format!(
                            "LlmProvider {} is listed twice under prefix `{prefix}`; give one entry another `prefix`",
                            upstream.provider
                        ),
                    );
                } else if first.provider_type != upstream.provider_type {
                    p.add(
                        field,
                        "InvalidPool",
                        format!(
                            "prefix `{prefix}` is a pool of `{}` providers, but LlmProvider {} is `{}`: a pool's members must have one type; give it another `prefix`",
                            first.provider_type, upstream.provider, upstream.provider_type
                        ),
                    );
                } else {
                    members.push(upstream);
                }
            }
        }
    }
    grouped
        .into_iter()
        .map(|(prefix, members)| Route {
            prefix,
            upstream: members[0].clone(),
            retry: if members.len() > 1 {
                RetryPolicy::default_multi()
            } else {
                RetryPolicy::single()
            },
            pool: members.into(),
        })
        .collect()
}

/// Compile `spec.retry`, `spec.models` and `spec.defaultModel` against the proxy's routes.
/// `prefixes` holds every prefix the spec names (also those whose provider has problems).
/// Returns the `defaultModel` as prefix and model (for unqualified IDs) and the failover
/// settings.
pub(super) fn compile(
    spec: &LlmProxySpec,
    routes: &mut [Route],
    prefixes: &HashSet<String>,
    p: &mut Problems,
) -> (Option<(String, String)>, Failover) {
    let retry = spec
        .retry
        .as_ref()
        .map(|r| retry_policy(r, "spec.retry", RetryPolicy::default_multi(), p));
    let mut failover = Failover {
        retry: retry.clone(),
        ..Failover::default()
    };
    if let Some(policy) = &retry {
        for route in routes.iter_mut() {
            route.retry = policy.clone();
        }
    }
    let routes = &*routes;

    let specs = spec.models.as_deref().unwrap_or_default();
    if specs.len() > MAX_VIRTUAL_MODELS {
        p.add(
            "spec.models",
            "InvalidVirtualModel",
            format!("at most {MAX_VIRTUAL_MODELS} virtual models per proxy"),
        );
    }
    let names: BTreeSet<&str> = specs.iter().map(|m| m.name.trim()).collect();
    for (i, vm) in specs.iter().enumerate().take(MAX_VIRTUAL_MODELS) {
        let field = format!("spec.models[{i}]");
        let name = vm.name.trim();
        let mut ok = true;
        if !valid_name(name) {
            p.add(
                format!("{field}.name"),
                "InvalidVirtualModel",
                format!(
                    "`{name}` is not a virtual model name: 1 to 128 letters, digits, `.`, `_`, `-`, `/` or `@`, no colon (a colon starts a provider prefix)"
                ),
            );
            ok = false;
        } else if let Some(route) = routes.iter().find(|r| serves(r, name)) {
            p.add(
                format!("{field}.name"),
                "VirtualModelConflict",
                format!(
                    "`{name}` is a model prefix `{}` serves; give the virtual model another name",
                    route.prefix
                ),
            );
            ok = false;
        } else if failover.models.contains_key(name) {
            p.add(
                format!("{field}.name"),
                "DuplicateVirtualModel",
                format!("virtual model `{name}` is defined twice"),
            );
            ok = false;
        }
        if vm.targets.is_empty() {
            p.add(
                format!("{field}.targets"),
                "InvalidVirtualModel",
                "a virtual model needs at least one target",
            );
            ok = false;
        }
        let fallbacks = vm.fallbacks.as_deref().unwrap_or_default();
        for (list, len) in [
            ("targets", vm.targets.len()),
            ("fallbacks", fallbacks.len()),
        ] {
            if len > MAX_TARGETS {
                p.add(
                    format!("{field}.{list}"),
                    "InvalidVirtualModel",
                    format!("at most {MAX_TARGETS} {list} per virtual model"),
                );
                ok = false;
            }
        }
        let mut seen = HashSet::new();
        let mut check = |raw: &str, at: String, p: &mut Problems| -> Option<ModelRef> {
            let raw = raw.trim();
            let found = model_ref(raw, name, routes, prefixes, &names, &at, p)?;
            if !seen.insert(found.clone()) {
                p.add(
                    at,
                    "DuplicateTarget",
                    format!("`{raw}` appears twice among the targets and fallbacks of `{name}`"),
                );
                return None;
            }
            Some(found)
        };
        let mut targets = Vec::new();
        for (j, t) in vm.targets.iter().enumerate().take(MAX_TARGETS) {
            match check(&t.model, format!("{field}.targets[{j}].model"), p) {
                Some(model) => targets.push(Target {
                    model,
                    weight: t.weight.unwrap_or(1),
                }),
                None => ok = false,
            }
        }
        let mut refs = Vec::new();
        for (j, f) in fallbacks.iter().enumerate().take(MAX_TARGETS) {
            match check(f, format!("{field}.fallbacks[{j}]"), p) {
                Some(model) => refs.push(model),
                None => ok = false,
            }
        }
        if !vm.targets.is_empty() && vm.targets.iter().all(|t| t.weight == Some(0)) {
            p.add(
                format!("{field}.targets"),
                "InvalidWeights",
                format!(
                    "every target of `{name}` has weight 0: give at least one a weight above 0"
                ),
            );
            ok = false;
        }
        let fallback_policy = retry.clone().unwrap_or_else(RetryPolicy::default_multi);
        let policy = match &vm.retry {
            Some(r) => retry_policy(r, &format!("{field}.retry"), fallback_policy, p),
            None => fallback_policy,
        };
        if ok {
            failover.models.insert(
                name.to_owned(),
                Arc::new(VirtualModel {
                    name: name.to_owned(),
                    targets,
                    fallbacks: refs,
                    retry: policy,
                }),
            );
        }
    }

    let default_model = match spec.default_model.as_deref().map(str::trim) {
        None | Some("") => routes
            .iter()
            .find(|r| r.upstream.provider_type == ProviderType::Openrouter)
            .map(|r| (r.prefix.clone(), OPENROUTER_FREE.to_owned())),
        Some(raw) => match raw.split_once(':') {
            Some((prefix, model)) if !model.is_empty() && prefixes.contains(prefix) => {
                Some((prefix.to_owned(), model.to_owned()))
            }
            None if names.contains(raw) => {
                failover.default_virtual = Some(raw.to_owned());
                None
            }
            _ => {
                let known: BTreeSet<&str> = prefixes.iter().map(String::as_str).collect();
                p.add(
                    "spec.defaultModel",
                    "InvalidDefaultModel",
                    format!(
                        "`{raw}` must be `prefix:model` with a prefix of this proxy ({}) or the name of one of its virtual models",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                );
                None
            }
        },
    };
    (default_model, failover)
}

/// A virtual model's name: what clients put in `model`, never a prefix form.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b'@'))
}

/// Whether a route's static list serves this model (discovered lists are not known here: at
/// request time a virtual model's name wins over a discovered model of the same name).
fn serves(route: &Route, model: &str) -> bool {
    route.pool.iter().any(|u| match &u.models {
        super::snapshot::ModelPolicy::Static(list) => list.iter().any(|m| m == model),
        _ => false,
    })
}

/// Parse and check one target or fallback.
fn model_ref(
    raw: &str,
    owner: &str,
    routes: &[Route],
    prefixes: &HashSet<String>,
    names: &BTreeSet<&str>,
    at: &str,
    p: &mut Problems,
) -> Option<ModelRef> {
    let Some((prefix, model)) = raw.split_once(':') else {
        if raw == owner {
            p.add(
                at,
                "VirtualModelCycle",
                format!("`{owner}` names itself: a target must be `prefix:model`"),
            );
        } else if names.contains(raw) {
            p.add(
                at,
                "VirtualModelCycle",
                format!(
                    "`{raw}` is a virtual model: targets and fallbacks name provider models (`prefix:model`), so virtual models cannot refer to each other"
                ),
            );
        } else {
            p.add(
                at,
                "InvalidTarget",
                format!("`{raw}` must be `prefix:model` with a prefix of this proxy"),
            );
        }
        return None;
    };
    if model.trim().is_empty() {
        p.add(
            at,
            "InvalidTarget",
            format!("`{raw}` names no model after the prefix"),
        );
        return None;
    }
    let Some(route) = routes.iter().find(|r| r.prefix == prefix) else {
        // A prefix whose provider has problems is reported on that entry already.
        if !prefixes.contains(prefix) {
            let known: BTreeSet<&str> = prefixes.iter().map(String::as_str).collect();
            p.add(
                at,
                "UnknownPrefix",
                format!(
                    "`{raw}`: prefix `{prefix}` is not one of this proxy's ({})",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        return None;
    };
    if let Some(u) = route.pool.iter().find(|u| !u.models.permits(model)) {
        p.add(
            at,
            "InvalidTarget",
            format!(
                "`{raw}`: LlmProvider {} does not serve `{model}` (see its spec.models)",
                u.provider
            ),
        );
        return None;
    }
    Some(ModelRef {
        prefix: prefix.to_owned(),
        model: model.to_owned(),
    })
}

/// Compile a `retry` block; unset fields come from `base`.
fn retry_policy(spec: &RetrySpec, field: &str, base: RetryPolicy, p: &mut Problems) -> RetryPolicy {
    let mut policy = base;
    if let Some(attempts) = spec.attempts {
        match u32::try_from(attempts) {
            Ok(n @ 1..=MAX_ATTEMPTS) => policy.attempts = n,
            _ => p.add(
                format!("{field}.attempts"),
                "InvalidRetry",
                format!("attempts is {attempts}: it counts tries in all, from 1 to {MAX_ATTEMPTS}"),
            ),
        }
    }
    if let Some(on) = &spec.on {
        policy.on = RetrySet::of(on);
    }
    if let Some(raw) = &spec.first_byte_timeout {
        match humantime::parse_duration(raw.trim()) {
            Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => {
                policy.first_byte_timeout = Some(d);
            }
            _ => p.add(
                format!("{field}.firstByteTimeout"),
                "InvalidRetry",
                format!("`{raw}` is not a positive duration up to 1h, such as `30s`"),
            ),
        }
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compiled, Defaults, Index, ObjectKey, compile};
    use crate::source::files::parse;

    const PROVIDERS: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: key, namespace: ai}\nstringData: {apiKey: sk-1}\n---\n\
apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: openai, namespace: ai}\nspec: {type: openai, auth: {apiKey: {secretRef: {name: key}}}, models: {static: [gpt-5.4, gpt-5-mini]}}\n---\n\
apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: az-east, namespace: ai}\nspec: {type: azure, baseUrl: 'https://east.openai.azure.com', auth: {apiKey: {secretRef: {name: key}}}}\n---\n\
apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: az-west, namespace: ai}\nspec: {type: azure, baseUrl: 'https://west.openai.azure.com', auth: {apiKey: {secretRef: {name: key}}}}\n---\n\
apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: anthropic, namespace: ai}\nspec: {type: anthropic, auth: {apiKey: {secretRef: {name: key}}}}\n---\n\
apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: router, namespace: ai}\nspec: {type: openrouter, auth: {apiKey: {secretRef: {name: key}}}}\n---\n";

    const ENTRIES: &str = "[{providerRef: {name: openai}}, {providerRef: {name: az-east}, prefix: azure}, {providerRef: {name: az-west}, prefix: azure}, {providerRef: {name: anthropic}}]";

    fn run(spec_tail: &str, entries: &str) -> Compiled {
        let yaml = format!(
            "{PROVIDERS}apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {{name: p, namespace: ai}}\nspec:\n  providers: {entries}\n{spec_tail}"
        );
        let objects = parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
        compile(&Index::from_objects(objects), &Defaults::default())
    }

    fn reasons(c: &Compiled) -> Vec<(String, &'static str)> {
        c.problems
            .iter()
            .map(|p| (p.field.clone(), p.reason))
            .collect()
    }

    fn failover(c: &Compiled) -> Arc<Failover> {
        c.proxies[&ObjectKey::new("ai", "p")].failover.clone()
    }

    #[test]
    fn a_virtual_model_with_a_pool_compiles() {
        let c = run(
            "  models:\n  - name: smart\n    targets: [{model: 'openai:gpt-5.4', weight: 3}, {model: 'azure:gpt-5.4'}]\n    fallbacks: ['anthropic:claude-opus-4-6']\n  retry: {attempts: 2, on: [serverError], firstByteTimeout: 5s}\n",
            ENTRIES,
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let table = &c.proxies[&ObjectKey::new("ai", "p")];
        let prefixes: Vec<_> = table
            .routes
            .iter()
            .map(|r| (r.prefix.as_str(), r.pool.len()))
            .collect();
        assert_eq!(prefixes, [("openai", 1), ("azure", 2), ("anthropic", 1)]);
        let f = failover(&c);
        let smart = f.model("smart").unwrap_or_else(|| panic!("no smart"));
        assert_eq!(smart.targets.len(), 2);
        assert_eq!(smart.targets[0].weight, 3);
        assert_eq!(smart.targets[1].weight, 1);
        assert_eq!(smart.fallbacks[0].to_string(), "anthropic:claude-opus-4-6");
        assert_eq!(smart.retry.attempts, 2);
        assert_eq!(smart.retry.first_byte_timeout, Some(Duration::from_secs(5)));
        assert!(!smart.retry.on.contains(crate::crd::RetryOn::RateLimited));
        // The pool gets three tries by default only without spec.retry; here the proxy's rule.
        assert_eq!(f.policy_for(&table.routes[1]).attempts, 2);
    }

    #[test]
    fn retry_defaults_one_try_for_a_single_provider_three_for_a_pool() {
        let c = run("", ENTRIES);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let table = &c.proxies[&ObjectKey::new("ai", "p")];
        assert_eq!(table.failover.policy_for(&table.routes[0]).attempts, 1);
        assert_eq!(table.failover.policy_for(&table.routes[1]).attempts, 3);
    }

    #[test]
    fn bad_virtual_models_are_problems() {
        let cases: [(&str, &[(&str, &str)]); 9] = [
            (
                "  models: [{name: 'a:b', targets: [{model: 'openai:gpt-5.4'}]}]\n",
                &[("spec.models[0].name", "InvalidVirtualModel")],
            ),
            (
                "  models: [{name: gpt-5.4, targets: [{model: 'openai:gpt-5-mini'}]}]\n",
                &[("spec.models[0].name", "VirtualModelConflict")],
            ),
            (
                "  models: [{name: s, targets: [{model: 'nope:gpt'}]}]\n",
                &[("spec.models[0].targets[0].model", "UnknownPrefix")],
            ),
            (
                "  models: [{name: s, targets: [{model: 'openai:gpt-4'}]}]\n",
                &[("spec.models[0].targets[0].model", "InvalidTarget")],
            ),
            (
                "  models: [{name: s, targets: [{model: 'openai:gpt-5.4'}], fallbacks: ['openai:gpt-5.4']}]\n",
                &[("spec.models[0].fallbacks[0]", "DuplicateTarget")],
            ),
            (
                "  models: [{name: s, targets: [{model: s}]}]\n",
                &[("spec.models[0].targets[0].model", "VirtualModelCycle")],
            ),
            (
                "  models: [{name: s, targets: [{model: 'openai:gpt-5.4'}], fallbacks: [t]}, {name: t, targets: [{model: 'azure:x'}], fallbacks: [s]}]\n",
                &[
                    ("spec.models[0].fallbacks[0]", "VirtualModelCycle"),
                    ("spec.models[1].fallbacks[0]", "VirtualModelCycle"),
                ],
            ),
            (
                "  models: [{name: s, targets: [{model: 'openai:gpt-5.4', weight: 0}, {model: 'azure:x', weight: 0}]}]\n",
                &[("spec.models[0].targets", "InvalidWeights")],
            ),
            (
                "  retry: {attempts: 0}\n  models: [{name: s, targets: [{model: 'azure:x'}], retry: {attempts: -1, firstByteTimeout: soon}}]\n",
                &[
                    ("spec.retry.attempts", "InvalidRetry"),
                    ("spec.models[0].retry.attempts", "InvalidRetry"),
                    ("spec.models[0].retry.firstByteTimeout", "InvalidRetry"),
                ],
            ),
        ];
        for (tail, expected) in cases {
            let c = run(tail, ENTRIES);
            let expected: Vec<(String, &str)> =
                expected.iter().map(|(f, r)| (f.to_string(), *r)).collect();
            assert_eq!(reasons(&c), expected, "{tail}");
            assert!(c.failed.contains(&ObjectKey::new("ai", "p")), "{tail}");
        }
    }

    #[test]
    fn a_pool_of_mixed_types_is_refused() {
        let c = run(
            "",
            "[{providerRef: {name: openai}, prefix: mix}, {providerRef: {name: anthropic}, prefix: mix}]",
        );
        assert_eq!(
            reasons(&c),
            [("spec.providers[1].prefix".to_owned(), "InvalidPool")]
        );
        let c = run(
            "",
            "[{providerRef: {name: openai}}, {providerRef: {name: openai}}]",
        );
        assert_eq!(
            reasons(&c),
            [("spec.providers[1].prefix".to_owned(), "DuplicatePrefix")]
        );
    }

    #[test]
    fn default_model_may_name_a_virtual_model_and_openrouter_defaults_to_free() {
        let c = run(
            "  defaultModel: smart\n  models: [{name: smart, targets: [{model: 'azure:x'}]}]\n",
            ENTRIES,
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let table = &c.proxies[&ObjectKey::new("ai", "p")];
        assert_eq!(table.failover.default_virtual.as_deref(), Some("smart"));
        assert!(table.default_model.is_none());
        let c = run("  defaultModel: nothing\n", ENTRIES);
        assert_eq!(
            reasons(&c),
            [("spec.defaultModel".to_owned(), "InvalidDefaultModel")]
        );

        let with_router =
            "[{providerRef: {name: openai}}, {providerRef: {name: router}, prefix: or}]";
        let c = run("", with_router);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let table = &c.proxies[&ObjectKey::new("ai", "p")];
        assert_eq!(
            table.default_model,
            Some(("or".to_owned(), OPENROUTER_FREE.to_owned()))
        );
        // An explicit default wins.
        let c = run("  defaultModel: 'openai:gpt-5-mini'\n", with_router);
        let table = &c.proxies[&ObjectKey::new("ai", "p")];
        assert_eq!(
            table.default_model,
            Some(("openai".to_owned(), "gpt-5-mini".to_owned()))
        );
    }

    #[test]
    fn the_embedded_default_with_an_openrouter_key_defaults_to_its_free_model() {
        let env = |k: &str| (k == "OPENROUTER_API_KEY").then(|| "sk-or-1".to_owned());
        let objects = crate::config::defaults::objects(env);
        let c = compile(&Index::from_objects(objects), &Defaults::default());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let table = &c.proxies[&ObjectKey::new("default", "default")];
        assert_eq!(
            table.default_model,
            Some(("openrouter".to_owned(), OPENROUTER_FREE.to_owned()))
        );
        let c = compile(
            &Index::from_objects(crate::config::defaults::objects(|_| None)),
            &Defaults::default(),
        );
        assert!(
            c.proxies[&ObjectKey::new("default", "default")]
                .default_model
                .is_none()
        );
    }
}
