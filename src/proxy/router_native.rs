//! Model Router endpoints forwarded to a provider that speaks the endpoint's own API: the
//! Responses API to OpenAI (and Azure Foundry v1 URLs), the Messages API to Anthropic. The
//! body goes on with `model` rewritten (Responses: `store: false`, the router keeps nothing),
//! so what only that API has (Anthropic thinking and cache control, OpenAI reasoning items and
//! hosted tools) keeps working; the answer's `model` (every stream event that names it) says
//! what the client asked for, and usage goes to the audit event.
//!
//! Messages answers are guarded in Anthropic's format when the proxy has `spec.tools`. The
//! guardrails do not read Responses answers, so under `spec.tools` (or `audit.includeContent`)
//! a Responses request takes the chat path instead, where the answer is guarded.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;

use super::context::Ctx;
use super::error::ApiError;
use super::router_embeddings::Picked;
use super::upstream::{self, Answer};
use super::{AppState, Exchange, guarded};
use crate::config::Cloud;
use crate::crd::ProviderType;
use crate::formats::Format;
use crate::formats::sse::SseParser;
use crate::policy::audit;

/// Which API a forwarded request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// OpenAI Responses.
    Responses,
    /// Anthropic Messages.
    Messages,
    /// Anthropic Messages `count_tokens`.
    CountTokens,
}

/// Where the request goes natively, if the picked provider speaks its API and the proxy's
/// policy can be applied there.
pub fn native_url(ctx: &Ctx, api: Api, picked: &Picked) -> Option<String> {
    let upstream = &picked.route.upstream;
    let policy = &ctx.table.policy;
    match api {
        Api::Responses => {
            if policy.tools.is_some() || policy.audit_content {
                return None;
            }
            match (upstream.provider_type, &upstream.cloud) {
                (ProviderType::Openai, Cloud::None)
                | (ProviderType::Azure, Cloud::Azure { v1: true, .. }) => {
                    Some(upstream.url("responses"))
                }
                _ => None,
            }
        }
        Api::Messages => {
            (upstream.info.format == Format::Anthropic).then(|| upstream.url("v1/messages"))
        }
        Api::CountTokens => (upstream.info.format == Format::Anthropic)
            .then(|| upstream.url("v1/messages/count_tokens")),
    }
}

/// The Anthropic headers a client sends that the provider reads.
fn anthropic_headers(client: &HeaderMap, headers: &mut HeaderMap) {
    let version = client
        .get("anthropic-version")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(crate::formats::anthropic::ANTHROPIC_VERSION));
    headers.insert("anthropic-version", version);
    if let Some(beta) = client.get("anthropic-beta") {
        headers.insert("anthropic-beta", beta.clone());
    }
}

/// Forward `body` to `url`.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    state: &Arc<AppState>,
    ctx: &Ctx,
    api: Api,
    url: String,
    picked: Picked,
    client_headers: &HeaderMap,
    mut body: Value,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let upstream = picked.route.upstream.clone();
    body["model"] = Value::String(picked.model.clone());
    if api == Api::Responses {
        body["store"] = Value::Bool(false);
    }
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let format = match api {
        Api::Responses => Format::OpenAi,
        Api::Messages | Api::CountTokens => Format::Anthropic,
    };
    let mut guard = None;
    if api == Api::Messages {
        let policy = &ctx.table.policy;
        if policy.audit_content {
            let content = guarded::content_of(Format::Anthropic, &body);
            audit::update(&exchange.audit, |d| d.content = content);
        }
        if let Some(tools) = &policy.tools {
            guard = Some(guarded::Guard {
                policy: tools.clone(),
                trust: tools.trust(Format::Anthropic, &body),
                format: Format::Anthropic,
                sink: guarded::Sink::new(state, exchange),
            });
        }
    }
    let payload = serde_json::to_vec(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let accept = if streaming {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut headers = upstream::json_headers(Some(accept), &exchange.request_id);
    if format == Format::Anthropic {
        anthropic_headers(client_headers, &mut headers);
    }
    let Answer { response, ttfb } = upstream::send(
        &state.client,
        &upstream,
        &picked.route.prefix,
        Method::POST,
        &url,
        headers,
        payload.into(),
    )
    .await?;
    exchange.ttfb = Some(ttfb);
    let status = response.status();
    let mut out_headers = super::headers::to_client(response.headers());
    out_headers.remove(header::CONTENT_LENGTH);
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let out = if !status.is_success() {
        // The provider's error, in the endpoint's own shape already.
        let body = upstream::body_stream(response, upstream.timeout);
        build(status, out_headers, Body::from_stream(body))
    } else if is_sse {
        out_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let mut rewriter = Rewriter {
            parser: SseParser::default(),
            asked: picked.asked.clone(),
            cell: exchange.audit.clone(),
        };
        let stream = upstream::body_stream(response, upstream.timeout).map(move |chunk| {
            chunk.map(|bytes| {
                let events = rewriter.parser.push(&bytes);
                Bytes::from(rewriter.rewrite(events))
            })
        });
        build(status, out_headers, Body::from_stream(stream))
    } else {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| upstream::classify(&picked.route.prefix, upstream.timeout, &e))?;
        let body = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut value) => {
                if value.get("model").is_some() {
                    value["model"] = Value::String(picked.asked.clone());
                }
                record_usage(&exchange.audit, &value);
                Bytes::from(value.to_string())
            }
            Err(_) => bytes,
        };
        build(status, out_headers, Body::from(body))
    };
    Ok(match guard {
        Some(guard) => guarded::guard_response(out, guard, state.max_body_bytes).await,
        None => out,
    })
}

fn build(status: http::StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Usage of a Responses or Messages answer (or stream event), into the audit event.
fn record_usage(cell: &audit::Cell, value: &Value) {
    let u = |p: &str| value.pointer(p).and_then(Value::as_u64);
    let input = u("/usage/input_tokens")
        .or_else(|| u("/response/usage/input_tokens"))
        .or_else(|| u("/message/usage/input_tokens"));
    let output = u("/usage/output_tokens").or_else(|| u("/response/usage/output_tokens"));
    if input.is_some() || output.is_some() {
        audit::update(cell, |d| {
            if input.is_some() {
                d.usage.input_tokens = input;
            }
            if output.is_some() {
                d.usage.output_tokens = output;
            }
        });
    }
}

/// Rewrites `model` in the stream events that name it (`message_start.message.model`,
/// `response.*.response.model`) and reads usage; every event is passed on in order.
struct Rewriter {
    parser: SseParser,
    asked: String,
    cell: audit::Cell,
}

impl Rewriter {
    fn rewrite(&mut self, events: Vec<crate::formats::sse::SseEvent>) -> Vec<u8> {
        let mut out = Vec::new();
        for event in events {
            let data = match serde_json::from_str::<Value>(&event.data) {
                Ok(mut value) => {
                    for pointer in ["/message/model", "/response/model"] {
                        if let Some(model) = value.pointer_mut(pointer) {
                            *model = Value::String(self.asked.clone());
                        }
                    }
                    record_usage(&self.cell, &value);
                    value.to_string()
                }
                Err(_) => event.data,
            };
            if let Some(name) = &event.event {
                out.extend_from_slice(format!("event: {name}\n").as_bytes());
            }
            for line in data.split('\n') {
                out.extend_from_slice(format!("data: {line}\n").as_bytes());
            }
            out.push(b'\n');
        }
        out
    }
}
