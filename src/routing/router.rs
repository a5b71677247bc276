//! Failover on the Model Router: the plan of a request for a virtual model (its targets and
//! fallbacks, each expanded to the members of its pool) or for a pool's model, and the
//! serving of it: every attempt is settled to its first byte, counted in the metrics and the
//! audit line, and the answer names the target that served (`x-portcullis-served-by`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::attempt::{Plan, Planned, run};
use super::health::HealthKey;
use super::http::{Answer, settle};
use crate::config::virtual_models::{ModelRef, VirtualModel};
use crate::config::{ProxyTable, Route};
use crate::policy::access::permits_model;
use crate::proxy::{AppState, Exchange};

/// The response header naming the target that served.
pub const SERVED_BY: &str = "x-portcullis-served-by";

/// One place an attempt can go: a provider (a pool's member) and the model as it names it.
#[derive(Clone, Debug)]
pub struct Hop {
    /// The route, with `upstream` set to the member this hop goes to.
    pub route: Route,
    /// The model as that provider names it.
    pub model: String,
    /// `prefix:model`, for `x-portcullis-served-by`.
    pub served_by: String,
}

fn hops(table: &ProxyTable, target: &ModelRef, weight: f64) -> Vec<Planned<Hop>> {
    let Some(route) = table.route(&target.prefix) else {
        return Vec::new();
    };
    let members = route.pool.len();
    route
        .pool
        .iter()
        .map(|member| {
            let label = if members > 1 {
                format!("{target}@{}", member.provider.name)
            } else {
                target.to_string()
            };
            Planned {
                target: Hop {
                    route: Route {
                        prefix: route.prefix.clone(),
                        upstream: member.clone(),
                        pool: route.pool.clone(),
                        retry: route.retry.clone(),
                    },
                    model: target.model.clone(),
                    served_by: target.to_string(),
                },
                key: HealthKey {
                    upstream: member.catalog_key,
                    model: Arc::from(target.model.as_str()),
                },
                weight: weight / members as f64,
                label: Arc::from(label),
            }
        })
        .collect()
}

/// The longest time the request may take: the slowest target's timeout.
fn budget(targets: &[Planned<Hop>]) -> Duration {
    targets
        .iter()
        .map(|t| t.target.route.upstream.timeout)
        .max()
        .unwrap_or(crate::config::compile::DEFAULT_TIMEOUT)
}

/// The plan of a request for a virtual model, with the targets and fallbacks the caller may
/// use. `Err` names what the caller may not use (403).
pub fn plan_virtual(
    table: &ProxyTable,
    model: &VirtualModel,
    identity: &str,
) -> Result<Plan<Hop>, String> {
    let access = &table.policy.access;
    if !permits_model(access, identity, &model.name) {
        return Err(format!("model `{}`", model.name));
    }
    let allowed = |m: &ModelRef| permits_model(access, identity, &m.to_string());
    let targets: Vec<Planned<Hop>> = model
        .targets
        .iter()
        .filter(|t| allowed(&t.model))
        .flat_map(|t| hops(table, &t.model, f64::from(t.weight)))
        .collect();
    let fallbacks: Vec<Planned<Hop>> = model
        .fallbacks
        .iter()
        .filter(|m| allowed(m))
        .flat_map(|m| hops(table, m, 0.0))
        .collect();
    // With no target allowed, the loop goes straight to the fallbacks.
    if targets.is_empty() && fallbacks.is_empty() {
        return Err(format!("any target of model `{}`", model.name));
    }
    let budget = budget(&targets).max(budget(&fallbacks));
    Ok(Plan {
        targets,
        fallbacks,
        policy: model.retry.clone(),
        budget,
    })
}

/// The plan of a request for `prefix:model` when its prefix is a pool, or the proxy has a
/// `retry` rule; `None` when it goes to one provider once.
pub fn plan_route(table: &ProxyTable, route: &Route, model: &str) -> Option<Plan<Hop>> {
    let policy = table.failover.policy_for(route);
    if !route.is_pool() && policy.attempts <= 1 {
        return None;
    }
    let members = route.pool.len();
    let targets: Vec<Planned<Hop>> = route
        .pool
        .iter()
        .map(|member| Planned {
            target: Hop {
                route: Route {
                    prefix: route.prefix.clone(),
                    upstream: member.clone(),
                    pool: route.pool.clone(),
                    retry: route.retry.clone(),
                },
                model: model.to_owned(),
                served_by: format!("{}:{model}", route.prefix),
            },
            // Keyed by member only: the caller names the model, the table stays bounded.
            key: HealthKey {
                upstream: member.catalog_key,
                model: Arc::from(""),
            },
            weight: 1.0,
            label: Arc::from(if members > 1 {
                format!("{}@{}", route.prefix, member.provider.name)
            } else {
                route.prefix.clone()
            }),
        })
        .collect();
    let budget = budget(&targets);
    Some(Plan {
        targets,
        fallbacks: Vec::new(),
        policy,
        budget,
    })
}

/// The request's exchange, shared with the attempt being sent (each attempt locks it; an
/// attempt abandoned at `firstByteTimeout` lets go of it when dropped).
pub type ExchangeCell<'a> = tokio::sync::Mutex<&'a mut Exchange>;

/// Serve a plan: `send(hop)` resolves, translates and sends one attempt (locking `exchange`
/// while it runs).
pub async fn serve<F, Fut>(
    state: &AppState,
    plan: &Plan<Hop>,
    exchange: &ExchangeCell<'_>,
    mut send: F,
) -> Answer
where
    F: FnMut(Hop) -> Fut,
    Fut: Future<Output = Answer>,
{
    let first_byte = plan.policy.first_byte_timeout;
    let metrics = state.metrics.clone();
    let proxy = exchange.lock().await.proxy.clone();
    let finished = run(
        plan,
        &state.health,
        |hop: &Hop, _| {
            let provider = hop.route.upstream.provider_type;
            let prefix = hop.route.prefix.clone();
            let sent = send(hop.clone());
            async move { settle(sent, provider, &prefix, first_byte).await }
        },
        |record| {
            let labels = crate::telemetry::AttemptLabels {
                proxy: proxy.clone(),
                target: record.target.to_string(),
                outcome: record.outcome,
            };
            metrics.upstream_attempts.get_or_create(&labels).inc();
            metrics
                .upstream_attempt_duration
                .get_or_create(&labels)
                .observe(record.duration.as_secs_f64());
        },
    )
    .await;
    let mut exchange = exchange.lock().await;
    let Some(finished) = finished else {
        return Err(crate::proxy::ApiError::UpstreamUnreachable {
            prefix: exchange.provider.clone(),
            detail: "no target could be tried".to_owned(),
        });
    };
    let served = finished.served_by.as_ref().and_then(|label| {
        plan.targets
            .iter()
            .chain(&plan.fallbacks)
            .find(|p| &p.label == label)
    });
    let attempts = finished.attempts;
    crate::policy::audit::update(&exchange.audit, |d| d.attempts = attempts);
    let mut value = finished.value;
    if let Some(served) = served {
        exchange.provider = served.target.route.prefix.clone();
        if let (Ok(response), Ok(v)) = (&mut value, HeaderValue::from_str(&served.target.served_by))
        {
            response.headers_mut().insert(SERVED_BY, v);
        }
    }
    value
}
