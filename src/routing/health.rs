//! Passive health and balancing: what every attempt taught about a target (latency, failures
//! in a row, ejection), and the choice of the next target from that.
//!
//! - **Ejection.** [`Ejection::consecutive_failures`] failures in a row eject a target for
//!   [`Ejection::base`]; when it fails again on its first try back, the interval doubles, up
//!   to [`Ejection::max`]. A success clears both.
//! - **Choice.** Ejected targets are left out while a healthy one exists. Among the healthy,
//!   a target is drawn by weight; a second one of the same weight is drawn too, and the one
//!   with the lower recent latency (an EWMA of its time to first byte) wins ("power of two
//!   choices"): weights hold between weight classes, latency decides within one.
//!
//! The table is keyed by [`HealthKey`]s that come from the configuration (a provider and a
//! configured model, or a pool member), never from a caller's model name, and is bounded by
//! [`MAX_ENTRIES`] all the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::policy::FailureKind;

/// Most targets remembered; beyond it, healthy entries are forgotten first.
pub const MAX_ENTRIES: usize = 4096;

/// Weight of the newest sample in the latency average.
const EWMA_ALPHA: f64 = 0.3;

/// The latency sample a failure counts as, at least (milliseconds).
const FAILURE_PENALTY_MS: f64 = 1000.0;

/// A target as the health table knows it: the upstream's catalog key and the model (empty
/// for a pool member chosen for any model).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthKey {
    /// The upstream ([`crate::config::Upstream::catalog_key`]).
    pub upstream: u64,
    /// The configured model, or empty.
    pub model: Arc<str>,
}

/// When a target is ejected and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Failures in a row that eject a target.
    pub consecutive_failures: u32,
    /// First ejection interval.
    pub base: Duration,
    /// Longest ejection interval.
    pub max: Duration,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct State {
    /// Average time to first byte, in milliseconds (`None`: never measured).
    ewma_ms: Option<f64>,
    /// Failures in a row.
    consecutive: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// Ejections in a row (the interval doubles with each).
    ejections: u32,
}

impl State {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| t > now)
    }
}

/// One target offered to [`Health::pick`].
#[derive(Clone, Debug)]
pub struct Choice<'a> {
    /// Its health key.
    pub key: &'a HealthKey,
    /// Its weight (0: only when no weighted target is left).
    pub weight: f64,
}

/// The process-wide health table, shared by every request.
#[derive(Debug, Default)]
pub struct Health {
    table: Mutex<HashMap<HealthKey, State>>,
    ejection: Ejection,
}

impl Health {
    /// A table with these ejection settings.
    pub fn new(ejection: Ejection) -> Self {
        Self {
            table: Mutex::default(),
            ejection,
        }
    }

    /// The ejection settings.
    pub fn ejection(&self) -> Ejection {
        self.ejection
    }

    /// Record an attempt's outcome: its time to first byte on success, or its failure.
    pub fn record(&self, key: &HealthKey, outcome: Result<Duration, FailureKind>, now: Instant) {
        let mut table = self.table.lock();
        if table.len() >= MAX_ENTRIES && !table.contains_key(key) {
            table.retain(|_, s| s.ejected(now) || s.consecutive > 0);
            if table.len() >= MAX_ENTRIES {
                table.clear();
            }
        }
        let state = table.entry(key.clone()).or_default();
        match outcome {
            Ok(latency) => {
                let ms = latency.as_secs_f64() * 1000.0;
                state.ewma_ms = Some(match state.ewma_ms {
                    Some(avg) => avg + EWMA_ALPHA * (ms - avg),
                    None => ms,
                });
                state.consecutive = 0;
                state.ejections = 0;
                state.ejected_until = None;
            }
            Err(kind) if kind.counts_against_target() => {
                // A failure weighs like a slow answer, so latency stops favouring it.
                state.ewma_ms = Some(match state.ewma_ms {
                    Some(avg) => avg + EWMA_ALPHA * ((avg * 2.0).max(FAILURE_PENALTY_MS) - avg),
                    None => FAILURE_PENALTY_MS,
                });
                state.consecutive = state.consecutive.saturating_add(1);
                // Back from an ejection: one failure sends it out again, for longer.
                let threshold = if state.ejections > 0 {
                    1
                } else {
                    self.ejection.consecutive_failures.max(1)
                };
                if state.consecutive >= threshold && !state.ejected(now) {
                    let factor = 1u32 << state.ejections.min(16);
                    let interval = self
                        .ejection
                        .base
                        .saturating_mul(factor)
                        .min(self.ejection.max);
                    state.ejected_until = Some(now + interval);
                    state.ejections = state.ejections.saturating_add(1);
                    state.consecutive = 0;
                }
            }
            Err(_) => {}
        }
    }

