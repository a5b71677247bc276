//! Translation between OpenAI Chat Completions (what Model Router clients
//! speak) and the native formats of providers that do not speak it.
//!
//! Everything here is pure and synchronous: no I/O, no clock, no HTTP types.
//! The data plane drives it like this:
//!
//! ```text
//! client JSON ──serde──▶ openai::ChatRequest ──<provider>::request──▶ Translated { body, dropped_parts }
//!                                                                        │ (caller sends it upstream)
//! upstream bytes ──<provider>::response──▶ openai::ChatResponse ─────────┘ (non-streaming)
//! upstream bytes ──sse::SseParser──▶ SseEvent ──<provider>::StreamTranslator::push──▶ StreamOut*
//!                                              (caller writes each as `data: …`, then `data: [DONE]`)
//! upstream error ──<provider>::error──▶ (status, openai::ErrorBody)
//! ```
//!
//! Each provider module (`anthropic`, `gemini`, `cohere`, `bedrock`) has the
//! same four entry points: `request`, `response`, `StreamTranslator` and
//! `error`. Bedrock streams in AWS event-stream framing instead of SSE:
//! `eventstream::Decoder` takes the place of `sse::SseParser` there, and its
//! `StreamTranslator::push` takes a decoded `eventstream::Message`.
//!
//! Text-first: image, audio and file parts are dropped (Bedrock keeps base64
//! `data:` URL images) and counted in
//! [`Translated::dropped_parts`], which the caller reports in the
//! `x-portcullis-dropped-parts` header.
//!
//! Chat ids come from the upstream where it has one (`chatcmpl-` + upstream
//! id); `created` is taken from the upstream where it has one and is `0`
//! otherwise — the caller sets the wall clock (`ChatResponse::created`,
//! [`anthropic::StreamTranslator::set_created`] and friends).

use crate::formats::openai;
use crate::formats::openai::{ChatChunk, ErrorBody};
use crate::formats::sse;
use serde_json::Value;

/// A translated request body, ready to send upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The provider's native JSON request body.
    pub body: Value,
    /// How many non-text content parts (images, audio, files) were dropped.
    pub dropped_parts: usize,
}

/// One item of a translated stream: a chunk, or the error that ends it.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOut {
    Chunk(ChatChunk),
    /// An upstream error in the middle of a stream. The caller writes it as
    /// `data: {"error": …}` and ends the stream; the `openai` SDKs raise
    /// `APIError` on such an event.
    Error(ErrorBody),
}

impl StreamOut {
    /// The JSON payload of this item (what goes after `data: `).
    pub fn to_json(&self) -> String {
        let value = match self {
            StreamOut::Chunk(chunk) => serde_json::to_string(chunk),
            StreamOut::Error(err) => serde_json::to_string(err),
        };
        // Serializing these plain structs cannot fail; fall back to an error
        // payload rather than panicking.
        value.unwrap_or_else(|_| {
            r#"{"error":{"message":"internal serialization error","type":"server_error","param":null,"code":null}}"#
                .to_owned()
        })
    }

    /// The SSE frame of this item: `data: {json}\n\n`.
    pub fn to_sse(&self) -> Vec<u8> {
        sse::encode_data(&self.to_json())
    }
}

/// Why a request (or an upstream answer) could not be translated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TranslateError {
    #[error(
        "messages[{index}]: tool call {id:?} has arguments that are not a JSON object ({reason}); send `function.arguments` as a JSON object string"
    )]
    InvalidToolArguments {
        index: usize,
        id: String,
        reason: String,
    },
    #[error(
        "messages[{index}]: tool_call_id {id:?} does not match any tool call of an earlier assistant message; send the assistant message with that tool call before its result"
    )]
    UnknownToolCallId { index: usize, id: String },
    #[error("messages[{index}]: {reason}")]
    InvalidMessage { index: usize, reason: String },
    #[error("{param}: {reason}")]
    Unsupported { param: String, reason: String },
    #[error("the upstream answered with a body that could not be read: {0}")]
    InvalidUpstream(String),
}

impl TranslateError {
    /// The HTTP status the Model Router answers with: 400 for a request that
    /// cannot be expressed for the provider, 502 for an unreadable upstream
    /// answer.
    pub fn status_code(&self) -> u16 {
        match self {
            TranslateError::InvalidToolArguments { .. }
            | TranslateError::UnknownToolCallId { .. }
            | TranslateError::InvalidMessage { .. }
            | TranslateError::Unsupported { .. } => 400,
            TranslateError::InvalidUpstream(_) => 502,
        }
    }

