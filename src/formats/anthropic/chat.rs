//! OpenAI Chat Completions ⇄ Anthropic Messages (`POST /v1/messages`).
//!
//! Request: system and developer messages (wherever they appear) become the
//! top-level `system`, joined by blank lines; `name` has no equivalent and is
//! not sent;
//! assistant tool calls become `tool_use` blocks (ids outside Anthropic's
//! `^[a-zA-Z0-9_-]+$` rewritten the same way in both places, see [`tool_id`]);
//! `tool` messages become
//! `tool_result` blocks in the next user turn (consecutive results and a
//! following user message share that one turn, results first, as the API
//! requires); consecutive same-role turns are merged. `max_tokens` is
//! required by Anthropic, so [`DEFAULT_MAX_TOKENS`] fills it when the client
//! sent none. `seed` has no equivalent and is not sent; `response_format`
//! `json_schema` becomes `output_config.format`, while `json_object` (JSON
//! without a schema) has no equivalent and is left to the prompt, which
//! OpenAI already requires to ask for JSON. Current Claude models refuse
//! `temperature` together with `top_p` ("cannot both be specified for this
//! model"), so when a client sends both, only `temperature` is sent.
//!
//! Response and stream: `text` blocks become content, `tool_use` blocks tool
//! calls (ids kept), `thinking` blocks are not forwarded; `stop_reason` maps
//! to `finish_reason`; usage counts every input token (uncached + cache
//! writes + cache reads) as prompt tokens, cache reads as cached tokens.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::formats::openai::{
    self, ChatRequest, ChatResponse, ErrorBody, FunctionCall, FunctionDelta, Role, ToolCall,
    ToolCallDelta, Usage,
};
use crate::formats::sse::SseEvent;
use crate::formats::translate::{Choice, StreamLife, StreamOut, TranslateError, Translated};

/// `max_tokens` sent when the client set neither `max_completion_tokens`
/// nor `max_tokens` (Anthropic requires it; 4096 fits every current model).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Anthropic's `temperature` range is 0..=1 (OpenAI's is 0..=2).
const MAX_TEMPERATURE: f64 = 1.0;

/// Keywords structured outputs (strict tools, `output_config.format`) do not
/// support; the official SDKs strip them the same way before sending.
const STRICT_UNSUPPORTED: [&str; 8] = [
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
];

/// Prepare a schema for structured outputs: drop the unsupported numeric,
/// string and array constraints (`minItems` is kept only as 0 or 1).
fn strict_schema(schema: &Value) -> Value {
    let mut schema = schema.clone();
    crate::formats::translate::walk_schema(&mut schema, &mut |map| {
        for key in STRICT_UNSUPPORTED {
            map.remove(key);
        }
        if map
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 1)
        {
            map.remove("minItems");
        }
    });
    schema
}

