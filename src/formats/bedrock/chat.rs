//! OpenAI Chat Completions ⇄ Bedrock Converse (`POST /model/{modelId}/converse`) and
//! ConverseStream (`/converse-stream`, AWS event-stream framing, see [`crate::formats::translate::eventstream`]).
//!
//! Request: system and developer messages become `system` text blocks; user and assistant
//! turns become `messages` with content blocks, consecutive same-role turns merged (Bedrock
//! requires alternating roles); assistant tool calls become `toolUse` blocks; `tool` messages
//! become `toolResult` blocks at the head of the next user turn. Images given as base64
//! `data:` URLs (png, jpeg, gif, webp) are kept as `image` blocks; every other non-text part
//! is dropped and counted. `max_tokens`, `temperature` (clamped to 0..=1), `top_p` and `stop`
//! go to `inferenceConfig`; tools to `toolConfig` (`tool_choice` auto → `auto`, required →
//! `any`, a function → `tool`; Bedrock has no "none": the tools are then left out, unless the
//! conversation already holds tool blocks, which Bedrock only accepts with a `toolConfig`).
//! The model is part of the URL, not the body. `response_format` with a schema has no
//! Converse equivalent and is refused; `json_object` is left to the prompt.
//!
//! Response and stream: `text` blocks become content, `toolUse` blocks tool calls (ids kept),
//! reasoning blocks are not forwarded; `stopReason` maps to `finish_reason`
//! (`guardrail_intervened` and `content_filtered` → `content_filter`); usage counts every
//! input token (uncached + cache writes + cache reads) as prompt tokens, cache reads as
//! cached tokens. Stream exceptions (`:message-type: exception`) end the stream with an error.

use std::collections::HashMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::formats::bedrock::eventstream::Message as Frame;
use crate::formats::openai::{
    self, ChatRequest, ChatResponse, ErrorBody, FunctionCall, FunctionDelta, Role, ToolCall,
    ToolCallDelta, Usage,
};
use crate::formats::translate::{Choice, StreamLife, StreamOut, TranslateError, Translated};

/// Bedrock's `temperature` range is 0..=1 for the models it serves (OpenAI's is 0..=2).
const MAX_TEMPERATURE: f64 = 1.0;

/// Image formats Converse accepts, by MIME subtype.
const IMAGE_FORMATS: [(&str, &str); 5] = [
    ("png", "png"),
    ("jpeg", "jpeg"),
    ("jpg", "jpeg"),
    ("gif", "gif"),
    ("webp", "webp"),
];

/// The path of the native endpoint for a model, relative to the runtime base URL. The model
/// ID is percent-encoded as the AWS SDKs do (`:` → `%3A`).
pub fn path(model: &str, stream: bool) -> String {
    let id = percent_encoding::utf8_percent_encode(model, MODEL_ID).to_string();
    let op = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("model/{id}/{op}")
}

/// Everything but unreserved characters is encoded in a model ID path segment.
const MODEL_ID: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A `data:image/{format};base64,{data}` URL as a Converse image block.
fn image_block(part: &openai::ContentPart) -> Option<Value> {
    if part.kind != "image_url" {
        return None;
    }
    let url = match part.rest.get("image_url")? {
        Value::String(s) => s.as_str(),
        Value::Object(m) => m.get("url")?.as_str()?,
        _ => return None,
    };
    let rest = url.strip_prefix("data:image/")?;
    let (mime, data) = rest.split_once(";base64,")?;
    let format = IMAGE_FORMATS
        .iter()
        .find(|(m, _)| m.eq_ignore_ascii_case(mime))?
        .1;
    // Checked here so a broken image is dropped and counted, not sent to fail upstream.
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    Some(json!({"image": {"format": format, "source": {"bytes": data.trim()}}}))
}

/// Text and image blocks of a message, and how many parts were dropped.
fn content_blocks(content: Option<&openai::Content>, images: bool) -> (Vec<Value>, usize) {
    let mut blocks = Vec::new();
    let mut dropped = 0;
    match content {
        Some(openai::Content::Text(t)) if !t.is_empty() => blocks.push(json!({"text": t})),
        None | Some(openai::Content::Text(_)) => {}
        Some(openai::Content::Parts(parts)) => {
            for part in parts {
                match (part.kind.as_str(), &part.text, &part.refusal) {
                    ("text", Some(t), _) | ("refusal", _, Some(t)) => {
                        if !t.is_empty() {
                            blocks.push(json!({"text": t}));
                        }
                    }
                    _ => match image_block(part).filter(|_| images) {
                        Some(block) => blocks.push(block),
                        None => dropped += 1,
                    },
                }
            }
        }
    }
    (blocks, dropped)
}

