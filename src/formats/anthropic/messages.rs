//! The Anthropic Messages API on the Model Router, in front of any provider, as a translation
//! to and from the router's Chat Completions: a Messages request becomes a Chat Completions
//! request ([`to_chat`]) that the chat path sends to any provider (and guards); the answer comes
//! back as a `message` ([`from_chat`]) or, streamed, as Anthropic's event sequence
//! (`message_start`, `content_block_*`, `message_delta`, `message_stop`) that the `anthropic`
//! SDK parses ([`StreamConverter`]). Errors are rendered in Anthropic's shape by the caller.
//!
//! What coding agents send and a target cannot honour is dropped: `thinking`,
//! `context_management`, `output_config`, `metadata`, `top_k`, cache-control marks; thinking
//! and document blocks are dropped and counted. Tools with a server-side `type`
//! (`web_search_20250305`, `bash_20250124`, …) are refused with a 400 naming the type.

use serde_json::{Map, Value, json};

use crate::formats::TranslateError;
use crate::formats::openai::ChatResponse;

/// A Messages request, as a Chat Completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The Chat Completions request body.
    pub chat: Map<String, Value>,
    /// How many content blocks were dropped.
    pub dropped: usize,
    /// Whether the client asked for a stream.
    pub stream: bool,
}

fn unsupported(param: &str, reason: impl Into<String>) -> TranslateError {
    TranslateError::Unsupported {
        param: param.to_owned(),
        reason: reason.into(),
    }
}

/// Convert a Messages request body into a Chat Completions request body.
pub fn to_chat(body: &Value) -> Result<Converted, TranslateError> {
    let Some(obj) = body.as_object() else {
        return Err(unsupported("messages", "the body must be a JSON object"));
    };
    let mut chat = Map::new();
    if let Some(model) = obj.get("model") {
        chat.insert("model".to_owned(), model.clone());
    }
    let mut messages = Vec::new();
    let mut dropped = 0;
    match obj.get("system") {
        Some(Value::String(s)) if !s.is_empty() => {
            messages.push(json!({"role": "system", "content": s}));
        }
        Some(Value::Array(blocks)) => {
            let (text, n) = block_texts(blocks);
            dropped += n;
            if !text.is_empty() {
                messages.push(json!({"role": "system", "content": text}));
            }
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(unsupported(
                "system",
                "must be a string or a list of text blocks",
            ));
        }
    }
    let Some(turns) = obj.get("messages").and_then(Value::as_array) else {
        return Err(unsupported("messages", "is required (a list of messages)"));
    };
    for (index, turn) in turns.iter().enumerate() {
        dropped += message(index, turn, &mut messages)?;
    }
    chat.insert("messages".to_owned(), Value::Array(messages));

    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            out.push(function_tool(i, tool)?);
        }
        if !out.is_empty() {
            chat.insert("tools".to_owned(), Value::Array(out));
        }
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        let (choice, parallel) = tool_choice(choice)?;
        if let Some(choice) = choice {
            chat.insert("tool_choice".to_owned(), choice);
        }
        if let Some(parallel) = parallel {
            chat.insert("parallel_tool_calls".to_owned(), Value::Bool(parallel));
        }
    }
    if let Some(max) = obj.get("max_tokens").filter(|v| !v.is_null()) {
        chat.insert("max_completion_tokens".to_owned(), max.clone());
    }
    if let Some(stop) = obj.get("stop_sequences").and_then(Value::as_array)
        && !stop.is_empty()
    {
        chat.insert("stop".to_owned(), Value::Array(stop.clone()));
    }
    for field in ["temperature", "top_p"] {
        if let Some(v) = obj.get(field).filter(|v| !v.is_null()) {
            chat.insert(field.to_owned(), v.clone());
        }
    }
    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        chat.insert("stream".to_owned(), Value::Bool(true));
        // `message_delta` carries usage: ask for it.
        chat.insert("stream_options".to_owned(), json!({"include_usage": true}));
    }
    Ok(Converted {
        chat,
        dropped,
        stream,
    })
}

