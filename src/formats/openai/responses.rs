//! The OpenAI Responses API on the Model Router, as a translation to and from the router's
//! Chat Completions: a Responses request becomes a Chat Completions request ([`to_chat`]),
//! which the chat path sends to any provider (translating it where the provider speaks another
//! format and guarding its answer); the Chat Completions answer comes back as a `response`
//! object ([`from_chat`]) or, streamed, as the Responses event sequence the `openai` SDK parses
//! ([`StreamConverter`]).
//!
//! ```text
//! Responses request ──to_chat──▶ chat request ──(chat path)──▶ chat answer ──from_chat──▶ response
//!                                                         chat chunks ──StreamConverter──▶ response.* events
//! ```
//!
//! The router is stateless (`store: false` semantics): `previous_response_id` and
//! `conversation` are refused with a 400 that says so. Fields a target cannot honour
//! (`include`, `prompt_cache_key`, `client_metadata`, `metadata`, `store`, …) are dropped;
//! content that is dropped (reasoning items, files, audio) is counted. A tool type other than
//! `function` is refused with a 400 naming it.

use serde_json::{Map, Value, json};

use crate::formats::TranslateError;
use crate::formats::openai::ChatResponse;

/// A Responses request, as a Chat Completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The Chat Completions request body.
    pub chat: Map<String, Value>,
    /// How many content parts or items were dropped (reported in `x-portcullis-dropped-parts`).
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

/// Fields a Responses request may carry that the router reads or knowingly drops. Anything
/// else is dropped too (never forwarded into the chat request, where a provider could choke).
const STATELESS: &str = "the Model Router is stateless (store: false semantics): it keeps no responses or conversations, so it cannot continue one; send the whole conversation in `input`, including the earlier output items";

/// Refuse what needs state the router does not keep (`previous_response_id`, `conversation`,
/// `background`), whatever the target.
pub fn check_stateless(body: &Value) -> Result<(), TranslateError> {
    for field in ["previous_response_id", "conversation"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(unsupported(field, STATELESS));
        }
    }
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("background", STATELESS));
    }
    Ok(())
}

/// Convert a Responses request body into a Chat Completions request body.
pub fn to_chat(body: &Value) -> Result<Converted, TranslateError> {
    let Some(obj) = body.as_object() else {
        return Err(unsupported("input", "the body must be a JSON object"));
    };
    check_stateless(body)?;
    let mut chat = Map::new();
    if let Some(model) = obj.get("model") {
        chat.insert("model".to_owned(), model.clone());
    }
    let mut messages: Vec<Value> = Vec::new();
    let mut dropped = 0;
    match obj.get("instructions") {
        Some(Value::String(s)) if !s.is_empty() => {
            messages.push(json!({"role": "system", "content": s}));
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(unsupported("instructions", "must be a string")),
    }
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                dropped += input_item(index, item, &mut messages)?;
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(unsupported(
                "input",
                "must be a string or a list of input items",
            ));
        }
    }
    if messages.is_empty() {
        return Err(unsupported(
            "input",
            "is empty: send a string or a list of messages",
        ));
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
        chat.insert("tool_choice".to_owned(), tool_choice(choice)?);
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("max_output_tokens", "max_completion_tokens"),
        ("user", "user"),
        ("seed", "seed"),
    ] {
        if let Some(v) = obj.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.to_owned(), v.clone());
        }
    }
    if let Some(effort) = body.pointer("/reasoning/effort").filter(|v| v.is_string()) {
        chat.insert("reasoning_effort".to_owned(), effort.clone());
    }
    if let Some(format) = body.pointer("/text/format").filter(|v| !v.is_null()) {
        chat.insert("response_format".to_owned(), response_format(format)?);
    }
    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        chat.insert("stream".to_owned(), Value::Bool(true));
        // `response.completed` carries usage: ask for it.
        chat.insert("stream_options".to_owned(), json!({"include_usage": true}));
    }
    Ok(Converted {
        chat,
        dropped,
        stream,
    })
}

