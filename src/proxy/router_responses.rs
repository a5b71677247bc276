//! `POST /v1/model-router/{proxy}/responses`: the OpenAI Responses API (stateless) to any
//! provider of the proxy: forwarded to OpenAI (and Azure Foundry v1 URLs) as it is
//! ([`super::router_native`]), through the chat path to the others ([`super::router_bridge`]);
//! the conversion itself is [`crate::formats::openai::responses`].

use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use http::StatusCode;
use serde_json::Value;

use super::context::Ctx;
use super::error::ApiError;
use super::router_bridge::{self, Bridge};
use super::router_native::{self, Api};
use super::{AppState, Exchange};
use crate::formats::openai::ChatResponse;
use crate::formats::openai::responses::{self, Echo, StreamConverter};

struct Responses {
    echo: Echo,
    created: u64,
    stream: StreamConverter,
}

impl Bridge for Responses {
    fn whole(&self, chat: &ChatResponse) -> Value {
        let mut echo = self.echo.clone();
        if echo.model.is_empty() {
            echo.model = chat.model.clone();
        }
        responses::from_chat(chat, &echo, self.created)
    }

    fn chunk(&mut self, chunk: &Value) -> Vec<u8> {
        self.stream
            .push(chunk)
            .iter()
            .flat_map(responses::to_sse)
            .collect()
    }

    fn finish(&mut self) -> Vec<u8> {
        self.stream
            .finish()
            .iter()
            .flat_map(responses::to_sse)
            .collect()
    }

    fn error(&self, _status: StatusCode, body: &[u8]) -> Vec<u8> {
        // The chat path's errors are already in OpenAI's shape, which the Responses API shares.
        body.to_vec()
    }
}

/// Handle one Responses request.
pub async fn handle(
    state: &Arc<AppState>,
    ctx: &Ctx,
    request: Request,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let (parts, body) = router_bridge::read_json(state, request).await?;
    responses::check_stateless(&body)?;
    let picked = super::router_embeddings::pick(state, ctx, &body, exchange)?;
    if let Some(url) = router_native::native_url(ctx, Api::Responses, &picked) {
        let api = Api::Responses;
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
    let converted = responses::to_chat(&body)?;
    let created = router_bridge::now();
    let echo = Echo::of(&body, &router_bridge::asked_model(&body));
    let bridge = Responses {
        stream: StreamConverter::new(echo.clone(), created),
        echo,
        created,
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