/// Translate an OpenAI request into an Anthropic Messages request body.
pub fn request(req: &ChatRequest, upstream_model: &str) -> Result<Translated, TranslateError> {
    crate::formats::translate::check_single_choice(req)?;
    crate::formats::translate::check_last_user_turn(req, "Anthropic")?;
    let mut calls = crate::formats::translate::ToolCallIndex::default();
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut dropped = 0;

    for (index, message) in req.messages.iter().enumerate() {
        let (text, parts_dropped) = message
            .content
            .as_ref()
            .map(|c| c.joined_text())
            .unwrap_or_default();
        dropped += parts_dropped;
        match message.role {
            Role::System | Role::Developer => {
                if !text.is_empty() {
                    system.push(text);
                }
            }
            Role::User => {
                let blocks = text_blocks(message.content.as_ref());
                push_turn(&mut turns, "user", blocks);
            }
            Role::Assistant => {
                calls.record(message);
                let mut blocks = text_blocks(message.content.as_ref());
                for call in message.tool_calls.iter().flatten() {
                    let input = crate::formats::translate::parse_arguments(
                        index,
                        &call.id,
                        &call.function.arguments,
                    )?;
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": crate::formats::translate::tool_id(&call.id),
                        "name": call.function.name,
                        "input": input,
                    }));
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            Role::Tool => {
                let (id, _) = calls.resolve(index, message)?;
                let mut block = json!({"type": "tool_result", "tool_use_id": crate::formats::translate::tool_id(id)});
                if !text.is_empty() {
                    block["content"] = Value::String(text);
                }
                push_turn(&mut turns, "user", vec![block]);
            }
            Role::Function => return Err(crate::formats::translate::function_role_error(index)),
        }
    }

    if turns.is_empty() {
        return Err(TranslateError::InvalidMessage {
            index: 0,
            reason: "no user or assistant message has text to send; Anthropic needs at least one (non-text parts are not forwarded)".to_owned(),
        });
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": compact(blocks)}))
        .collect();
    body.insert("messages".into(), Value::Array(messages));

    let tools = crate::formats::translate::function_tools(req)?;
    if !tools.is_empty() {
        let defs: Vec<Value> = tools
            .iter()
            .map(|f| {
                let strict = f.strict == Some(true);
                let schema = match &f.parameters {
                    Some(p) if strict => strict_schema(p),
                    Some(p) => p.clone(),
                    None => json!({"type": "object", "properties": {}}),
                };
                let mut tool = json!({"name": f.name, "input_schema": schema});
                if let Some(d) = &f.description {
                    tool["description"] = json!(d);
                }
                if strict {
                    tool["strict"] = json!(true);
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(defs));
        let no_parallel = req.parallel_tool_calls == Some(false);
        let choice = match crate::formats::translate::tool_choice(req, &tools)? {
            Some(Choice::None) => Some(json!({"type": "none"})),
            Some(Choice::Required) => Some(json!({"type": "any"})),
            Some(Choice::Function(name)) => Some(json!({"type": "tool", "name": name})),
            Some(Choice::Auto) => Some(json!({"type": "auto"})),
            None if no_parallel => Some(json!({"type": "auto"})),
            None => None,
        };
        if let Some(mut choice) = choice {
            if no_parallel && choice["type"] != "none" {
                choice["disable_parallel_tool_use"] = json!(true);
            }
            body.insert("tool_choice".into(), choice);
        }
    } else {
        // Validate tool_choice even without tools, so typos are reported.
        crate::formats::translate::tool_choice(req, &tools)?;
    }

    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t.clamp(0.0, MAX_TEMPERATURE)));
    }
    // Current models refuse both at once; `temperature` wins.
    if let Some(p) = req.top_p.filter(|_| req.temperature.is_none()) {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = &req.stop {
        let stops = stop.to_vec();
        if !stops.is_empty() {
            body.insert("stop_sequences".into(), json!(stops));
        }
    }
    if let Some(openai::OutputFormat::JsonSchema(schema)) =
        crate::formats::translate::output_format(req)?
    {
        body.insert(
            "output_config".into(),
            json!({"format": {"type": "json_schema", "schema": strict_schema(schema)}}),
        );
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.is_stream() {
        body.insert("stream".into(), json!(true));
    }
    Ok(Translated {
        body: Value::Object(body),
        dropped_parts: dropped,
    })
}

/// Non-empty text blocks of a message (Anthropic rejects empty text blocks).
fn text_blocks(content: Option<&openai::Content>) -> Vec<Value> {
    let Some(content) = content else {
        return Vec::new();
    };
    content
        .texts()
        .0
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|t| json!({"type": "text", "text": t}))
        .collect()
}

/// Append blocks to the conversation, merging into the last turn when it has
/// the same role; tool results stay ahead of text in a user turn.
fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last_role, last)) if *last_role == role => {
            for block in blocks {
                if block["type"] == "tool_result" {
                    let at = last
                        .iter()
                        .position(|b| b["type"] != "tool_result")
                        .unwrap_or(last.len());
                    last.insert(at, block);
                } else {
                    last.push(block);
                }
            }
        }
        _ => turns.push((role, blocks)),
    }
}

/// A turn that is a single text block is sent as a plain string.
fn compact(mut blocks: Vec<Value>) -> Value {
    if blocks.len() == 1 && blocks[0]["type"] == "text" {
        return blocks.swap_remove(0)["text"].take();
    }
    Value::Array(blocks)
}

// ---- responses ----

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    id: String,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: NativeUsage,
}

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct NativeUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl NativeUsage {
    /// Later usage reports (message_delta) override earlier fields.
    fn merge(&mut self, other: NativeUsage) {
        self.input_tokens = other.input_tokens.or(self.input_tokens);
        self.output_tokens = other.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = other
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = other
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    fn to_openai(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt =
            self.input_tokens.unwrap_or(0) + self.cache_creation_input_tokens.unwrap_or(0) + cached;
        openai::usage(prompt, self.output_tokens.unwrap_or(0), Some(cached))
    }
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new
        _ => "stop",
    }
}

