//! Model discovery: one background task per distinct upstream that lists its models with
//! its type's own list API, refreshed on an interval. A failed refresh keeps the last good
//! list and records the error.
//!
//! [`fetch_models`] dispatches on the upstream's protocol to one function per protocol:
//! OpenAI-style `GET {baseUrl}/models`; Anthropic `GET /v1/models` (paged with `has_more` /
//! `last_id` → `after_id`); Gemini `models.list` (`GET /v1beta/models`, paged with
//! `pageToken`, only models that support `generateContent`, `models/` prefix stripped);
//! Cohere `GET /v1/models?endpoint=chat` (paged with `next_page_token`); Vertex AI
//! `publishers.models.list`; Azure deployments (resource URLs) or `/models` (v1 URLs); Bedrock
//! `ListInferenceProfiles` on the control plane (paged with `nextToken`, ACTIVE profiles that
//! pass `allowedProviders` and `allowedInferenceRegions`). Each page request goes through
//! [`get_json`] (Bedrock signs its own), which adds the provider's headers and credential.
//!
//! Catalogs are keyed by [`Upstream::catalog_key`], so a reload that leaves a provider
//! unchanged keeps its catalog; [`Discovery::sync`] starts tasks for new upstreams and drops
//! the catalogs of removed ones (their tasks notice and stop).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use url::Url;

use crate::config::Cloud;
use crate::config::{Snapshot, Upstream};
use crate::formats::Format;

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
        let result = fetch_models(&client, &upstream).await;
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

/// Most pages one discovery reads (a guard against an upstream that pages forever).
const MAX_PAGES: usize = 50;

/// Follow a paged model list: `page(token)` reads one page (the first with `None`) and
/// answers its models and the token of the next page, if any. Stops when there is no next
/// token, when the upstream repeats the token it was just given, or after [`MAX_PAGES`].
async fn paged<F, Fut>(mut page: F) -> Result<Vec<ModelEntry>, String>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<ModelEntry>, Option<String>), String>>,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let (models, next) = page(token.clone()).await?;
        out.extend(models);
        match next {
            Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
            _ => return Ok(out),
        }
    }
    Ok(out)
}

/// One model list from the upstream, with the list API of its protocol.
pub async fn fetch_models(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    match (upstream.info.format, &upstream.cloud) {
        (Format::Anthropic, _) => anthropic_models(client, upstream).await,
        (Format::Gemini, Cloud::Vertex { .. }) => vertex_models(client, upstream).await,
        (Format::Gemini, Cloud::None | Cloud::Azure { .. }) => {
            gemini_models(client, upstream).await
        }
        (Format::Cohere, _) => cohere_models(client, upstream).await,
        (Format::OpenAi, Cloud::Azure { .. }) => azure_models(client, upstream).await,
        (Format::OpenAi, Cloud::None | Cloud::Vertex { .. }) => {
            openai_models(client, upstream).await
        }
        (Format::Bedrock, _) => fetch_bedrock_profiles(client, upstream).await,
    }
}

/// `GET {baseUrl}/{path}?{query}` with the upstream's extra headers, `extra` and its credential; the body as
/// JSON of type `T`. `what` names the list API in error messages. The URL comes from
/// configuration plus fixed paths and page tokens (never from a client), and error messages
/// name only the path, never the query.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    upstream: &Upstream,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&'static str, &'static str)],
    what: &str,
) -> Result<T, String> {
    let url = list_url(upstream, path, query)?;
    fetch_json(
        client,
        upstream,
        url.as_str(),
        &upstream.url(path),
        extra,
        what,
    )
    .await
}

