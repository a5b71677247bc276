//! OpenAI Chat Completions ⇄ Cohere v2 Chat (`POST /v2/chat`).
//!
//! Cohere v2 is close to OpenAI: roles `system`, `user`, `assistant` and
//! `tool` (with `tool_call_id`), tools in the same `{"type": "function"}`
//! shape, tool-call arguments as JSON strings. Differences handled here:
//! `developer` becomes `system`; `name` is not sent; `top_p` is `p`; `stop` is `stop_sequences`;
//! `tool_choice` only has `REQUIRED` and `NONE` (auto is the default), so a
//! named function becomes `REQUIRED` with `tools` narrowed to that function;
//! `parallel_tool_calls` has no equivalent; any strict tool turns on
//! `strict_tools`; `response_format` `json_schema` becomes `json_object`
//! with `json_schema`.
//!
//! Responses: `message.content` text blocks (not `thinking`) become content,
//! `tool_plan` (the model's reasoning before tool calls) is not forwarded;
//! usage reports `usage.tokens` (what the model processed; `billed_units`
//! when absent) and `cached_tokens`.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::formats::openai::{
    self, ChatRequest, ChatResponse, ErrorBody, FunctionCall, FunctionDelta, Role, ToolCall,
    ToolCallDelta, Usage,
};
use crate::formats::sse::SseEvent;
use crate::formats::translate::{Choice, StreamLife, StreamOut, TranslateError, Translated};

