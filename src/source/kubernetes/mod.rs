//! The Kubernetes source (`portcullis serve --kubernetes`): watches `LlmProvider`,
//! `LlmProxy` and the `Secret`s they reference, feeds the same [`Index`] the file source
//! feeds, recompiles and swaps the data plane on every change, and (as the Lease holder)
//! writes status.
//!
//! ```text
//!  watcher(LlmProvider) ─┐
//!  watcher(LlmProxy) ────┼─ Op (apply / delete / reset, with arrival time) ─▶ applier task
//!  watcher(Secret) ──────┘   (only Secrets some provider or proxy references)  │ owns the Index
//!        ▲                                                                     │ compile() → Store
//!        └──── referenced Secret names (watch channel) ◀───────────────────────┤
//!                                                                              ▼
//!                                        World { index, compiled, snapshot } (watch channel)
//!                                                                              │
//!                          lease (coordination.k8s.io/v1) ──leader?──▶ status writer (SSA on /status, Events)
//! ```
//!
//! Watch restarts (410 Gone, dropped connections, an unreachable API server) are handled by
//! `kube-runtime`'s watcher: it re-lists, and the re-list becomes a `reset` of that kind and
//! scope, so objects deleted while the watch was down disappear and nothing is duplicated.
//! The data plane keeps serving the last snapshot meanwhile.
//!
//! Secrets: only their metadata is listed and watched, and only in the watched namespaces.
//! The data of a Secret is fetched (`get`) only while an `LlmProvider` (by `auth.*.secretRef`)
//! or an `LlmProxy` (by `clientAuth.apiKeys.secretRef`) references it: when the reference appears and whenever the Secret's
//! `resourceVersion` changes. The data of other Secrets never reaches the process.

pub mod budget_status;
pub mod lease;
pub mod status;
mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::Reporter;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::config::index::Kind;
use crate::config::{Compiled, Index, Object, ObjectKey, SecretData, Snapshot, Store};
use crate::crd::{LlmBudget, LlmProvider, LlmProxy};
use crate::discovery::Discovery;
use crate::source::reload::Reloader;
use crate::telemetry::Metrics;

/// Everything the Kubernetes source is told (command line and environment).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// The status-writer Lease. Its namespace defaults to the client's namespace.
    pub lease_name: String,
    /// Namespace of the Lease (`POD_NAMESPACE`); `None` means the kubeconfig's namespace.
    pub lease_namespace: Option<String>,
    /// How long the Lease lasts without renewal.
    pub lease_duration: Duration,
    /// This replica's identity (`POD_NAME`, else the host name).
    pub identity: String,
    /// Name of the Service in front of the data plane, for `status.url`.
    pub service_name: String,
    /// Port of that Service.
    pub service_port: u16,
}

impl Settings {
    /// Settings from the environment (`POD_NAME`, `POD_NAMESPACE`, `PORTCULLIS_SERVICE_NAME`,
    /// `PORTCULLIS_SERVICE_PORT`, `PORTCULLIS_LEASE_NAME`, `PORTCULLIS_LEASE_DURATION`).
    pub fn from_env(namespaces: Vec<String>) -> anyhow::Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let identity = var("POD_NAME")
            .or_else(|| var("HOSTNAME"))
            .unwrap_or_else(|| format!("portcullis-{}", uuid::Uuid::new_v4().simple()));
        let lease_duration = match var("PORTCULLIS_LEASE_DURATION") {
            None => Duration::from_secs(15),
            Some(v) => humantime::parse_duration(v.trim())
                .ok()
                .filter(|d| *d >= Duration::from_secs(1))
                .with_context(|| {
                    format!("PORTCULLIS_LEASE_DURATION=`{v}` is not a duration of at least 1s such as `15s`")
                })?,
        };
        let service_port = match var("PORTCULLIS_SERVICE_PORT") {
            None => 8080,
            Some(v) => v
                .trim()
                .parse()
                .with_context(|| format!("PORTCULLIS_SERVICE_PORT=`{v}` is not a port number"))?,
        };
        Ok(Self {
            namespaces,
            lease_name: var("PORTCULLIS_LEASE_NAME").unwrap_or_else(|| "portcullis-status".into()),
            lease_namespace: var("POD_NAMESPACE"),
            lease_duration,
            identity,
            service_name: var("PORTCULLIS_SERVICE_NAME").unwrap_or_else(|| "portcullis".into()),
            service_port,
        })
    }
}

