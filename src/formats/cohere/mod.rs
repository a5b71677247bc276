//! The Cohere wire format: Chat Completions translation ([`chat`]) and its native endpoint
//! table ([`endpoints`]).

pub mod chat;
pub mod embeddings;
pub mod endpoints;
pub mod guard;

pub use chat::*;

/// Cohere's error shape: `{"message": …}`.
pub fn error_body(e: &super::GatewayError) -> serde_json::Value {
    serde_json::json!({"message": e.message})
}