/// Translate an OpenAI request into a Cohere v2 Chat request body.
pub fn request(req: &ChatRequest, upstream_model: &str) -> Result<Translated, TranslateError> {
    crate::formats::translate::check_single_choice(req)?;
    crate::formats::translate::check_last_user_turn(req, "Cohere")?;
    let mut calls = crate::formats::translate::ToolCallIndex::default();
    let mut messages: Vec<Value> = Vec::new();
    let mut dropped = 0;

    for (index, message) in req.messages.iter().enumerate() {
        let (texts, parts_dropped) = message
            .content
            .as_ref()
            .map(|c| c.texts())
            .unwrap_or_default();
        dropped += parts_dropped;
        let text = texts.concat();
        match message.role {
            Role::System | Role::Developer => {
                if !text.is_empty() {
                    messages.push(json!({"role": "system", "content": text}));
                }
            }
            Role::User => {
                let content = match &message.content {
                    Some(openai::Content::Parts(_)) => {
                        let blocks: Vec<Value> = texts
                            .iter()
                            .filter(|t| !t.is_empty())
                            .map(|t| json!({"type": "text", "text": t}))
                            .collect();
                        (!blocks.is_empty()).then_some(Value::Array(blocks))
                    }
                    _ => (!text.is_empty()).then(|| json!(text)),
                };
                if let Some(content) = content {
                    messages.push(json!({"role": "user", "content": content}));
                }
            }
            Role::Assistant => {
                calls.record(message);
                let mut out = json!({"role": "assistant"});
                if !text.is_empty() {
                    out["content"] = json!(text);
                }
                let tool_calls = message.tool_calls.as_deref().unwrap_or_default();
                if !tool_calls.is_empty() {
                    let mut native = Vec::new();
                    for call in tool_calls {
                        // Validated, then sent as the client wrote it.
                        crate::formats::translate::parse_arguments(
                            index,
                            &call.id,
                            &call.function.arguments,
                        )?;
                        let arguments = match call.function.arguments.trim() {
                            "" => "{}",
                            _ => call.function.arguments.as_str(),
                        };
                        native.push(json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.function.name, "arguments": arguments},
                        }));
                    }
                    out["tool_calls"] = Value::Array(native);
                }
                if out.get("content").is_some() || out.get("tool_calls").is_some() {
                    messages.push(out);
                }
            }
            Role::Tool => {
                let (id, _) = calls.resolve(index, message)?;
                // Cohere wants a JSON object string, or a list of content
                // blocks for anything else.
                let content = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(_)) => json!(text),
                    _ => json!([{"type": "text", "text": text}]),
                };
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            Role::Function => return Err(crate::formats::translate::function_role_error(index)),
        }
    }

    if !messages.iter().any(|m| m["role"] != "system") {
        return Err(TranslateError::InvalidMessage {
            index: 0,
            reason: "no user or assistant message has text to send; Cohere needs at least one (non-text parts are not forwarded)".to_owned(),
        });
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert("messages".into(), Value::Array(messages));

    let tools = crate::formats::translate::function_tools(req)?;
    let choice = crate::formats::translate::tool_choice(req, &tools)?;
    if !tools.is_empty() {
        let only = match &choice {
            Some(Choice::Function(name)) => Some(name.as_str()),
            _ => None,
        };
        let defs: Vec<Value> = tools
            .iter()
            .filter(|f| only.is_none_or(|name| f.name == name))
            .map(|f| {
                let mut function = json!({
                    "name": f.name,
                    "parameters": f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = &f.description {
                    function["description"] = json!(d);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(defs));
        if tools.iter().any(|f| f.strict == Some(true)) {
            body.insert("strict_tools".into(), json!(true));
        }
        match choice {
            Some(Choice::Required | Choice::Function(_)) => {
                body.insert("tool_choice".into(), json!("REQUIRED"));
            }
            Some(Choice::None) => {
                body.insert("tool_choice".into(), json!("NONE"));
            }
            Some(Choice::Auto) | None => {}
        }
    }

    let names = crate::formats::translate::Sampling {
        max_tokens: "max_tokens",
        temperature: "temperature",
        top_p: "p",
        stop: "stop_sequences",
        seed: "seed",
        presence_penalty: "presence_penalty",
        frequency_penalty: "frequency_penalty",
    };
    crate::formats::translate::copy_sampling(req, &names, &mut body);
    match crate::formats::translate::output_format(req)? {
        Some(openai::OutputFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(openai::OutputFormat::JsonSchema(schema)) => {
            body.insert(
                "response_format".into(),
                json!({"type": "json_object", "json_schema": schema}),
            );
        }
        Some(openai::OutputFormat::Text) | None => {}
    }
    if req.is_stream() {
        body.insert("stream".into(), json!(true));
    }
    Ok(Translated {
        body: Value::Object(body),
        dropped_parts: dropped,
    })
}

// ---- responses ----

#[derive(Debug, Deserialize)]
struct ChatResponseV2 {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    message: Option<AssistantMessage>,
    #[serde(default)]
    usage: Option<NativeUsage>,
}

#[derive(Debug, Default, Deserialize)]
struct AssistantMessage {
    #[serde(default)]
    content: Vec<ContentBlock>,
    #[serde(default)]
    tool_calls: Vec<NativeToolCall>,
}

#[derive(Debug, Default, Deserialize)]
struct ContentBlock {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct NativeToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<NativeFunction>,
}

#[derive(Debug, Default, Deserialize)]
struct NativeFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct NativeUsage {
    #[serde(default)]
    billed_units: Option<TokenCounts>,
    #[serde(default)]
    tokens: Option<TokenCounts>,
    #[serde(default)]
    cached_tokens: Option<f64>,
}

/// Cohere documents these counts as numbers (they arrive as integers).
#[derive(Debug, Default, Clone, Deserialize)]
struct TokenCounts {
    #[serde(default)]
    input_tokens: Option<f64>,
    #[serde(default)]
    output_tokens: Option<f64>,
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn count(n: Option<f64>) -> u64 {
    n.map_or(0, |n| n.max(0.0).round() as u64)
}

impl NativeUsage {
    fn to_openai(&self) -> Usage {
        let counts = self
            .tokens
            .as_ref()
            .or(self.billed_units.as_ref())
            .cloned()
            .unwrap_or_default();
        openai::usage(
            count(counts.input_tokens),
            count(counts.output_tokens),
            Some(count(self.cached_tokens)),
        )
    }
}

fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "TOOL_CALL" => "tool_calls",
        // COMPLETE, STOP_SEQUENCE, ERROR, TIMEOUT and anything new
        _ => "stop",
    }
}

/// Translate a Cohere v2 Chat response into a `chat.completion`.
pub fn response(body: &[u8], client_model: &str) -> Result<ChatResponse, TranslateError> {
    let parsed: ChatResponseV2 = crate::formats::translate::upstream_parse(body)?;
    let message = parsed.message.unwrap_or_default();
    let text: String = message
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect();
    let calls: Vec<ToolCall> = message
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let function = c.function.unwrap_or_default();
            ToolCall {
                id: c.id.unwrap_or_else(|| format!("call_{i}")),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: function.name.unwrap_or_default(),
                    arguments: function.arguments.unwrap_or_else(|| "{}".to_owned()),
                },
                rest: Map::new(),
            }
        })
        .collect();
    let finish = match parsed.finish_reason.as_deref() {
        Some(r) => finish_reason(r),
        None if !calls.is_empty() => "tool_calls",
        None => "stop",
    };
    Ok(openai::completion(
        crate::formats::translate::chat_id(parsed.id.as_deref(), body),
        0,
        client_model,
        text,
        calls,
        finish,
        parsed.usage.map(|u| u.to_openai()),
    ))
}

// ---- streaming ----

#[derive(Debug, Deserialize)]
struct StreamEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    delta: Option<EventDelta>,
}

