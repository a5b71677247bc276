//! The Anthropic wire format: Chat Completions translation ([`chat`]) and its native endpoint
//! table ([`endpoints`]).

pub mod chat;
pub mod endpoints;
pub mod guard;
pub mod messages;

pub use chat::*;

/// `anthropic-version` sent when the client sent none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Anthropic's error shape: `{"type": "error", "error": {"type", "message"}}`.
pub fn error_body(e: &super::GatewayError) -> serde_json::Value {
    let kind = match e.status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    serde_json::json!({"type": "error", "error": {"type": kind, "message": e.message}})
}
