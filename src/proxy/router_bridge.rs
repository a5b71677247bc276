//! The Model Router's other chat-shaped APIs (Responses, Anthropic Messages) run through its
//! Chat Completions path: the request, converted to a chat request by its format module, goes
//! through [`model_router::chat`] (model resolution, access, translation to the provider,
//! tool-call guardrails, usage), and the chat answer is converted back — whole, or streamed
//! event by event as it arrives, never buffered.
//!
//! ```text
//! client ─▶ formats::<api>::to_chat ─▶ model_router::chat ─▶ provider
//!                                          │ chat answer (guarded)
//! client ◀─ Bridge::whole / Bridge::chunk ◀┘
//! ```

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value};

use super::context::Ctx;
use super::error::ApiError;
use super::{AppState, Exchange, model_router};
use crate::formats::openai::ChatResponse;
use crate::formats::sse::SseParser;

/// How one API converts a chat answer back into its own shape.
pub trait Bridge: Send + 'static {
    /// A whole chat answer, as this API's JSON body.
    fn whole(&self, chat: &ChatResponse) -> Value;
    /// One chat chunk (or `{"error": …}` event), as this API's SSE bytes.
    fn chunk(&mut self, chunk: &Value) -> Vec<u8>;
    /// The chat stream ended: what closes this API's stream (nothing when already closed).
    fn finish(&mut self) -> Vec<u8>;
    /// An error answer (status and the chat path's OpenAI-shaped body) in this API's shape.
    fn error(&self, status: StatusCode, body: &[u8]) -> Vec<u8>;
}

/// Add `dropped` to the response's `x-portcullis-dropped-parts`.
fn add_dropped(response: &mut Response, dropped: usize) {
    if dropped == 0 {
        return;
    }
    let before = response
        .headers()
        .get("x-portcullis-dropped-parts")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    response.headers_mut().insert(
        "x-portcullis-dropped-parts",
        HeaderValue::from(before + dropped),
    );
}

fn is_sse(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

async fn collect(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    http_body_util::Limited::new(body, limit.max(64 << 20))
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::UpstreamInvalid {
            prefix: String::new(),
            detail: format!("the answer could not be read: {e}"),
        })
}

/// Send `chat` (a Chat Completions body) through the chat path and convert its answer.
pub async fn through_chat<B: Bridge>(
    state: &Arc<AppState>,
    ctx: &Ctx,
    parts: http::request::Parts,
    chat: Map<String, Value>,
    dropped: usize,
    exchange: &mut Exchange,
    bridge: B,
) -> Result<Response, ApiError> {
    let payload = serde_json::to_vec(&Value::Object(chat))
        .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let request = Request::from_parts(parts, Body::from(payload));
    let response = model_router::chat(state, ctx, request, exchange).await?;
    let status = response.status();
    let (mut head, body) = response.into_parts();
    head.headers.remove(header::CONTENT_LENGTH);
    if !status.is_success() {
        let bytes = collect(body, state.max_body_bytes).await?;
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut out = Response::from_parts(head, Body::from(bridge.error(status, &bytes)));
        add_dropped(&mut out, dropped);
        return Ok(out);
    }
    if is_sse(&Response::from_parts(head.clone(), Body::empty())) {
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let stream = Converting {
            body: body.into_data_stream().boxed(),
            parser: SseParser::default(),
            bridge,
            done: false,
        };
        let body = futures_util::stream::unfold(stream, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                let out = match st.body.next().await {
                    Some(Ok(bytes)) => {
                        let events = st.parser.push(&bytes);
                        st.convert(events)
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(std::io::Error::other(e)), st));
                    }
                    None => {
                        let events = st.parser.finish();
                        let mut out = st.convert(events);
                        out.extend(st.bridge.finish());
                        st.done = true;
                        out
                    }
                };
                if !out.is_empty() {
                    return Some((Ok::<_, std::io::Error>(Bytes::from(out)), st));
                }
            }
        });
        let mut out = Response::from_parts(head, Body::from_stream(body));
        add_dropped(&mut out, dropped);
        return Ok(out);
    }
    let bytes = collect(body, state.max_body_bytes).await?;
    let chat: ChatResponse =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::UpstreamInvalid {
            prefix: exchange.provider.clone(),
            detail: format!("not a chat completion: {e}"),
        })?;
    let body = serde_json::to_vec(&bridge.whole(&chat)).unwrap_or_default();
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut out = Response::from_parts(head, Body::from(body));
    add_dropped(&mut out, dropped);
    Ok(out)
}

struct Converting<B> {
    body: BoxStream<'static, Result<Bytes, axum::Error>>,
    parser: SseParser,
    bridge: B,
    done: bool,
}

impl<B: Bridge> Converting<B> {
    fn convert(&mut self, events: Vec<crate::formats::sse::SseEvent>) -> Vec<u8> {
        let mut out = Vec::new();
        for event in events {
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                out.extend(self.bridge.finish());
                continue;
            }
            match serde_json::from_str::<Value>(data) {
                Ok(chunk) => out.extend(self.bridge.chunk(&chunk)),
                Err(e) => out.extend(self.bridge.chunk(&serde_json::json!({"error": {
                    "message": format!("the chat stream carried an unreadable event: {e}"),
                    "type": "api_error", "code": "bad_upstream_response"}}))),
            }
        }
        out
    }
}

/// Read the client's JSON body (bounded) and keep the request head (parsed once: see
/// [`super::context::read_object`]).
pub async fn read_json(
    state: &AppState,
    request: Request,
) -> Result<(http::request::Parts, Value), ApiError> {
    let (parts, map) = super::context::read_object(request, state.max_body_bytes).await?;
    Ok((parts, Value::Object(map)))
}

/// The `model` a request names (trimmed), for echoing; empty when absent.
pub fn asked_model(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or("")
        .to_owned()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
