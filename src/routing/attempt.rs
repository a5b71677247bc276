//! The attempt loop: send a request to one target after another until one serves it, as the
//! retry policy allows, recording every attempt.
//!
//! The loop is generic over "send this attempt" (a closure), so it knows nothing of HTTP or
//! formats: the caller resolves the target, translates the request, sends it and settles the
//! answer to its first byte (see [`super::http`]). An attempt that is served has reached the
//! client's side of the line: nothing after it is retried.
//!
//! Order: the weighted targets first (each drawn by [`Health::pick`]; a target already tried
//! only when every other one was tried too; a quota-exhausted target never again), up to
//! `attempts` tries; then each fallback once, in order (ejected ones last).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::{Choice, Health, HealthKey};
use super::policy::{BASE_BACKOFF, Decision, Failure, FailureKind, RetryPolicy, decide};

/// One target the loop may send to.
#[derive(Clone, Debug)]
pub struct Planned<T> {
    /// What the closure receives.
    pub target: T,
    /// Its key in the health table.
    pub key: HealthKey,
    /// Its share of the traffic among the targets (ignored for fallbacks).
    pub weight: f64,
    /// How metrics and audit lines name it (`azure:gpt-5.4`, or `azure#1` for a pool member).
    pub label: Arc<str>,
}

/// Everything the loop needs for one request.
#[derive(Clone, Debug)]
pub struct Plan<T> {
    /// Weighted targets (at least one).
    pub targets: Vec<Planned<T>>,
    /// Ordered fallbacks.
    pub fallbacks: Vec<Planned<T>>,
    /// Retry rules.
    pub policy: RetryPolicy,
    /// Time the whole request may take: a `retry-after` longer than what is left of it moves
    /// to another target instead of waiting.
    pub budget: Duration,
}

/// What one attempt came to.
pub enum Attempt<R> {
    /// Served: its first byte is on its way to the client.
    Served {
        /// The answer.
        value: R,
        /// Time to first byte (for the latency average).
        ttfb: Duration,
    },
    /// Failed before its first byte; `value` is what the client gets if nothing else serves.
    Failed {
        /// Why.
        failure: Failure,
        /// The answer to give when this is the last attempt.
        value: R,
    },
}

/// One attempt as metrics and audit lines see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRecord {
    /// The target's label.
    #[serde(serialize_with = "as_str")]
    pub target: Arc<str>,
    /// `served`, or the failure kind (`server_error`, `rate_limited`, ...).
    pub outcome: &'static str,
    /// From send to settled.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
}

fn as_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// The loop's result.
pub struct Finished<R> {
    /// The answer for the client.
    pub value: R,
    /// The label of the target that served, if one did.
    pub served_by: Option<Arc<str>>,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptRecord>,
}

/// Run the attempts of `plan`. `send` is called with the target and the attempt number
/// (0-based); `on_attempt` sees each record as soon as it is known (metrics).
pub async fn run<T, R, F, Fut>(
    plan: &Plan<T>,
    health: &Health,
    mut send: F,
    mut on_attempt: impl FnMut(&AttemptRecord),
) -> Option<Finished<R>>
where
    F: FnMut(&T, u32) -> Fut,
    Fut: Future<Output = Attempt<R>>,
{
    let started = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut records = Vec::new();
    let mut last: Option<R> = None;
    let mut number = 0u32;
    let n = plan.targets.len();
    let mut tried = vec![false; n];
    let mut excluded = vec![false; n];
    let mut repeat: Option<(usize, Duration)> = None;
    let mut backoff = BASE_BACKOFF;
    let choices: Vec<Choice<'_>> = plan
        .targets
        .iter()
        .map(|t| Choice {
            key: &t.key,
            weight: t.weight,
        })
        .collect();

    let remaining = |now: Instant| plan.budget.saturating_sub(now.duration_since(started));

    // Weighted targets.
    while number < plan.policy.attempts.max(1) {
        let index = match repeat.take() {
            Some((index, wait)) => {
                tokio::time::sleep(wait).await;
                index
            }
            None => {
                let now = Instant::now();
                let fresh = health.pick(&choices, |i| !tried[i] && !excluded[i], now, &mut rng);
                match fresh {
                    Some(i) => i,
                    None => {
                        // Every target tried: again, after a short, growing pause.
                        let Some(i) = health.pick(&choices, |i| !excluded[i], now, &mut rng) else {
                            break;
                        };
                        let wait = backoff.min(remaining(now));
                        backoff = backoff.saturating_mul(2);
                        tokio::time::sleep(wait).await;
                        i
                    }
                }
            }
        };
        let planned = &plan.targets[index];
        tried[index] = true;
        let outcome = attempt(
            planned,
            number,
            &mut send,
            health,
            &mut records,
            &mut on_attempt,
        )
        .await;
        number += 1;
        match outcome {
            Step::Served(value) => {
                return Some(Finished {
                    value,
                    served_by: Some(planned.label.clone()),
                    attempts: records,
                });
            }
            Step::Failed(failure, value) => {
                last = Some(value);
                match decide(&plan.policy, failure, remaining(Instant::now())) {
                    Decision::Fail => {
                        return last.map(|value| Finished {
                            value,
                            served_by: None,
                            attempts: records,
                        });
                    }
                    Decision::Retry(wait) => repeat = Some((index, wait)),
                    Decision::NextTarget => {
                        // Quota gone, or a wait longer than the request has: not this one again.
                        if failure.kind == FailureKind::QuotaExhausted
                            || failure.retry_after.is_some()
                        {
                            excluded[index] = true;
                        }
                    }
                }
            }
        }
    }

    // Fallbacks, once each, healthy ones first.
    let now = Instant::now();
    let mut order: Vec<usize> = (0..plan.fallbacks.len()).collect();
    order.sort_by_key(|&i| health.is_ejected(&plan.fallbacks[i].key, now));
    for i in order {
        let planned = &plan.fallbacks[i];
        match attempt(
            planned,
            number,
            &mut send,
            health,
            &mut records,
            &mut on_attempt,
        )
        .await
        {
            Step::Served(value) => {
                return Some(Finished {
                    value,
                    served_by: Some(planned.label.clone()),
                    attempts: records,
                });
            }
            Step::Failed(failure, value) => {
                number += 1;
                last = Some(value);
                if decide(&plan.policy, failure, remaining(Instant::now())) == Decision::Fail {
                    break;
                }
            }
        }
    }
    last.map(|value| Finished {
        value,
        served_by: None,
        attempts: records,
    })
}

