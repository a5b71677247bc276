//! The OpenAI native endpoint table (also Azure OpenAI / Foundry and the OpenAI-compatible
//! family), relative to the provider's base URL.

use crate::formats::endpoints::{Endpoint, ModelAt, Seg, Streaming, ToolCalls};

macro_rules! openai_table {
    ($name:ident, [$($pre:expr),*], $model_at:expr) => {
        /// The endpoints of this URL style.
        pub const $name: &[Endpoint] = &[
            Endpoint::post("chat/completions", &[$($pre,)* Seg::Lit("chat"), Seg::Lit("completions")])
                .model($model_at)
                .streams(Streaming::WhenAsked)
                .tools(ToolCalls::Guarded),
            Endpoint::post("completions", &[$($pre,)* Seg::Lit("completions")])
                .model($model_at)
                .streams(Streaming::WhenAsked),
            Endpoint::post("embeddings", &[$($pre,)* Seg::Lit("embeddings")]).model($model_at),
            Endpoint::post("responses", &[$($pre,)* Seg::Lit("responses")])
                .model($model_at)
                .streams(Streaming::WhenAsked)
                .tools(ToolCalls::Unreadable),
            Endpoint::post("moderations", &[$($pre,)* Seg::Lit("moderations")])
                .model(if matches!($model_at, ModelAt::Body) { ModelAt::BodyOptional } else { $model_at }),
            Endpoint::post("audio/speech", &[$($pre,)* Seg::Lit("audio"), Seg::Lit("speech")])
                .model($model_at),
            Endpoint::post("audio/transcriptions", &[$($pre,)* Seg::Lit("audio"), Seg::Lit("transcriptions")])
                .model(if matches!($model_at, ModelAt::Body) { ModelAt::Multipart } else { $model_at })
                .streams(Streaming::WhenAsked),
            Endpoint::post("audio/translations", &[$($pre,)* Seg::Lit("audio"), Seg::Lit("translations")])
                .model(if matches!($model_at, ModelAt::Body) { ModelAt::Multipart } else { $model_at }),
            Endpoint::post("images/generations", &[$($pre,)* Seg::Lit("images"), Seg::Lit("generations")])
                .model($model_at),
            Endpoint::post("images/edits", &[$($pre,)* Seg::Lit("images"), Seg::Lit("edits")])
                .model(if matches!($model_at, ModelAt::Body) { ModelAt::Multipart } else { $model_at }),
        ];
    };
}

openai_table!(CALLS, [], ModelAt::Body);
openai_table!(
    AZURE_V1_CALLS,
    [Seg::Lit("openai"), Seg::Lit("v1")],
    ModelAt::Body
);
openai_table!(
    AZURE_DEPLOYMENT_CALLS,
    [Seg::Lit("openai"), Seg::Lit("deployments"), Seg::Model],
    ModelAt::Path
);

/// Model lists.
pub const LISTS: &[Endpoint] = &[
    Endpoint::get("models", &[Seg::Lit("models")]).list(),
    Endpoint::get("models/{id}", &[Seg::Lit("models"), Seg::Model]).model(ModelAt::Path),
];

/// Azure model lists (Foundry v1 under `openai/v1/`; deployments under `openai/`).
pub const AZURE_LISTS: &[Endpoint] = &[
    Endpoint::get(
        "openai/v1/models",
        &[Seg::Lit("openai"), Seg::Lit("v1"), Seg::Lit("models")],
    )
    .list(),
    Endpoint::get(
        "openai/v1/models/{id}",
        &[
            Seg::Lit("openai"),
            Seg::Lit("v1"),
            Seg::Lit("models"),
            Seg::Model,
        ],
    )
    .model(ModelAt::Path),
    Endpoint::get("openai/models", &[Seg::Lit("openai"), Seg::Lit("models")]).list(),
    Endpoint::get(
        "openai/deployments",
        &[Seg::Lit("openai"), Seg::Lit("deployments")],
    )
    .list(),
];

/// The table of an OpenAI-family provider (not Azure).
pub fn table() -> Vec<Endpoint> {
    [CALLS, LISTS].concat()
}

/// The table of an Azure provider: the OpenAI endpoints under a Foundry v1 base URL, and the
/// deployment and `openai/v1/` styles under a resource URL.
pub fn azure_table(v1_base: bool) -> Vec<Endpoint> {
    if v1_base {
        [CALLS, LISTS].concat()
    } else {
        [AZURE_DEPLOYMENT_CALLS, AZURE_V1_CALLS, AZURE_LISTS].concat()
    }
}