/// Append blocks to the conversation, merging into the last turn when it has the same role;
/// tool results stay ahead of other blocks in a user turn.
fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last_role, last)) if *last_role == role => {
            for block in blocks {
                if block.get("toolResult").is_some() {
                    let at = last
                        .iter()
                        .position(|b| b.get("toolResult").is_none())
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

/// Translate an OpenAI request into a Converse request body (the model goes in the URL).
pub fn request(req: &ChatRequest, _upstream_model: &str) -> Result<Translated, TranslateError> {
    crate::formats::translate::check_single_choice(req)?;
    let mut calls = crate::formats::translate::ToolCallIndex::default();
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut dropped = 0;
    let mut has_tool_blocks = false;

    for (index, message) in req.messages.iter().enumerate() {
        match message.role {
            Role::System | Role::Developer => {
                let (text, n) = message
                    .content
                    .as_ref()
                    .map(|c| c.joined_text())
                    .unwrap_or_default();
                dropped += n;
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            Role::User => {
                let (blocks, n) = content_blocks(message.content.as_ref(), true);
                dropped += n;
                push_turn(&mut turns, "user", blocks);
            }
            Role::Assistant => {
                calls.record(message);
                let (mut blocks, n) = content_blocks(message.content.as_ref(), false);
                dropped += n;
                for call in message.tool_calls.iter().flatten() {
                    has_tool_blocks = true;
                    let input = crate::formats::translate::parse_arguments(
                        index,
                        &call.id,
                        &call.function.arguments,
                    )?;
                    blocks.push(json!({"toolUse": {
                        "toolUseId": crate::formats::translate::tool_id(&call.id),
                        "name": call.function.name,
                        "input": input,
                    }}));
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            Role::Tool => {
                has_tool_blocks = true;
                let (id, _) = calls.resolve(index, message)?;
                let (text, n) = message
                    .content
                    .as_ref()
                    .map(|c| c.joined_text())
                    .unwrap_or_default();
                dropped += n;
                let block = json!({"toolResult": {
                    "toolUseId": crate::formats::translate::tool_id(id),
                    "content": [{"text": text}],
                }});
                push_turn(&mut turns, "user", vec![block]);
            }
            Role::Function => return Err(crate::formats::translate::function_role_error(index)),
        }
    }

    if turns.is_empty() {
        return Err(TranslateError::InvalidMessage {
            index: 0,
            reason: "no user or assistant message has content to send; Bedrock needs at least one"
                .to_owned(),
        });
    }

    let mut body = Map::new();
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": blocks}))
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }

    let mut inference = Map::new();
    if let Some(max) = req.max_output_tokens() {
        inference.insert("maxTokens".into(), json!(max));
    }
    if let Some(t) = req.temperature {
        inference.insert("temperature".into(), json!(t.clamp(0.0, MAX_TEMPERATURE)));
    }
    if let Some(p) = req.top_p {
        inference.insert("topP".into(), json!(p));
    }
    if let Some(stop) = &req.stop {
        let stops = stop.to_vec();
        if !stops.is_empty() {
            inference.insert("stopSequences".into(), json!(stops));
        }
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }

    let tools = crate::formats::translate::function_tools(req)?;
    let choice = crate::formats::translate::tool_choice(req, &tools)?;
    let keep_tools = !tools.is_empty() && (choice != Some(Choice::None) || has_tool_blocks);
    if keep_tools {
        let specs: Vec<Value> = tools
            .iter()
            .map(|f| {
                let schema = f
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                let mut spec = json!({"name": f.name, "inputSchema": {"json": schema}});
                if let Some(d) = &f.description {
                    spec["description"] = json!(d);
                }
                json!({"toolSpec": spec})
            })
            .collect();
        let mut config = json!({"tools": specs});
        match choice {
            Some(Choice::Auto) => config["toolChoice"] = json!({"auto": {}}),
            Some(Choice::Required) => config["toolChoice"] = json!({"any": {}}),
            Some(Choice::Function(name)) => config["toolChoice"] = json!({"tool": {"name": name}}),
            Some(Choice::None) | None => {}
        }
        body.insert("toolConfig".into(), config);
    }

    if let Some(openai::OutputFormat::JsonSchema(_)) =
        crate::formats::translate::output_format(req)?
    {
        return Err(TranslateError::Unsupported {
            param: "response_format".to_owned(),
            reason: "Bedrock Converse has no structured-output schema; describe the JSON in the prompt, or use a tool whose parameters are the schema".to_owned(),
        });
    }

    Ok(Translated {
        body: Value::Object(body),
        dropped_parts: dropped,
    })
}

// ---- responses ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse {
    #[serde(default)]
    output: Option<Output>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: NativeUsage,
}

#[derive(Debug, Deserialize)]
struct Output {
    #[serde(default)]
    message: Option<OutputMessage>,
}

#[derive(Debug, Deserialize)]
struct OutputMessage {
    #[serde(default)]
    content: Vec<Block>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Block {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUse>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    input: Value,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NativeUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
}

impl NativeUsage {
    fn to_openai(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt =
            self.input_tokens.unwrap_or(0) + self.cache_write_input_tokens.unwrap_or(0) + cached;
        let cached = (self.cache_read_input_tokens.is_some()
            || self.cache_write_input_tokens.is_some())
        .then_some(cached);
        openai::usage(prompt, self.output_tokens.unwrap_or(0), cached)
    }
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        // end_turn, stop_sequence and anything new
        _ => "stop",
    }
}

/// Translate a Converse response body into a `chat.completion`.
pub fn response(body: &[u8], client_model: &str) -> Result<ChatResponse, TranslateError> {
    let parsed: ConverseResponse = crate::formats::translate::upstream_parse(body)?;
    let mut text = String::new();
    let mut calls = Vec::new();
    let blocks = parsed
        .output
        .and_then(|o| o.message)
        .map(|m| m.content)
        .unwrap_or_default();
    for block in blocks {
        if let Some(t) = block.text {
            text.push_str(&t);
        }
        if let Some(tool) = block.tool_use {
            calls.push(ToolCall {
                id: tool.tool_use_id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: tool.name,
                    arguments: crate::formats::translate::arguments_string(&tool.input),
                },
                rest: Map::new(),
            });
        }
    }
    Ok(openai::completion(
        crate::formats::translate::chat_id(None, body),
        0,
        client_model,
        text,
        calls,
        finish_reason(parsed.stop_reason.as_deref()),
        Some(parsed.usage.to_openai()),
    ))
}

// ---- streaming ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamEvent {
    #[serde(default)]
    content_block_index: Option<u64>,
    #[serde(default)]
    start: Option<BlockStart>,
    #[serde(default)]
    delta: Option<BlockDelta>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<NativeUsage>,
    #[serde(default, alias = "Message")]
    message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart {
    #[serde(default)]
    tool_use: Option<ToolUse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUseDelta>,
}

#[derive(Debug, Default, Deserialize)]
struct ToolUseDelta {
    #[serde(default)]
    input: String,
}

/// ConverseStream events (decoded event-stream messages) → `chat.completion.chunk`s.
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
            life: StreamLife::new("chatcmpl-bedrock", client_model, include_usage),
            tool_index: HashMap::new(),
            next_tool: 0,
            usage: NativeUsage::default(),
        }
    }

    /// The `created` timestamp (Unix seconds) every chunk carries; Bedrock sends none.
    pub fn set_created(&mut self, created: u64) {
        self.life.chunks.created = created;
    }

    /// The chunk ID (Bedrock sends none; the caller may pass its request ID).
    pub fn set_id(&mut self, id: &str) {
        self.life.chunks.id = format!("chatcmpl-{id}");
    }

    pub fn push(&mut self, frame: &Frame) -> Vec<StreamOut> {
        let mut out = Vec::new();
        if self.life.done {
            return out;
        }
        let parsed: Result<StreamEvent, _> = if frame.payload.is_empty() {
            Ok(StreamEvent::default())
        } else {
            serde_json::from_slice(&frame.payload)
        };
        let event = match parsed {
            Ok(e) => e,
            Err(e) => {
                self.life
                    .fail(&mut out, crate::formats::translate::bad_event(&e));
                return out;
            }
        };
        match frame.header(":message-type") {
            Some("exception") => {
                let kind = frame.header(":exception-type").unwrap_or("exception");
                self.life
                    .fail(&mut out, stream_exception(kind, event.message.as_deref()));
                return out;
            }
            Some("error") => {
                let kind = frame.header(":error-code").unwrap_or("error");
                let message = frame.header(":error-message");
                self.life.fail(&mut out, stream_exception(kind, message));
                return out;
            }
            _ => {}
        }
        match frame.header(":event-type").unwrap_or("") {
            "messageStart" => self.life.start(&mut out),
            "contentBlockStart" => {
                self.life.start(&mut out);
                if let Some(tool) = event.start.and_then(|s| s.tool_use) {
                    let index = self.next_tool;
                    self.next_tool += 1;
                    self.tool_index
                        .insert(event.content_block_index.unwrap_or(0), index);
                    out.push(StreamOut::Chunk(self.life.chunks.tool_chunk(
                        ToolCallDelta {
                            index,
                            id: Some(tool.tool_use_id),
                            kind: Some("function".to_owned()),
                            function: Some(FunctionDelta {
                                name: Some(tool.name),
                                arguments: Some(String::new()),
                            }),
                            rest: Map::new(),
                        },
                    )));
                }
            }
            "contentBlockDelta" => {
                self.life.start(&mut out);
                let delta = event.delta.unwrap_or_default();
                if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                    out.push(StreamOut::Chunk(self.life.chunks.text_chunk(&text)));
                }
                if let Some(input) = delta.tool_use.map(|t| t.input).filter(|i| !i.is_empty())
                    && let Some(tool) = self.tool_index.get(&event.content_block_index.unwrap_or(0))
                {
                    out.push(StreamOut::Chunk(self.life.chunks.tool_chunk(
                        ToolCallDelta {
                            index: *tool,
                            function: Some(FunctionDelta {
                                name: None,
                                arguments: Some(input),
                            }),
                            ..ToolCallDelta::default()
                        },
                    )));
                }
            }
            "messageStop" => {
                self.life.start(&mut out);
                self.life
                    .finish_reason(&mut out, finish_reason(event.stop_reason.as_deref()));
            }
            "metadata" => {
                if let Some(usage) = event.usage {
                    self.usage = usage;
                }
                if self.life.finished {
                    self.life.end(&mut out, || self.usage.to_openai());
                }
            }
            // contentBlockStop and anything new
            _ => {}
        }
        out
    }

    /// End of the upstream stream. A stream cut off before `messageStop` ends with an error
    /// instead of a silent truncation.
    pub fn finish(&mut self) -> Vec<StreamOut> {
        self.life.close(|| self.usage.to_openai())
    }
}

