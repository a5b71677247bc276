//! The status writer: while this replica holds the Lease, it computes every object's status
//! ([`super::status`]) from the latest [`World`] and discovery, and writes it with
//! server-side apply to the `status` subresource only when it differs from what the API
//! server holds. New failures also become Kubernetes Events (rate-limited per object and
//! reason).
//!
//! Credential checks (a token from a metadata server, STS, Entra) run in the background, each
//! under its own timeout: a pass writes the last known credential state, so one slow identity
//! endpoint never delays any other status (`Programmed` included). A finished check triggers
//! a new pass at once.
//!
//! Passes run on every [`World`] the applier publishes, and the applier publishes after every
//! watch event, the echo of the writer's own status writes included. An `LlmBudget`'s usage
//! changes between any two passes under traffic (requests, and sliding estimates that decay
//! with time), so a budget's usage alone is written at most every [`USAGE_INTERVAL`]; a change
//! of its conditions, `observedGeneration`, store or limits is written at once. A deferred
//! usage write wakes the writer when it falls due.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::World;
use super::status::{self, CredentialState, ModelsState};
use crate::config::{ObjectKey, Upstream};
use crate::crd::{
    LlmBudget, LlmBudgetStatus, LlmProvider, LlmProviderStatus, LlmProxy, LlmProxyStatus,
};
use crate::credentials::Credential;
use crate::discovery::{CatalogState, Discovery};

/// Field manager of every status write.
pub const FIELD_MANAGER: &str = "portcullis";
/// How often statuses are recomputed without a configuration change (discovery progresses
/// on its own).
const TICK: Duration = Duration::from_secs(2);
/// A budget whose status differs only in `usage` is written at most this often
/// (docs/budgets.md).
const USAGE_INTERVAL: Duration = Duration::from_secs(2);
/// How often a credential is checked again.
const RECHECK: Duration = Duration::from_secs(300);
/// The same failure on the same object becomes an Event at most this often.
const EVENT_INTERVAL: Duration = Duration::from_secs(300);

/// What the writer needs.
pub struct Writer {
    pub(super) client: Client,
    pub(super) discovery: Arc<Discovery>,
    pub(super) url_base: String,
    pub(super) reporter: Reporter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Provider,
    Proxy,
    Budget,
}

/// What the writer needs of a resource to keep its status.
trait Kept:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
{
    type Status: Clone + Default + PartialEq + serde::Serialize + serde::de::DeserializeOwned;
    const KIND: Kind;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition>;
    /// True when `a` and `b` differ at most in fields that change on their own under traffic
    /// (written at most every [`USAGE_INTERVAL`]); false when any other field differs.
    fn differ_in_usage_only(_a: &Self::Status, _b: &Self::Status) -> bool {
        false
    }
}

impl Kept for LlmProvider {
    type Status = LlmProviderStatus;
    const KIND: Kind = Kind::Provider;
    fn status(&self) -> Option<&LlmProviderStatus> {
        self.status.as_ref()
    }
    fn conditions(status: &mut LlmProviderStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}

impl Kept for LlmProxy {
    type Status = LlmProxyStatus;
    const KIND: Kind = Kind::Proxy;
    fn status(&self) -> Option<&LlmProxyStatus> {
        self.status.as_ref()
    }
    fn conditions(status: &mut LlmProxyStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}

impl Kept for LlmBudget {
    type Status = LlmBudgetStatus;
    const KIND: Kind = Kind::Budget;
    fn status(&self) -> Option<&LlmBudgetStatus> {
        self.status.as_ref()
    }
    fn conditions(status: &mut LlmBudgetStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
    fn differ_in_usage_only(a: &LlmBudgetStatus, b: &LlmBudgetStatus) -> bool {
        let without_usage = |s: &LlmBudgetStatus| LlmBudgetStatus {
            usage: Vec::new(),
            ..s.clone()
        };
        without_usage(a) == without_usage(b)
    }
}

/// The last known state of each credential (by the upstream's `catalog_key`), and whether a
/// check of it is under way.
#[derive(Default)]
struct Credentials {
    /// catalog key → (last known state, when it was last checked; `None` before the first).
    known: HashMap<u64, (CredentialState, Option<Instant>)>,
    /// Checks under way; each answers its catalog key and the new state.
    running: JoinSet<(u64, CredentialState)>,
    /// Catalog keys with a check under way.
    in_flight: std::collections::HashSet<u64>,
}

impl Credentials {
    /// The state to write now; starts a background check when none was made yet or the last
    /// one is older than [`RECHECK`]. A configured credential (a key, or none) asks nobody,
    /// so its state is known at once.
    async fn state(&mut self, upstream: &Upstream) -> CredentialState {
        let key = upstream.catalog_key;
        if !upstream.credential.mints() {
            return check(&upstream.credential).await;
        }
        let (state, at) = self
            .known
            .entry(key)
            .or_insert((CredentialState::Unchecked, None));
        let due = at.is_none_or(|at| at.elapsed() >= RECHECK);
        let state = state.clone();
        if due && self.in_flight.insert(key) {
            let credential = upstream.credential.clone();
            self.running
                .spawn(async move { (key, check(&credential).await) });
        }
        state
    }