/// One `input` item, appended to the chat messages; returns how many parts were dropped.
fn input_item(
    index: usize,
    item: &Value,
    messages: &mut Vec<Value>,
) -> Result<usize, TranslateError> {
    let param = format!("input[{index}]");
    let kind = item.get("type").and_then(Value::as_str);
    let role = item.get("role").and_then(Value::as_str);
    match (kind, role) {
        (Some("message") | None, Some(role)) => {
            let role = match role {
                "user" | "assistant" | "system" | "developer" => role,
                other => {
                    return Err(unsupported(
                        &format!("{param}.role"),
                        format!(
                            "{other:?} is not a role; use user, assistant, system or developer"
                        ),
                    ));
                }
            };
            let (content, dropped) = message_content(&param, role, item.get("content"))?;
            messages.push(json!({"role": role, "content": content}));
            Ok(dropped)
        }
        (Some("function_call"), _) => {
            let call_id = str_field(item, "call_id", &param)?;
            let name = str_field(item, "name", &param)?;
            let arguments = item
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            let call = json!({"id": call_id, "type": "function",
                              "function": {"name": name, "arguments": arguments}});
            // Consecutive calls (and a call right after the assistant's text) are one turn.
            if let Some(last) = messages.last_mut()
                && last.get("role").and_then(Value::as_str) == Some("assistant")
            {
                match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => {
                        last["tool_calls"] = json!([call]);
                    }
                }
                return Ok(0);
            }
            messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            Ok(0)
        }
        (Some("function_call_output"), _) => {
            let call_id = str_field(item, "call_id", &param)?;
            let (output, dropped) = match item.get("output") {
                Some(Value::String(s)) => (s.clone(), 0),
                Some(Value::Array(parts)) => texts_of(parts),
                _ => {
                    return Err(unsupported(
                        &format!("{param}.output"),
                        "must be a string or a list of content parts",
                    ));
                }
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            Ok(dropped)
        }
        (Some("item_reference"), _) => Err(unsupported(&param, STATELESS)),
        // Reasoning items (encrypted or summarised) and the records of hosted tools cannot be
        // replayed to another provider: dropped, and counted.
        (Some(_), _) => Ok(1),
        (None, None) => Err(unsupported(
            &param,
            "an input item needs a `type` (message, function_call, function_call_output) or a `role`",
        )),
    }
}

fn str_field<'a>(item: &'a Value, field: &str, param: &str) -> Result<&'a str, TranslateError> {
    item.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unsupported(&format!("{param}.{field}"), "is required (a string)"))
}

/// The text of a list of content parts, and how many non-text parts were dropped.
fn texts_of(parts: &[Value]) -> (String, usize) {
    let mut text = String::new();
    let mut dropped = 0;
    for part in parts {
        match (
            part.get("type").and_then(Value::as_str),
            part.get("text").and_then(Value::as_str),
        ) {
            (Some("input_text" | "output_text" | "text"), Some(t)) => text.push_str(t),
            _ => dropped += 1,
        }
    }
    (text, dropped)
}

/// A message's content in chat form: a string, or parts (text and images) for user turns.
fn message_content(
    param: &str,
    role: &str,
    content: Option<&Value>,
) -> Result<(Value, usize), TranslateError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok((Value::String(s.clone()), 0)),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Ok((Value::String(String::new()), 0)),
        Some(_) => {
            return Err(unsupported(
                &format!("{param}.content"),
                "must be a string or a list of content parts",
            ));
        }
    };
    if role != "user" {
        let (text, dropped) = texts_of(parts);
        let refusals: String = parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("refusal"))
            .filter_map(|p| p.get("refusal").and_then(Value::as_str))
            .collect();
        let refusal_count = parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("refusal"))
            .count();
        return Ok((Value::String(text + &refusals), dropped - refusal_count));
    }
    let mut out = Vec::new();
    let mut dropped = 0;
    for part in parts {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "input_text" | "output_text" | "text" => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                out.push(json!({"type": "text", "text": text}));
            }
            "input_image" => match part.get("image_url").and_then(Value::as_str) {
                Some(url) => {
                    let mut image = json!({"url": url});
                    if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                        image["detail"] = detail.clone();
                    }
                    out.push(json!({"type": "image_url", "image_url": image}));
                }
                // A `file_id` names a stored file: nothing the router can send on.
                None => dropped += 1,
            },
            _ => dropped += 1,
        }
    }
    Ok((Value::Array(out), dropped))
}

