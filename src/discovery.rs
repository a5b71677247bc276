//! Model discovery: one background task per distinct upstream that lists its models
//! (OpenAI-style `GET {baseUrl}/models`; Bedrock `ListInferenceProfiles` on the control plane,
//! filtered by the provider's settings), refreshed on an interval. A failed refresh keeps
//! the last good list and records the error.
//!
//! Catalogs are keyed by [`Upstream::catalog_key`], so a reload that leaves a provider
//! unchanged keeps its catalog; [`Discovery::sync`] starts tasks for new upstreams and drops
//! the catalogs of removed ones (their tasks notice and stop).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::config::{Snapshot, Upstream};

/// One model an upstream lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEntry {
    /// Model ID as the upstream names it.
    pub id: String,
    /// Creation time the upstream reported (Unix seconds).
    pub created: Option<i64>,
    /// Owner the upstream reported.
    pub owned_by: Option<String>,
}

/// What is known of an upstream's models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogState {
    /// No answer yet.
    Pending,
    /// The last good list, and the error of the latest refresh if it failed.
    Ready {
        /// Models (before the provider's allow filter).
        models: Arc<[ModelEntry]>,
        /// Error of the latest refresh, when it failed.
        error: Option<String>,
    },
    /// Never succeeded.
    Failed(String),
}

/// The models of one upstream.
pub struct Catalog {
    state: watch::Sender<CatalogState>,
}

impl Catalog {
    /// The current state.
    pub fn state(&self) -> CatalogState {
        self.state.borrow().clone()
    }

    /// The state once the first discovery attempt has finished, waiting at most `wait`.
    pub async fn settled(&self, wait: Duration) -> CatalogState {
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| *s != CatalogState::Pending)).await;
        self.state()
    }
}

/// Settings of discovery.
#[derive(Clone, Copy, Debug)]
pub struct DiscoveryConfig {
    /// Interval between refreshes.
    pub refresh: Duration,
    /// Interval between retries after a failure.
    pub retry: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(300),
            retry: Duration::from_secs(30),
        }
    }
}

/// All catalogs.
pub struct Discovery {
    client: reqwest::Client,
    config: DiscoveryConfig,
    catalogs: RwLock<HashMap<u64, Arc<Catalog>>>,
}

impl Discovery {
    /// A discovery service using this HTTP client.
    pub fn new(client: reqwest::Client, config: DiscoveryConfig) -> Arc<Self> {
        Arc::new(Self {
            client,
            config,
            catalogs: RwLock::default(),
        })
    }

    /// The catalog of an upstream, if it discovers.
    pub fn catalog(&self, upstream: &Upstream) -> Option<Arc<Catalog>> {
        let catalogs = self.catalogs.read().ok()?;
        catalogs.get(&upstream.catalog_key).cloned()
    }

    /// Start catalogs for the snapshot's discovering upstreams, drop the others.
    pub fn sync(&self, snapshot: &Snapshot) {
        let wanted: HashMap<u64, Arc<Upstream>> = snapshot
            .upstreams()
            .into_iter()
            .filter(|(_, u)| u.models.discovers())
            .collect();
        let Ok(mut catalogs) = self.catalogs.write() else {
            return;
        };
        catalogs.retain(|key, _| wanted.contains_key(key));
        for (key, upstream) in wanted {
            catalogs.entry(key).or_insert_with(|| {
                let (state, _) = watch::channel(CatalogState::Pending);
                let catalog = Arc::new(Catalog { state });
                tokio::spawn(refresh_loop(
                    self.client.clone(),
                    self.config,
                    upstream,
                    Arc::downgrade(&catalog),
                ));
                catalog
            });
        }
    }

