//! The Gemini wire format: Chat Completions translation ([`chat`]) and its native endpoint
//! table ([`endpoints`]).

pub mod chat;
pub mod embeddings;
pub mod endpoints;
pub mod guard;

pub use chat::*;

/// Google's error shape: `{"error": {"code", "message", "status"}}` with the gRPC status name.
pub fn error_body(e: &super::GatewayError) -> serde_json::Value {
    let grpc = match e.status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    serde_json::json!({"error": {"code": e.status, "message": e.message, "status": grpc}})
}
