//! `LlmBudget` → [`crate::budget::Budget`]: pure validation of the spec against the index
//! (proxies, Secrets, provider prices). Every problem names the field and a CamelCase reason.
//! The budgets' runtime (counters, stores, settlement) lives in [`crate::budget`].

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::compile::Problem;
use super::{Index, ObjectKey};
use crate::budget::window::Window;
use crate::budget::{
    Budget, Compiled, DEFAULT_OUTPUT_TOKENS, KIND, Limit, Per, Price, Prices, StoreSpec, Unit,
    parse_micros,
};
use crate::crd::{LlmBudget, LlmProvider, ModelPrice, StoreUnavailable};

/// Compile every `LlmBudget` of the index; problems are appended to `problems`.
pub fn compile(index: &Index, problems: &mut Vec<Problem>) -> Compiled {
    let mut out = Compiled::default();
    for (key, budget) in index.budgets() {
        let mut list = Vec::new();
        let compiled = compile_one(key, budget, index, &mut |field: String, reason, message| {
            list.push(Problem {
                kind: KIND,
                object: key.clone(),
                field,
                reason,
                message,
            })
        });
        if list.is_empty() {
            out.good.insert(key.clone(), Arc::new(compiled));
        } else {
            problems.extend(list);
            out.failed.insert(key.clone());
        }
    }
    out
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(
            Glob::new(p.trim()).map_err(|e| format!("`{p}` is not a valid glob: {}", e.kind()))?,
        );
    }
    builder.build().map_err(|e| e.to_string())
}

/// Compile the prices of a provider.
pub fn compile_prices(pricing: &[ModelPrice]) -> Result<Prices, String> {
    let mut out = Vec::new();
    for (i, p) in pricing.iter().enumerate() {
        let set = globs(&p.models).map_err(|e| format!("spec.pricing[{i}].models: {e}"))?;
        let parse = |field: &str, v: &str| {
            parse_micros(v).ok_or_else(|| {
                format!("spec.pricing[{i}].{field}: `{v}` must be a decimal number of dollars per million tokens")
            })
        };
        let input = parse("input", &p.input)?;
        let output = parse("output", &p.output)?;
        let cached_input = match &p.cached_input {
            Some(c) => parse("cachedInput", c)?,
            None => input,
        };
        out.push((
            set,
            Price {
                input,
                cached_input,
                output,
            },
        ));
    }
    Ok(Prices(out))
}

