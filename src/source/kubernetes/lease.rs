//! Leader election over a `coordination.k8s.io/v1` Lease, so that one replica at a time
//! writes status and Events while every replica serves traffic.
//!
//! The algorithm is client-go's: the holder renews `renewTime` every `renew` interval; a
//! candidate takes the Lease over when it is free (no holder) or when the record it last
//! observed has not changed for `leaseDurationSeconds` by the candidate's own clock (so clock
//! skew between replicas does not matter). Every write carries the `resourceVersion` read, so
//! two candidates racing get one success and one 409 Conflict. A holder that cannot renew for
//! a whole lease duration steps down; on shutdown it releases the Lease for a quick handover.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the gateway's own, `POD_NAMESPACE`).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (`POD_NAME`, else the host name).
    pub identity: String,
    /// How long a holder's claim lasts without renewal.
    pub duration: Duration,
}

impl LeaseSettings {
    fn renew_every(&self) -> Duration {
        (self.duration / 3).max(Duration::from_millis(200))
    }
}

/// The record a candidate watches for changes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    holder: Option<String>,
    renew: Option<i64>,
    resource_version: Option<String>,
}

enum Outcome {
    Held,
    NotHeld,
}

/// Run the election until `shutdown` turns true; the returned channel says whether this
/// replica holds the Lease right now, and the task ends once the Lease is released.
pub fn spawn(
    api: Api<Lease>,
    settings: LeaseSettings,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut observed: Option<(Observed, Instant)> = None;
        let mut last_renewed: Option<Instant> = None;
        let mut failing = false;
        loop {
            let result = try_acquire_or_renew(&api, &settings, &mut observed).await;
            if result.is_ok() && failing {
                tracing::info!(lease = %settings.name, "the status-writer Lease is reachable again");
                failing = false;
            }
            let leading = match result {
                Ok(Outcome::Held) => {
                    last_renewed = Some(Instant::now());
                    true
                }
                Ok(Outcome::NotHeld) => false,
                Err(e) => {
                    // Keep leading through a short outage, never longer than the lease lasts.
                    let still = last_renewed.is_some_and(|t| t.elapsed() < settings.duration);
                    if !failing {
                        tracing::warn!(lease = %settings.name, error = %e, "cannot read or renew the status-writer Lease; retrying");
                    }
                    failing = true;
                    still && *tx.borrow()
                }
            };
            if leading != *tx.borrow() {
                if leading {
                    tracing::info!(lease = %settings.name, identity = %settings.identity, "this replica now writes status (holds the Lease)");
                } else {
                    tracing::info!(lease = %settings.name, "this replica no longer holds the Lease");
                    last_renewed = None;
                }
                tx.send_replace(leading);
            }
            let wait = if leading {
                settings.renew_every()
            } else {
                (settings.renew_every() / 2).max(Duration::from_millis(200))
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            match release(&api, &settings).await {
                Ok(()) => {
                    tracing::info!(lease = %settings.name, "released the status-writer Lease")
                }
                Err(e) => {
                    tracing::warn!(lease = %settings.name, error = %e, "could not release the Lease; another replica takes over when it expires")
                }
            }
        }
    });
    (rx, task)
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<(Observed, Instant)>,
) -> Result<Outcome, kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_secs(settings.duration)),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Outcome::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::NotHeld),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = Observed {
        holder: holder.clone(),
        renew: spec.renew_time.as_ref().map(|t| t.0.as_microsecond()),
        resource_version: lease.metadata.resource_version.clone(),
    };
    let changed_at = match observed {
        Some((old, at)) if *old == record => *at,
        _ => {
            let at = Instant::now();
            *observed = Some((record, at));
            at
        }
    };
    let lasts = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(settings.duration, Duration::from_secs);
    let mine = holder.as_deref() == Some(settings.identity.as_str());
    let expired = changed_at.elapsed() >= lasts;
    if !mine && holder.is_some() && !expired {
        return Ok(Outcome::NotHeld);
    }
    let mut next = spec;
    if !mine {
        next.holder_identity = Some(settings.identity.clone());
        next.acquire_time = Some(now_micro());
        next.lease_transitions = Some(next.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    next.lease_duration_seconds = Some(duration_secs(settings.duration));
    next.renew_time = Some(now_micro());
    lease.spec = Some(next);
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Outcome::Held),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::NotHeld),
        Err(e) => Err(e),
    }
}

/// Give the Lease up: no holder, so a candidate takes it at its next try.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        return Ok(());
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(now_micro());
    spec.lease_duration_seconds = Some(1);
    lease.spec = Some(spec);
    api.replace(&settings.name, &PostParams::default(), &lease)
        .await
        .map(drop)
}
