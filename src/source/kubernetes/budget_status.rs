//! The status of an `LlmBudget`: `Accepted`, `ResolvedRefs` (its proxies and its Redis
//! Secret), `Programmed` (the data plane counts this generation), and the most-used keys of
//! each limit as this replica (the leader) sees them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::status::{condition, failed, with_field};
use crate::budget::{Budget, StoreSpec, window};
use crate::config::{Compiled, ObjectKey};
use crate::crd::{BudgetUsage, LlmBudget, LlmBudgetStatus};

/// Keys shown per limit.
pub const TOP_KEYS: usize = 5;

const REF_REASONS: [&str; 2] = ["ProxyNotFound", "SecretNotFound"];

/// The status of one budget. `served`: the version the data plane counts with, if any.
pub fn budget_status(
    budget: &LlmBudget,
    key: &ObjectKey,
    compiled: &Compiled,
    served: Option<&Budget>,
    now: &Time,
) -> LlmBudgetStatus {
    let generation = budget.metadata.generation;
    let (mut refs, mut spec) = (Vec::new(), Vec::new());
    for p in compiled.problems_of(crate::budget::KIND, key) {
        if REF_REASONS.contains(&p.reason) {
            refs.push((p.reason, with_field(p)));
        } else {
            spec.push((p.reason, with_field(p)));
        }
    }
    let accepted = failed("Accepted", &spec, generation, now).unwrap_or_else(|| {
        condition(
            "Accepted",
            Some(true),
            "Accepted",
            "the spec is valid",
            generation,
            now,
        )
    });
    let resolved = failed("ResolvedRefs", &refs, generation, now).unwrap_or_else(|| {
        condition(
            "ResolvedRefs",
            Some(true),
            "ResolvedRefs",
            "every proxy and Secret it names exists",
            generation,
            now,
        )
    });
    let has_problems = !(refs.is_empty() && spec.is_empty());
    let programmed = match served {
        Some(b) if b.generation == generation && !has_problems => condition(
            "Programmed",
            Some(true),
            "Programmed",
            "the data plane counts requests against this generation",
            generation,
            now,
        ),
        Some(b) => condition(
            "Programmed",
            Some(false),
            "Invalid",
            format!(
                "this generation has problems (see Accepted and ResolvedRefs); generation {} keeps counting",
                b.generation
                    .map_or_else(|| "?".to_owned(), |g| g.to_string())
            ),
            generation,
            now,
        ),
        None => condition(
            "Programmed",
            Some(false),
            if has_problems { "Invalid" } else { "Pending" },
            if has_problems {
                "not counted: fix the problems in Accepted and ResolvedRefs"
            } else {
                "the data plane does not count this generation yet"
            },
            generation,
            now,
        ),
    };
    let now_ms = window::now_ms();
    let usage = served
        .map(|b| {
            b.limits
                .iter()
                .flat_map(|l| {
                    let pos = l.window.position(now_ms);
                    let resets = match l.window {
                        window::Window::Rolling(len) => pos.bucket_end_ms + len,
                        _ => pos.bucket_end_ms,
                    };
                    l.counters
                        .top(l.window, now_ms, TOP_KEYS)
                        .into_iter()
                        .map(move |u| BudgetUsage {
                            limit: l.name.clone(),
                            key: u.key,
                            used: l.unit.show(u.used),
                            max: l.unit.show(l.max),
                            resets_at: Some(window::rfc3339(resets)),
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    LlmBudgetStatus {
        observed_generation: generation,
        conditions: vec![accepted, resolved, programmed],
        limits: served.map(|b| b.limits.len() as i64),
        store: served.map(|b| {
            match b.store {
                StoreSpec::InProcess => "inProcess",
                StoreSpec::Redis(_) => "redis",
            }
            .to_owned()
        }),
        usage,
    }
}
