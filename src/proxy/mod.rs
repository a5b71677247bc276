//! The data plane: one axum service that dispatches every request by its raw path.
//!
//! ```text
//! /v1/model-router/{proxy}/chat/completions  ─> model_router::chat  (resolve model → upstream)
//! /v1/model-router/{proxy}/models            ─> model_router::models
//! /v1/{prefix}/{proxy}/{rest…}               ─> native::forward     (bytes pass through)
//! ```
//!
//! Each request loads the current snapshot once. An [`Exchange`] record travels with the
//! response body and, when the body ends, writes the access-log line and the metrics. A
//! successful `text/event-stream` body gets SSE keep-alive comments while it is idle
//! ([`keepalive`]).

pub mod context;
pub mod drain;
pub mod error;
pub mod guarded;
pub mod headers;
pub mod keepalive;
pub mod model_router;
pub mod native;

pub mod translated;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::{HeaderValue, Method};

use crate::budget::gate::Refused;
use crate::config::Store;
use crate::discovery::Discovery;
use crate::telemetry::{Metrics, RequestLabels, RouteLabels};
pub use error::ApiError;

/// The `model` metrics label of a model the provider does not list.
pub const OTHER_MODEL: &str = "other";

/// The `provider` metrics label of a prefix the proxy does not have.
pub const UNKNOWN_LABEL: &str = "unknown";

/// Default request-body limit: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Everything a handler needs, shared by all requests.
pub struct AppState {
    /// The live routing table.
    pub store: Arc<Store>,
    /// The upstream HTTP client (one connection pool).
    pub client: reqwest::Client,
    /// Model catalogs.
    pub discovery: Arc<Discovery>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments on idle streams (`None`: off).
    pub sse_keepalive: Option<Duration>,
    /// Client identity checks (JWKS and TokenReview caches, failure limiter).
    pub security: Arc<crate::policy::identity::Runtime>,
}

