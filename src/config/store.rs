//! The live routing table: one immutable [`Snapshot`] behind an `ArcSwap`, loaded once per
//! request. [`Store::apply`] merges a compilation into it; subscribers (model discovery,
//! status writers) follow swaps on a `watch` channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{Compiled, Snapshot};

/// What one [`Store::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Version of the snapshot now serving.
    pub version: u64,
    /// Proxies that failed to compile and kept their last good version.
    pub kept: Vec<String>,
    /// Proxies that failed to compile and have no good version (not served).
    pub unserved: Vec<String>,
    /// The whole compilation was refused and the previous snapshot keeps serving.
    pub rejected: bool,
}

/// How a compilation with problems is merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyMode {
    /// Object by object (Kubernetes): clean proxies move on, failed ones keep their last good
    /// version, so one team's mistake never blocks another team's change.
    PerProxy,
    /// All or nothing (files): one edit of the files is one change, and an edit with any
    /// problem is refused whole once something is serving. The first load still serves
    /// whatever compiled cleanly.
    Whole,
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

    /// Merge a compilation into the live table and swap it in: clean proxies replace their
    /// old version, failed ones keep their last good version, proxies no longer configured
    /// disappear.
    pub fn apply(&self, compiled: &Compiled) -> ApplyReport {
        self.apply_with(compiled, ApplyMode::PerProxy)
    }

    /// [`Store::apply`] with an explicit [`ApplyMode`].
    pub fn apply_with(&self, compiled: &Compiled, mode: ApplyMode) -> ApplyReport {
        let previous = self.load();
        let mut report = ApplyReport::default();
        if mode == ApplyMode::Whole && !compiled.problems.is_empty() && self.is_ready() {
            report.version = previous.version;
            report.rejected = true;
            return report;
        }
        let mut proxies = compiled.proxies.clone();
        for key in &compiled.failed {
            match previous.proxies.get(key) {
                Some(old) => {
                    proxies.insert(key.clone(), old.clone());
                    report.kept.push(key.proxy_id());
                }
                None => report.unserved.push(key.proxy_id()),
            }
        }
        let budgets = crate::budget::merge(&previous.budgets, &compiled.budgets, proxies.keys());
        let mut next = Snapshot::new(proxies, previous.version + 1);
        next.budgets = Arc::new(budgets);
        let next = Arc::new(next);
        report.version = next.version;
        self.current.store(next.clone());
        self.ready.store(true, Ordering::Release);
        self.tx.send_replace(next);
        report
    }
}