    /// Keep catalogs in step with the store's snapshots until the store goes away.
    pub fn follow(self: Arc<Self>, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
        tokio::spawn(async move {
            loop {
                let snapshot = snapshots.borrow_and_update().clone();
                self.sync(&snapshot);
                if snapshots.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn refresh_loop(
    client: reqwest::Client,
    config: DiscoveryConfig,
    upstream: Arc<Upstream>,
    catalog: Weak<Catalog>,
) {
    loop {
        let result = match upstream.info.protocol {
            crate::providers::Protocol::Bedrock => fetch_bedrock_profiles(&client, &upstream).await,
            _ => fetch_models(&client, &upstream).await,
        };
        let Some(strong) = catalog.upgrade() else {
            return;
        };
        let ok = result.is_ok();
        strong.state.send_modify(|state| match (result, &*state) {
            (Ok(models), _) => {
                *state = CatalogState::Ready {
                    models: models.into(),
                    error: None,
                }
            }
            (Err(e), CatalogState::Ready { models, .. }) => {
                tracing::warn!(provider = %upstream.provider, error = %e, "model discovery failed; keeping the last good list");
                *state = CatalogState::Ready {
                    models: models.clone(),
                    error: Some(e),
                }
            }
            (Err(e), _) => {
                tracing::warn!(provider = %upstream.provider, error = %e, "model discovery failed");
                *state = CatalogState::Failed(e)
            }
        });
        drop(strong);
        let wait = if ok { config.refresh } else { config.retry };
        tokio::time::sleep(wait).await;
    }
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelObject>,
}

#[derive(Deserialize)]
struct ModelObject {
    id: String,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    owned_by: Option<String>,
}

/// One OpenAI-style `GET {baseUrl}/models`.
pub async fn fetch_models(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &upstream.extra_headers {
        headers.insert(name.clone(), value.clone());
    }
    let url = upstream.url("models");
    let out = crate::credentials::Outgoing {
        method: &http::Method::GET,
        url: &url,
        headers: &mut headers,
        body: Some(b""),
    };
    upstream
        .credential
        .apply(out)
        .await
        .map_err(|e| e.to_string())?;
    let request = client
        .get(&url)
        .headers(headers)
        .timeout(upstream.timeout.min(Duration::from_secs(30)))
        .send();
    let response = request.await.map_err(|e| {
        if e.is_timeout() {
            "the models list timed out".to_owned()
        } else {
            format!(
                "could not reach {}: connection failed",
                upstream.url("models")
            )
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {} answered {status}", upstream.url("models")));
    }
    let body = response
        .bytes()
        .await
        .map_err(|_| "the models list was cut off".to_owned())?;
    let list: ModelList = serde_json::from_slice(&body)
        .map_err(|e| format!("the models list is not an OpenAI model list: {e}"))?;
    Ok(list
        .data
        .into_iter()
        .map(|m| ModelEntry {
            id: m.id,
            created: m.created,
            owned_by: m.owned_by,
        })
        .collect())
}

/// Pages requested from `ListInferenceProfiles` at most (1000 per page), so a misbehaving
/// control plane that always returns a `nextToken` cannot keep discovery busy forever.
const BEDROCK_MAX_PAGES: usize = 50;

/// SigV4 canonical form: everything but unreserved characters percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InferenceProfiles {
    #[serde(default)]
    inference_profile_summaries: Vec<InferenceProfile>,
    #[serde(default)]
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InferenceProfile {
    inference_profile_id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

/// Bedrock `ListInferenceProfiles` (`GET {controlPlaneUrl}/inference-profiles`), every page,
/// keeping the ACTIVE profiles that pass `allowedProviders` and `allowedInferenceRegions`.
pub async fn fetch_bedrock_profiles(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    let Some(settings) = &upstream.bedrock else {
        return Err("the provider has no Bedrock settings".to_owned());
    };
    let base = format!(
        "{}/inference-profiles",
        settings.control_plane_url.as_str().trim_end_matches('/')
    );
    let mut models = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..BEDROCK_MAX_PAGES {
        let mut url = format!("{base}?maxResults=1000");
        if let Some(t) = &token {
            url.push_str("&nextToken=");
            url.push_str(&percent_encoding::utf8_percent_encode(t, UNRESERVED).to_string());
        }
        let mut headers = http::HeaderMap::new();
        let out = crate::credentials::Outgoing {
            method: &http::Method::GET,
            url: &url,
            headers: &mut headers,
            body: Some(b""),
        };
        upstream
            .credential
            .apply(out)
            .await
            .map_err(|e| e.to_string())?;
        let response = client
            .get(&url)
            .headers(headers)
            .timeout(upstream.timeout.min(Duration::from_secs(30)))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "ListInferenceProfiles timed out".to_owned()
                } else {
                    format!("could not reach {base}: connection failed")
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {base} answered {status}"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|_| "the inference profile list was cut off".to_owned())?;
        let page: InferenceProfiles = serde_json::from_slice(&body)
            .map_err(|e| format!("the answer is not a ListInferenceProfiles response: {e}"))?;
        for profile in page.inference_profile_summaries {
            let active = profile
                .status
                .as_deref()
                .is_none_or(|s| s.eq_ignore_ascii_case("ACTIVE"));
            if active && settings.admits(&profile.inference_profile_id) {
                models.push(ModelEntry {
                    created: profile.created_at.as_deref().and_then(unix_seconds),
                    id: profile.inference_profile_id,
                    owned_by: None,
                });
            }
        }
        match page.next_token.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(models),
        }
    }
    Err(format!(
        "ListInferenceProfiles returned more than {BEDROCK_MAX_PAGES} pages; stopped"
    ))
}

/// `2024-08-21T17:03:15.123Z` → Unix seconds (UTC timestamps as Bedrock writes them).
fn unix_seconds(rfc3339: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
}