/// What the applier publishes after every batch of changes, for the status writer.
#[derive(Default)]
pub struct World {
    /// Every object as last seen (statuses included).
    pub index: Index,
    /// The latest compilation.
    pub compiled: Compiled,
    /// The snapshot serving after that compilation's swap.
    pub snapshot: Arc<Snapshot>,
    /// Every kind has been listed once.
    pub initialized: bool,
}

/// Where one watcher looks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }

    fn contains(&self, key: &ObjectKey) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => &key.namespace == ns,
        }
    }
}

/// One change for the index.
#[derive(Debug)]
enum Op {
    Apply(Object),
    Delete(Kind, ObjectKey),
    Reset(Kind, Scope, Vec<Object>),
    /// The Secret watcher of a scope has acted on this version of the referenced set.
    SecretsSynced(Scope, u64),
}

struct Change {
    op: Op,
    at: Instant,
}

/// Connect to the API server (in-cluster, or `KUBECONFIG` / `~/.kube/config`).
///
/// kube's default retry layer retries 429/503/504 answers with an exponential backoff of up
/// to 1000 s between tries, inside a single request, so after an API-server outage a watch
/// could stay away for many seconds. It is off: every caller retries on its own schedule
/// (watchers every 400 ms at most, [`QuickBackoff`]; Secret fetches every second; the Lease
/// on its renewal loop; status on the writer's next pass), so watches are back within a
/// second of the API server answering again.
pub async fn client() -> anyhow::Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hint =
        "cannot configure a Kubernetes client: run in a pod, or point KUBECONFIG at a kubeconfig";
    let mut config = kube::Config::infer().await.context(hint)?;
    config.default_retry = false;
    Client::try_from(config).context(hint)
}

