//! One configuration source's reload step, shared by the file and Kubernetes sources:
//! compile (each object's last good version), swap the snapshot in, and log only what
//! changed plus a summary.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Compiled, Compiler, Defaults, Index, Object, ObjectKey, Problem, Store};
use crate::telemetry::Metrics;

/// How many changed proxies one reload logs route by route.
const LOGGED_PROXIES: usize = 200;

/// One configuration source's compile state ([`Compiler`]: each object's last good version)
/// and the problems it has already logged, so a reload logs only what changed.
pub struct Reloader {
    /// Compile state of the source.
    pub compiler: Compiler,
    reported: HashSet<Problem>,
}

impl Reloader {
    /// A reloader with these process-wide defaults.
    pub fn new(defaults: Defaults) -> Self {
        Self {
            compiler: Compiler::new(defaults),
            reported: HashSet::new(),
        }
    }

    /// Compile objects and swap them in (see [`Reloader::apply_index`]).
    pub fn apply_objects(
        &mut self,
        store: &Store,
        metrics: &Metrics,
        objects: Vec<Object>,
        source: &'static str,
        source_problems: usize,
        seen_at: Instant,
    ) -> Compiled {
        self.apply_index(
            store,
            metrics,
            &Index::from_objects(objects),
            source,
            source_problems,
            seen_at,
        )
    }

