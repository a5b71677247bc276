//! The OpenAI wire format: the router's own API types ([`wire`]), the model rewriting of
//! passed-through streams ([`stream`]) and its native endpoint table ([`endpoints`]), shared
//! by Azure and the OpenAI-compatible family.

pub mod embeddings;
pub mod endpoints;
pub mod guard;
pub mod responses;
pub mod stream;
pub mod wire;

pub use wire::*;

/// OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(e: &super::GatewayError) -> serde_json::Value {
    serde_json::json!({"error": {
        "message": e.message,
        "type": e.kind,
        "param": e.param,
        "code": e.code,
    }})
}
