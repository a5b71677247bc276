//! The Cohere native endpoint table.

use crate::formats::endpoints::{Endpoint, ModelAt, Seg, Streaming, ToolCalls};

/// The endpoints.
pub const TABLE: &[Endpoint] = &[
    Endpoint::post("v2/chat", &[Seg::Lit("v2"), Seg::Lit("chat")])
        .streams(Streaming::WhenAsked)
        .tools(ToolCalls::Guarded),
    Endpoint::post("v2/embed", &[Seg::Lit("v2"), Seg::Lit("embed")]),
    Endpoint::post("v2/rerank", &[Seg::Lit("v2"), Seg::Lit("rerank")]),
    Endpoint::get("v1/models", &[Seg::Lit("v1"), Seg::Lit("models")]).list(),
    Endpoint::get(
        "v1/models/{id}",
        &[Seg::Lit("v1"), Seg::Lit("models"), Seg::Model],
    )
    .model(ModelAt::Path),
];
