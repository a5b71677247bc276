//! The data plane: one axum service that dispatches every request by its raw path.
//!
//! ```text
//! /v1/model-router/{proxy}/chat/completions  ─> model_router::chat  (resolve model → upstream)
//! /v1/model-router/{proxy}/models            ─> model_router::models
//! /v1/model-router/{proxy}/responses         ─> router_responses   (via the chat path)
//! /v1/model-router/{proxy}/v1/messages       ─> router_messages    (via the chat path)
//! /v1/model-router/{proxy}/embeddings        ─> router_embeddings
//! /v1/{prefix}/{proxy}/{rest…}               ─> native::forward     (bytes pass through)
//! ```
//!
//! Each request loads the current snapshot once. An [`Exchange`] record travels with the
//! response body and, when the body ends, writes the access-log line and the metrics. A
//! successful `text/event-stream` body gets SSE keep-alive comments while it is idle
//! ([`keepalive`]). With tracing on, the exchange also owns the request's server span
//! ([`crate::telemetry::otel`]), which therefore ends with the body too.

pub mod budget_gate;
pub mod context;
pub mod drain;
pub mod error;
pub mod failover;
pub mod guarded;
pub mod headers;
pub mod keepalive;
pub mod model_router;
pub mod native;
pub mod router_bridge;
pub mod router_embeddings;
pub mod router_messages;
pub mod router_native;
pub mod router_responses;

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

use crate::config::Store;
use crate::discovery::Discovery;
use crate::telemetry::genai::ResponseTap;
use crate::telemetry::otel::{self, Trace};
use crate::telemetry::{GenAiLabels, Metrics, RequestLabels, RouteLabels};
use budget_gate::Refused;
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
    /// Passive health of upstream targets (failover and balancing).
    pub health: Arc<crate::routing::Health>,
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
    /// Time to the first chunk of a successful streamed answer.
    ttft: Option<Duration>,
    /// The server span, with tracing on.
    trace: Option<Trace>,
    /// Reads the answer's id, model and finish reasons, when the span records them.
    tap: Option<ResponseTap>,
}

impl Exchange {
    /// A chunk of the answer goes to the client.
    fn on_chunk(&mut self, chunk: &bytes::Bytes, streamed: bool) {
        if streamed && self.ttft.is_none() {
            self.ttft = Some(self.started.elapsed());
        }
        if let Some(tap) = &mut self.tap {
            tap.push(chunk);
        }
    }

    /// The GenAI histograms and the server span, when the request ends.
    fn genai(&mut self, took: Duration) {
        // The path after `/v1/{prefix}/{proxy}/`.
        let rest = self.path.splitn(5, '/').nth(4).unwrap_or_default();
        let operation = crate::telemetry::genai::operation(&self.method, rest);
        let data = self.audit.try_lock();
        let empty = crate::policy::audit::Data::default();
        let data = data.as_deref().unwrap_or(&empty);
        if let Some(operation) = operation
            && !self.proxy.is_empty()
            && !self.provider.is_empty()
        {
            self.metrics.genai.observe(
                GenAiLabels {
                    proxy: self.proxy.clone(),
                    provider: self.provider.clone(),
                    operation,
                    model: if self.model_listed || self.model.is_empty() {
                        self.model.clone()
                    } else {
                        OTHER_MODEL.to_owned()
                    },
                },
                data.usage,
                took,
                self.ttft,
            );
        }
        let Some(trace) = &self.trace else {
            return;
        };
        let response = self.tap.take().map(ResponseTap::finish).unwrap_or_default();
        let identity = if data.identity.is_empty() {
            &self.identity
        } else {
            &data.identity
        };
        otel::finish_server(
            &trace.span,
            &otel::Summary {
                operation,
                method: self.method.as_str(),
                model: data.model.as_deref().unwrap_or(&self.model),
                proxy: &self.proxy,
                identity,
                route: self.route,
                prefix: &self.provider,
                status: self.status,
                usage: data.usage,
                decisions: &data.decisions,
                response: &response,
                attempt: trace.attempt(),
                ttft: self.ttft,
                content: data.content.as_ref(),
                budget_limit: data.budget.as_deref(),
            },
        );
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        self.genai(took);
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
                endpoint: data.endpoint,
                provider: &self.provider,
                model: data.model.as_deref().unwrap_or(&self.model),
                status: self.status,
                usage: data.usage,
                decisions: &data.decisions,
                attempts: &data.attempts,
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
        ttft: None,
        trace: None,
        tap: None,
    };
    let trace = Trace::start(request.headers());
    let result = match &trace {
        None => route(&state, &path, request, &mut exchange).await,
        Some(trace) => {
            trace
                .run(route(&state, &path, request, &mut exchange))
                .await
        }
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    exchange.status = response.status().as_u16();
    let ok = response.status().is_success();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let streamed = ok && crate::telemetry::genai::is_stream(content_type);
    if ok && trace.as_ref().is_some_and(Trace::recording) {
        exchange.tap = Some(ResponseTap::new(content_type));
    }
    exchange.trace = trace;
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    // The record ends with the body: for a stream, when its last byte is sent (or the
    // client goes away).
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            exchange.on_chunk(bytes, streamed);
        }
        chunk
    });
    let body = match state.sse_keepalive {
        Some(every) if keepalive::applies(parts.status, &parts.headers, &parts.extensions) => {
            keepalive::KeepAlive::new(body, every).boxed()
        }
        _ => body.boxed(),
    };
    Response::from_parts(parts, Body::from_stream(body))
}