#[derive(Debug, Default, Deserialize)]
struct EventDelta {
    #[serde(default)]
    message: Option<DeltaMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    usage: Option<NativeUsage>,
}

#[derive(Debug, Default, Deserialize)]
struct DeltaMessage {
    #[serde(default)]
    content: Option<ContentBlock>,
    #[serde(default)]
    tool_calls: Option<NativeToolCall>,
}

/// Cohere v2 stream events (`message-start`, `content-delta`,
/// `tool-call-start`, `tool-call-delta`, `message-end`, …) →
/// `chat.completion.chunk`s, event by event.
#[derive(Debug)]
pub struct StreamTranslator {
    life: StreamLife,
    tool_index: HashMap<u64, u32>,
    next_tool: u32,
}

impl StreamTranslator {
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        StreamTranslator {
            life: StreamLife::new("chatcmpl-cohere", client_model, include_usage),
            tool_index: HashMap::new(),
            next_tool: 0,
        }
    }

    /// The `created` timestamp (Unix seconds) every chunk carries; Cohere
    /// sends none, so the caller passes its clock here.
    pub fn set_created(&mut self, created: u64) {
        self.life.chunks.created = created;
    }

    pub fn push(&mut self, event: &SseEvent) -> Vec<StreamOut> {
        let mut out = Vec::new();
        if self.life.ignores(&event.data) {
            return out;
        }
        let parsed: StreamEvent = match serde_json::from_str(&event.data) {
            Ok(e) => e,
            Err(e) => {
                self.life
                    .fail(&mut out, crate::formats::translate::bad_event(&e));
                return out;
            }
        };
        let delta = parsed.delta.unwrap_or_default();
        let message = delta.message.unwrap_or_default();
        match parsed.kind.as_str() {
            "message-start" => {
                if let Some(id) = parsed.id.filter(|id| !id.is_empty()) {
                    self.life.chunks.id = format!("chatcmpl-{id}");
                }
                self.life.start(&mut out);
            }
            "content-start" | "content-delta" => {
                self.life.start(&mut out);
                if let Some(text) = message
                    .content
                    .and_then(|c| c.text)
                    .filter(|t| !t.is_empty())
                {
                    out.push(StreamOut::Chunk(self.life.chunks.text_chunk(&text)));
                }
            }
            "tool-call-start" => {
                self.life.start(&mut out);
                let call = message.tool_calls.unwrap_or_default();
                let tool = self.next_tool;
                self.next_tool += 1;
                self.tool_index.insert(parsed.index.unwrap_or(0), tool);
                let function = call.function.unwrap_or_default();
                out.push(StreamOut::Chunk(self.life.chunks.tool_chunk(
                    ToolCallDelta {
                        index: tool,
                        id: Some(call.id.unwrap_or_else(|| format!("call_{tool}"))),
                        kind: Some("function".to_owned()),
                        function: Some(FunctionDelta {
                            name: function.name,
                            arguments: Some(function.arguments.unwrap_or_default()),
                        }),
                        rest: Map::new(),
                    },
                )));
            }
            "tool-call-delta" => {
                self.life.start(&mut out);
                let arguments = message
                    .tool_calls
                    .and_then(|c| c.function)
                    .and_then(|f| f.arguments)
                    .filter(|a| !a.is_empty());
                if let (Some(arguments), Some(tool)) =
                    (arguments, self.tool_index.get(&parsed.index.unwrap_or(0)))
                {
                    out.push(StreamOut::Chunk(self.life.chunks.tool_chunk(
                        ToolCallDelta {
                            index: *tool,
                            function: Some(FunctionDelta {
                                name: None,
                                arguments: Some(arguments),
                            }),
                            ..ToolCallDelta::default()
                        },
                    )));
                }
            }
            "message-end" => {
                self.life.start(&mut out);
                let reason = delta.finish_reason.unwrap_or_default();
                if reason == "ERROR" || reason == "TIMEOUT" || delta.error.is_some() {
                    let (status, code) = if reason == "TIMEOUT" {
                        (504, "upstream_timeout")
                    } else {
                        (500, "upstream_error")
                    };
                    let message = delta.error.map_or_else(
                        || format!("the Cohere API ended the stream with {reason}"),
                        |e| crate::formats::translate::redact(&e),
                    );
                    self.life.fail(
                        &mut out,
                        ErrorBody::new(
                            message,
                            crate::formats::translate::error_type(status),
                            Some(code.to_owned()),
                        ),
                    );
                    return out;
                }
                let finish = match reason.as_str() {
                    "" if self.next_tool > 0 => "tool_calls",
                    r => finish_reason(r),
                };
                self.life.finish_reason(&mut out, finish);
                self.life.end(&mut out, || {
                    delta.usage.map(|u| u.to_openai()).unwrap_or_default()
                });
            }
            // content-end, tool-plan-delta, tool-call-end, citation-*, debug
            _ => {}
        }
        out
    }

    /// End of the upstream stream: an error when it stopped before
    /// `message-end`.
    pub fn finish(&mut self) -> Vec<StreamOut> {
        // `message-end` is the finish reason and the end at once, so a
        // stream that is not over yet has always stopped short.
        self.life.close(Usage::default)
    }
}

