//! The Gemini native endpoint tables: AI Studio (`{v1,v1beta}/models/…`) and Vertex AI (the
//! same methods under `projects/{p}/locations/{l}/publishers/google/`, for the provider's own
//! project and location only — the data plane checks the two [`Seg::Any`] values).

use crate::formats::endpoints::{Endpoint, ModelAt, Seg, Streaming, ToolCalls};

const GENERATE: &[&str] = &["generateContent"];
const STREAM: &[&str] = &["streamGenerateContent"];
const OTHER: &[&str] = &["countTokens", "embedContent", "batchEmbedContents"];

const STUDIO: &[&str] = &["v1", "v1beta"];
const VERTEX: &[&str] = &["v1", "v1beta1"];

macro_rules! methods {
    ($name:ident, $version:expr, [$($pre:expr),*]) => {
        /// The endpoints of this API surface.
        pub const $name: &[Endpoint] = &[
            Endpoint::post("models/{m}:generateContent", &[Seg::OneOf($version), $($pre,)* Seg::Lit("models"), Seg::ModelMethod(GENERATE)])
                .model(ModelAt::Path)
                .tools(ToolCalls::Guarded),
            Endpoint::post("models/{m}:streamGenerateContent", &[Seg::OneOf($version), $($pre,)* Seg::Lit("models"), Seg::ModelMethod(STREAM)])
                .model(ModelAt::Path)
                .streams(Streaming::Sse)
                .tools(ToolCalls::Guarded),
            Endpoint::post("models/{m}:{countTokens,embedContent,batchEmbedContents}", &[Seg::OneOf($version), $($pre,)* Seg::Lit("models"), Seg::ModelMethod(OTHER)])
                .model(ModelAt::Path),
            Endpoint::get("models", &[Seg::OneOf($version), $($pre,)* Seg::Lit("models")]).list(),
            Endpoint::get("models/{m}", &[Seg::OneOf($version), $($pre,)* Seg::Lit("models"), Seg::Model])
                .model(ModelAt::Path),
        ];
    };
}

methods!(TABLE, STUDIO, []);
methods!(
    VERTEX_TABLE,
    VERTEX,
    [
        Seg::Lit("projects"),
        Seg::Any,
        Seg::Lit("locations"),
        Seg::Any,
        Seg::Lit("publishers"),
        Seg::Lit("google")
    ]
);
methods!(
    VERTEX_PUBLISHER_TABLE,
    VERTEX,
    [Seg::Lit("publishers"), Seg::Lit("google")]
);

/// The Vertex AI table: project-scoped paths, and the publisher model list.
pub fn vertex_table() -> Vec<Endpoint> {
    [VERTEX_TABLE, VERTEX_PUBLISHER_TABLE].concat()
}