    /// Record a finished check (ignored when its provider is gone meanwhile).
    fn finished(&mut self, result: Result<(u64, CredentialState), tokio::task::JoinError>) {
        let Ok((key, state)) = result else {
            // A panicked or aborted check: the next pass starts another.
            self.in_flight.clear();
            return;
        };
        self.in_flight.remove(&key);
        if let Some(entry) = self.known.get_mut(&key) {
            *entry = (state, Some(Instant::now()));
        }
    }
}

/// Writes already made whose echo the watch has not brought back yet, and when each object's
/// status was last written.
#[derive(Default)]
struct Written {
    /// (kind, key) → (status written, resourceVersion of the object when written).
    map: HashMap<(Kind, ObjectKey), (serde_json::Value, Option<String>)>,
    /// (kind, key) → when its status was last written.
    last: HashMap<(Kind, ObjectKey), Instant>,
    /// The earliest deferred usage write of this pass falls due then.
    due: Option<Instant>,
}

impl Written {
    fn clear(&mut self) {
        self.map.clear();
        self.last.clear();
        self.due = None;
    }
}

/// What to do with an object's desired status.
#[derive(Debug, PartialEq)]
enum Decision {
    /// The API server holds it already (or will, once a write's echo is back).
    Keep,
    Write,
    /// Only its usage changed, and the last write is too recent: write then.
    Defer(Instant),
}

/// Decide on `desired`, given the status the API server holds once every write made is back
/// (`held`) and when this object's status was last written.
fn decide<K: Kept>(
    desired: &K::Status,
    held: Option<&K::Status>,
    last: Option<Instant>,
    now: Instant,
) -> Decision {
    if held == Some(desired) {
        return Decision::Keep;
    }
    match (held, last) {
        (Some(held), Some(last))
            if K::differ_in_usage_only(held, desired)
                && now.saturating_duration_since(last) < USAGE_INTERVAL =>
        {
            Decision::Defer(last + USAGE_INTERVAL)
        }
        _ => Decision::Write,
    }
}

impl Writer {
    /// Run until the world channel closes.
    pub async fn run(
        self,
        mut world: watch::Receiver<Arc<World>>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut written = Written::default();
        let mut credentials = Credentials::default();
        let mut events: HashMap<(ObjectKey, String), Instant> = HashMap::new();
        loop {
            tokio::select! {
                r = world.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                Some(r) = credentials.running.join_next(), if !credentials.running.is_empty() => {
                    credentials.finished(r);
                }
                () = tokio::time::sleep(next_pass(written.due)) => {}
            }
            if !*leader.borrow_and_update() {
                written.clear();
                continue;
            }
            let current = world.borrow_and_update().clone();
            if !current.initialized {
                continue;
            }
            self.write_all(&current, &mut written, &mut credentials, &mut events)
                .await;
        }
    }