/// Translate an Anthropic Messages response body into a `chat.completion`.
pub fn response(body: &[u8], client_model: &str) -> Result<ChatResponse, TranslateError> {
    let message: Message = crate::formats::translate::upstream_parse(body)?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in message.content {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => calls.push(ToolCall {
                id: block.id.unwrap_or_default(),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: block.name.unwrap_or_default(),
                    arguments: crate::formats::translate::arguments_string(
                        &block.input.unwrap_or(Value::Null),
                    ),
                },
                rest: Map::new(),
            }),
            _ => {} // thinking, redacted_thinking, server tool blocks
        }
    }
    Ok(openai::completion(
        crate::formats::translate::chat_id(Some(&message.id), body),
        0,
        client_model,
        text,
        calls,
        finish_reason(message.stop_reason.as_deref()),
        Some(message.usage.to_openai()),
    ))
}

// ---- streaming ----

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: Block,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<NativeUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: NativeError,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    usage: NativeUsage,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct NativeError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// Anthropic stream events → `chat.completion.chunk`s, event by event.
#[derive(Debug)]
pub struct StreamTranslator {
    life: StreamLife,
    tool_index: HashMap<u64, u32>,
    next_tool: u32,
    usage: NativeUsage,
}

impl StreamTranslator {
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        StreamTranslator {
            life: StreamLife::new("chatcmpl-anthropic", client_model, include_usage),
            tool_index: HashMap::new(),
            next_tool: 0,
            usage: NativeUsage::default(),
        }
    }

    /// The `created` timestamp (Unix seconds) every chunk carries; Anthropic
    /// sends none, so the caller passes its clock here.
    pub fn set_created(&mut self, created: u64) {
        self.life.chunks.created = created;
    }

    pub fn push(&mut self, event: &SseEvent) -> Vec<StreamOut> {
        let mut out = Vec::new();
        if self.life.ignores(&event.data) {
            return out;
        }
        let parsed: Event = match serde_json::from_str(&event.data) {
            Ok(e) => e,
            Err(e) => {
                self.life
                    .fail(&mut out, crate::formats::translate::bad_event(&e));
                return out;
            }
        };
        match parsed {
            Event::MessageStart { message } => {
                if !message.id.is_empty() {
                    self.life.chunks.id = format!("chatcmpl-{}", message.id);
                }
                self.usage.merge(message.usage);
                self.life.start(&mut out);
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => {
                self.life.start(&mut out);
                match content_block.kind.as_str() {
                    "tool_use" => {
                        let tool = self.next_tool;
                        self.next_tool += 1;
                        self.tool_index.insert(index, tool);
                        let initial = match content_block.input {
                            Some(Value::Object(m)) if !m.is_empty() => Value::Object(m).to_string(),
                            _ => String::new(),
                        };
                        out.push(StreamOut::Chunk(self.life.chunks.tool_chunk(
                            ToolCallDelta {
                                index: tool,
                                id: content_block.id,
                                kind: Some("function".to_owned()),
                                function: Some(FunctionDelta {
                                    name: content_block.name,
                                    arguments: Some(initial),
                                }),
                                rest: Map::new(),
                            },
                        )));
                    }
                    "text" => {
                        if let Some(text) = content_block.text.filter(|t| !t.is_empty()) {
                            out.push(StreamOut::Chunk(self.life.chunks.text_chunk(&text)));
                        }
                    }
                    _ => {}
                }
            }
            Event::ContentBlockDelta { index, delta } => {
                self.life.start(&mut out);
                match delta {
                    BlockDelta::TextDelta { text } if !text.is_empty() => {
                        out.push(StreamOut::Chunk(self.life.chunks.text_chunk(&text)));
                    }
                    BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                        if let Some(tool) = self.tool_index.get(&index) {
                            out.push(StreamOut::Chunk(self.life.chunks.tool_chunk(
                                ToolCallDelta {
                                    index: *tool,
                                    function: Some(FunctionDelta {
                                        name: None,
                                        arguments: Some(partial_json),
                                    }),
                                    ..ToolCallDelta::default()
                                },
                            )));
                        }
                    }
                    _ => {}
                }
            }
            Event::MessageDelta { delta, usage } => {
                self.life.start(&mut out);
                if let Some(usage) = usage {
                    self.usage.merge(usage);
                }
                if let Some(reason) = delta.stop_reason {
                    self.life.finished = true;
                    out.push(StreamOut::Chunk(
                        self.life.chunks.finish_chunk(finish_reason(Some(&reason))),
                    ));
                }
            }
            Event::MessageStop {} => {
                self.life.start(&mut out);
                self.life.finish_reason(&mut out, "stop");
                self.life.end(&mut out, || self.usage.to_openai());
            }
            Event::Error { error } => {
                self.life.fail(&mut out, native_error(None, error));
            }
            Event::ContentBlockStop {} | Event::Ping {} | Event::Other => {}
        }
        out
    }

    /// End of the upstream stream. A stream cut off before its stop reason
    /// ends with an error instead of a silent truncation.
    pub fn finish(&mut self) -> Vec<StreamOut> {
        self.life.close(|| self.usage.to_openai())
    }
}