    /// Whether a target is ejected now.
    pub fn is_ejected(&self, key: &HealthKey, now: Instant) -> bool {
        self.table.lock().get(key).is_some_and(|s| s.ejected(now))
    }

    /// Choose among `choices` (indices where `allowed` is true). Ejected targets only when
    /// every allowed one is ejected (then the one back soonest). `None` when none is allowed.
    pub fn pick(
        &self,
        choices: &[Choice<'_>],
        allowed: impl Fn(usize) -> bool,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let table = self.table.lock();
        let state = |i: usize| table.get(choices[i].key);
        let allowed: Vec<usize> = (0..choices.len()).filter(|&i| allowed(i)).collect();
        let healthy: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|&i| !state(i).is_some_and(|s| s.ejected(now)))
            .collect();
        if healthy.is_empty() {
            return allowed
                .into_iter()
                .min_by_key(|&i| state(i).and_then(|s| s.ejected_until));
        }
        let weighted: Vec<usize> = healthy
            .iter()
            .copied()
            .filter(|&i| choices[i].weight > 0.0)
            .collect();
        let pool = if weighted.is_empty() {
            &healthy
        } else {
            &weighted
        };
        let weight = |i: usize| {
            if weighted.is_empty() {
                1.0
            } else {
                choices[i].weight
            }
        };
        let first = draw(pool, &weight, rng)?;
        // Power of two choices within the same weight.
        let peers: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| i != first && weight(i) == weight(first))
            .collect();
        if peers.is_empty() {
            return Some(first);
        }
        let second = peers[rng.usize(..peers.len())];
        let latency = |i: usize| state(i).and_then(|s| s.ewma_ms).unwrap_or(0.0);
        Some(if latency(second) < latency(first) {
            second
        } else {
            first
        })
    }
}