/// A Responses tool, as a chat tool. Only function tools can run on every target.
fn function_tool(index: usize, tool: &Value) -> Result<Value, TranslateError> {
    let param = format!("tools[{index}].type");
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| unsupported(&format!("tools[{index}].name"), "is required"))?;
            let mut function = Map::new();
            function.insert("name".to_owned(), Value::String(name.to_owned()));
            for field in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(field).filter(|v| !v.is_null()) {
                    function.insert(field.to_owned(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": function}))
        }
        Some(other) => Err(unsupported(
            &param,
            format!(
                "tool type {other:?} cannot run through the Model Router (it would need the provider's hosted tool); only `function` tools are supported"
            ),
        )),
        None => Err(unsupported(&param, "is required")),
    }
}

fn tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(unsupported("tool_choice.name", "is required")),
            }
        }
        other => Err(unsupported(
            "tool_choice",
            format!(
                "{other} is not supported; use \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"name\": …}}"
            ),
        )),
    }
}

fn response_format(format: &Value) -> Result<Value, TranslateError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text"})),
        Some("json_object") => Ok(json!({"type": "json_object"})),
        Some("json_schema") => {
            let mut schema = Map::new();
            schema.insert(
                "name".to_owned(),
                format.get("name").cloned().unwrap_or(json!("response")),
            );
            for field in ["description", "schema", "strict"] {
                if let Some(v) = format.get(field).filter(|v| !v.is_null()) {
                    schema.insert(field.to_owned(), v.clone());
                }
            }
            Ok(json!({"type": "json_schema", "json_schema": schema}))
        }
        _ => Err(unsupported(
            "text.format",
            "use {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", …}",
        )),
    }
}

/// The parts of the request a `response` object echoes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Echo {
    /// The model as the client named it.
    pub model: String,
    /// Request fields echoed as they were sent (`instructions`, `tools`, …).
    pub fields: Map<String, Value>,
}

impl Echo {
    /// What a `response` object echoes of `request`.
    pub fn of(request: &Value, model: &str) -> Self {
        let mut fields = Map::new();
        for (field, default) in [
            ("instructions", Value::Null),
            ("max_output_tokens", Value::Null),
            ("parallel_tool_calls", Value::Bool(true)),
            ("temperature", Value::Null),
            ("top_p", Value::Null),
            ("tool_choice", json!("auto")),
            ("tools", json!([])),
            ("text", json!({"format": {"type": "text"}})),
            ("metadata", json!({})),
            ("reasoning", json!({"effort": null, "summary": null})),
        ] {
            let value = request
                .get(field)
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or(default);
            fields.insert(field.to_owned(), value);
        }
        Echo {
            model: model.to_owned(),
            fields,
        }
    }
}

/// The `resp_` ID of the answer whose chat ID is `chat_id`.
fn response_id(chat_id: &str) -> String {
    let stem = chat_id.strip_prefix("chatcmpl-").unwrap_or(chat_id);
    let stem: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    format!("resp_{stem}")
}

/// Responses usage from chat usage.
fn usage(chat: &Value) -> Value {
    let n = |p: &str| chat.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = (n("/prompt_tokens"), n("/completion_tokens"));
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": n("/prompt_tokens_details/cached_tokens")},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n("/completion_tokens_details/reasoning_tokens")},
        "total_tokens": input + output,
    })
}

