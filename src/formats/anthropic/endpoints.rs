//! The Anthropic native endpoint table (also Claude on Azure Foundry).

use crate::formats::endpoints::{Endpoint, ModelAt, Seg, Streaming, ToolCalls};

/// The endpoints.
pub const TABLE: &[Endpoint] = &[
    Endpoint::post("v1/messages", &[Seg::Lit("v1"), Seg::Lit("messages")])
        .streams(Streaming::WhenAsked)
        .tools(ToolCalls::Guarded),
    Endpoint::post(
        "v1/messages/count_tokens",
        &[
            Seg::Lit("v1"),
            Seg::Lit("messages"),
            Seg::Lit("count_tokens"),
        ],
    ),
    Endpoint::get("v1/models", &[Seg::Lit("v1"), Seg::Lit("models")]).list(),
    Endpoint::get(
        "v1/models/{id}",
        &[Seg::Lit("v1"), Seg::Lit("models"), Seg::Model],
    )
    .model(ModelAt::Path),
];