// ---- errors ----

#[derive(Debug, Deserialize)]
struct NativeError {
    #[serde(default)]
    message: Option<String>,
}

/// Map a Cohere error response (`{"id", "message"}`) to the status and body
/// the Model Router answers with (498 invalid token → 401).
pub fn error(status: u16, body: &[u8]) -> (u16, ErrorBody) {
    let mapped = match status {
        498 => 401,
        s => crate::formats::translate::map_status(s),
    };
    let message = serde_json::from_slice::<NativeError>(body)
        .ok()
        .and_then(|e| e.message)
        .filter(|m| !m.is_empty())
        .map_or_else(
            || format!("the Cohere API answered with HTTP {status}"),
            |m| crate::formats::translate::redact(&m),
        );
    (
        mapped,
        ErrorBody::new(message, crate::formats::translate::error_type(mapped), None),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn named_tool_choice_narrows_tools() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "a"}},
                {"type": "function", "function": {"name": "b"}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "b"}}
        }))
        .unwrap();
        let t = request(&req, "command-a").unwrap();
        assert_eq!(t.body["tool_choice"], json!("REQUIRED"));
        assert_eq!(t.body["tools"].as_array().unwrap().len(), 1);
        assert_eq!(t.body["tools"][0]["function"]["name"], json!("b"));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut s = StreamTranslator::new("cohere:x", false);
        let out = s.push(&SseEvent {
            event: Some("message-start".into()),
            data: r#"{"id":"x","type":"message-start","delta":{"message":{"role":"assistant"}}}"#
                .into(),
        });
        assert_eq!(out.len(), 1);
        assert!(matches!(s.finish().as_slice(), [StreamOut::Error(_)]));
    }

    #[test]
    fn invalid_token_maps_to_401() {
        let (status, body) = error(498, br#"{"id":"e1","message":"invalid api token"}"#);
        assert_eq!(status, 401);
        assert_eq!(body.error.kind, "authentication_error");
    }
}
