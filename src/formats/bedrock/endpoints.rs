//! The Bedrock native endpoint table: the runtime's Converse and InvokeModel APIs (model in
//! the path; AWS SDKs percent-encode its `:` and the `/` of ARNs), and the control plane's
//! inference-profile and foundation-model lists (sent to `spec.bedrock.controlPlaneUrl`).

use crate::formats::endpoints::{Endpoint, ModelAt, Seg, Streaming, ToolCalls};

/// The endpoints.
pub const TABLE: &[Endpoint] = &[
    Endpoint::post(
        "model/{id}/converse",
        &[Seg::Lit("model"), Seg::Model, Seg::Lit("converse")],
    )
    .model(ModelAt::Path)
    .tools(ToolCalls::Guarded),
    Endpoint::post(
        "model/{id}/converse-stream",
        &[Seg::Lit("model"), Seg::Model, Seg::Lit("converse-stream")],
    )
    .model(ModelAt::Path)
    .streams(Streaming::EventStream)
    .tools(ToolCalls::Unreadable),
    Endpoint::post(
        "model/{id}/invoke",
        &[Seg::Lit("model"), Seg::Model, Seg::Lit("invoke")],
    )
    .model(ModelAt::Path)
    .tools(ToolCalls::Unreadable),
    Endpoint::post(
        "model/{id}/invoke-with-response-stream",
        &[
            Seg::Lit("model"),
            Seg::Model,
            Seg::Lit("invoke-with-response-stream"),
        ],
    )
    .model(ModelAt::Path)
    .streams(Streaming::EventStream)
    .tools(ToolCalls::Unreadable),
    Endpoint::get("inference-profiles", &[Seg::Lit("inference-profiles")]).list(),
    Endpoint::get(
        "inference-profiles/{id}",
        &[Seg::Lit("inference-profiles"), Seg::Model],
    )
    .model(ModelAt::Path),
    Endpoint::get("foundation-models", &[Seg::Lit("foundation-models")]).list(),
];