/// The text of text blocks, and how many other blocks there were.
fn block_texts(blocks: &[Value]) -> (String, usize) {
    let mut text = String::new();
    let mut dropped = 0;
    for block in blocks {
        match (
            block.get("type").and_then(Value::as_str),
            block.get("text").and_then(Value::as_str),
        ) {
            (Some("text"), Some(t)) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
            }
            _ => dropped += 1,
        }
    }
    (text, dropped)
}

/// One Messages turn, appended as chat messages; returns how many blocks were dropped.
fn message(index: usize, turn: &Value, out: &mut Vec<Value>) -> Result<usize, TranslateError> {
    let param = format!("messages[{index}]");
    let role = turn.get("role").and_then(Value::as_str).unwrap_or("");
    let role = match role {
        // Claude Code sends `system`-role turns in the middle of a conversation.
        "user" | "assistant" | "system" => role,
        other => {
            return Err(unsupported(
                &format!("{param}.role"),
                format!("{other:?} is not a role; use user or assistant"),
            ));
        }
    };
    let blocks = match turn.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(0);
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(unsupported(
                &format!("{param}.content"),
                "must be a string or a list of content blocks",
            ));
        }
    };
    let mut dropped = 0;
    let mut parts: Vec<Value> = Vec::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut results: Vec<Value> = Vec::new();
    for (b, block) in blocks.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match (role, kind) {
            (_, "text") => {
                let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                parts.push(json!({"type": "text", "text": text}));
            }
            ("user", "image") => match image_url(block.get("source")) {
                Some(url) => parts.push(json!({"type": "image_url", "image_url": {"url": url}})),
                None => dropped += 1,
            },
            ("assistant", "tool_use") => {
                let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                if id.is_empty() || name.is_empty() {
                    return Err(unsupported(
                        &format!("{param}.content[{b}]"),
                        "a tool_use block needs `id` and `name`",
                    ));
                }
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": input.to_string()}}));
            }
            ("user", "tool_result") => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if id.is_empty() {
                    return Err(unsupported(
                        &format!("{param}.content[{b}].tool_use_id"),
                        "is required",
                    ));
                }
                let (mut text, n) = match block.get("content") {
                    Some(Value::String(s)) => (s.clone(), 0),
                    Some(Value::Array(inner)) => block_texts(inner),
                    _ => (String::new(), 0),
                };
                dropped += n;
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text = format!("Error: {text}");
                }
                results.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            // Thinking, documents, server-tool records: nothing another provider can take.
            _ => dropped += 1,
        }
    }
    // Tool results answer the previous assistant turn: they come first.
    out.extend(results);
    match role {
        "assistant" => {
            let text: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n");
            let mut message = json!({"role": "assistant", "content": text});
            if !calls.is_empty() {
                if text.is_empty() {
                    message["content"] = Value::Null;
                }
                message["tool_calls"] = Value::Array(calls);
            }
            if !text.is_empty() || message.get("tool_calls").is_some() {
                out.push(message);
            }
        }
        _ if !parts.is_empty() => {
            let all_text = parts
                .iter()
                .all(|p| p.get("type").and_then(Value::as_str) == Some("text"));
            let content = if all_text {
                Value::String(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            } else {
                Value::Array(parts)
            };
            out.push(json!({"role": role, "content": content}));
        }
        _ => {}
    }
    Ok(dropped)
}

