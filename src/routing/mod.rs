//! Virtual models, provider pools, retries and failover: which target serves a request, and
//! what happens when it fails before its first byte reached the client.
//!
//! ```text
//!  request for `smart` (a virtual model) or `azure:…` (a pool)
//!     │  Plan: weighted targets, ordered fallbacks, RetryPolicy        (config → plan)
//!     ▼
//!  attempt::run ── Health::pick (weights, P2C over latency, ejected left out)
//!     │   └─ send(target) ── caller: resolve, translate, send, settle to the first byte
//!     │                        policy::classify(status, headers, body) → Failure
//!     │   decide(Failure) → Retry (same target, after retry-after) | NextTarget | Fail
//!     ▼
//!  Finished { answer, served_by, attempts }  → response, audit line, metrics
//! ```
//!
//! [`policy`], [`health`] and [`attempt`] are pure of HTTP; [`http`] settles an axum response
//! to its first byte for the loop.

pub mod attempt;
pub mod health;
pub mod http;
pub mod policy;
pub mod pool;
pub mod router;

pub use attempt::{Attempt, AttemptRecord, Finished, Plan, Planned, run};
pub use health::{Ejection, Health, HealthKey};
pub use policy::{Decision, Failure, FailureKind, RetryPolicy, RetrySet};