/// The data-plane service.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// One request as the access log and the metrics see it.
pub struct Exchange {
    metrics: Arc<Metrics>,
    /// Request ID (client's `x-request-id`, or generated).
    pub request_id: String,
    method: Method,
    path: String,
    /// `router` or `native`.
    pub route: &'static str,
    /// Proxy ID.
    pub proxy: String,
    /// Provider prefix.
    pub provider: String,
    /// Model as asked.
    pub model: String,
    /// Whether the model is one the provider lists (static or discovered): only then is it a
    /// metrics label, so clients cannot mint unbounded series with made-up model IDs.
    pub model_listed: bool,
    status: u16,
    started: Instant,
    /// Time to the upstream's response headers.
    pub ttfb: Option<Duration>,
    /// Caller identity (`anonymous` without `clientAuth`; empty before authentication).
    pub identity: String,
    /// What the audit event of this request records (shared with guarded response bodies).
    pub audit: crate::policy::audit::Cell,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                proxy: self.proxy.clone(),
                provider: self.provider.clone(),
                model: if self.model_listed || self.model.is_empty() {
                    self.model.clone()
                } else {
                    OTHER_MODEL.to_owned()
                },
                route: self.route,
                status: self.status,
            })
            .inc();
        let labels = RouteLabels {
            proxy: self.proxy.clone(),
            provider: self.provider.clone(),
            route: self.route,
        };
        self.metrics
            .request_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(ttfb) = self.ttfb {
            self.metrics
                .upstream_ttfb
                .get_or_create(&labels)
                .observe(ttfb.as_secs_f64());
        }
        tracing::info!(
            target: "portcullis::access",
            request_id = %self.request_id,
            method = %self.method,
            path = %self.path,
            status = self.status,
            route = self.route,
            proxy = %self.proxy,
            provider = %self.provider,
            model = %self.model,
            duration_ms = took.as_millis() as u64,
            ttfb_ms = self.ttfb.map(|t| t.as_millis() as u64),
            "request"
        );
        if !self.proxy.is_empty() {
            let data = self.audit.try_lock();
            let empty = crate::policy::audit::Data::default();
            let data = data.as_deref().unwrap_or(&empty);
            crate::policy::audit::Record {
                time: crate::policy::audit::now_rfc3339(),
                request_id: &self.request_id,
                proxy: &self.proxy,
                identity: &data.identity,
                auth: data.auth,
                route: self.route,
                provider: &self.provider,
                model: data.model.as_deref().unwrap_or(&self.model),
                status: self.status,
                usage: data.usage,
                decisions: &data.decisions,
                content: data.content.as_ref(),
                budget_limit: data.budget.as_deref(),
            }
            .emit();
        }
    }
}

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // An early answer leaves the body unread: drain a small one so keep-alive survives.
    let request = request.map(|body| Body::new(drain::DrainOnDrop::new(body)));
    let path = request.uri().path().to_owned();
    let mut exchange = Exchange {
        metrics: state.metrics.clone(),
        request_id: request_id(&request),
        method: request.method().clone(),
        path: path.clone(),
        route: "none",
        proxy: String::new(),
        provider: String::new(),
        model: String::new(),
        model_listed: false,
        status: 0,
        started: Instant::now(),
        ttfb: None,
        identity: String::new(),
        audit: Arc::default(),
    };
    let result = route(&state, &path, request, &mut exchange).await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    exchange.status = response.status().as_u16();
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    // The record ends with the body: for a stream, when its last byte is sent (or the
    // client goes away).
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream();
    let body = match state.sse_keepalive {
        Some(every) if keepalive::applies(parts.status, &parts.headers, &parts.extensions) => {
            keepalive::KeepAlive::new(body, every).boxed()
        }
        _ => body.boxed(),
    };
    let body = body.map(move |chunk| {
        let _ = &exchange;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

async fn route(
    state: &Arc<AppState>,
    path: &str,
    request: Request,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let method = request.method().to_string();
    let not_found = || ApiError::RouteNotFound {
        method: method.clone(),
        path: path.to_owned(),
    };
    let Some(tail) = path.strip_prefix("/v1/") else {
        return Err(not_found());
    };
    let mut parts = tail.splitn(3, '/');
    let (Some(prefix), Some(proxy)) = (parts.next(), parts.next()) else {
        return Err(not_found());
    };
    let rest = parts.next().unwrap_or("");
    if prefix.is_empty() || proxy.is_empty() {
        return Err(not_found());
    }
    let router = prefix == "model-router";
    exchange.route = if router { "router" } else { "native" };
    // The one snapshot load of this request.
    let snapshot = state.store.load();
    if let Some(candidates) = snapshot.ambiguous(proxy) {
        let error = ApiError::AmbiguousProxy {
            id: proxy.to_owned(),
            candidates: candidates.join(", "),
        };
        return if router {
            Err(error)
        } else {
            Ok(error.into_response_for(context::format_hint(prefix)))
        };
    }
    let table = snapshot.proxy(proxy).cloned();
    let Some(table) = table else {
        if router {
            return Err(ApiError::ProxyNotFound {
                id: proxy.to_owned(),
            });
        }
        // A path error comes first on native routes, then the unknown proxy, in the shape of
        // the provider type the prefix names.
        let shape = context::format_hint(prefix);
        let error = native::check_rest(rest)
            .err()
            .unwrap_or_else(|| ApiError::ProxyNotFound {
                id: proxy.to_owned(),
            });
        return Ok(error.into_response_for(shape));
    };
    exchange.proxy = table.key.proxy_id();
    // Who is calling, before anything else happens.
    let peer = context::peer(&request);
    let headers = context::credential_headers(&table, prefix, &request);
    if let Err(e) = context::authenticate(state, &table, &headers, peer, exchange).await {
        return Ok(if router {
            e.into_response()
        } else {
            // Metrics labels come from configuration only: a prefix the proxy does not have
            // (random bytes from an unauthenticated caller) is one fixed label.
            exchange.provider = if table.route(prefix).is_some() {
                prefix.to_owned()
            } else {
                UNKNOWN_LABEL.to_owned()
            };
            e.into_response_for(context::format_for(&table, prefix))
        });
    }
    drop(headers);
    // Budgets (LlmBudget): reserve before any byte goes upstream, or refuse.
    let admitted = crate::budget::gate::admit(
        state,
        &snapshot.budgets,
        &table,
        prefix,
        rest,
        request,
        &exchange.identity,
    )
    .await;
    drop(snapshot);
    let (request, gate) = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            let Refused {
                response,
                limit,
                target,
            } = *refused;
            if let Some((provider, model)) = target {
                exchange.provider = provider;
                exchange.model = model;
            }
            crate::policy::audit::update(&exchange.audit, |d| d.budget = limit);
            return Ok(response);
        }
    };
    let ctx = context::Ctx { table };
    let response = if router {
        match (request.method(), rest) {
            (&Method::POST, "chat/completions") => {
                model_router::chat(state, &ctx, request, exchange).await
            }
            (&Method::GET, "models") => model_router::models(state, &ctx, exchange).await,
            _ => Err(not_found()),
        }
    } else {
        Ok(native::forward(state, &ctx, prefix, rest, request, exchange).await)
    };
    // The reservation settles when the response body ends (an error drops and releases it).
    match (response, gate) {
        (Ok(response), Some(gate)) => Ok(gate.wrap(response, exchange.ttfb.is_some())),
        (response, _) => response,
    }
}
