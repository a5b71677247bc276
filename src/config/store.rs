//! The live routing table: one immutable [`Snapshot`] behind an `ArcSwap`, loaded once per
//! request. [`Store::apply`] swaps a compilation in; subscribers (model discovery, status
//! writers) follow swaps on a `watch` channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{Compiled, ObjectKey, Snapshot};

/// What one [`Store::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Version of the snapshot now serving.
    pub version: u64,
    /// Proxies served now that were not served before, or whose table changed.
    pub changed: Vec<ObjectKey>,
    /// Proxies no longer served.
    pub removed: Vec<ObjectKey>,
}

/// The live snapshot.
pub struct Store {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Default for Store {
    fn default() -> Self {
        let empty = Arc::new(Snapshot::default());
        let (tx, _) = watch::channel(empty.clone());
        Self {
            current: ArcSwap::new(empty),
            ready: AtomicBool::new(false),
            tx,
        }
    }
}

impl Store {
    /// The snapshot serving now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether a configuration has been applied (for `/readyz`). Once ready, stays ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Follow swaps.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Swap in the proxies of a compilation (each in its newest version, or its last good
    /// one: see [`super::Compiler`]). Nothing is swapped when no table changed, so a no-op
    /// reload of a large configuration costs no swap and wakes no subscriber.
    pub fn apply(&self, compiled: &Compiled) -> ApplyReport {
        let previous = self.load();
        let changed: Vec<ObjectKey> = compiled
            .proxies
            .iter()
            .filter(|(k, t)| {
                previous
                    .proxies
                    .get(*k)
                    .is_none_or(|old| !Arc::ptr_eq(old, t))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let removed: Vec<ObjectKey> = previous
            .proxies
            .keys()
            .filter(|k| !compiled.proxies.contains_key(*k))
            .cloned()
            .collect();
        let no_budgets = previous.budgets.budgets.is_empty() && compiled.budgets.good.is_empty();
        if changed.is_empty() && removed.is_empty() && no_budgets && self.is_ready() {
            return ApplyReport {
                version: previous.version,
                changed,
                removed,
            };
        }
        // Budgets are few and recompiled on every reload; while any exists the snapshot is
        // swapped so that edits to them (and to the proxies they cover) take effect.
        let budgets = crate::budget::merge(
            &previous.budgets,
            &compiled.budgets,
            compiled.proxies.keys(),
        );
        let mut next = Snapshot::new(compiled.proxies.clone(), previous.version + 1);
        next.budgets = Arc::new(budgets);
        let next = Arc::new(next);
        let version = next.version;
        self.current.store(next.clone());
        self.ready.store(true, Ordering::Release);
        self.tx.send_replace(next);
        ApplyReport {
            version,
            changed,
            removed,
        }
    }
}