/// The error shape of a Model Router endpoint: Anthropic's for the Messages API, else OpenAI's.
fn router_format(rest: &str) -> crate::formats::Format {
    match rest {
        "v1/messages" | "messages" | "v1/messages/count_tokens" | "messages/count_tokens" => {
            crate::formats::Format::Anthropic
        }
        _ => crate::formats::Format::OpenAi,
    }
}

/// The audit name of a Model Router endpoint (a closed set: paths are never echoed).
fn router_endpoint(rest: &str) -> &'static str {
    match rest {
        "chat/completions" => "chat/completions",
        "responses" => "responses",
        "embeddings" => "embeddings",
        "v1/messages" | "messages" => "messages",
        "v1/messages/count_tokens" | "messages/count_tokens" => "messages/count_tokens",
        "models" => "models",
        _ => "unknown",
    }
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
            return Ok(ApiError::ProxyNotFound {
                id: proxy.to_owned(),
            }
            .into_response_for(router_format(rest)));
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
            e.into_response_for(router_format(rest))
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
    // A provider entry with no good version (contract §5a): 503 naming the problem.
    if let Some(entry) = table.not_ready(prefix) {
        exchange.provider = prefix.to_owned();
        let format = entry.provider_type.map_or_else(
            || context::format_for(&table, prefix),
            |t| crate::providers::info(t).format,
        );
        return Ok(ApiError::ProviderNotReady {
            prefix: entry.prefix.clone(),
            proxy: table.key.proxy_id(),
            message: entry.message.clone(),
        }
        .into_response_for(format));
    }
    // Budgets (LlmBudget): reserve before any byte goes upstream, or refuse.
    let admitted = budget_gate::admit(
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
        let endpoint = router_endpoint(rest);
        crate::policy::audit::update(&exchange.audit, |d| d.endpoint = endpoint);
        match (request.method(), rest) {
            (&Method::POST, "chat/completions") => {
                model_router::chat(state, &ctx, request, exchange).await
            }
            (&Method::GET, "models") => model_router::models(state, &ctx, exchange).await,
            (&Method::POST, "responses") => {
                router_responses::handle(state, &ctx, request, exchange).await
            }
            (&Method::POST, "embeddings") => {
                router_embeddings::handle(state, &ctx, request, exchange).await
            }
            (&Method::POST, "v1/messages" | "messages") => {
                Ok(router_messages::handle(state, &ctx, request, exchange).await)
            }
            (&Method::POST, "v1/messages/count_tokens" | "messages/count_tokens") => {
                Ok(router_messages::count_tokens(state, &ctx, request, exchange).await)
            }
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