    /// The OpenAI error body for this error.
    pub fn to_error_body(&self) -> ErrorBody {
        let (kind, code) = match self {
            TranslateError::InvalidUpstream(_) => ("server_error", "bad_upstream_response"),
            _ => ("invalid_request_error", "unsupported_request"),
        };
        let mut body = ErrorBody::new(self.to_string(), kind, Some(code.to_owned()));
        body.error.param = self.param().map(str::to_owned);
        body
    }

    /// The request field at fault, when the error names one (`response_format`, `tools`).
    pub fn param(&self) -> Option<&str> {
        match self {
            TranslateError::Unsupported { param, .. } => {
                // `tools[0].type` names the field `tools`; `messages[3]…` the field `messages`.
                let end = param.find(['[', '.']).unwrap_or(param.len());
                Some(&param[..end])
            }
            TranslateError::InvalidToolArguments { .. }
            | TranslateError::UnknownToolCallId { .. }
            | TranslateError::InvalidMessage { .. } => Some("messages"),
            TranslateError::InvalidUpstream(_) => None,
        }
    }
}

pub(crate) fn upstream_json(body: &[u8]) -> Result<Value, TranslateError> {
    serde_json::from_slice(body).map_err(|e| TranslateError::InvalidUpstream(e.to_string()))
}

/// `chatcmpl-` + a stable id: the upstream's id when it has one, else a hash
/// of the upstream body (so golden tests stay stable).
pub(crate) fn chat_id(upstream_id: Option<&str>, body: &[u8]) -> String {
    match upstream_id {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{:016x}", fnv1a(body)),
    }
}

/// FNV-1a, 64 bit: a tiny stable hash (std's hasher is not guaranteed stable
/// across Rust versions).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Map an upstream HTTP status to the status the Model Router answers with.
pub(crate) fn map_status(status: u16) -> u16 {
    match status {
        400 | 401 | 403 | 404 | 413 | 429 | 500 | 502 | 503 | 504 => status,
        408 => 504,
        422 => 400,
        529 => 503,
        402 => 403,
        s if (400..500).contains(&s) => 400,
        _ => 502,
    }
}