enum Step<R> {
    Served(R),
    Failed(Failure, R),
}

async fn attempt<T, R, F, Fut>(
    planned: &Planned<T>,
    number: u32,
    send: &mut F,
    health: &Health,
    records: &mut Vec<AttemptRecord>,
    on_attempt: &mut impl FnMut(&AttemptRecord),
) -> Step<R>
where
    F: FnMut(&T, u32) -> Fut,
    Fut: Future<Output = Attempt<R>>,
{
    let began = Instant::now();
    let result = send(&planned.target, number).await;
    let duration = began.elapsed();
    let (step, outcome, health_outcome) = match result {
        Attempt::Served { value, ttfb } => (Step::Served(value), "served", Ok(ttfb)),
        Attempt::Failed { failure, value } => (
            Step::Failed(failure, value),
            failure.kind.as_str(),
            Err(failure.kind),
        ),
    };
    health.record(&planned.key, health_outcome, Instant::now());
    let record = AttemptRecord {
        target: planned.label.clone(),
        outcome,
        duration,
    };
    on_attempt(&record);
    records.push(record);
    step
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::policy::RetrySet;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn planned(name: &str, weight: f64) -> Planned<String> {
        Planned {
            target: name.to_owned(),
            key: HealthKey {
                upstream: name.len() as u64 * 1000 + name.bytes().map(u64::from).sum::<u64>(),
                model: Arc::from(name),
            },
            weight,
            label: Arc::from(name),
        }
    }

    fn plan(targets: &[(&str, f64)], fallbacks: &[&str], attempts: u32) -> Plan<String> {
        Plan {
            targets: targets.iter().map(|(n, w)| planned(n, *w)).collect(),
            fallbacks: fallbacks.iter().map(|n| planned(n, 0.0)).collect(),
            policy: RetryPolicy {
                attempts,
                ..RetryPolicy::default_multi()
            },
            budget: Duration::from_secs(5),
        }
    }

    /// A scripted upstream: each target answers from its queue of outcomes (`ok` when empty).
    fn script(
        answers: &[(&str, &[Option<Failure>])],
    ) -> impl FnMut(&String, u32) -> std::future::Ready<Attempt<String>> {
        let mut queues: HashMap<String, Vec<Option<Failure>>> = answers
            .iter()
            .map(|(n, a)| (n.to_string(), a.iter().rev().copied().collect()))
            .collect();
        move |target: &String, _| {
            let next = queues.get_mut(target).and_then(Vec::pop).flatten();
            std::future::ready(match next {
                None => Attempt::Served {
                    value: format!("{target} ok"),
                    ttfb: Duration::from_millis(1),
                },
                Some(failure) => Attempt::Failed {
                    failure,
                    value: format!("{target} {}", failure.kind.as_str()),
                },
            })
        }
    }

    fn outcomes(f: &Finished<String>) -> Vec<String> {
        f.attempts
            .iter()
            .map(|r| format!("{}={}", r.target, r.outcome))
            .collect()
    }

    const E500: Option<Failure> = Some(Failure::of(FailureKind::ServerError));
    const QUOTA: Option<Failure> = Some(Failure::of(FailureKind::QuotaExhausted));
    const BAD: Option<Failure> = Some(Failure::of(FailureKind::Rejected));

    #[tokio::test]
    async fn a_failing_target_is_followed_by_the_next() {
        let health = Health::default();
        let p = plan(&[("a", 1.0), ("b", 0.0)], &[], 3);
        let f = run(&p, &health, script(&[("a", &[E500])]), |_| {}).await;
        let f = f.unwrap_or_else(|| panic!("no result"));
        assert_eq!(f.value, "b ok");
        assert_eq!(outcomes(&f), ["a=server_error", "b=served"]);
        assert_eq!(f.served_by.as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn quota_is_never_retried_on_the_same_target() {
        let health = Health::default();
        // One target with quota gone, attempts to spare: it is tried once, then the fallback.
        let p = plan(&[("a", 1.0)], &["z"], 3);
        let f = run(
            &p,
            &health,
            script(&[("a", &[QUOTA, QUOTA, QUOTA])]),
            |_| {},
        )
        .await;
        let f = f.unwrap_or_else(|| panic!("no result"));
        assert_eq!(outcomes(&f), ["a=quota_exhausted", "z=served"]);
    }

    #[tokio::test]
    async fn a_bad_request_fails_at_once() {
        let health = Health::default();
        let p = plan(&[("a", 1.0), ("b", 0.0)], &["z"], 3);
        let f = run(&p, &health, script(&[("a", &[BAD])]), |_| {}).await;
        let f = f.unwrap_or_else(|| panic!("no result"));
        assert_eq!(f.value, "a rejected");
        assert_eq!(outcomes(&f), ["a=rejected"]);
        assert!(f.served_by.is_none());
    }

    #[tokio::test]
    async fn retry_after_is_honoured_when_it_fits_and_moves_on_when_not() {
        let health = Health::default();
        let short = Some(Failure {
            kind: FailureKind::RateLimited,
            retry_after: Some(Duration::from_millis(30)),
        });
        let p = plan(&[("a", 1.0), ("b", 0.0)], &[], 3);
        let began = Instant::now();
        let f = run(&p, &health, script(&[("a", &[short])]), |_| {}).await;
        let f = f.unwrap_or_else(|| panic!("no result"));
        assert_eq!(outcomes(&f), ["a=rate_limited", "a=served"]);
        assert!(began.elapsed() >= Duration::from_millis(30));

        let long = Some(Failure {
            kind: FailureKind::RateLimited,
            retry_after: Some(Duration::from_secs(3600)),
        });
        let began = Instant::now();
        let f = run(&p, &health, script(&[("a", &[long, long])]), |_| {}).await;
        let f = f.unwrap_or_else(|| panic!("no result"));
        assert_eq!(outcomes(&f), ["a=rate_limited", "b=served"]);
        assert!(began.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn attempts_bound_the_tries_then_fallbacks_in_order() {
        let health = Health::default();
        let p = plan(&[("a", 1.0)], &["y", "z"], 2);
        let f = run(
            &p,
            &health,
            script(&[("a", &[E500, E500]), ("y", &[E500])]),
            |_| {},
        )
        .await;
        let f = f.unwrap_or_else(|| panic!("no result"));
        assert_eq!(
            outcomes(&f),
            [
                "a=server_error",
                "a=server_error",
                "y=server_error",
                "z=served"
            ]
        );
        // Everything fails: the last failure is the answer.
        let p = plan(&[("a", 1.0)], &[], 2);
        let f = run(&p, &health, script(&[("a", &[E500, E500])]), |_| {}).await;
        let f = f.unwrap_or_else(|| panic!("no result"));
        assert_eq!(f.value, "a server_error");
        assert_eq!(f.attempts.len(), 2);
    }

    #[tokio::test]
    async fn retry_on_limits_what_is_retried() {
        let health = Health::default();
        let mut p = plan(&[("a", 1.0), ("b", 1.0)], &[], 3);
        p.policy.on = RetrySet::of(&[crate::crd::RetryOn::Timeout]);
        let calls = AtomicU32::new(0);
        let f = run(
            &p,
            &health,
            |_: &String, _| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Attempt::Failed {
                    failure: Failure::of(FailureKind::ServerError),
                    value: "x".to_owned(),
                })
            },
            |_| {},
        )
        .await;
        assert!(f.is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_ejected_target_gets_no_traffic_while_another_is_healthy() {
        let health = Health::default();
        let p = plan(&[("a", 1.0), ("b", 1.0)], &[], 1);
        let now = Instant::now();
        for _ in 0..3 {
            health.record(&p.targets[0].key, Err(FailureKind::ServerError), now);
        }
        let mut seen = Vec::new();
        for _ in 0..50 {
            let f = run(&p, &health, script(&[]), |r| {
                seen.push(r.target.to_string())
            })
            .await;
            assert!(f.is_some());
        }
        assert!(seen.iter().all(|t| t == "b"), "{seen:?}");
    }
}