/// Fail clearly when the CRDs are missing or RBAC forbids reading them; retries for a while
/// when the API server cannot be reached.
pub async fn check_api(client: &Client, settings: &Settings) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for scope in &scopes(settings) {
        let where_ = match scope {
            Scope::All => "in all namespaces".to_owned(),
            Scope::Namespace(ns) => format!("in namespace {ns}"),
        };
        for plural in ["llmproviders", "llmproxies", "llmbudgets", "secrets"] {
            loop {
                let result = match plural {
                    "llmproviders" => list_one::<LlmProvider>(scope.api(client)).await,
                    "llmproxies" => list_one::<LlmProxy>(scope.api(client)).await,
                    "llmbudgets" => list_one::<LlmBudget>(scope.api(client)).await,
                    _ => list_one::<Secret>(scope.api(client)).await,
                };
                match result {
                    Ok(()) => break,
                    Err(kube::Error::Api(s)) if s.code == 404 && plural != "secrets" => {
                        anyhow::bail!(
                            "the Portcullis CustomResourceDefinitions are not installed ({plural}.portcullis.dev/v1alpha1 \
                             is unknown to the API server): install them with `portcullis crds | kubectl apply -f -`"
                        )
                    }
                    Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => anyhow::bail!(
                        "the API server refuses to list {plural} {where_}: grant this service account get, list \
                         and watch on {plural} (the Helm chart's RBAC does): {}",
                        s.message
                    ),
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(error = %e, "cannot reach the Kubernetes API server yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "cannot list {plural} {where_} on the Kubernetes API server"
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

async fn list_one<K>(api: Api<K>) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.list_metadata(&ListParams::default().limit(1))
        .await
        .map(drop)
}

fn scopes(settings: &Settings) -> Vec<Scope> {
    if settings.namespaces.is_empty() {
        vec![Scope::All]
    } else {
        let set: BTreeSet<_> = settings.namespaces.iter().cloned().collect();
        set.into_iter().map(Scope::Namespace).collect()
    }
}

/// Start watching: watchers, the applier, the Lease and the status writer. Returns at once
/// with the Lease task (it ends after releasing the Lease once `shutdown` turns true); the
/// store becomes ready when every kind has been listed.
pub fn start(
    client: Client,
    settings: Settings,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    discovery: Arc<Discovery>,
    reloader: Reloader,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let scopes = scopes(&settings);
    let (tx, rx) = mpsc::unbounded_channel();
    let (refs_tx, refs_rx) = watch::channel(None);
    for scope in &scopes {
        tokio::spawn(watch_kind::<LlmProvider>(
            scope.api(&client),
            scope.clone(),
            Kind::Provider,
            tx.clone(),
        ));
        tokio::spawn(watch_kind::<LlmProxy>(
            scope.api(&client),
            scope.clone(),
            Kind::Proxy,
            tx.clone(),
        ));
        tokio::spawn(watch_kind::<LlmBudget>(
            scope.api(&client),
            scope.clone(),
            Kind::Budget,
            tx.clone(),
        ));
        tokio::spawn(watch_secrets(
            client.clone(),
            scope.clone(),
            refs_rx.clone(),
            tx.clone(),
        ));
    }
    drop(tx);
    let (world_tx, world_rx) = watch::channel(Arc::new(World::default()));
    let expected = scopes.len() * KINDS;
    tokio::spawn(applier(
        rx, expected, store, metrics, reloader, refs_tx, world_tx,
    ));

    let lease_namespace = settings
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let (leader, lease_task) = lease::spawn(
        Api::<Lease>::namespaced(client.clone(), &lease_namespace),
        lease::LeaseSettings {
            namespace: lease_namespace.clone(),
            name: settings.lease_name.clone(),
            identity: settings.identity.clone(),
            duration: settings.lease_duration,
        },
        shutdown,
    );
    let writer = writer::Writer {
        client,
        discovery,
        url_base: format!(
            "http://{}.{}.svc:{}",
            settings.service_name, lease_namespace, settings.service_port
        ),
        reporter: Reporter {
            controller: "portcullis".into(),
            instance: Some(settings.identity),
        },
    };
    tokio::spawn(writer.run(world_rx, leader));
    lease_task
}

/// Retry quickly at first, then every 400 ms: after an API-server outage ends, the watches are
/// back within a second (issue 11). A failing list or watch against an API server that is down
/// fails fast (connection refused, 503), so a retry every 400 ms per watcher (three per watched
/// namespace) costs the API server little; one that is slow to fail spaces the retries itself.
struct QuickBackoff {
    next: Duration,
}

impl QuickBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_millis(400);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for QuickBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(now)
    }
}

impl Backoff for QuickBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The custom resources as index objects.
trait IntoObject {
    fn into_object(self) -> Object;
}

impl IntoObject for LlmProvider {
    fn into_object(self) -> Object {
        Object::Provider(std::sync::Arc::new(self))
    }
}

impl IntoObject for LlmProxy {
    fn into_object(self) -> Object {
        Object::Proxy(std::sync::Arc::new(self))
    }
}

impl IntoObject for LlmBudget {
    fn into_object(self) -> Object {
        Object::Budget(Arc::new(self))
    }
}

/// Kinds listed in every scope before the first compilation: LlmProvider, LlmProxy,
/// LlmBudget, Secret.
const KINDS: usize = 4;

/// Watch one kind in one scope and turn its events into index operations.
async fn watch_kind<K>(api: Api<K>, scope: Scope, kind: Kind, tx: mpsc::UnboundedSender<Change>)
where
    K: Resource<DynamicType = ()>
        + IntoObject
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .backoff(QuickBackoff::new())
        .boxed();
    let mut buffer: Vec<Object> = Vec::new();
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let at = Instant::now();
        let op = match event {
            Ok(watcher::Event::Init) => {
                buffer.clear();
                None
            }
            Ok(watcher::Event::InitApply(o)) => {
                buffer.push(o.into_object());
                None
            }
            Ok(watcher::Event::InitDone) => {
                Some(Op::Reset(kind, scope.clone(), std::mem::take(&mut buffer)))
            }
            Ok(watcher::Event::Apply(o)) => Some(Op::Apply(o.into_object())),
            Ok(watcher::Event::Delete(o)) => Some(Op::Delete(kind, ObjectKey::of(o.meta()))),
            Err(e) => {
                if !failing {
                    tracing::warn!(kind = ?kind, error = %e, "watch failed; re-listing with backoff (the last configuration keeps serving)");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!(kind = ?kind, "watch resumed");
            failing = false;
        }
        if let Some(op) = op
            && tx.send(Change { op, at }).is_err()
        {
            return;
        }
    }
}

/// The Secrets referenced, with a version the Secret watchers acknowledge.
type Refs = Option<(u64, Arc<BTreeSet<ObjectKey>>)>;

/// How long a compilation waits for the Secret watchers to fetch Secrets that providers have
/// just started to reference (so a provider and its Secret created together do not flash
/// `SecretNotFound`).
const SECRET_WAIT: Duration = Duration::from_millis(500);

/// Watch the metadata of Secrets in one scope; fetch and forward the data of referenced ones
/// only. The data of a Secret no `LlmProvider` references never reaches this process.
async fn watch_secrets(
    client: Client,
    scope: Scope,
    mut refs: watch::Receiver<Refs>,
    tx: mpsc::UnboundedSender<Change>,
) {
    // Wait for the providers to be listed, so the first list is filtered right.
    if refs.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let metadata: Api<PartialObjectMeta<Secret>> = scope.api(&client);
    let mut stream = watcher(metadata, watcher::Config::default())
        .backoff(QuickBackoff::new())
        .boxed();
    let mut secrets = SecretCache {
        client,
        scope: scope.clone(),
        seen: BTreeMap::new(),
        forwarded: BTreeMap::new(),
        retry: BTreeSet::new(),
    };
    let mut buffer: Option<BTreeMap<ObjectKey, Option<String>>> = None;
    let mut failing = false;
    let mut retry_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut ops = Vec::new();
        tokio::select! {
            event = stream.next() => {
                let Some(event) = event else { return };
                let wanted = wanted(&refs);
                match event {
                    Ok(watcher::Event::Init) => buffer = Some(BTreeMap::new()),
                    Ok(watcher::Event::InitApply(m)) => {
                        buffer
                            .get_or_insert_with(BTreeMap::new)
                            .insert(ObjectKey::of(&m.metadata), m.metadata.resource_version);
                    }
                    Ok(watcher::Event::InitDone) => {
                        secrets.seen = buffer.take().unwrap_or_default();
                        secrets.forwarded.clear();
                        secrets.retry.clear();
                        let mut objects = Vec::new();
                        let keys: Vec<ObjectKey> =
                            secrets.seen.keys().filter(|k| wanted.contains(*k)).cloned().collect();
                        for key in keys {
                            if let Some(Op::Apply(object)) = secrets.fetch(&key).await {
                                objects.push(object);
                            }
                        }
                        ops.push(Op::Reset(Kind::Secret, scope.clone(), objects));
                    }
                    Ok(watcher::Event::Apply(m)) => {
                        let key = ObjectKey::of(&m.metadata);
                        let rv = m.metadata.resource_version;
                        secrets.seen.insert(key.clone(), rv.clone());
                        if wanted.contains(&key) {
                            if secrets.forwarded.get(&key) != Some(&rv) {
                                ops.extend(secrets.fetch(&key).await);
                            }
                        } else if secrets.forwarded.remove(&key).is_some() {
                            ops.push(Op::Delete(Kind::Secret, key));
                        }
                    }
                    Ok(watcher::Event::Delete(m)) => {
                        let key = ObjectKey::of(&m.metadata);
                        secrets.seen.remove(&key);
                        secrets.retry.remove(&key);
                        if secrets.forwarded.remove(&key).is_some() {
                            ops.push(Op::Delete(Kind::Secret, key));
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "Secret watch failed; re-listing with backoff");
                        }
                        failing = true;
                        continue;
                    }
                }
                failing = false;
            }
            changed = refs.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some((version, wanted)) = refs.borrow_and_update().clone() else {
                    continue;
                };
                // Data no longer needed leaves the index.
                let unwanted: Vec<ObjectKey> =
                    secrets.forwarded.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
                for key in unwanted {
                    secrets.forwarded.remove(&key);
                    ops.push(Op::Delete(Kind::Secret, key));
                }
                secrets.retry.retain(|k| wanted.contains(k));
                // Newly referenced Secrets that exist: fetch them.
                let missing: Vec<ObjectKey> = wanted
                    .iter()
                    .filter(|k| secrets.seen.contains_key(*k) && !secrets.forwarded.contains_key(*k))
                    .cloned()
                    .collect();
                for key in missing {
                    ops.extend(secrets.fetch(&key).await);
                }
                ops.push(Op::SecretsSynced(scope.clone(), version));
            }
            _ = retry_tick.tick(), if !secrets.retry.is_empty() => {
                let keys: Vec<ObjectKey> = std::mem::take(&mut secrets.retry).into_iter().collect();
                for key in keys {
                    ops.extend(secrets.fetch(&key).await);
                }
            }
        }
        let at = Instant::now();
        for op in ops {
            if tx.send(Change { op, at }).is_err() {
                return;
            }
        }
    }
}