/// The OpenAI error `type` for a (mapped) status.
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Remove anything that looks like a credential from an upstream message, so
/// no error ever echoes a secret.
pub(crate) fn redact(message: &str) -> String {
    const PREFIXES: [&str; 5] = ["sk-", "AIza", "ya29.", "Bearer ", "key="];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    'outer: while !rest.is_empty() {
        let at_word_start = !out
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        for prefix in PREFIXES.iter().filter(|_| at_word_start) {
            if let Some(tail) = rest.strip_prefix(prefix) {
                let secret_len = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                    .unwrap_or(tail.len());
                if secret_len >= 8 {
                    out.push_str(prefix);
                    out.push_str("[REDACTED]");
                    rest = &tail[secret_len..];
                    continue 'outer;
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// The error used when the upstream stream ends before its final event.
pub(crate) fn truncated_stream_error() -> ErrorBody {
    ErrorBody::new(
        "the upstream stream ended before the response was complete; retry the request".to_owned(),
        "server_error",
        Some("upstream_stream_truncated".to_owned()),
    )
}

/// An upstream answer body parsed into a native wire type.
pub(crate) fn upstream_parse<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, TranslateError> {
    serde_json::from_value(upstream_json(body)?)
        .map_err(|e| TranslateError::InvalidUpstream(e.to_string()))
}

/// The error used when one stream event cannot be parsed.
pub(crate) fn bad_event(e: &serde_json::Error) -> ErrorBody {
    ErrorBody::new(
        format!("the upstream sent a stream event that could not be read: {e}"),
        "server_error",
        Some("bad_upstream_response".to_owned()),
    )
}

/// The lifecycle every provider's `StreamTranslator` shares: the role chunk
/// once before anything else, the finish chunk once, the usage chunk at the
/// end when the client asked for it, and an error instead of a silent
/// truncation when the upstream stream stops before its finish reason. Each
/// translator embeds one and keeps only its provider's event handling.
#[derive(Debug)]
pub(crate) struct StreamLife {
    pub(crate) chunks: openai::ChunkBuilder,
    pub(crate) include_usage: bool,
    pub(crate) started: bool,
    pub(crate) finished: bool,
    pub(crate) done: bool,
}

impl StreamLife {
    /// `id` is the chunk id until the upstream names its own.
    pub(crate) fn new(id: &str, client_model: &str, include_usage: bool) -> Self {
        StreamLife {
            chunks: openai::ChunkBuilder {
                id: id.to_owned(),
                created: 0,
                model: client_model.to_owned(),
            },
            include_usage,
            started: false,
            finished: false,
            done: false,
        }
    }

    /// Whether an SSE event is to be ignored: the stream is over, or it is
    /// the OpenAI-style `[DONE]` terminator some upstreams add.
    pub(crate) fn ignores(&self, data: &str) -> bool {
        self.done || data.trim() == "[DONE]"
    }

    /// The role chunk, the first time only.
    pub(crate) fn start(&mut self, out: &mut Vec<StreamOut>) {
        if !self.started {
            self.started = true;
            out.push(StreamOut::Chunk(self.chunks.role_chunk()));
        }
    }

    /// The finish chunk, the first time only.
    pub(crate) fn finish_reason(&mut self, out: &mut Vec<StreamOut>, reason: &str) {
        if !self.finished {
            self.finished = true;
            out.push(StreamOut::Chunk(self.chunks.finish_chunk(reason)));
        }
    }

    /// The stream is over: the usage chunk when the client asked for it.
    pub(crate) fn end(&mut self, out: &mut Vec<StreamOut>, usage: impl FnOnce() -> openai::Usage) {
        self.done = true;
        if self.include_usage {
            out.push(StreamOut::Chunk(self.chunks.usage_chunk(usage())));
        }
    }

    /// The stream ends with an error.
    pub(crate) fn fail(&mut self, out: &mut Vec<StreamOut>, error: ErrorBody) {
        self.done = true;
        out.push(StreamOut::Error(error));
    }

    /// End of the upstream stream: the usage chunk after a finish reason,
    /// else the truncated-stream error; nothing once the stream is over.
    pub(crate) fn close(&mut self, usage: impl FnOnce() -> openai::Usage) -> Vec<StreamOut> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if self.finished {
            self.end(&mut out, usage);
        } else {
            self.fail(&mut out, truncated_stream_error());
        }
        out
    }
}

/// Parse tool call arguments (a JSON string) into the object native APIs want.
pub(crate) fn parse_arguments(
    index: usize,
    id: &str,
    arguments: &str,
) -> Result<Value, TranslateError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(TranslateError::InvalidToolArguments {
            index,
            id: id.to_owned(),
            reason: "it is not an object".to_owned(),
        }),
        Err(e) => Err(TranslateError::InvalidToolArguments {
            index,
            id: id.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Serialize native tool input back into an OpenAI `arguments` string.
pub(crate) fn arguments_string(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_owned(),
        v => v.to_string(),
    }
}

/// The function tools of a request (other tool types cannot be translated).
pub(crate) fn function_tools(
    req: &openai::ChatRequest,
) -> Result<Vec<&openai::FunctionDef>, TranslateError> {
    let mut out = Vec::new();
    for (i, tool) in req.tools.iter().flatten().enumerate() {
        match (tool.kind.as_str(), &tool.function) {
            ("function", Some(f)) => out.push(f),
            (kind, _) => {
                return Err(TranslateError::Unsupported {
                    param: format!("tools[{i}]"),
                    reason: format!(
                        "tools of type {kind:?} cannot be sent to this provider; only \"function\" tools are translated"
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// The provider-neutral tool choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    Auto,
    None,
    Required,
    Function(String),
}

/// The tool choice of a request, checked against its tools.
pub(crate) fn tool_choice(
    req: &openai::ChatRequest,
    tools: &[&openai::FunctionDef],
) -> Result<Option<Choice>, TranslateError> {
    let Some(choice) = &req.tool_choice else {
        return Ok(None);
    };
    let kind = choice
        .kind()
        .map_err(|reason| TranslateError::Unsupported {
            param: "tool_choice".to_owned(),
            reason,
        })?;
    Ok(Some(match kind {
        openai::ToolChoiceKind::Auto => Choice::Auto,
        openai::ToolChoiceKind::None => Choice::None,
        openai::ToolChoiceKind::Required => Choice::Required,
        openai::ToolChoiceKind::Function(name) => {
            if !tools.iter().any(|t| t.name == name) {
                return Err(TranslateError::Unsupported {
                    param: "tool_choice".to_owned(),
                    reason: format!("names the function {name:?}, which is not in `tools`"),
                });
            }
            Choice::Function(name.to_owned())
        }
    }))
}

/// The requested output format (`None` for plain text).
pub(crate) fn output_format(
    req: &openai::ChatRequest,
) -> Result<Option<openai::OutputFormat<'_>>, TranslateError> {
    let Some(format) = &req.response_format else {
        return Ok(None);
    };
    match format.output_format() {
        Ok(openai::OutputFormat::Text) => Ok(None),
        Ok(f) => Ok(Some(f)),
        Err(reason) => Err(TranslateError::Unsupported {
            param: "response_format".to_owned(),
            reason,
        }),
    }
}

/// The native names of the OpenAI sampling parameters a provider takes unchanged.
pub(crate) struct Sampling {
    pub(crate) max_tokens: &'static str,
    pub(crate) temperature: &'static str,
    pub(crate) top_p: &'static str,
    pub(crate) stop: &'static str,
    pub(crate) seed: &'static str,
    pub(crate) presence_penalty: &'static str,
    pub(crate) frequency_penalty: &'static str,
}

/// Copy the sampling parameters a request sets under their native names (stop sequences
/// only when there is at least one).
pub(crate) fn copy_sampling(
    req: &openai::ChatRequest,
    names: &Sampling,
    out: &mut serde_json::Map<String, Value>,
) {
    if let Some(n) = req.max_output_tokens() {
        out.insert(names.max_tokens.into(), serde_json::json!(n));
    }
    if let Some(t) = req.temperature {
        out.insert(names.temperature.into(), serde_json::json!(t));
    }
    if let Some(p) = req.top_p {
        out.insert(names.top_p.into(), serde_json::json!(p));
    }
    if let Some(stop) = &req.stop {
        let stops = stop.to_vec();
        if !stops.is_empty() {
            out.insert(names.stop.into(), serde_json::json!(stops));
        }
    }
    if let Some(seed) = req.seed {
        out.insert(names.seed.into(), serde_json::json!(seed));
    }
    if let Some(p) = req.presence_penalty {
        out.insert(names.presence_penalty.into(), serde_json::json!(p));
    }
    if let Some(p) = req.frequency_penalty {
        out.insert(names.frequency_penalty.into(), serde_json::json!(p));
    }
}

/// Only one choice can be produced: `n` must be absent or 1.
pub(crate) fn check_single_choice(req: &openai::ChatRequest) -> Result<(), TranslateError> {
    match req.n {
        None | Some(1) => Ok(()),
        Some(n) => Err(TranslateError::Unsupported {
            param: "n".to_owned(),
            reason: format!(
                "{n} choices were asked for; this provider is translated with one choice per request, so send n=1 (or leave it out)"
            ),
        }),
    }
}

/// The conversation must end on a user message that still has text once non-text parts are
/// dropped (or on tool results, or on an assistant message the client means to continue).
/// Without this check a final user turn of only images would vanish and the request would
/// end on the previous assistant message, which Anthropic takes as a prefill to continue and
/// the others answer as if the user had said nothing: refuse it instead, naming the message.
pub(crate) fn check_last_user_turn(
    req: &openai::ChatRequest,
    provider: &str,
) -> Result<(), TranslateError> {
    let last = req
        .messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| !matches!(m.role, openai::Role::System | openai::Role::Developer));
    let Some((index, message)) = last else {
        return Ok(());
    };
    if message.role != openai::Role::User {
        return Ok(());
    }
    let (texts, dropped) = message
        .content
        .as_ref()
        .map(openai::Content::texts)
        .unwrap_or_default();
    if texts.iter().any(|t| !t.is_empty()) {
        return Ok(());
    }
    let why = if dropped > 0 {
        format!(
            "the last user message has only non-text parts ({dropped}), which are not sent to {provider} (text only); add a text part to it"
        )
    } else {
        "the last user message is empty; send it with text".to_owned()
    };
    Err(TranslateError::InvalidMessage { index, reason: why })
}

/// Tool call id → function name, filled in message order, so a tool result
/// resolves to the nearest earlier assistant tool call with its id.
#[derive(Debug, Default)]
pub(crate) struct ToolCallIndex<'a> {
    pub(crate) names: std::collections::HashMap<&'a str, &'a str>,
}

impl<'a> ToolCallIndex<'a> {
    pub(crate) fn record(&mut self, message: &'a openai::Message) {
        for call in message.tool_calls.iter().flatten() {
            self.names
                .insert(call.id.as_str(), call.function.name.as_str());
        }
    }

    /// The `tool_call_id` of a tool message and the function it answers.
    pub(crate) fn resolve(
        &self,
        index: usize,
        message: &'a openai::Message,
    ) -> Result<(&'a str, &'a str), TranslateError> {
        let Some(id) = message.tool_call_id.as_deref() else {
            return Err(TranslateError::InvalidMessage {
                index,
                reason: "a tool message needs `tool_call_id`".to_owned(),
            });
        };
        match self.names.get(id) {
            Some(name) => Ok((id, name)),
            None => Err(TranslateError::UnknownToolCallId {
                index,
                id: id.to_owned(),
            }),
        }
    }
}

pub(crate) fn function_role_error(index: usize) -> TranslateError {
    TranslateError::InvalidMessage {
        index,
        reason: "the deprecated \"function\" role is not translated; send tool results as \"tool\" messages with a tool_call_id".to_owned(),
    }
}

/// Visit every (sub)schema object of a JSON Schema, parents first. Only
/// keywords that hold schemas are followed, so a property *named* like a
/// keyword is never mistaken for one.
pub(crate) fn walk_schema(
    schema: &mut Value,
    visit: &mut dyn FnMut(&mut serde_json::Map<String, Value>),
) {
    let Value::Object(map) = schema else {
        return;
    };
    visit(map);
    for key in ["items", "additionalProperties", "not", "contains"] {
        if let Some(sub) = map.get_mut(key) {
            walk_schema(sub, visit);
        }
    }
    for key in ["anyOf", "allOf", "oneOf", "prefixItems"] {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            for sub in subs {
                walk_schema(sub, visit);
            }
        }
    }
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(Value::Object(subs)) = map.get_mut(key) {
            for sub in subs.values_mut() {
                walk_schema(sub, visit);
            }
        }
    }
}

/// A tool call id as Anthropic and Bedrock accept it (`^[a-zA-Z0-9_-]+$`). Ids from other providers or
/// frameworks may hold `:`, `.`, `|` and the like (`functions.get_weather:0`); those
/// characters become `_` and a hash of the original id is appended, so the `tool_use` and its
/// `tool_result` get the same new id and two different ids never collapse into one. Valid
/// ids (Anthropic's own `toolu_…`, OpenAI's `call_…`) pass unchanged.
pub(crate) fn tool_id(id: &str) -> String {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.chars().all(valid) {
        return id.to_owned();
    }
    let cleaned: String = id.chars().map(|c| if valid(c) { c } else { '_' }).collect();
    format!("{cleaned}_{:08x}", fnv1a(id.as_bytes()) as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redacts_keys_but_keeps_text() {
        let m = redact("API key AIzaSyA1234567890abcdefghijklmnopqrstu is invalid");
        assert_eq!(m, "API key AIza[REDACTED] is invalid");
        let m = redact("invalid x-api-key: sk-ant-api03-abcdefghijk, see docs");
        assert_eq!(m, "invalid x-api-key: sk-[REDACTED], see docs");
        assert_eq!(redact("task-based skills"), "task-based skills");
        assert_eq!(
            redact("risk-assessment-framework"),
            "risk-assessment-framework"
        );
        assert_eq!(redact("héllo wörld"), "héllo wörld");
    }

    #[test]
    fn status_mapping() {
        assert_eq!(map_status(529), 503);
        assert_eq!(map_status(429), 429);
        assert_eq!(map_status(418), 400);
        assert_eq!(map_status(599), 502);
        assert_eq!(error_type(503), "server_error");
    }

    #[test]
    fn arguments() {
        assert_eq!(parse_arguments(0, "a", "").unwrap(), serde_json::json!({}));
        assert!(parse_arguments(0, "a", "[1]").is_err());
        assert!(parse_arguments(0, "a", "{").is_err());
    }

    #[test]
    fn walk_schema_follows_schema_keywords_only() {
        let mut schema = serde_json::json!({
            "type": "object",
            "properties": {"minimum": {"type": "integer", "minimum": 1}},
            "$defs": {"x": {"type": "array", "items": {"type": "string", "maxLength": 3}}}
        });
        walk_schema(&mut schema, &mut |m| {
            m.remove("minimum");
            m.remove("maxLength");
        });
        assert_eq!(
            schema,
            serde_json::json!({
                "type": "object",
                "properties": {"minimum": {"type": "integer"}},
                "$defs": {"x": {"type": "array", "items": {"type": "string"}}}
            })
        );
    }

    #[test]
    fn chat_ids_are_stable() {
        assert_eq!(chat_id(Some("msg_1"), b""), "chatcmpl-msg_1");
        assert_eq!(chat_id(None, b"abc"), chat_id(None, b"abc"));
        assert_ne!(chat_id(None, b"abc"), chat_id(None, b"abd"));
    }
}