/// A `response` object.
fn response_object(
    id: &str,
    created: u64,
    echo: &Echo,
    status: &str,
    output: Vec<Value>,
    usage: Option<Value>,
    finish_reason: Option<&str>,
) -> Value {
    let mut out = Map::new();
    out.insert("id".to_owned(), json!(id));
    out.insert("object".to_owned(), json!("response"));
    out.insert("created_at".to_owned(), json!(created));
    out.insert("status".to_owned(), json!(status));
    out.insert("error".to_owned(), Value::Null);
    let incomplete = match finish_reason {
        Some("length") => json!({"reason": "max_output_tokens"}),
        Some("content_filter") => json!({"reason": "content_filter"}),
        _ => Value::Null,
    };
    out.insert("incomplete_details".to_owned(), incomplete);
    out.insert("model".to_owned(), json!(echo.model));
    out.insert("output".to_owned(), Value::Array(output));
    out.insert("store".to_owned(), Value::Bool(false));
    out.insert("previous_response_id".to_owned(), Value::Null);
    for (k, v) in &echo.fields {
        out.insert(k.clone(), v.clone());
    }
    out.insert("usage".to_owned(), usage.unwrap_or(Value::Null));
    Value::Object(out)
}

/// The status a finished answer has.
fn final_status(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length" | "content_filter") => "incomplete",
        _ => "completed",
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status,
    })
}

/// A whole chat answer as a `response` object.
pub fn from_chat(chat: &ChatResponse, echo: &Echo, created: u64) -> Value {
    let id = response_id(&chat.id);
    let mut output = Vec::new();
    let choice = chat.choices.first();
    let finish = choice.and_then(|c| c.finish_reason.as_deref());
    if let Some(choice) = choice {
        let message = &choice.message;
        let text = message
            .content
            .clone()
            .or_else(|| message.refusal.clone())
            .unwrap_or_default();
        if !text.is_empty() {
            output.push(message_item(
                &format!("msg_{}", &id[5..]),
                &text,
                "completed",
            ));
        }
        for (i, call) in message.tool_calls.iter().flatten().enumerate() {
            output.push(call_item(
                &format!("fc_{}_{i}", &id[5..]),
                &call.id,
                &call.function.name,
                &call.function.arguments,
                "completed",
            ));
        }
    }
    let usage = chat
        .usage
        .as_ref()
        .and_then(|u| serde_json::to_value(u).ok());
    response_object(
        &id,
        created,
        echo,
        final_status(finish),
        output,
        Some(usage.as_ref().map(self::usage).unwrap_or_else(usage_zero)),
        finish,
    )
}

fn usage_zero() -> Value {
    self::usage(&json!({}))
}

/// One open output item of a stream.
#[derive(Debug, Clone)]
enum Item {
    Message {
        id: String,
        text: String,
        open: bool,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        open: bool,
    },
}

impl Item {
    fn value(&self, status: &str) -> Value {
        match self {
            Item::Message { id, text, .. } => message_item(id, text, status),
            Item::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => call_item(id, call_id, name, arguments, status),
        }
    }
}

/// Chat Completions chunks in, Responses events out: `response.created`,
/// `response.in_progress`, per item `response.output_item.added` → deltas →
/// `response.output_item.done`, and `response.completed` (or `response.incomplete`) with usage.
/// An error chunk becomes an `error` event followed by `response.failed`.
#[derive(Debug)]
pub struct StreamConverter {
    echo: Echo,
    created: u64,
    id: Option<String>,
    sequence: u64,
    items: Vec<Item>,
    /// Chat tool-call index → item position.
    calls: Vec<(u64, usize)>,
    /// The open message item, if any.
    message: Option<usize>,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
}

impl StreamConverter {
    /// A converter for one stream.
    pub fn new(echo: Echo, created: u64) -> Self {
        Self {
            echo,
            created,
            id: None,
            sequence: 0,
            items: Vec::new(),
            calls: Vec::new(),
            message: None,
            finish: None,
            usage: None,
            done: false,
        }
    }