    /// Compile an index (each object in its newest version when valid, else its last good
    /// version), swap it in, log what changed (new problems, routes of changed proxies,
    /// proxies no longer served) and a summary, and return the compilation (the Kubernetes
    /// source derives status from it). `source_problems` counts problems the source found
    /// before compilation (unusable documents), for the reload metric.
    pub fn apply_index(
        &mut self,
        store: &Store,
        metrics: &Metrics,
        index: &Index,
        source: &'static str,
        source_problems: usize,
        seen_at: Instant,
    ) -> Compiled {
        let compiled = self.compiler.compile(index);
        let mut fresh_problems: BTreeSet<&ObjectKey> = BTreeSet::new();
        for problem in &compiled.problems {
            if self.reported.contains(problem) {
                continue;
            }
            fresh_problems.insert(&problem.object);
            tracing::warn!(
                kind = problem.kind,
                object = %problem.object,
                field = %problem.field,
                reason = problem.reason,
                "configuration problem: {}",
                problem.message
            );
        }
        let resolved: Vec<&Problem> = self
            .reported
            .iter()
            .filter(|p| !compiled.problems.contains(p))
            .collect();
        for problem in resolved {
            tracing::info!(kind = problem.kind, object = %problem.object, field = %problem.field, reason = problem.reason, "configuration problem resolved");
        }
        self.reported = compiled.problems.iter().cloned().collect();
        for key in compiled.kept.iter().filter(|k| fresh_problems.contains(k)) {
            let generation = compiled
                .proxies
                .get(key)
                .and_then(|t| t.generation)
                .map_or_else(|| "?".to_owned(), |g| g.to_string());
            tracing::warn!(proxy = %key.proxy_id(), %generation, "proxy has problems; its last good version keeps serving");
        }
        for key in compiled
            .unserved
            .iter()
            .filter(|k| fresh_problems.contains(k))
        {
            tracing::warn!(proxy = %key.proxy_id(), "proxy has problems and never had a good version; not served");
        }
        for (key, upstream) in &compiled.kept_providers {
            if fresh_problems.contains(key) {
                tracing::warn!(provider = %key, generation = ?upstream.generation, "provider has problems; its last good version keeps serving");
            }
        }
        let report = store.apply(&compiled);
        let snapshot = store.load();
        for key in &report.removed {
            tracing::info!(proxy = %key.proxy_id(), "proxy no longer served");
        }
        let changed: Vec<&Arc<crate::config::ProxyTable>> = report
            .changed
            .iter()
            .filter_map(|k| snapshot.proxies.get(k))
            .collect();
        // Each changed proxy's routes, up to a bound: a first load of ten thousand proxies
        // logs a summary instead of fifty thousand lines (`portcullis check` prints the table).
        for table in changed.iter().take(LOGGED_PROXIES) {
            if table.policy.auth.is_none() {
                tracing::warn!(proxy = %table.key.proxy_id(), "proxy accepts anonymous callers (no spec.clientAuth)");
            }
            for route in &table.routes {
                tracing::info!(
                    proxy = %table.key.proxy_id(),
                    prefix = %route.prefix,
                    provider = %route.upstream.provider,
                    r#type = %route.upstream.provider_type,
                    upstream = %route.upstream.base_url,
                    router = %format!("/v1/model-router/{}/chat/completions", table.key.proxy_id()),
                    native = %format!("/v1/{}/{}/", route.prefix, table.key.proxy_id()),
                    "serving route"
                );
            }
            for entry in &table.not_ready {
                tracing::warn!(
                    proxy = %table.key.proxy_id(),
                    prefix = %entry.prefix,
                    provider = %entry.provider,
                    "provider entry not ready (answers 503 provider_not_ready): {}",
                    entry.message
                );
            }
        }
        if changed.len() > LOGGED_PROXIES {
            let routes: usize = changed
                .iter()
                .skip(LOGGED_PROXIES)
                .map(|t| t.routes.len())
                .sum();
            let anonymous = changed
                .iter()
                .skip(LOGGED_PROXIES)
                .filter(|t| t.policy.auth.is_none())
                .count();
            tracing::info!(
                proxies = changed.len() - LOGGED_PROXIES,
                routes,
                anonymous,
                "more proxies changed than are logged one by one; `portcullis check` prints every route"
            );
        }
        // Keyless credentials of changed proxies are obtained for real in the background, so
        // the log says at once whether the pod's identity works (Kubernetes status reports the
        // same as CredentialsReady).
        if !changed.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let partial = crate::config::Snapshot::new(
                changed
                    .iter()
                    .map(|t| (t.key.clone(), (*t).clone()))
                    .collect(),
                0,
            );
            runtime.spawn(async move {
                for (provider, result) in check_credentials(&partial).await {
                    match result {
                        Ok(()) => tracing::info!(provider = %provider, "credentials ready"),
                        Err(e) => {
                            tracing::warn!(provider = %provider, error = %e, "credentials not ready")
                        }
                    }
                }
            });
        }
        let swapped = !(report.changed.is_empty() && report.removed.is_empty());
        let result = match (
            compiled.problems.is_empty() && source_problems == 0,
            swapped,
        ) {
            (true, _) => "applied",
            (false, true) => "partial",
            (false, false) => "rejected",
        };
        metrics.reload(source, result, seen_at.elapsed());
        tracing::info!(
            version = report.version,
            proxies = snapshot.proxies.len(),
            changed = report.changed.len(),
            removed = report.removed.len(),
            problems = compiled.problems.len() + source_problems,
            kept = compiled.kept.len() + compiled.kept_providers.len(),
            unserved = compiled.unserved.len(),
            elapsed_ms = u64::try_from(seen_at.elapsed().as_millis()).unwrap_or(u64::MAX),
            "configuration applied"
        );
        compiled
    }
}

/// Obtain every minted credential of a snapshot for real (STS, metadata servers, …), once per
/// provider; static keys are not contacted here (whether they work shows in discovery).
pub async fn check_credentials(
    snapshot: &crate::config::Snapshot,
) -> Vec<(
    crate::config::ObjectKey,
    Result<(), crate::credentials::CredentialError>,
)> {
    let mut upstreams = std::collections::BTreeMap::new();
    for upstream in snapshot.upstreams().into_values() {
        if upstream.credential.mints() {
            upstreams
                .entry(upstream.provider.clone())
                .or_insert(upstream);
        }
    }
    let checks =
        upstreams.into_iter().map(|(key, upstream)| async move {
            let result =
                match tokio::time::timeout(Duration::from_secs(30), upstream.credential.check())
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(crate::credentials::CredentialError::Unavailable {
                        kind: "upstream",
                        detail: "no credential within 30 seconds".to_owned(),
                    }),
                };
            (key, result)
        });
    futures_util::future::join_all(checks).await
}
