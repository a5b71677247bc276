//! The wire formats the gateway speaks, one module each, and the closed [`Format`] enum that
//! dispatches to them.
//!
//! ```text
//!                       ┌──────────── formats::<format> ────────────┐
//! client request ──────▶│ endpoints: which native endpoint, which   │──▶ native route decision
//!                       │            model, streams how, tool calls?│    (404 unknown_endpoint)
//! router request ──────▶│ chat:      OpenAI ⇄ native translation    │──▶ upstream body
//! upstream answer ─────▶│ chat:      native → OpenAI (whole/stream) │──▶ client
//!                       │ guard:     tool calls / results for the   │──▶ policy::guardrails decides
//!                       │            guardrails, rewrite blocked    │
//!                       │ error:     the format's error shape       │
//!                       └───────────────────────────────────────────┘
//! ```
//!
//! Framing is shared: [`sse`] is the one SSE framer; Bedrock's event-stream frames are read
//! in [`bedrock::eventstream`]. Azure speaks the OpenAI format and Vertex AI the Gemini
//! format; their addressing differences live in `config::Cloud`, not here.
//!
//! Nothing in this module tree knows about kube or axum.

pub mod anthropic;
pub mod bedrock;
pub mod cohere;
pub mod endpoints;
pub mod gemini;
pub mod guard;
pub mod openai;
pub mod sse;
pub mod translate;

pub use translate::{StreamOut, TranslateError, Translated};

/// A wire format. Every match over it is exhaustive: adding a format means deciding each
/// of its behaviours, never inheriting an `_ =>` default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenAI Chat Completions and friends (also Azure OpenAI / Foundry, the OpenAI-compatible
    /// family, and the Model Router's own API).
    OpenAi,
    /// Anthropic Messages (also Claude on Azure Foundry).
    Anthropic,
    /// Gemini `generateContent` (AI Studio and Vertex AI).
    Gemini,
    /// Cohere v2 Chat.
    Cohere,
    /// Bedrock Converse / ConverseStream.
    Bedrock,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 5] = [
        Format::OpenAi,
        Format::Anthropic,
        Format::Gemini,
        Format::Cohere,
        Format::Bedrock,
    ];

    /// A short name for logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::OpenAi => "openai",
            Format::Anthropic => "anthropic",
            Format::Gemini => "gemini",
            Format::Cohere => "cohere",
            Format::Bedrock => "bedrock",
        }
    }

    /// Whether SSE comment lines (`: keep-alive`) may be written into this format's native
    /// streams. The google-genai SDK parses every SSE line as JSON and fails on a comment;
    /// Bedrock streams are AWS event-stream frames, where a comment would corrupt the framing.
    pub fn sse_comments_safe(self) -> bool {
        match self {
            Format::OpenAi | Format::Anthropic | Format::Cohere => true,
            Format::Gemini | Format::Bedrock => false,
        }
    }
}

/// Which API surface of its format a provider exposes: the same format can sit under
/// different paths (Azure deployments, Vertex AI projects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// The format's own paths under the base URL.
    Standard,
    /// Azure OpenAI resource URL: `openai/deployments/{d}/…` and `openai/v1/…`.
    AzureResource,
    /// Vertex AI: `{v}/projects/{p}/locations/{l}/publishers/google/models/…`.
    Vertex,
}

impl Format {
    /// The native endpoints this format knows on `surface`.
    pub fn endpoints(self, surface: Surface) -> &'static [endpoints::Endpoint] {
        use std::sync::LazyLock;
        type Table = LazyLock<Vec<endpoints::Endpoint>>;
        static OPENAI: Table = LazyLock::new(openai::endpoints::table);
        static AZURE: Table = LazyLock::new(|| openai::endpoints::azure_table(false));
        static VERTEX: Table = LazyLock::new(gemini::endpoints::vertex_table);
        match (self, surface) {
            (Format::OpenAi, Surface::AzureResource) => &AZURE,
            (Format::OpenAi, Surface::Standard | Surface::Vertex) => &OPENAI,
            (Format::Anthropic, _) => anthropic::endpoints::TABLE,
            (Format::Gemini, Surface::Vertex) => &VERTEX,
            (Format::Gemini, Surface::Standard | Surface::AzureResource) => {
                gemini::endpoints::TABLE
            }
            (Format::Cohere, _) => cohere::endpoints::TABLE,
            (Format::Bedrock, _) => bedrock::endpoints::TABLE,
        }
    }
}

/// An error the gateway itself raises, as every format renders it: the same value renders a
/// final response and a mid-stream error event, in the route's own shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong and what the caller can do (never a credential).
    pub message: String,
    /// OpenAI's `error.type`.
    pub kind: String,
    /// A stable machine-readable code (`unknown_endpoint`, `model_not_found`, …).
    pub code: String,
    /// The request field at fault, when known.
    pub param: Option<String>,
}