    async fn write_all(
        &self,
        world: &World,
        written: &mut Written,
        credentials: &mut Credentials,
        events: &mut HashMap<(ObjectKey, String), Instant>,
    ) {
        let now = status::now();
        let exists = |(kind, key): &(Kind, ObjectKey)| match kind {
            Kind::Provider => world.index.providers().contains_key(key),
            Kind::Proxy => world.index.proxies().contains_key(key),
            Kind::Budget => world.index.budgets().contains_key(key),
        };
        written.map.retain(|id, _| exists(id));
        written.last.retain(|id, _| exists(id));
        written.due = None;
        credentials.known.retain(|k, _| {
            world
                .compiled
                .providers
                .values()
                .any(|u| u.catalog_key == *k)
        });
        for (key, provider) in world.index.providers() {
            let problems: Vec<_> = world.compiled.problems_of("LlmProvider", key).collect();
            let upstream = world.compiled.providers.get(key);
            let credential = match upstream {
                Some(u) => credentials.state(u).await,
                None => CredentialState::Unchecked,
            };
            let models = upstream.map_or(ModelsState::NotInUse, |u| self.models_state(u));
            let last_good = world.compiled.kept_providers.get(key).map(|u| &**u);
            let desired = status::provider_status_serving(
                provider,
                &problems,
                &credential,
                &models,
                last_good,
                &now,
            );
            self.write(key, &**provider, desired, written, events).await;
        }
        let snapshot = &world.snapshot;
        for (key, proxy) in world.index.proxies() {
            let url = format!("{}/v1/model-router/{}", self.url_base, key.proxy_id());
            let served = snapshot.proxies.get(key).map(|t| &**t);
            let desired = status::proxy_status(proxy, key, &world.compiled, served, &url, &now);
            self.write(key, &**proxy, desired, written, events).await;
        }
        for (key, budget) in world.index.budgets() {
            let served = snapshot.budgets.budgets.get(key).map(|b| &**b);
            let desired =
                super::budget_status::budget_status(budget, key, &world.compiled, served, &now);
            self.write(key, &**budget, desired, written, events).await;
        }
    }

    fn models_state(&self, upstream: &Upstream) -> ModelsState {
        use crate::config::snapshot::ModelPolicy;
        if let ModelPolicy::Static(list) = &upstream.models {
            return ModelsState::Static(list.len());
        }
        let Some(catalog) = self.discovery.catalog(upstream) else {
            return ModelsState::NotInUse;
        };
        match catalog.state() {
            CatalogState::Pending => ModelsState::Pending,
            CatalogState::Ready { models, error } => ModelsState::Discovered {
                count: models
                    .iter()
                    .filter(|m| upstream.models.permits(&m.id))
                    .count(),
                error,
            },
            CatalogState::Failed(e) => ModelsState::Failed(e),
        }
    }

    /// Write an object's desired status when it differs from the one it has, or will have once
    /// the echo of the last write is back (keeping each condition's `lastTransitionTime` while
    /// its status stays); a budget whose usage alone changed waits for [`USAGE_INTERVAL`].
    /// Publish its new failures as Events.
    async fn write<K: Kept>(
        &self,
        key: &ObjectKey,
        object: &K,
        mut desired: K::Status,
        written: &mut Written,
        events: &mut HashMap<(ObjectKey, String), Instant>,
    ) {
        let id = (K::KIND, key.clone());
        // A write whose echo is not back yet (the object still has the version it had when
        // written) is what the API server holds.
        let rv = &object.meta().resource_version;
        let pending = written
            .map
            .get(&id)
            .filter(|(_, at_rv)| at_rv == rv)
            .and_then(|(value, _)| serde_json::from_value::<K::Status>(value.clone()).ok());
        let held = pending.as_ref().or(object.status());
        let mut observed = held.cloned().unwrap_or_default();
        let observed = &*K::conditions(&mut observed);
        status::keep_transition_times(K::conditions(&mut desired), observed);
        match decide::<K>(
            &desired,
            held,
            written.last.get(&id).copied(),
            Instant::now(),
        ) {
            Decision::Keep => return,
            Decision::Defer(at) => {
                written.due = Some(written.due.map_or(at, |due| due.min(at)));
                return;
            }
            Decision::Write => {}
        }
        let failures: Vec<_> = status::new_failures(K::conditions(&mut desired), observed)
            .into_iter()
            .cloned()
            .collect();
        let Ok(value) = serde_json::to_value(&desired) else {
            return;
        };
        if self.patch(K::KIND, key, object, value, written).await {
            self.events(object, key, &failures, events).await;
        }
    }