    fn event(&mut self, out: &mut Vec<Value>, kind: &str, mut body: Value) {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push(body);
    }

    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or("resp_0")
    }

    fn snapshot(&self, status: &str, with_output: bool) -> Value {
        let output = if with_output {
            self.items.iter().map(|i| i.value("completed")).collect()
        } else {
            Vec::new()
        };
        let usage = with_output.then(|| self.usage.clone().unwrap_or_else(usage_zero));
        response_object(
            self.id(),
            self.created,
            &self.echo,
            status,
            output,
            usage,
            self.finish.as_deref(),
        )
    }

    fn start(&mut self, out: &mut Vec<Value>, chat_id: &str) {
        if self.id.is_some() {
            return;
        }
        self.id = Some(response_id(chat_id));
        let response = self.snapshot("in_progress", false);
        self.event(out, "response.created", json!({"response": response}));
        let response = self.snapshot("in_progress", false);
        self.event(out, "response.in_progress", json!({"response": response}));
    }

    fn close_item(&mut self, out: &mut Vec<Value>, position: usize) {
        let Some(item) = self.items.get_mut(position) else {
            return;
        };
        let events = match item {
            Item::Message { id, text, open } if *open => {
                *open = false;
                let (id, text) = (id.clone(), text.clone());
                vec![
                    (
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": position, "content_index": 0,
                               "text": text, "logprobs": []}),
                    ),
                    (
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": position, "content_index": 0,
                               "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
                    ),
                ]
            }
            Item::Call {
                id,
                name,
                arguments,
                open,
                ..
            } if *open => {
                *open = false;
                vec![(
                    "response.function_call_arguments.done",
                    json!({"item_id": id.clone(), "output_index": position,
                           "name": name.clone(), "arguments": arguments.clone()}),
                )]
            }
            Item::Message { .. } | Item::Call { .. } => return,
        };
        let done = item.value("completed");
        for (kind, body) in events {
            self.event(out, kind, body);
        }
        self.event(
            out,
            "response.output_item.done",
            json!({"output_index": position, "item": done}),
        );
        if self.message == Some(position) {
            self.message = None;
        }
    }

    fn text(&mut self, out: &mut Vec<Value>, delta: &str) {
        let position = match self.message {
            Some(p) => p,
            None => {
                let position = self.items.len();
                let id = format!("msg_{}_{position}", &self.id()[5..]);
                self.items.push(Item::Message {
                    id: id.clone(),
                    text: String::new(),
                    open: true,
                });
                self.message = Some(position);
                self.event(
                    out,
                    "response.output_item.added",
                    json!({"output_index": position, "item": {
                        "type": "message", "id": id, "status": "in_progress",
                        "role": "assistant", "content": []}}),
                );
                self.event(
                    out,
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": position, "content_index": 0,
                           "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                );
                position
            }
        };
        if let Some(Item::Message { id, text, .. }) = self.items.get_mut(position) {
            text.push_str(delta);
            let id = id.clone();
            self.event(
                out,
                "response.output_text.delta",
                json!({"item_id": id, "output_index": position, "content_index": 0,
                       "delta": delta, "logprobs": []}),
            );
        }
    }

    fn tool_delta(&mut self, out: &mut Vec<Value>, call: &Value) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let name = call.pointer("/function/name").and_then(Value::as_str);
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        let position = match self.calls.iter().find(|(i, _)| *i == index) {
            Some((_, p)) => *p,
            None => {
                if let Some(open) = self.message {
                    self.close_item(out, open);
                }
                let position = self.items.len();
                let id = format!("fc_{}_{position}", &self.id()[5..]);
                let call_id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("call_{}_{position}", &self.id()[5..]));
                let name = name.unwrap_or("").to_owned();
                self.items.push(Item::Call {
                    id: id.clone(),
                    call_id: call_id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                    open: true,
                });
                self.calls.push((index, position));
                self.event(
                    out,
                    "response.output_item.added",
                    json!({"output_index": position, "item": call_item(&id, &call_id, &name, "", "in_progress")}),
                );
                position
            }
        };
        if arguments.is_empty() {
            return;
        }
        if let Some(Item::Call {
            id,
            arguments: args,
            open: true,
            ..
        }) = self.items.get_mut(position)
        {
            args.push_str(arguments);
            let id = id.clone();
            self.event(
                out,
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": position, "delta": arguments}),
            );
        }
    }

    /// One chat chunk (parsed JSON of a `data:` line); returns the events it completes.
    pub fn push(&mut self, chunk: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if let Some(error) = chunk.get("error") {
            self.fail(&mut out, error);
            return out;
        }
        let chat_id = chunk.get("id").and_then(Value::as_str).unwrap_or("0");
        self.start(&mut out, chat_id);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage(u));
        }
        for choice in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(text) = choice
                .pointer("/delta/content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                self.text(&mut out, text);
            }
            if let Some(text) = choice
                .pointer("/delta/refusal")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                self.text(&mut out, text);
            }
            for call in choice
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool_delta(&mut out, call);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(reason.to_owned());
            }
        }
        out
    }

    fn fail(&mut self, out: &mut Vec<Value>, error: &Value) {
        self.start(out, "0");
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the upstream stream failed")
            .to_owned();
        let code = error.get("code").cloned().unwrap_or(Value::Null);
        self.event(
            out,
            "error",
            json!({"code": code, "message": message, "param": null}),
        );
        let mut response = self.snapshot("failed", true);
        response["error"] = json!({"code": "server_error", "message": message});
        self.event(out, "response.failed", json!({"response": response}));
        self.done = true;
    }

    /// The chat stream ended (`[DONE]` or end of body): close every item and complete.
    pub fn finish(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        self.start(&mut out, "0");
        for position in 0..self.items.len() {
            self.close_item(&mut out, position);
        }
        let status = final_status(self.finish.as_deref());
        let response = self.snapshot(status, true);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(&mut out, kind, json!({"response": response}));
        self.done = true;
        out
    }

    /// Whether the stream has ended (completed or failed).
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// One Responses event as SSE: `event: {type}` and `data: {json}`.
pub fn to_sse(event: &Value) -> Vec<u8> {
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    format!("event: {kind}\ndata: {event}\n\n").into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn previous_response_id_is_refused_as_stateless() {
        let e = to_chat(&json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}))
            .unwrap_err();
        assert!(e.to_string().contains("stateless"), "{e}");
        assert_eq!(e.param(), Some("previous_response_id"));
    }

    #[test]
    fn codex_style_request_converts() {
        let body = json!({
            "model": "openai:gpt", "instructions": "be terse", "store": false,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k",
            "client_metadata": {"a": 1},
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
                {"role": "user", "content": "hello"},
                {"type": "reasoning", "id": "rs_1", "encrypted_content": "xx", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": false}],
            "tool_choice": {"type": "function", "name": "f"},
            "reasoning": {"effort": "low"}, "max_output_tokens": 99, "stream": true
        });
        let c = to_chat(&body).unwrap();
        assert_eq!(c.dropped, 1);
        assert!(c.stream);
        let chat = Value::Object(c.chat);
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "be terse"})
        );
        assert_eq!(chat["messages"][1]["role"], "developer");
        assert_eq!(
            chat["messages"][3]["tool_calls"].as_array().unwrap().len(),
            2
        );
        assert_eq!(
            chat["messages"][5],
            json!({"role": "tool", "tool_call_id": "c2", "content": "two"})
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(chat["reasoning_effort"], "low");
        assert_eq!(chat["max_completion_tokens"], 99);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        for dropped in ["include", "prompt_cache_key", "client_metadata", "store"] {
            assert!(chat.get(dropped).is_none(), "{dropped}");
        }
    }

    #[test]
    fn hosted_tool_types_are_refused_by_name() {
        for kind in ["web_search", "namespace", "file_search"] {
            let e = to_chat(&json!({"input": "x", "tools": [{"type": kind}]})).unwrap_err();
            assert!(e.to_string().contains(kind), "{e}");
        }
    }

    #[test]
    fn stream_sequence_is_well_formed() {
        let mut s = StreamConverter::new(Echo::of(&json!({}), "m"), 1);
        let mut events = Vec::new();
        events.extend(s.push(&json!({"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})));
        events.extend(s.push(
            &json!({"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
        ));
        events.extend(s.push(&json!({"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]})));
        events.extend(s.push(&json!({"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]})));
        events.extend(s.push(&json!({"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})));
        events.extend(s.push(&json!({"id": "chatcmpl-x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})));
        events.extend(s.finish());
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let last = events.last().unwrap();
        assert_eq!(last["response"]["usage"]["total_tokens"], 5);
        assert_eq!(last["response"]["output"][1]["arguments"], "{}");
        let seq: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>());
    }
}
