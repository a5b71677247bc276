//! `LlmBudget` → [`Budget`]: pure validation of the spec against the index (proxies, Secrets,
//! provider prices). Every problem names the field and a CamelCase reason.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::window::Window;
use super::{Budget, Limit, Per, Price, Prices, StoreSpec, Unit};
use crate::config::compile::Problem;
use crate::config::{Index, ObjectKey};
use crate::crd::{LlmBudget, LlmProvider, ModelPrice, StoreUnavailable};

/// Output tokens reserved when a request names no maximum.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;
/// Kind name in problems.
pub const KIND: &str = "LlmBudget";

/// Budgets of one compilation.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// Budgets that compiled cleanly.
    pub good: BTreeMap<ObjectKey, Arc<Budget>>,
    /// Budgets with problems (they keep their last good version, if any).
    pub failed: BTreeSet<ObjectKey>,
}

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

/// A decimal string (`"500.00"`, `"0.125"`) in millionths.
pub fn parse_micros(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let (whole, frac) = raw.split_once('.').unwrap_or((raw, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    whole.checked_mul(1_000_000)?.checked_add(frac)
}

/// Millionths as a decimal string with two to six decimals (`123.45`).
pub fn format_micros(micros: u64) -> String {
    let s = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    let trimmed = s.trim_end_matches('0');
    match trimmed.split_once('.') {
        Some((w, f)) if f.len() < 2 => format!("{w}.{f:0<2}"),
        _ => trimmed.to_owned(),
    }
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
    let mut prices: HashMap<(ObjectKey, String), Arc<Prices>> = HashMap::new();
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
                    prices.insert(((*proxy_key).clone(), prefix.clone()), Arc::new(p));
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
        if l.name.is_empty() || !crate::config::compile::valid_prefix(&l.name) {
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
                let price = prices.get(&(proxy.clone(), prefix.clone()));
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
            let mut h = DefaultHasher::new();
            (&l.name, per, unit, max, window, &l.models, &l.identities).hash(&mut h);
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