    /// Server-side apply of `status`; true when written.
    async fn patch<K>(
        &self,
        kind: Kind,
        key: &ObjectKey,
        object: &K,
        status: serde_json::Value,
        written: &mut Written,
    ) -> bool
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        let rv = object.meta().resource_version.clone();
        let id = (kind, key.clone());
        if let Some((value, at_rv)) = written.map.get(&id)
            && *value == status
            && *at_rv == rv
        {
            // Written already; the watch has not brought the echo back yet.
            return false;
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&key.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                tracing::debug!(kind = %K::kind(&()), object = %key, "status written");
                written.last.insert(id.clone(), Instant::now());
                written.map.insert(id, (status, rv));
                true
            }
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => {
                tracing::warn!(kind = %K::kind(&()), object = %key, error = %e, "cannot write status");
                false
            }
        }
    }

    async fn events<K>(
        &self,
        object: &K,
        key: &ObjectKey,
        failures: &[Condition],
        sent: &mut HashMap<(ObjectKey, String), Instant>,
    ) where
        K: Resource<DynamicType = ()>,
    {
        sent.retain(|_, at| at.elapsed() < EVENT_INTERVAL);
        let mut batch = std::collections::HashSet::new();
        for c in failures {
            let kind_reason = format!("{}/{}", K::kind(&()), c.reason);
            // Several conditions fail for one cause (a missing Secret): one Event for them.
            if !batch.insert(kind_reason.clone()) {
                continue;
            }
            // The same failure again within the interval stays quiet.
            let id = (key.clone(), format!("{kind_reason}\n{}", c.message));
            if sent.contains_key(&id) {
                continue;
            }
            sent.insert(id, Instant::now());
            let event = Event {
                type_: EventType::Warning,
                reason: c.reason.clone(),
                note: Some(format!("{} is False: {}", c.type_, c.message)),
                action: format!("Check{}", c.type_),
                secondary: None,
            };
            // A fresh Recorder: its own cache would fold a new message with the same reason into
            // the old Event's series, hiding it; the rate limit here is per message.
            let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
            if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
                tracing::debug!(object = %key, error = %e, "cannot publish an Event");
            }
        }
    }
}

/// How long to wait for a change before the next pass: the tick, or less when a deferred
/// write falls due sooner.
fn next_pass(due: Option<Instant>) -> Duration {
    due.map_or(TICK, |due| {
        due.saturating_duration_since(Instant::now()).min(TICK)
    })
}