/// The HTTP status Bedrock uses for an exception (for those that arrive inside a stream).
fn status_of(kind: &str) -> u16 {
    match kind.to_ascii_lowercase().trim_end_matches("exception") {
        "validation" => 400,
        "accessdenied" => 403,
        "resourcenotfound" => 404,
        "throttling" | "servicequotaexceeded" => 429,
        "modeltimeout" => 504,
        "serviceunavailable" | "modelnotready" => 503,
        _ => 500,
    }
}

fn stream_exception(kind: &str, message: Option<&str>) -> ErrorBody {
    let status = crate::formats::translate::map_status(status_of(kind));
    let message = match message.filter(|m| !m.is_empty()) {
        Some(m) => crate::formats::translate::redact(m),
        None => format!("Bedrock ended the stream with {kind}"),
    };
    ErrorBody::new(
        message,
        crate::formats::translate::error_type(status),
        Some(kind.to_owned()),
    )
}

// ---- errors ----

#[derive(Debug, Deserialize)]
struct NativeError {
    #[serde(default, alias = "Message")]
    message: Option<String>,
    #[serde(default, rename = "__type")]
    kind: Option<String>,
}

/// Map a Bedrock error response (`{"message": …}`) to the status and body the Model Router
/// answers with. The caller passes `retry-after` on.
pub fn error(status: u16, body: &[u8]) -> (u16, ErrorBody) {
    let mapped = crate::formats::translate::map_status(status);
    let parsed = serde_json::from_slice::<NativeError>(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|e| e.message.as_deref())
        .filter(|m| !m.is_empty())
        .map(crate::formats::translate::redact)
        .unwrap_or_else(|| format!("Bedrock answered with HTTP {status}"));
    let code = parsed
        .and_then(|e| e.kind)
        .map(|k| k.rsplit('#').next().unwrap_or(&k).to_owned());
    (
        mapped,
        ErrorBody::new(message, crate::formats::translate::error_type(mapped), code),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn model_ids_are_encoded_in_the_path() {
        assert_eq!(
            path("us.amazon.nova-pro-v1:0", true),
            "model/us.amazon.nova-pro-v1%3A0/converse-stream"
        );
        assert_eq!(
            path("arn:aws:bedrock:us-east-1:1:inference-profile/x", false),
            "model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse"
        );
    }

    #[test]
    fn images_kept_other_parts_dropped() {
        let t = request(
            &req(json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
            ]}]})),
            "m",
        )
        .unwrap();
        assert_eq!(t.dropped_parts, 2);
        assert_eq!(
            t.body["messages"][0]["content"][1],
            json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
        );
    }

    #[test]
    fn tool_choice_none_leaves_tools_out_unless_history_needs_them() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let t = request(
            &req(
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": tools, "tool_choice": "none"}),
            ),
            "m",
        )
        .unwrap();
        assert!(t.body.get("toolConfig").is_none());
        let t = request(
            &req(json!({"model": "m", "tools": tools, "tool_choice": "none", "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "ok"}
            ]})),
            "m",
        )
        .unwrap();
        assert!(t.body["toolConfig"].get("toolChoice").is_none());
        assert_eq!(t.body["toolConfig"]["tools"][0]["toolSpec"]["name"], "f");
    }

    #[test]
    fn error_mapping() {
        let (status, body) = error(
            429,
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        assert_eq!(status, 429);
        assert_eq!(body.error.kind, "rate_limit_error");
        let (status, body) = error(503, b"<html>");
        assert_eq!(status, 503);
        assert!(body.error.message.contains("503"));
    }
}
