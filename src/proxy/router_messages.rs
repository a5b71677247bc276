//! `POST /v1/model-router/{proxy}/v1/messages` (also `…/messages`) and
//! `…/v1/messages/count_tokens`: the Anthropic Messages API in front of any provider of the
//! proxy: forwarded to Anthropic as it is ([`super::router_native`]), through the chat path to
//! the others ([`super::router_bridge`]); the conversion itself is
//! [`crate::formats::anthropic::messages`]. Every error, the gateway's own included, is in
//! Anthropic's shape, so the `anthropic` SDK raises its usual exceptions.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::context::Ctx;
use super::error::ApiError;
use super::router_bridge::{self, Bridge};
use super::router_native::{self, Api};
use super::{AppState, Exchange};
use crate::formats::anthropic::messages::{self, StreamConverter};
use crate::formats::openai::ChatResponse;
use crate::formats::{Format, GatewayError};

struct Messages {
    model: String,
    stream: StreamConverter,
}

impl Bridge for Messages {
    fn whole(&self, chat: &ChatResponse) -> Value {
        let model = if self.model.is_empty() {
            chat.model.as_str()
        } else {
            self.model.as_str()
        };
        messages::from_chat(chat, model)
    }

    fn chunk(&mut self, chunk: &Value) -> Vec<u8> {
        self.stream
            .push(chunk)
            .iter()
            .flat_map(|(name, data)| messages::to_sse(name, data))
            .collect()
    }

    fn finish(&mut self) -> Vec<u8> {
        self.stream
            .finish()
            .iter()
            .flat_map(|(name, data)| messages::to_sse(name, data))
            .collect()
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> Vec<u8> {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("the provider answered {status}"));
        let error = GatewayError {
            status: status.as_u16(),
            message,
            kind: String::new(),
            code: String::new(),
            param: None,
        };
        Format::Anthropic
            .error_body(&error)
            .to_string()
            .into_bytes()
    }
}

/// Handle one Messages request; errors in Anthropic's shape.
pub async fn handle(
    state: &Arc<AppState>,
    ctx: &Ctx,
    request: Request,
    exchange: &mut Exchange,
) -> Response {
    match messages_call(state, ctx, request, exchange).await {
        Ok(response) => response,
        Err(e) => e.into_response_for(Format::Anthropic),
    }
}

async fn messages_call(
    state: &Arc<AppState>,
    ctx: &Ctx,
    request: Request,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let (parts, body) = router_bridge::read_json(state, request).await?;
    let picked = super::router_embeddings::pick(state, ctx, &body, exchange)?;
    if let Some(url) = router_native::native_url(ctx, Api::Messages, &picked) {
        let api = Api::Messages;
        return router_native::forward(
            state,
            ctx,
            api,
            url,
            picked,
            &parts.headers,
            body,
            exchange,
        )
        .await;
    }
    let converted = messages::to_chat(&body)?;
    let model = router_bridge::asked_model(&body);
    let bridge = Messages {
        stream: StreamConverter::new(&model),
        model,
    };
    router_bridge::through_chat(
        state,
        ctx,
        parts,
        converted.chat,
        converted.dropped,
        exchange,
        bridge,
    )
    .await
}

enum Counted {
    Native(Response),
    Estimate(Value),
}

/// `count_tokens`: an Anthropic target counts for real; otherwise the request is checked as a Messages request would be (it must convert, and
/// name a model this caller may use), then its input tokens are estimated (about four
/// characters a token); the answer is `{"input_tokens": N}`.
pub async fn count_tokens(
    state: &Arc<AppState>,
    ctx: &Ctx,
    request: Request,
    exchange: &mut Exchange,
) -> Response {
    let result = async {
        let (parts, body) = router_bridge::read_json(state, request).await?;
        let picked = super::router_embeddings::pick(state, ctx, &body, exchange)?;
        if let Some(url) = router_native::native_url(ctx, Api::CountTokens, &picked) {
            let api = Api::CountTokens;
            let response = router_native::forward(
                state,
                ctx,
                api,
                url,
                picked,
                &parts.headers,
                body,
                exchange,
            )
            .await?;
            return Ok(Counted::Native(response));
        }
        messages::to_chat(&body)?;
        Ok::<_, ApiError>(Counted::Estimate(
            json!({"input_tokens": messages::estimate_tokens(&body)}),
        ))
    }
    .await;
    match result {
        Ok(Counted::Native(response)) => response,
        Ok(Counted::Estimate(value)) => {
            let mut response = Response::new(Body::from(value.to_string()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => e.into_response_for(Format::Anthropic),
    }
}