/// Draw one index of `pool` with probability proportional to its weight.
fn draw(pool: &[usize], weight: &impl Fn(usize) -> f64, rng: &mut fastrand::Rng) -> Option<usize> {
    let total: f64 = pool.iter().map(|&i| weight(i)).sum();
    if total.is_nan() || total <= 0.0 {
        return pool.first().copied();
    }
    let mut x = rng.f64() * total;
    for &i in pool {
        x -= weight(i);
        if x < 0.0 {
            return Some(i);
        }
    }
    pool.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> HealthKey {
        HealthKey {
            upstream: n,
            model: Arc::from("m"),
        }
    }

    #[test]
    fn weights_hold_between_classes() {
        let health = Health::default();
        let (a, b) = (key(1), key(2));
        let choices = [
            Choice {
                key: &a,
                weight: 3.0,
            },
            Choice {
                key: &b,
                weight: 1.0,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let now = Instant::now();
        let n = 20_000;
        let firsts = (0..n)
            .filter(|_| health.pick(&choices, |_| true, now, &mut rng) == Some(0))
            .count();
        let share = firsts as f64 / n as f64;
        assert!((0.73..0.77).contains(&share), "{share}");
    }

    #[test]
    fn within_equal_weights_the_faster_wins_more_often() {
        let health = Health::default();
        let (fast, slow) = (key(1), key(2));
        let now = Instant::now();
        for _ in 0..5 {
            health.record(&fast, Ok(Duration::from_millis(20)), now);
            health.record(&slow, Ok(Duration::from_millis(400)), now);
        }
        let choices = [
            Choice {
                key: &fast,
                weight: 1.0,
            },
            Choice {
                key: &slow,
                weight: 1.0,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(1);
        let n = 1000;
        let fast_picks = (0..n)
            .filter(|_| health.pick(&choices, |_| true, now, &mut rng) == Some(0))
            .count();
        // P2C over two: the faster wins whenever both are drawn, i.e. always here.
        assert_eq!(fast_picks, n);
    }

    #[test]
    fn a_failing_target_loses_to_a_measured_one() {
        let health = Health::default();
        let (failing, fine) = (key(1), key(2));
        let now = Instant::now();
        health.record(&fine, Ok(Duration::from_millis(300)), now);
        health.record(&failing, Err(FailureKind::ServerError), now);
        let choices = [
            Choice {
                key: &failing,
                weight: 1.0,
            },
            Choice {
                key: &fine,
                weight: 1.0,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..100 {
            assert_eq!(health.pick(&choices, |_| true, now, &mut rng), Some(1));
        }
    }

    #[test]
    fn zero_weights_serve_only_when_nothing_weighted_is_left() {
        let health = Health::default();
        let (a, b) = (key(1), key(2));
        let choices = [
            Choice {
                key: &a,
                weight: 1.0,
            },
            Choice {
                key: &b,
                weight: 0.0,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(health.pick(&choices, |_| true, now, &mut rng), Some(0));
        }
        assert_eq!(health.pick(&choices, |i| i == 1, now, &mut rng), Some(1));
        assert_eq!(health.pick(&choices, |_| false, now, &mut rng), None);
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_interval() {
        let health = Health::default();
        let (a, b) = (key(1), key(2));
        let t0 = Instant::now();
        health.record(&a, Err(FailureKind::ServerError), t0);
        health.record(&a, Err(FailureKind::Timeout), t0);
        assert!(!health.is_ejected(&a, t0));
        // A refused request says nothing about the target.
        health.record(&a, Err(FailureKind::Rejected), t0);
        assert!(!health.is_ejected(&a, t0));
        health.record(&a, Err(FailureKind::ConnectError), t0);
        assert!(health.is_ejected(&a, t0));

        let choices = [
            Choice {
                key: &a,
                weight: 100.0,
            },
            Choice {
                key: &b,
                weight: 1.0,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..50 {
            assert_eq!(health.pick(&choices, |_| true, t0, &mut rng), Some(1));
        }
        // Every target ejected: the one back soonest is still tried (never a dead end).
        assert_eq!(health.pick(&choices, |i| i == 0, t0, &mut rng), Some(0));

        let t1 = t0 + Duration::from_secs(5);
        assert!(!health.is_ejected(&a, t1));
        // Fails on its first try back: out again, for twice as long.
        health.record(&a, Err(FailureKind::ServerError), t1);
        assert!(health.is_ejected(&a, t1 + Duration::from_secs(9)));
        assert!(!health.is_ejected(&a, t1 + Duration::from_secs(10)));
        // A success clears it.
        let t2 = t1 + Duration::from_secs(10);
        health.record(&a, Ok(Duration::from_millis(5)), t2);
        health.record(&a, Err(FailureKind::ServerError), t2);
        assert!(!health.is_ejected(&a, t2));
    }

    #[test]
    fn the_table_is_bounded() {
        let health = Health::default();
        let now = Instant::now();
        for n in 0..(MAX_ENTRIES as u64 + 10) {
            health.record(&key(n), Ok(Duration::from_millis(1)), now);
        }
        assert!(health.table.lock().len() <= MAX_ENTRIES);
    }
}