// ---- errors ----

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: NativeError,
}

/// The HTTP status Anthropic uses for an error type (for errors that arrive
/// inside a stream, after the 200).
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

fn native_error(status: Option<u16>, error: NativeError) -> ErrorBody {
    let status =
        crate::formats::translate::map_status(status.unwrap_or_else(|| status_of(&error.kind)));
    let message = if error.message.is_empty() {
        format!("the Anthropic API answered with {}", error.kind)
    } else {
        crate::formats::translate::redact(&error.message)
    };
    let code = (!error.kind.is_empty()).then_some(error.kind);
    ErrorBody::new(message, crate::formats::translate::error_type(status), code)
}

/// Map an Anthropic error response to the status and body the Model Router
/// answers with (529 overloaded → 503). The caller passes `retry-after` on.
pub fn error(status: u16, body: &[u8]) -> (u16, ErrorBody) {
    let mapped = crate::formats::translate::map_status(status);
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => (mapped, native_error(Some(status), envelope.error)),
        Err(_) => (
            mapped,
            ErrorBody::new(
                format!("the Anthropic API answered with HTTP {status}"),
                crate::formats::translate::error_type(mapped),
                None,
            ),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_max_tokens_and_clamped_temperature() {
        let t = request(
            &req(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.7})),
            "claude",
        )
        .unwrap();
        assert_eq!(t.body["max_tokens"], json!(DEFAULT_MAX_TOKENS));
        assert_eq!(t.body["temperature"], json!(1.0));
    }

    #[test]
    fn unknown_tool_call_id_is_rejected() {
        let err = request(
            &req(json!({"model": "m", "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "nope", "content": "x"}
            ]})),
            "claude",
        )
        .unwrap_err();
        assert!(matches!(
            err,
            TranslateError::UnknownToolCallId { index: 1, .. }
        ));
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn invalid_arguments_are_rejected() {
        let err = request(
            &req(json!({"model": "m", "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
            ]})),
            "claude",
        )
        .unwrap_err();
        assert!(err.to_string().contains("messages[1]"), "{err}");
    }

    #[test]
    fn parallel_tool_calls_false_disables_parallel_use() {
        let t = request(
            &req(
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "parallel_tool_calls": false}),
            ),
            "claude",
        )
        .unwrap();
        assert_eq!(
            t.body["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            t.body["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn truncated_stream_ends_with_error() {
        let mut s = StreamTranslator::new("anthropic:claude", false);
        let out = s.push(&SseEvent {
            event: Some("message_start".into()),
            data: r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":3}}}"#
                .into(),
        });
        assert_eq!(out.len(), 1);
        let out = s.finish();
        assert!(matches!(out.as_slice(), [StreamOut::Error(_)]));
        assert!(s.finish().is_empty());
    }

    #[test]
    fn error_mapping() {
        let (status, body) = error(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(status, 503);
        assert_eq!(body.error.code.as_deref(), Some("overloaded_error"));
        let (status, body) = error(502, b"<html>bad gateway</html>");
        assert_eq!(status, 502);
        assert!(!body.error.message.contains("html"));
    }
}