/// `GET url` with the upstream's extra headers, `extra` and its credential (signed, for
/// SigV4); the body as JSON of type `T`. Error messages name `shown` (the URL without its
/// query), never the query.
async fn fetch_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    upstream: &Upstream,
    url: &str,
    shown: &str,
    extra: &[(&'static str, &'static str)],
    what: &str,
) -> Result<T, String> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &upstream.extra_headers {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in extra {
        headers.insert(*name, http::HeaderValue::from_static(value));
    }
    let out = crate::credentials::Outgoing {
        method: &http::Method::GET,
        url,
        headers: &mut headers,
        body: Some(b""),
    };
    upstream
        .credential
        .apply(out)
        .await
        .map_err(|e| e.to_string())?;
    let request = client
        .get(url)
        .headers(headers)
        .timeout(upstream.timeout.min(Duration::from_secs(30)))
        .send();
    let response = request.await.map_err(|e| {
        if e.is_timeout() {
            format!("the {what} timed out")
        } else {
            format!("could not reach {shown}: connection failed")
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {shown} answered {status}"));
    }
    use crate::net::{CappedRead, read_limited};
    let body = read_limited(response, MAX_PAGE_BYTES)
        .await
        .map_err(|e| match e {
            CappedRead::TooBig => page_too_big(what),
            CappedRead::Transport(_) => format!("the {what} was cut off"),
        })?;
    serde_json::from_slice(&body).map_err(|e| format!("the {what} could not be read: {e}"))
}

/// Largest model-list page read into memory.
pub const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

fn page_too_big(what: &str) -> String {
    format!(
        "the {what} is larger than {} MiB per page, more than the gateway reads; set spec.models.static instead",
        MAX_PAGE_BYTES / (1024 * 1024)
    )
}

/// `{baseUrl}/{path}` with query parameters.
fn list_url(upstream: &Upstream, path: &str, query: &[(&str, &str)]) -> Result<Url, String> {
    let mut url =
        Url::parse(&upstream.url(path)).map_err(|e| format!("the models URL is not valid: {e}"))?;
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    Ok(url)
}

#[derive(Deserialize)]
struct OpenAiModelList {
    data: Vec<OpenAiModel>,
}

#[derive(Deserialize)]
struct OpenAiModel {
    id: String,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    owned_by: Option<String>,
}

impl From<OpenAiModel> for ModelEntry {
    fn from(m: OpenAiModel) -> Self {
        ModelEntry {
            id: m.id,
            created: m.created,
            owned_by: m.owned_by,
        }
    }
}

/// OpenAI-style `GET {baseUrl}/models`.
async fn openai_models(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    let list: OpenAiModelList =
        get_json(client, upstream, "models", &[], &[], "OpenAI model list").await?;
    Ok(list.data.into_iter().map(ModelEntry::from).collect())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublisherModels {
    #[serde(default)]
    publisher_models: Vec<PublisherModel>,
}

#[derive(Deserialize)]
struct PublisherModel {
    name: String,
}

/// Vertex AI `publishers.models.list`: `{"publisherModels": [{"name":
/// "publishers/google/models/gemini-2.5-pro"}]}` (first page, up to 1000 models).
async fn vertex_models(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    let list: PublisherModels = get_json(
        client,
        upstream,
        "v1beta1/publishers/google/models",
        &[("pageSize", "1000")],
        &[],
        "Vertex AI publisher model list",
    )
    .await?;
    Ok(list
        .publisher_models
        .into_iter()
        .filter_map(|m| {
            let id = m.name.rsplit('/').next()?.to_owned();
            crate::config::snapshot::is_model_segment(&id).then_some(ModelEntry {
                id,
                created: None,
                owned_by: Some("google".to_owned()),
            })
        })
        .collect())
}

/// Azure OpenAI: the deployments of a resource URL (`GET openai/deployments`), or
/// `GET {baseUrl}/models` for a Foundry v1 URL.
async fn azure_models(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    if !matches!(
        upstream.cloud,
        crate::config::Cloud::Azure { v1: false, .. }
    ) {
        return openai_models(client, upstream).await;
    }
    let list: OpenAiModelList = get_json(
        client,
        upstream,
        "openai/deployments",
        &[(
            "api-version",
            crate::config::snapshot::AZURE_DEPLOYMENTS_API_VERSION,
        )],
        &[],
        "Azure OpenAI deployments list",
    )
    .await?;
    Ok(list.data.into_iter().map(ModelEntry::from).collect())
}

#[derive(Deserialize)]
struct AnthropicModelPage {
    data: Vec<AnthropicModel>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicModel {
    id: String,
}

/// Anthropic `GET /v1/models?limit=1000`, following `has_more` with `after_id={last_id}`.
async fn anthropic_models(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    let version = [(
        "anthropic-version",
        crate::formats::anthropic::ANTHROPIC_VERSION,
    )];
    paged(|after| async move {
        let mut query = vec![("limit", "1000")];
        if let Some(after) = &after {
            query.push(("after_id", after.as_str()));
        }
        let page: AnthropicModelPage = get_json(
            client,
            upstream,
            "v1/models",
            &query,
            &version,
            "Anthropic model list",
        )
        .await?;
        let models = page.data.into_iter().map(|m| ModelEntry {
            id: m.id,
            created: None,
            owned_by: None,
        });
        Ok((models.collect(), page.last_id.filter(|_| page.has_more)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiModelPage {
    #[serde(default)]
    models: Vec<GeminiModel>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiModel {
    name: String,
    #[serde(default)]
    supported_generation_methods: Vec<String>,
}

/// Gemini `models.list` (`GET /v1beta/models?pageSize=1000`, following `nextPageToken`):
/// only models that support `generateContent`, IDs without the `models/` prefix.
async fn gemini_models(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    paged(|token| async move {
        let mut query = vec![("pageSize", "1000")];
        if let Some(token) = &token {
            query.push(("pageToken", token.as_str()));
        }
        let page: GeminiModelPage = get_json(
            client,
            upstream,
            "v1beta/models",
            &query,
            &[],
            "Gemini model list",
        )
        .await?;
        let models = page
            .models
            .into_iter()
            .filter(|m| {
                m.supported_generation_methods
                    .iter()
                    .any(|g| g == "generateContent")
            })
            .map(|m| ModelEntry {
                id: m.name.strip_prefix("models/").unwrap_or(&m.name).to_owned(),
                created: None,
                owned_by: None,
            });
        let next = page.next_page_token.filter(|t| !t.is_empty());
        Ok((models.collect(), next))
    })
    .await
}

#[derive(Deserialize)]
struct CohereModelPage {
    #[serde(default)]
    models: Vec<CohereModel>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct CohereModel {
    name: String,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

/// Cohere `GET /v1/models?endpoint=chat&page_size=1000`, following `next_page_token`; a
/// model that lists its endpoints must list `chat`.
async fn cohere_models(
    client: &reqwest::Client,
    upstream: &Upstream,
) -> Result<Vec<ModelEntry>, String> {
    paged(|token| async move {
        let mut query = vec![("endpoint", "chat"), ("page_size", "1000")];
        if let Some(token) = &token {
            query.push(("page_token", token.as_str()));
        }
        let page: CohereModelPage = get_json(
            client,
            upstream,
            "v1/models",
            &query,
            &[],
            "Cohere model list",
        )
        .await?;
        let models = page
            .models
            .into_iter()
            .filter(|m| {
                m.endpoints
                    .as_ref()
                    .is_none_or(|e| e.iter().any(|e| e == "chat"))
            })
            .map(|m| ModelEntry {
                id: m.name,
                created: None,
                owned_by: None,
            });
        let next = page.next_page_token.filter(|t| !t.is_empty());
        Ok((models.collect(), next))
    })
    .await
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
        let page: InferenceProfiles = fetch_json(
            client,
            upstream,
            &url,
            &base,
            &[],
            "ListInferenceProfiles response",
        )
        .await?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use axum::Router;
    use axum::extract::{Query, State};
    use axum::http::HeaderMap;
    use axum::routing::get;
    use serde_json::{Value, json};

    use super::*;
    use crate::config::ObjectKey;
    use crate::config::snapshot::ModelPolicy;
    use crate::crd::ProviderType;
    use crate::credentials::Credential;

    type Seen = Arc<tokio::sync::Mutex<Vec<(String, HashMap<String, String>, HeaderMap)>>>;
    type Pick = fn(&HashMap<String, String>) -> usize;
    type ListState = (Seen, Arc<Vec<Value>>, Pick);

    /// A list API on 127.0.0.1 that answers `pages[page]`, choosing the page with `pick`.
    async fn serve(path: &'static str, pages: Vec<Value>, pick: Pick) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let pages = Arc::new(pages);
        let state = (seen.clone(), pages, pick);
        let app = Router::new()
            .route(
                path,
                get(
                    move |State((seen, pages, pick)): State<ListState>,
                          Query(q): Query<HashMap<String, String>>,
                          headers: HeaderMap| async move {
                        seen.lock()
                            .await
                            .push((path.to_owned(), q.clone(), headers));
                        axum::Json(pages[pick(&q).min(pages.len() - 1)].clone())
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn upstream(t: ProviderType, base: &str) -> Upstream {
        let info = crate::providers::info(t);
        let credential = match info.key_header {
            crate::providers::KeyHeader::Bearer => Credential::bearer("k-1").unwrap(),
            crate::providers::KeyHeader::Named(n) => {
                Credential::header(http::HeaderName::from_static(n), "k-1").unwrap()
            }
        };
        Upstream {
            provider: ObjectKey::new("ai", t.as_str()),
            provider_type: t,
            info,
            base_url: Url::parse(base).unwrap(),
            credential,
            extra_headers: Vec::new(),
            models: ModelPolicy::Any,
            timeout: Duration::from_secs(5),
            catalog_key: 1,
            cloud: crate::config::Cloud::None,
            passthrough: Vec::new().into(),
            bedrock: None,
        }
    }

    fn client() -> reqwest::Client {
        crate::net::http_client(None).unwrap()
    }

    fn ids(models: &[ModelEntry]) -> Vec<&str> {
        models.iter().map(|m| m.id.as_str()).collect()
    }

    #[tokio::test]
    async fn anthropic_pages_with_after_id_and_stops_on_a_repeated_cursor() {
        let pages = vec![
            json!({"data": [{"type": "model", "id": "claude-a"}, {"type": "model", "id": "claude-b"}], "has_more": true, "first_id": "claude-a", "last_id": "claude-b"}),
            json!({"data": [{"type": "model", "id": "claude-c"}], "has_more": true, "first_id": "claude-c", "last_id": "claude-c"}),
            json!({"data": [], "has_more": true, "first_id": null, "last_id": "claude-c"}),
        ];
        let pick = |q: &HashMap<String, String>| match q.get("after_id").map(String::as_str) {
            None => 0,
            Some("claude-b") => 1,
            Some(_) => 2,
        };
        let (base, seen) = serve("/v1/models", pages, pick).await;
        let up = upstream(ProviderType::Anthropic, &base);
        let models = fetch_models(&client(), &up).await.unwrap();
        assert_eq!(ids(&models), ["claude-a", "claude-b", "claude-c"]);
        let seen = seen.lock().await;
        assert_eq!(seen.len(), 3, "a cursor that does not move ends the paging");
        assert_eq!(
            seen[1].1.get("after_id").map(String::as_str),
            Some("claude-b")
        );
        assert_eq!(seen[0].2.get("x-api-key").unwrap(), "k-1");
        assert!(seen[0].2.get("anthropic-version").is_some());
    }

    #[tokio::test]
    async fn gemini_keeps_generate_content_models_without_the_prefix() {
        let pages = vec![
            json!({"models": [
                {"name": "models/gemini-2.5-flash", "supportedGenerationMethods": ["generateContent", "countTokens"]},
                {"name": "models/text-embedding-004", "supportedGenerationMethods": ["embedContent"]}
            ], "nextPageToken": "p2"}),
            json!({"models": [{"name": "models/gemini-2.5-pro", "supportedGenerationMethods": ["generateContent"]}]}),
        ];
        let pick = |q: &HashMap<String, String>| usize::from(q.get("pageToken").is_some());
        let (base, seen) = serve("/v1beta/models", pages, pick).await;
        let up = upstream(ProviderType::Gemini, &base);
        let models = fetch_models(&client(), &up).await.unwrap();
        assert_eq!(ids(&models), ["gemini-2.5-flash", "gemini-2.5-pro"]);
        let seen = seen.lock().await;
        assert_eq!(seen[1].1.get("pageToken").map(String::as_str), Some("p2"));
        assert_eq!(seen[0].2.get("x-goog-api-key").unwrap(), "k-1");
        assert!(!seen[0].1.contains_key("key"));
    }

    #[tokio::test]
    async fn cohere_asks_for_chat_models_and_follows_the_page_token() {
        let pages = vec![
            json!({"models": [
                {"name": "command-a-03-2025", "endpoints": ["chat", "generate"]},
                {"name": "embed-v4.0", "endpoints": ["embed"]}
            ], "next_page_token": "t2"}),
            json!({"models": [{"name": "command-r7b-12-2024", "endpoints": ["chat"]}], "next_page_token": ""}),
        ];
        let pick = |q: &HashMap<String, String>| usize::from(q.get("page_token").is_some());
        let (base, seen) = serve("/v1/models", pages, pick).await;
        let up = upstream(ProviderType::Cohere, &base);
        let models = fetch_models(&client(), &up).await.unwrap();
        assert_eq!(ids(&models), ["command-a-03-2025", "command-r7b-12-2024"]);
        let seen = seen.lock().await;
        assert_eq!(seen[0].1.get("endpoint").map(String::as_str), Some("chat"));
        assert_eq!(seen[1].1.get("page_token").map(String::as_str), Some("t2"));
        assert_eq!(seen[0].2.get("authorization").unwrap(), "Bearer k-1");
    }

    #[tokio::test]
    async fn an_error_names_the_path_and_status_only() {
        let up = upstream(ProviderType::Anthropic, "http://127.0.0.1:9");
        let err = fetch_models(&client(), &up).await.unwrap_err();
        assert!(err.contains("http://127.0.0.1:9/v1/models"), "{err}");
        assert!(!err.contains("k-1") && !err.contains("after_id"), "{err}");
    }
}
