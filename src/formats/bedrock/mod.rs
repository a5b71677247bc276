//! The Bedrock Converse wire format: Chat Completions translation ([`chat`]), the AWS
//! event-stream framing of ConverseStream ([`eventstream`]) and its native endpoint table
//! ([`endpoints`]).

pub mod chat;
pub mod embeddings;
pub mod endpoints;
pub mod eventstream;
pub mod guard;

pub use chat::*;

/// Bedrock's (AWS restJson1) error shape: `{"message": …}`, with the exception name in
/// [`exception_name`]'s header.
pub fn error_body(e: &super::GatewayError) -> serde_json::Value {
    serde_json::json!({"message": e.message})
}

/// The AWS exception name for a status, which AWS SDKs read from `x-amzn-errortype`.
pub fn exception_name(status: u16) -> &'static str {
    match status {
        400 | 413 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        429 => "ThrottlingException",
        502 | 503 => "ServiceUnavailableException",
        504 => "ModelTimeoutException",
        _ => "InternalServerException",
    }
}