/// Check a credential (a static key is merely present: whether the upstream accepts it shows
/// in `ModelsDiscovered`), giving up after 15 s.
async fn check(credential: &Credential) -> CredentialState {
    match tokio::time::timeout(Duration::from_secs(15), credential.check()).await {
        Err(_) => CredentialState::Failed {
            reason: "TokenExchangeFailed",
            message: "obtaining a credential timed out after 15s".to_owned(),
        },
        Ok(Err(e)) => CredentialState::Failed {
            reason: "TokenExchangeFailed",
            message: e.to_string(),
        },
        Ok(Ok(())) if matches!(credential, Credential::None) => CredentialState::Ready {
            reason: "NoAuth",
            message: "no credential is needed (auth: none)".to_owned(),
        },
        Ok(Ok(())) if matches!(credential, Credential::Header { .. }) => CredentialState::Ready {
            reason: "KeyPresent",
            message: "the API key is present; whether the upstream accepts it shows in ModelsDiscovered and in requests".to_owned(),
        },
        Ok(Ok(())) => CredentialState::Ready {
            reason: "CredentialObtained",
            message: "a credential was obtained from the identity provider".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BudgetUsage;

    fn budget(generation: i64, used: &str) -> LlmBudgetStatus {
        LlmBudgetStatus {
            observed_generation: Some(generation),
            limits: Some(1),
            store: Some("inProcess".into()),
            usage: vec![BudgetUsage {
                limit: "rpm".into(),
                key: "ai.team-a".into(),
                used: used.into(),
                max: "100".into(),
                resets_at: None,
            }],
            ..LlmBudgetStatus::default()
        }
    }

    #[test]
    fn budget_usage_alone_is_written_at_most_every_interval() {
        // Later than now, so that earlier moments exist whatever the clock.
        let now = Instant::now() + Duration::from_secs(10);
        let recent_at = now - Duration::from_millis(500);
        let (recent, long_ago) = (Some(recent_at), Some(now - USAGE_INTERVAL));
        let held = budget(1, "3");
        // Nothing changed.
        assert_eq!(
            decide::<LlmBudget>(&budget(1, "3"), Some(&held), recent, now),
            Decision::Keep
        );
        // Usage alone, written 0.5 s ago: when the interval has passed.
        assert_eq!(
            decide::<LlmBudget>(&budget(1, "4"), Some(&held), recent, now),
            Decision::Defer(recent_at + USAGE_INTERVAL)
        );
        let mut no_usage = budget(1, "4");
        no_usage.usage.clear();
        assert!(matches!(
            decide::<LlmBudget>(&no_usage, Some(&held), recent, now),
            Decision::Defer(_)
        ));
        // Usage alone, the interval passed, or never written by this leader: now.
        assert_eq!(
            decide::<LlmBudget>(&budget(1, "4"), Some(&held), long_ago, now),
            Decision::Write
        );
        assert_eq!(
            decide::<LlmBudget>(&budget(1, "4"), Some(&held), None, now),
            Decision::Write
        );
        // Anything else changed: now, with the usage of the moment.
        assert_eq!(
            decide::<LlmBudget>(&budget(2, "4"), Some(&held), recent, now),
            Decision::Write
        );
        let mut store = budget(1, "4");
        store.store = Some("redis".into());
        assert_eq!(
            decide::<LlmBudget>(&store, Some(&held), recent, now),
            Decision::Write
        );
        let mut conditions = budget(1, "3");
        conditions.conditions = vec![Condition {
            type_: "Programmed".into(),
            status: "True".into(),
            reason: "Programmed".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: status::now(),
        }];
        assert_eq!(
            decide::<LlmBudget>(&conditions, Some(&held), recent, now),
            Decision::Write
        );
        // No status yet.
        assert_eq!(
            decide::<LlmBudget>(&budget(1, "4"), None, recent, now),
            Decision::Write
        );
    }

    #[test]
    fn provider_and_proxy_statuses_are_never_deferred() {
        let now = Instant::now() + Duration::from_secs(10);
        let recent = Some(now - Duration::from_millis(10));
        let held = LlmProxyStatus::default();
        let desired = LlmProxyStatus {
            url: Some("http://portcullis.portcullis-system.svc:8080/v1/model-router/ai.a".into()),
            ..LlmProxyStatus::default()
        };
        assert_eq!(
            decide::<LlmProxy>(&desired, Some(&held), recent, now),
            Decision::Write
        );
        let held = LlmProviderStatus::default();
        let desired = LlmProviderStatus {
            observed_generation: Some(2),
            ..LlmProviderStatus::default()
        };
        assert_eq!(
            decide::<LlmProvider>(&desired, Some(&held), recent, now),
            Decision::Write
        );
    }

    #[test]
    fn a_deferred_write_shortens_the_wait() {
        assert_eq!(next_pass(None), TICK);
        assert!(
            next_pass(Some(Instant::now() + Duration::from_millis(300)))
                <= Duration::from_millis(300)
        );
        assert_eq!(next_pass(Some(Instant::now())), Duration::ZERO);
        assert_eq!(
            next_pass(Some(Instant::now() + Duration::from_secs(60))),
            TICK
        );
    }
}