impl Format {
    /// The JSON body of `error` in this format's error shape.
    pub fn error_body(self, error: &GatewayError) -> serde_json::Value {
        match self {
            Format::OpenAi => openai::error_body(error),
            Format::Anthropic => anthropic::error_body(error),
            Format::Gemini => gemini::error_body(error),
            Format::Cohere => cohere::error_body(error),
            Format::Bedrock => bedrock::error_body(error),
        }
    }

    /// Extra response headers this format's SDKs read an error from (AWS: the exception
    /// name in `x-amzn-errortype`).
    pub fn error_header(self, error: &GatewayError) -> Option<(&'static str, &'static str)> {
        match self {
            Format::Bedrock => Some(("x-amzn-errortype", bedrock::exception_name(error.status))),
            Format::OpenAi | Format::Anthropic | Format::Gemini | Format::Cohere => None,
        }
    }
}

impl Format {
    /// Where this format's model lists keep their entries, and which field of an entry names
    /// the model: `(list key, id field)` pairs, tried in order.
    pub fn model_list_keys(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Format::OpenAi | Format::Anthropic => &[("data", "id")],
            Format::Gemini => &[("models", "name"), ("publisherModels", "name")],
            Format::Cohere => &[("models", "name")],
            Format::Bedrock => &[
                ("inferenceProfileSummaries", "inferenceProfileId"),
                ("modelSummaries", "modelId"),
            ],
        }
    }

    /// The model ID of a model-list entry's name: Gemini names models `models/{id}` (Vertex AI
    /// `publishers/google/models/{id}`); the others use the ID itself.
    pub fn model_id_of(self, name: &str) -> &str {
        match self {
            Format::Gemini => name.rsplit_once("models/").map_or(name, |(_, id)| id),
            Format::OpenAi | Format::Anthropic | Format::Cohere | Format::Bedrock => name,
        }
    }
}

impl Format {
    /// `error` as the event that ends a stream of this format, so the format's SDK raises it:
    /// OpenAI `data: {"error": …}`, Anthropic `event: error`, Gemini `data: {"error": …}`,
    /// Cohere an `error`-typed event. Bedrock streams are AWS event-stream frames, not SSE:
    /// `None` (the caller ends such a stream by failing the body).
    pub fn stream_error_event(self, error: &GatewayError) -> Option<Vec<u8>> {
        let body = self.error_body(error);
        match self {
            Format::OpenAi | Format::Gemini => Some(sse::encode_data(&body.to_string())),
            Format::Anthropic => {
                let mut out = b"event: error\n".to_vec();
                out.extend(sse::encode_data(&body.to_string()));
                Some(out)
            }
            Format::Cohere => {
                let event = serde_json::json!({"type": "error", "message": error.message});
                Some(sse::encode_data(&event.to_string()))
            }
            Format::Bedrock => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error() -> GatewayError {
        GatewayError {
            status: 502,
            message: "the upstream stream broke off".to_owned(),
            kind: "api_error".to_owned(),
            code: "upstream_stream_error".to_owned(),
            param: None,
        }
    }

    #[test]
    fn one_error_renders_as_each_formats_body_and_stream_event() {
        let e = error();
        assert_eq!(
            Format::OpenAi.error_body(&e)["error"]["code"],
            "upstream_stream_error"
        );
        assert_eq!(
            Format::Anthropic.error_body(&e)["error"]["type"],
            "api_error"
        );
        assert_eq!(
            Format::Gemini.error_body(&e)["error"]["status"],
            "UNAVAILABLE"
        );
        assert_eq!(Format::Cohere.error_body(&e)["message"], e.message);
        assert_eq!(
            Format::Bedrock.error_header(&e),
            Some(("x-amzn-errortype", "ServiceUnavailableException"))
        );
        let openai = Format::OpenAi.stream_error_event(&e).unwrap_or_default();
        assert!(openai.starts_with(b"data: {\"error\""));
        let anthropic = Format::Anthropic.stream_error_event(&e).unwrap_or_default();
        assert!(anthropic.starts_with(b"event: error\ndata: {\"type\":\"error\""));
        assert!(Format::Bedrock.stream_error_event(&e).is_none());
    }

    #[test]
    fn every_format_has_endpoints_on_every_surface() {
        for format in Format::ALL {
            for surface in [Surface::Standard, Surface::AzureResource, Surface::Vertex] {
                assert!(
                    !format.endpoints(surface).is_empty(),
                    "{format:?} {surface:?}"
                );
            }
        }
    }
}