/// An image source as a URL: base64 data as a `data:` URL.
fn image_url(source: Option<&Value>) -> Option<String> {
    let source = source?;
    match source.get("type").and_then(Value::as_str)? {
        "base64" => {
            let media = source.get("media_type").and_then(Value::as_str)?;
            let data = source.get("data").and_then(Value::as_str)?;
            Some(format!("data:{media};base64,{data}"))
        }
        "url" => source.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn function_tool(index: usize, tool: &Value) -> Result<Value, TranslateError> {
    match tool.get("type").and_then(Value::as_str) {
        None | Some("custom") => {}
        Some(other) => {
            return Err(unsupported(
                &format!("tools[{index}].type"),
                format!(
                    "tool type {other:?} is a server or client tool of Anthropic's own that the Model Router cannot run on any provider; define it as a custom tool (name, description, input_schema)"
                ),
            ));
        }
    }
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| unsupported(&format!("tools[{index}].name"), "is required"))?;
    let mut function = Map::new();
    function.insert("name".to_owned(), json!(name));
    if let Some(d) = tool.get("description").filter(|v| v.is_string()) {
        function.insert("description".to_owned(), d.clone());
    }
    function.insert(
        "parameters".to_owned(),
        tool.get("input_schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    );
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` as chat's, and `parallel_tool_calls` from `disable_parallel_tool_use`.
fn tool_choice(choice: &Value) -> Result<(Option<Value>, Option<bool>), TranslateError> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|d| !d);
    let chat = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(unsupported("tool_choice.name", "is required")),
        },
        _ => {
            return Err(unsupported(
                "tool_choice",
                "use {\"type\": \"auto\"}, {\"type\": \"any\"}, {\"type\": \"none\"} or {\"type\": \"tool\", \"name\": …}",
            ));
        }
    };
    Ok((Some(chat), parallel))
}

/// Anthropic's stop reason for a chat finish reason.
fn stop_reason(finish: Option<&str>) -> Value {
    match finish {
        Some("stop") => json!("end_turn"),
        Some("length") => json!("max_tokens"),
        Some("tool_calls" | "function_call") => json!("tool_use"),
        Some("content_filter") => json!("refusal"),
        Some(_) => json!("end_turn"),
        None => Value::Null,
    }
}

/// The `msg_` ID of the answer whose chat ID is `chat_id`.
fn message_id(chat_id: &str) -> String {
    let stem = chat_id.strip_prefix("chatcmpl-").unwrap_or(chat_id);
    let stem: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    format!("msg_{stem}")
}

fn usage(chat: Option<&Value>) -> Value {
    let n = |p: &str| chat.and_then(|c| c.pointer(p)).and_then(Value::as_u64);
    let cached = n("/prompt_tokens_details/cached_tokens").unwrap_or(0);
    let prompt = n("/prompt_tokens").unwrap_or(0);
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": n("/completion_tokens").unwrap_or(0),
    })
}

/// A tool call's arguments as an `input` object (what does not parse stays a string field).
fn input_of(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"arguments": arguments}),
    }
}

/// A whole chat answer as a Messages `message`.
pub fn from_chat(chat: &ChatResponse, model: &str) -> Value {
    let mut content = Vec::new();
    let choice = chat.choices.first();
    if let Some(choice) = choice {
        let m = &choice.message;
        let text = m
            .content
            .clone()
            .or_else(|| m.refusal.clone())
            .unwrap_or_default();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in m.tool_calls.iter().flatten() {
            content.push(
                json!({"type": "tool_use", "id": call.id, "name": call.function.name,
                                "input": input_of(&call.function.arguments)}),
            );
        }
    }
    let chat_usage = chat
        .usage
        .as_ref()
        .and_then(|u| serde_json::to_value(u).ok());
    json!({
        "id": message_id(&chat.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.finish_reason.as_deref())),
        "stop_sequence": null,
        "usage": usage(chat_usage.as_ref()),
    })
}

/// Chat Completions chunks in, Anthropic stream events out.
#[derive(Debug)]
pub struct StreamConverter {
    model: String,
    started: bool,
    /// Index of the open content block and whether it is text.
    open: Option<(usize, bool)>,
    blocks: usize,
    /// Chat tool-call index → content-block index.
    calls: Vec<(u64, usize)>,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
}

impl StreamConverter {
    /// A converter for one stream; `model` is what the client asked for.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            started: false,
            open: None,
            blocks: 0,
            calls: Vec::new(),
            finish: None,
            usage: None,
            done: false,
        }
    }

    fn start(&mut self, out: &mut Vec<(&'static str, Value)>, chat_id: &str) {
        if self.started {
            return;
        }
        self.started = true;
        out.push((
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(chat_id), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ));
    }

    fn close(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if let Some((index, _)) = self.open.take() {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn text(&mut self, out: &mut Vec<(&'static str, Value)>, text: &str) {
        let index = match self.open {
            Some((index, true)) => index,
            _ => {
                self.close(out);
                let index = self.blocks;
                self.blocks += 1;
                self.open = Some((index, true));
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index,
                           "content_block": {"type": "text", "text": ""}}),
                ));
                index
            }
        };
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": "text_delta", "text": text}}),
        ));
    }

    fn tool(&mut self, out: &mut Vec<(&'static str, Value)>, call: &Value) {
        let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let index = match self.calls.iter().find(|(i, _)| *i == chat_index) {
            Some((_, index)) => *index,
            None => {
                self.close(out);
                let index = self.blocks;
                self.blocks += 1;
                self.open = Some((index, false));
                self.calls.push((chat_index, index));
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("toolu_{index}"));
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index,
                           "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                ));
                index
            }
        };
        if let Some(args) = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            if self.open.map(|(i, _)| i) != Some(index) {
                // A late delta for a closed block cannot be expressed: the block is complete.
                return;
            }
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": args}}),
            ));
        }
    }

    /// One chat chunk (parsed JSON of a `data:` line); returns the events it completes.
    pub fn push(&mut self, chunk: &Value) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the upstream stream failed");
            out.push((
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            ));
            self.done = true;
            return out;
        }
        let chat_id = chunk.get("id").and_then(Value::as_str).unwrap_or("0");
        self.start(&mut out, chat_id);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        for choice in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for key in ["/delta/content", "/delta/refusal"] {
                if let Some(text) = choice
                    .pointer(key)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.text(&mut out, text);
                }
            }
            for call in choice
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool(&mut out, call);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(reason.to_owned());
            }
        }
        out
    }

    /// The chat stream ended: close the open block, then `message_delta` (stop reason and
    /// usage) and `message_stop`.
    pub fn finish(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        self.start(&mut out, "0");
        self.close(&mut out);
        let stop = stop_reason(Some(self.finish.as_deref().unwrap_or("stop")));
        out.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                   "usage": usage(self.usage.as_ref())}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        self.done = true;
        out
    }
}

/// One Anthropic event as SSE.
pub fn to_sse(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// A rough input-token count for `count_tokens`: about four characters a token over every
/// string of the request (system, messages, tools), at least one.
pub fn estimate_tokens(body: &Value) -> u64 {
    fn chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(chars).sum(),
            Value::Object(o) => o.iter().map(|(k, v)| k.len() + chars(v)).sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 1,
        }
    }
    let total: usize = ["system", "messages", "tools"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(chars)
        .sum();
    (total as u64).div_ceil(4).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn claude_code_request_converts() {
        let body = json!({
            "model": "openai:gpt", "max_tokens": 32000, "stream": true,
            "thinking": {"type": "adaptive"}, "context_management": {"edits": []},
            "output_config": {"effort": "high"}, "metadata": {"user_id": "u"},
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "list files"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Running ls."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a b"}]},
                    {"type": "text", "text": "thanks"}]},
                {"role": "system", "content": "reminder"}
            ],
            "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"]
        });
        let c = to_chat(&body).unwrap();
        assert_eq!(c.dropped, 1);
        let chat = Value::Object(c.chat);
        let roles: Vec<&str> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "tool", "user", "system"]
        );
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"command\":\"ls\"}"
        );
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["max_completion_tokens"], 32000);
        assert_eq!(chat["stop"], json!(["END"]));
        for dropped in [
            "thinking",
            "context_management",
            "output_config",
            "metadata",
        ] {
            assert!(chat.get(dropped).is_none());
        }
    }

    #[test]
    fn server_tools_are_refused_by_type() {
        let e = to_chat(&json!({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}))
            .unwrap_err();
        assert!(e.to_string().contains("web_search_20250305"), "{e}");
    }

    #[test]
    fn stream_events_in_order() {
        let mut s = StreamConverter::new("m");
        let mut names = Vec::new();
        let mut push = |s: &mut StreamConverter, v: Value| {
            names.extend(s.push(&v).into_iter().map(|(n, _)| n));
        };
        push(
            &mut s,
            json!({"id": "x", "choices": [{"delta": {"content": "Hi"}}]}),
        );
        push(
            &mut s,
            json!({"id": "x", "choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}}]}),
        );
        push(
            &mut s,
            json!({"id": "x", "choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
        );
        let end = s.finish();
        assert_eq!(end[1].1["delta"]["stop_reason"], "tool_use");
        names.extend(end.into_iter().map(|(n, _)| n));
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
    }
}