fn compile_one(
    key: &ObjectKey,
    budget: &LlmBudget,
    index: &Index,
    add: &mut dyn FnMut(String, &'static str, String),
) -> Budget {
    let spec = &budget.spec;
    // Targets: named proxies of this namespace (each must exist), or all of them.
    let targets = spec.target_refs.as_ref().map(|refs| {
        refs.iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let proxy = ObjectKey::new(&key.namespace, &r.name);
                if index.proxies().contains_key(&proxy) {
                    Some(proxy)
                } else {
                    add(
                        format!("spec.targetRefs[{i}]"),
                        "ProxyNotFound",
                        format!("LlmProxy {proxy} not found"),
                    );
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    let proxies: Vec<&ObjectKey> = match &targets {
        Some(t) => t.iter().collect(),
        None => index
            .proxies()
            .keys()
            .filter(|k| k.namespace == key.namespace)
            .collect(),
    };
    // Prices of every (proxy, prefix) the budget covers.
    let mut prices: HashMap<ObjectKey, HashMap<String, Arc<Prices>>> = HashMap::new();
    let mut unpriced_providers: Vec<(ObjectKey, String, &LlmProvider)> = Vec::new();
    for proxy_key in &proxies {
        let Some(proxy) = index.proxies().get(proxy_key) else {
            continue;
        };
        for entry in &proxy.spec.providers {
            let provider_key = ObjectKey::new(&key.namespace, &entry.provider_ref.name);
            let Some(provider) = index.providers().get(&provider_key) else {
                continue;
            };
            let prefix = entry
                .prefix
                .clone()
                .unwrap_or_else(|| provider.spec.provider_type.as_str().to_owned());
            match provider.spec.pricing.as_deref().map(compile_prices) {
                Some(Ok(p)) => {
                    prices
                        .entry((*proxy_key).clone())
                        .or_default()
                        .insert(prefix.clone(), Arc::new(p));
                }
                Some(Err(e)) => add(
                    "spec.limits".to_owned(),
                    "InvalidPricing",
                    format!("LlmProvider {provider_key}: {e}"),
                ),
                None => {}
            }
            unpriced_providers.push(((*proxy_key).clone(), prefix, provider));
        }
    }

    let mut limits = Vec::new();
    let mut names = HashSet::new();
    for (i, l) in spec.limits.iter().enumerate() {
        let field = format!("spec.limits[{i}]");
        if l.name.is_empty() || !super::compile::valid_prefix(&l.name) {
            add(
                format!("{field}.name"),
                "InvalidSpec",
                format!(
                    "limit name `{}` must be lowercase letters, digits and `-`",
                    l.name
                ),
            );
        } else if !names.insert(l.name.clone()) {
            add(
                format!("{field}.name"),
                "InvalidSpec",
                format!("limit name `{}` is used twice", l.name),
            );
        }
        let per = match l.per.as_str() {
            "identity" => Some(Per::Identity),
            "proxy" => Some(Per::Proxy),
            "model" => Some(Per::Model),
            "identityModel" => Some(Per::IdentityModel),
            other => {
                add(
                    format!("{field}.per"),
                    "InvalidSpec",
                    format!("unknown per `{other}`: use identity, proxy, model or identityModel"),
                );
                None
            }
        };
        let amount = match (l.requests, l.tokens, &l.usd) {
            (Some(n), None, None) => Some((Unit::Requests, u64::try_from(n).ok())),
            (None, Some(n), None) => Some((Unit::Tokens, u64::try_from(n).ok())),
            (None, None, Some(usd)) => Some((Unit::MicroUsd, parse_micros(usd))),
            _ => {
                add(
                    field.clone(),
                    "InvalidSpec",
                    "a limit takes exactly one of requests, tokens, usd".to_owned(),
                );
                None
            }
        };
        let amount = match amount {
            Some((unit, Some(max))) if max > 0 => Some((unit, max)),
            Some((unit, _)) => {
                add(
                    format!("{field}.{}", unit.field()),
                    "InvalidSpec",
                    "the limit must be a positive number".to_owned(),
                );
                None
            }
            None => None,
        };
        let window = match Window::parse(&l.window) {
            Ok(w) => Some(w),
            Err(e) => {
                add(format!("{field}.window"), "InvalidSpec", e);
                None
            }
        };
        let mut glob_field = |name: &str, patterns: &Option<Vec<String>>| match patterns {
            None => None,
            Some(p) => match globs(p) {
                Ok(set) => Some(set),
                Err(e) => {
                    add(format!("{field}.{name}"), "InvalidSpec", e);
                    None
                }
            },
        };
        let models = glob_field("models", &l.models);
        let identities = glob_field("identities", &l.identities);
        let default_output = match l.default_output_tokens {
            None => DEFAULT_OUTPUT_TOKENS,
            Some(n) if n > 0 => n as u64,
            Some(_) => {
                add(
                    format!("{field}.defaultOutputTokens"),
                    "InvalidSpec",
                    "defaultOutputTokens must be positive".to_owned(),
                );
                DEFAULT_OUTPUT_TOKENS
            }
        };
        // A USD limit needs a price for every model it counts.
        if let Some((Unit::MicroUsd, _)) = amount {
            for (proxy, prefix, provider) in &unpriced_providers {
                let counts = |model: &str| {
                    models
                        .as_ref()
                        .is_none_or(|m| m.is_match(format!("{prefix}:{model}")))
                };
                let price = prices.get(proxy).and_then(|p| p.get(prefix));
                let statics = provider
                    .spec
                    .models
                    .as_ref()
                    .and_then(|m| m.r#static.as_ref());
                let missing: Vec<String> = match (statics, price) {
                    (Some(list), p) => list
                        .iter()
                        .filter(|m| counts(m) && p.is_none_or(|p| p.get(m).is_none()))
                        .map(|m| format!("{prefix}:{m}"))
                        .collect(),
                    // Discovered models: the prefix needs a price list at all when the limit
                    // can count any of its models.
                    (None, None) if prefix_counted(l.models.as_deref(), prefix) => {
                        vec![format!("{prefix}:*")]
                    }
                    (None, _) => Vec::new(),
                };
                if !missing.is_empty() {
                    add(
                        format!("{field}.usd"),
                        "PriceNotFound",
                        format!(
                            "no price for {} (LlmProxy {proxy}): add them to spec.pricing of LlmProvider {}/{}, or narrow `models`",
                            missing.join(", "),
                            key.namespace,
                            provider.metadata.name.as_deref().unwrap_or_default()
                        ),
                    );
                }
            }
        }
        if let (Some(per), Some((unit, max)), Some(window)) = (per, amount, window) {
            // What a counter means: the same name, key, unit, window and filters. The amount is
            // left out, so raising or lowering a limit keeps what was spent (as Redis does,
            // whose keys name the limit).
            let mut h = DefaultHasher::new();
            (&l.name, per, unit, window, &l.models, &l.identities).hash(&mut h);
            limits.push(Arc::new(Limit {
                name: l.name.clone(),
                per,
                unit,
                max,
                window,
                models,
                identities,
                default_output,
                identity_hash: h.finish(),
                counters: Arc::default(),
                consumed: Default::default(),
            }));
        }
    }
    if spec.limits.is_empty() {
        add(
            "spec.limits".to_owned(),
            "InvalidSpec",
            "a budget needs at least one limit".to_owned(),
        );
    }

    let store = match spec.store.as_ref().and_then(|s| s.redis.as_ref()) {
        None => StoreSpec::InProcess,
        Some(redis) => {
            let secret = ObjectKey::new(&key.namespace, &redis.url_secret_ref.name);
            let data_key = redis.url_secret_ref.key.as_deref().unwrap_or("url");
            match index.secret(&secret).map(|d| d.0.get(data_key)) {
                None => {
                    add(
                        "spec.store.redis.urlSecretRef".to_owned(),
                        "SecretNotFound",
                        format!("Secret {secret} not found"),
                    );
                    StoreSpec::InProcess
                }
                Some(None) => {
                    add(
                        "spec.store.redis.urlSecretRef".to_owned(),
                        "SecretNotFound",
                        format!("Secret {secret} has no key `{data_key}`"),
                    );
                    StoreSpec::InProcess
                }
                Some(Some(bytes)) => {
                    let url = String::from_utf8_lossy(bytes).trim().to_owned();
                    if url.starts_with("redis://") && url::Url::parse(&url).is_ok() {
                        StoreSpec::Redis(url)
                    } else {
                        // The message never shows the URL: it may hold a password.
                        add(
                            "spec.store.redis.urlSecretRef".to_owned(),
                            "InvalidRedisUrl",
                            format!(
                                "Secret {secret} key `{data_key}` must hold a URL `redis://[:password@]host:port[/db]`"
                            ),
                        );
                        StoreSpec::InProcess
                    }
                }
            }
        }
    };

    Budget {
        key: key.clone(),
        generation: budget.metadata.generation,
        targets,
        limits,
        prices,
        store,
        redis: None,
        on_unavailable: spec.on_store_unavailable.unwrap_or(StoreUnavailable::Deny),
    }
}

/// Whether a limit's `models` patterns can count models of this prefix.
fn prefix_counted(models: Option<&[String]>, prefix: &str) -> bool {
    models.is_none_or(|patterns| {
        patterns.iter().any(|m| {
            let m = m.trim();
            let p = m.split_once(':').map_or(m, |(p, _)| p);
            Glob::new(p).is_ok_and(|g| g.compile_matcher().is_match(prefix))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::format_micros;
    use crate::config::{Defaults, Store};
    use crate::source::files::parse;

    const BASE: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: key, namespace: ai}\nstringData: {apiKey: sk-1}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: redis, namespace: ai}\nstringData: {url: 'redis://:pw-SECRET@10.0.0.1:6379/0', bad: 'http://x'}\n---\napiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: openai, namespace: ai}\nspec: {type: openai, auth: {apiKey: {secretRef: {name: key}}}, models: {static: [gpt-a, gpt-b]}, pricing: [{models: ['gpt-a'], input: '1.25', output: '10'}]}\n---\napiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {name: team-a, namespace: ai}\nspec: {providers: [{providerRef: {name: openai}}]}\n---\n";

    fn budget(spec: &str) -> String {
        format!(
            "{BASE}apiVersion: portcullis.dev/v1alpha1\nkind: LlmBudget\nmetadata: {{name: b, namespace: ai, generation: 1}}\nspec: {spec}\n"
        )
    }

    fn index(yaml: &str) -> Index {
        match parse(yaml) {
            Ok(o) => Index::from_objects(o),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn problems(spec: &str) -> Vec<(String, &'static str, String)> {
        let mut list = Vec::new();
        compile(&index(&budget(spec)), &mut list);
        list.into_iter()
            .map(|p| (p.field, p.reason, p.message))
            .collect()
    }

    #[test]
    fn a_clean_budget_compiles() {
        let mut list = Vec::new();
        let c = compile(
            &index(&budget(
                "{limits: [{name: rpm, per: identity, requests: 60, window: 1m}, {name: spend, per: proxy, usd: '500.00', window: month, models: ['openai:gpt-a']}], store: {redis: {urlSecretRef: {name: redis, key: url}}}}",
            )),
            &mut list,
        );
        assert!(list.is_empty(), "{list:?}");
        let b = &c.good[&ObjectKey::new("ai", "b")];
        assert_eq!(b.limits.len(), 2);
        assert_eq!(b.limits[1].max, 500_000_000);
        assert_eq!(b.limits[1].unit, Unit::MicroUsd);
        assert!(matches!(&b.store, StoreSpec::Redis(u) if u.starts_with("redis://")));
        assert!(
            !format!("{b:?}").contains("pw-SECRET"),
            "Debug never shows the URL"
        );
    }

    #[test]
    fn every_bad_field_is_a_problem_with_its_reason() {
        let found = problems(
            "{targetRefs: [{name: team-a}, {name: ghost}], limits: [{name: a, per: team, requests: 5, window: 1m}, {name: b, per: identity, requests: 0, window: 1m}, {name: c, per: identity, tokens: -3, window: 1m}, {name: d, per: proxy, tokens: 5, window: 31d}, {name: e, per: proxy, tokens: 5, window: 0s}, {name: f, per: proxy, usd: '1', window: month}, {name: f, per: proxy, requests: 1, tokens: 2, window: day}], store: {redis: {urlSecretRef: {name: nope}}}}",
        );
        let reasons: Vec<(&str, &str)> = found.iter().map(|(f, r, _)| (f.as_str(), *r)).collect();
        for expected in [
            ("spec.targetRefs[1]", "ProxyNotFound"),
            ("spec.limits[0].per", "InvalidSpec"),
            ("spec.limits[1].requests", "InvalidSpec"),
            ("spec.limits[2].tokens", "InvalidSpec"),
            ("spec.limits[3].window", "InvalidSpec"),
            ("spec.limits[4].window", "InvalidSpec"),
            ("spec.limits[5].usd", "PriceNotFound"),
            ("spec.limits[6].name", "InvalidSpec"),
            ("spec.limits[6]", "InvalidSpec"),
            ("spec.store.redis.urlSecretRef", "SecretNotFound"),
        ] {
            assert!(
                reasons.contains(&expected),
                "{expected:?} not in {reasons:?}"
            );
        }
        // gpt-b has no price; gpt-a has one.
        let price = found.iter().find(|(_, r, _)| *r == "PriceNotFound");
        assert!(
            price.is_some_and(|(_, _, m)| m.contains("openai:gpt-b") && !m.contains("gpt-a,")),
            "{price:?}"
        );
    }

    #[test]
    fn redis_urls_are_checked_and_never_shown() {
        let found = problems(
            "{limits: [{name: a, per: proxy, requests: 5, window: 1m}], store: {redis: {urlSecretRef: {name: redis, key: bad}}}}",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, "InvalidRedisUrl");
        assert!(!found[0].2.contains("http://x"));
        let found = problems(
            "{limits: [{name: a, per: proxy, requests: 5, window: 1m}], store: {redis: {urlSecretRef: {name: redis, key: missing}}}}",
        );
        assert_eq!(found[0].1, "SecretNotFound");
    }

    #[test]
    fn usd_limits_narrowed_to_priced_models_are_fine() {
        assert!(
            problems(
                "{limits: [{name: a, per: proxy, usd: '5', window: day, models: ['openai:gpt-a']}]}"
            )
            .is_empty()
        );
    }

    #[test]
    fn decimals_parse_to_millionths() {
        assert_eq!(parse_micros("500.00"), Some(500_000_000));
        assert_eq!(parse_micros("0.125"), Some(125_000));
        assert_eq!(parse_micros("10"), Some(10_000_000));
        assert_eq!(parse_micros(".5"), Some(500_000));
        for bad in ["", ".", "-1", "1.2345678", "1e3", "abc", "1.2.3"] {
            assert_eq!(parse_micros(bad), None, "{bad}");
        }
        assert_eq!(format_micros(123_450_000), "123.45");
        assert_eq!(format_micros(12_000), "0.012");
        assert_eq!(format_micros(5_000_000), "5.00");
    }

    #[test]
    fn a_broken_budget_keeps_its_last_good_version_and_counters_carry_over() {
        let store = Store::default();
        let good = budget("{limits: [{name: rpm, per: proxy, requests: 2, window: 1m}]}");
        let compiled = crate::config::compile(&index(&good), &Defaults::default());
        store.apply(&compiled);
        let first = store.load().budgets.budgets[&ObjectKey::new("ai", "b")].clone();
        // Count one request in the served version.
        first.limits[0].counters.adjust("x", 0, 0);
        let bad = budget("{limits: [{name: rpm, per: nobody, requests: 2, window: 1m}]}");
        let compiled = crate::config::compile(&index(&bad), &Defaults::default());
        assert_eq!(compiled.problems.len(), 1);
        store.apply(&compiled);
        let kept = store.load().budgets.budgets[&ObjectKey::new("ai", "b")].clone();
        assert!(
            Arc::ptr_eq(&first, &kept),
            "the last good version keeps counting"
        );
        assert!(
            store
                .load()
                .budgets
                .applies(&ObjectKey::new("ai", "team-a"))
        );
        // An unrelated edit (another limit added) keeps the counters of the unchanged limit.
        let edited = budget(
            "{limits: [{name: rpm, per: proxy, requests: 2, window: 1m}, {name: tpm, per: proxy, tokens: 9, window: 1m}]}",
        );
        store.apply(&crate::config::compile(
            &index(&edited),
            &Defaults::default(),
        ));
        let next = store.load().budgets.budgets[&ObjectKey::new("ai", "b")].clone();
        assert!(Arc::ptr_eq(
            &first.limits[0].counters,
            &next.limits[0].counters
        ));
        // A raised limit keeps what was spent.
        let raised = budget("{limits: [{name: rpm, per: proxy, requests: 3, window: 1m}]}");
        store.apply(&crate::config::compile(
            &index(&raised),
            &Defaults::default(),
        ));
        let more = store.load().budgets.budgets[&ObjectKey::new("ai", "b")].clone();
        assert_eq!(more.limits[0].max, 3);
        assert!(Arc::ptr_eq(
            &first.limits[0].counters,
            &more.limits[0].counters
        ));
        // A limit that counts something else (another window) starts afresh.
        let changed = budget("{limits: [{name: rpm, per: proxy, requests: 3, window: 2m}]}");
        store.apply(&crate::config::compile(
            &index(&changed),
            &Defaults::default(),
        ));
        let last = store.load().budgets.budgets[&ObjectKey::new("ai", "b")].clone();
        assert!(!Arc::ptr_eq(
            &first.limits[0].counters,
            &last.limits[0].counters
        ));
        // Deleted: nothing counts any more.
        store.apply(&crate::config::compile(&index(BASE), &Defaults::default()));
        assert!(
            !store
                .load()
                .budgets
                .applies(&ObjectKey::new("ai", "team-a"))
        );
    }
}