fn wanted(refs: &watch::Receiver<Refs>) -> Arc<BTreeSet<ObjectKey>> {
    refs.borrow()
        .as_ref()
        .map(|(_, r)| r.clone())
        .unwrap_or_default()
}

/// What one Secret watcher knows: every Secret's name and version, and which it forwarded.
struct SecretCache {
    client: Client,
    scope: Scope,
    /// Every Secret in the scope → its resourceVersion (metadata only).
    seen: BTreeMap<ObjectKey, Option<String>>,
    /// Secrets whose data went to the index → the resourceVersion forwarded.
    forwarded: BTreeMap<ObjectKey, Option<String>>,
    /// Referenced Secrets whose fetch failed, tried again every second.
    retry: BTreeSet<ObjectKey>,
}

impl SecretCache {
    /// `get` one Secret: `Apply` with its data, `Delete` if it is gone and was forwarded.
    async fn fetch(&mut self, key: &ObjectKey) -> Option<Op> {
        if !self.scope.contains(key) {
            return None;
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
        match api.get_opt(&key.name).await {
            Ok(Some(secret)) => {
                self.retry.remove(key);
                self.forwarded
                    .insert(key.clone(), secret.metadata.resource_version.clone());
                Some(Op::Apply(secret_object(&secret)))
            }
            Ok(None) => {
                self.retry.remove(key);
                self.seen.remove(key);
                self.forwarded
                    .remove(key)
                    .map(|_| Op::Delete(Kind::Secret, key.clone()))
            }
            Err(e) => {
                if self.retry.insert(key.clone()) {
                    tracing::warn!(secret = %key, error = %e, "cannot read a referenced Secret; retrying");
                }
                None
            }
        }
    }
}

fn secret_object(secret: &Secret) -> Object {
    Object::Secret(
        ObjectKey::of(&secret.metadata),
        SecretData::from_secret(secret),
    )
}

/// The Secrets LlmProviders (`auth.*.secretRef`) and LlmProxies
/// (`clientAuth.apiKeys.secretRef`) reference, by namespace and name.
pub fn referenced_secrets(index: &Index) -> BTreeSet<ObjectKey> {
    let providers = index.providers().iter().flat_map(|(key, p)| {
        let auth = p.spec.auth.as_ref();
        [
            auth.and_then(|a| a.api_key.as_ref()),
            auth.and_then(|a| a.service_account_key.as_ref()),
        ]
        .into_iter()
        .flatten()
        .map(|s| ObjectKey::new(&key.namespace, &s.secret_ref.name))
    });
    let proxies = index.proxies().iter().filter_map(|(key, p)| {
        let keys = p.spec.client_auth.as_ref()?.api_keys.as_ref()?;
        Some(ObjectKey::new(&key.namespace, &keys.secret_ref.name))
    });
    let budgets = index.budgets().iter().filter_map(|(key, b)| {
        let redis = b.spec.store.as_ref()?.redis.as_ref()?;
        Some(ObjectKey::new(&key.namespace, &redis.url_secret_ref.name))
    });
    providers.chain(proxies).chain(budgets).collect()
}

/// Apply one operation; true when what compile() reads changed.
fn apply_op(index: &mut Index, op: Op) -> bool {
    match op {
        Op::Apply(object) => {
            let changed =
                match &object {
                    Object::Provider(p) => index
                        .providers()
                        .get(&ObjectKey::of(&p.metadata))
                        .is_none_or(|old| {
                            old.spec != p.spec || old.metadata.generation != p.metadata.generation
                        }),
                    Object::Proxy(p) => index
                        .proxies()
                        .get(&ObjectKey::of(&p.metadata))
                        .is_none_or(|old| {
                            old.spec != p.spec || old.metadata.generation != p.metadata.generation
                        }),
                    Object::Secret(key, data) => index.secret(key) != Some(data),
                    Object::Budget(b) => index
                        .budgets()
                        .get(&ObjectKey::of(&b.metadata))
                        .is_none_or(|old| {
                            old.spec != b.spec || old.metadata.generation != b.metadata.generation
                        }),
                };
            index.apply(object);
            changed
        }
        Op::Delete(kind, key) => {
            let present = match kind {
                Kind::Provider => index.providers().contains_key(&key),
                Kind::Proxy => index.proxies().contains_key(&key),
                Kind::Secret => index.secret(&key).is_some(),
                Kind::Budget => index.budgets().contains_key(&key),
            };
            index.delete(kind, &key);
            present
        }
        Op::Reset(kind, scope, objects) => {
            let stale: Vec<ObjectKey> = match kind {
                Kind::Provider => index.providers().keys().cloned().collect(),
                Kind::Proxy => index.proxies().keys().cloned().collect(),
                Kind::Secret => index.secrets.keys().cloned().collect(),
                Kind::Budget => index.budgets().keys().cloned().collect(),
            };
            for key in stale.iter().filter(|k| scope.contains(k)) {
                index.delete(kind, key);
            }
            for object in objects {
                index.apply(object);
            }
            true
        }
        Op::SecretsSynced(..) => false,
    }
}

/// Own the index: apply each batch of changes, recompile and swap when something compile()
/// reads changed, publish the world for the status writer.
async fn applier(
    mut rx: mpsc::UnboundedReceiver<Change>,
    expected_lists: usize,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    mut reloader: Reloader,
    refs_tx: watch::Sender<Refs>,
    world_tx: watch::Sender<Arc<World>>,
) {
    let mut index = Index::default();
    let mut listed: BTreeSet<(u8, Scope)> = BTreeSet::new();
    let mut acks: BTreeMap<Scope, u64> = BTreeMap::new();
    let mut refs_version = 0u64;
    let scope_count = expected_lists / KINDS;
    let mut compiled = Compiled::default();
    let mut initialized = false;
    while let Some(first) = rx.recv().await {
        let arrived = first.at;
        let hold_until = tokio::time::Instant::now() + SECRET_WAIT;
        let mut pending = vec![first];
        let mut changed = false;
        loop {
            while let Ok(more) = rx.try_recv() {
                pending.push(more);
            }
            for change in pending.drain(..) {
                match change.op {
                    Op::SecretsSynced(scope, version) => {
                        acks.insert(scope, version);
                    }
                    op => {
                        if let Op::Reset(kind, scope, _) = &op {
                            listed.insert((kind_id(*kind), scope.clone()));
                        }
                        changed |= apply_op(&mut index, op);
                    }
                }
            }
            // Providers listed in every scope: the Secret watchers may start filtering.
            let providers_listed = listed
                .iter()
                .filter(|(k, _)| *k == kind_id(Kind::Provider))
                .count()
                >= scope_count;
            if !providers_listed {
                break;
            }
            let refs = Arc::new(referenced_secrets(&index));
            if refs_tx.borrow().as_ref().map(|(_, r)| &**r) != Some(&*refs) {
                refs_version += 1;
                refs_tx.send_replace(Some((refs_version, refs.clone())));
            }
            let unsynced = acks.values().filter(|v| **v >= refs_version).count() < scope_count;
            let missing = refs.iter().any(|k| index.secret(k).is_none());
            if !(refs_version > 0 && unsynced && missing && listed.len() >= expected_lists) {
                break;
            }
            match tokio::time::timeout_at(hold_until, rx.recv()).await {
                Ok(Some(change)) => pending.push(change),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if listed.len() < expected_lists {
            continue;
        }
        if changed || !initialized {
            compiled = reloader.apply_index(&store, &metrics, &index, "kubernetes", 0, arrived);
            if !initialized {
                tracing::info!(
                    providers = index.providers().len(),
                    proxies = index.proxies().len(),
                    "listed every LlmProvider, LlmProxy and referenced Secret; serving"
                );
            }
            initialized = true;
        }
        world_tx.send_replace(Arc::new(World {
            index: index.clone(),
            compiled: compiled.clone(),
            snapshot: store.load(),
            initialized,
        }));
    }
}

fn kind_id(kind: Kind) -> u8 {
    match kind {
        Kind::Provider => 0,
        Kind::Proxy => 1,
        Kind::Secret => 2,
        Kind::Budget => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Defaults, compile};

    fn provider(ns: &str, name: &str, secret: &str, base: &str) -> Object {
        let yaml = format!(
            "type: openai\nbaseUrl: {base}\nauth: {{apiKey: {{secretRef: {{name: {secret}}}}}}}\nmodels: {{static: [m]}}\n"
        );
        let spec = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let mut p = LlmProvider::new(name, spec);
        p.metadata.namespace = Some(ns.into());
        p.metadata.generation = Some(1);
        Object::Provider(std::sync::Arc::new(p))
    }

    fn proxy(ns: &str, name: &str) -> Object {
        let spec = serde_yaml::from_str("providers: [{providerRef: {name: openai}}]")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut p = LlmProxy::new(name, spec);
        p.metadata.namespace = Some(ns.into());
        p.metadata.generation = Some(1);
        Object::Proxy(std::sync::Arc::new(p))
    }

    fn secret(ns: &str, name: &str) -> Object {
        let mut data = BTreeMap::new();
        data.insert("apiKey".to_owned(), b"sk-1".to_vec());
        Object::Secret(ObjectKey::new(ns, name), SecretData(data))
    }

    fn served(index: &Index) -> Vec<String> {
        let compiled = compile(index, &Defaults::default());
        compiled.proxies.keys().map(ObjectKey::proxy_id).collect()
    }

    #[test]
    fn apply_delete_and_scoped_reset() {
        let mut index = Index::default();
        for o in [
            secret("a", "key"),
            provider("a", "openai", "key", "http://127.0.0.1:1/v1"),
            proxy("a", "team"),
            secret("b", "key"),
            provider("b", "openai", "key", "http://127.0.0.1:1/v1"),
            proxy("b", "team"),
        ] {
            assert!(apply_op(&mut index, Op::Apply(o)));
        }
        assert_eq!(served(&index), ["a.team", "b.team"]);
        // The same object again (a status write echoed by the watch) changes nothing.
        assert!(!apply_op(&mut index, Op::Apply(proxy("a", "team"))));
        // A re-list of namespace a without its proxy: a's proxy goes, b's stays.
        assert!(apply_op(
            &mut index,
            Op::Reset(Kind::Proxy, Scope::Namespace("a".into()), vec![])
        ));
        assert_eq!(served(&index), ["b.team"]);
        // A re-list of everything, brought twice (a watch restarted twice): no duplicates.
        for _ in 0..2 {
            apply_op(
                &mut index,
                Op::Reset(
                    Kind::Proxy,
                    Scope::All,
                    vec![proxy("a", "team"), proxy("b", "team")],
                ),
            );
        }
        assert_eq!(index.proxies().len(), 2);
        assert_eq!(served(&index), ["a.team", "b.team"]);
        // Deleting a Secret unserves what needs it; deleting it again is a no-op.
        assert!(apply_op(
            &mut index,
            Op::Delete(Kind::Secret, ObjectKey::new("b", "key"))
        ));
        assert!(!apply_op(
            &mut index,
            Op::Delete(Kind::Secret, ObjectKey::new("b", "key"))
        ));
        // b's provider never had a good version here (a fresh compile): its entry is not ready.
        let compiled = compile(&index, &Defaults::default());
        let b = &compiled.proxies[&ObjectKey::new("b", "team")];
        assert!(b.routes.is_empty());
        assert!(
            b.not_ready("openai")
                .is_some_and(|n| n.message.contains("b/key"))
        );
    }

    #[test]
    fn referenced_secrets_are_by_namespace() {
        let index = Index::from_objects([
            provider("a", "openai", "key-a", "http://127.0.0.1:1/v1"),
            provider("b", "openai", "key-b", "http://127.0.0.1:1/v1"),
            secret("a", "unrelated"),
        ]);
        let refs: Vec<String> = referenced_secrets(&index)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(refs, ["a/key-a", "b/key-b"]);
    }

    #[test]
    fn client_key_secrets_of_proxies_are_referenced() {
        let spec = serde_yaml::from_str(
            "providers: [{providerRef: {name: openai}}]\nclientAuth: {apiKeys: {secretRef: {name: clients}}}",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut guarded = LlmProxy::new("guarded", spec);
        guarded.metadata.namespace = Some("a".into());
        let index = Index::from_objects([
            provider("a", "openai", "key-a", "http://127.0.0.1:1/v1"),
            Object::Proxy(std::sync::Arc::new(guarded)),
            proxy("b", "open"),
        ]);
        let refs: Vec<String> = referenced_secrets(&index)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(refs, ["a/clients", "a/key-a"]);
    }

    #[test]
    fn backoff_is_quick_then_capped_and_resets() {
        let mut b = QuickBackoff::new();
        let first: Vec<_> = (&mut b).take(8).collect();
        assert_eq!(first[0], Duration::from_millis(100));
        assert_eq!(first[2], Duration::from_millis(400));
        assert_eq!(first[7], Duration::from_millis(400));
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }
}
