//! OpenAI Chat Completions ⇄ Gemini `generateContent` /
//! `streamGenerateContent?alt=sse`, shared by AI Studio and Vertex AI (the
//! caller builds the URL, which carries the model).
//!
//! Request: system and developer messages become `systemInstruction`
//! (`name` has no equivalent and is not sent);
//! `assistant` becomes role `model`; tool calls become `functionCall` parts
//! and `tool` messages `functionResponse` parts in a `user` turn, named after
//! the call they answer (found through `tool_call_id`); consecutive turns of
//! the same role are merged, so the results of parallel calls share one turn
//! as Gemini requires. Function-call `id`s are not sent: Vertex AI rejects
//! them and Gemini pairs calls and responses by name and order.
//!
//! Thought signatures: Gemini 3 rejects a replayed `functionCall` without the
//! `thoughtSignature` it was issued with. Responses expose it the way
//! Google's own OpenAI-compatible endpoint does, as
//! `tool_calls[].extra_content.google.thought_signature`; requests send it
//! back from there, and fall back to Google's documented
//! `skip_thought_signature_validator` for calls that have none (history from
//! another model, or a client that dropped the field).
//!
//! Schemas: `parameters` and `responseSchema` take Gemini's OpenAPI-subset
//! `Schema`, which rejects unknown keywords; [`clean_schema`] inlines local
//! `$ref`s, turns `["T", "null"]` into `nullable`, and keeps only the
//! keywords that `Schema` has.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::formats::openai::{
    self, ChatRequest, ChatResponse, ErrorBody, FunctionCall, FunctionDelta, Role, ToolCall,
    ToolCallDelta, Usage,
};
use crate::formats::sse::SseEvent;
use crate::formats::translate::{Choice, StreamLife, StreamOut, TranslateError, Translated};

/// The thought signature Google documents for function calls that did not
/// come from Gemini (or lost theirs).
pub const SKIP_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// Keywords Gemini's `Schema` object has; every other one is removed.
const SCHEMA_KEYWORDS: [&str; 22] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// How deep `$ref`s are inlined before a (recursive) reference is cut off.
const MAX_REF_DEPTH: usize = 8;

/// Translate an OpenAI request into a Gemini `generateContent` body. The
/// model is not part of the body; `_upstream_model` goes into the URL.
pub fn request(req: &ChatRequest, _upstream_model: &str) -> Result<Translated, TranslateError> {
    crate::formats::translate::check_single_choice(req)?;
    crate::formats::translate::check_last_user_turn(req, "Gemini")?;
    let mut calls = crate::formats::translate::ToolCallIndex::default();
    let mut system: Vec<String> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut dropped = 0;

    for (index, message) in req.messages.iter().enumerate() {
        let (texts, parts_dropped) = message
            .content
            .as_ref()
            .map(|c| c.texts())
            .unwrap_or_default();
        dropped += parts_dropped;
        let text_parts: Vec<Value> = texts
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| json!({"text": t}))
            .collect();
        match message.role {
            Role::System | Role::Developer => {
                let text = texts.concat();
                if !text.is_empty() {
                    system.push(text);
                }
            }
            Role::User => push_content(&mut contents, "user", text_parts),
            Role::Assistant => {
                calls.record(message);
                let mut parts = text_parts;
                let tool_calls = message.tool_calls.as_deref().unwrap_or_default();
                let has_signature = tool_calls.iter().any(|c| thought_signature(c).is_some());
                for (i, call) in tool_calls.iter().enumerate() {
                    let args = crate::formats::translate::parse_arguments(
                        index,
                        &call.id,
                        &call.function.arguments,
                    )?;
                    let mut part =
                        json!({"functionCall": {"name": call.function.name, "args": args}});
                    match thought_signature(call) {
                        Some(sig) => part["thoughtSignature"] = json!(sig),
                        None if i == 0 && !has_signature => {
                            part["thoughtSignature"] = json!(SKIP_THOUGHT_SIGNATURE);
                        }
                        None => {}
                    }
                    parts.push(part);
                }
                push_content(&mut contents, "model", parts);
            }
            Role::Tool => {
                let (_, name) = calls.resolve(index, message)?;
                let text = texts.concat();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(map)) => Value::Object(map),
                    Ok(other) => json!({"output": other}),
                    Err(_) => json!({"output": text}),
                };
                push_content(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            Role::Function => return Err(crate::formats::translate::function_role_error(index)),
        }
    }

    if contents.is_empty() {
        return Err(TranslateError::InvalidMessage {
            index: 0,
            reason: "no user or assistant message has text to send; Gemini needs at least one (non-text parts are not forwarded)".to_owned(),
        });
    }

    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }

    let tools = crate::formats::translate::function_tools(req)?;
    let choice = crate::formats::translate::tool_choice(req, &tools)?;
    if !tools.is_empty() {
        let declarations: Vec<Value> = tools
            .iter()
            .map(|f| {
                let mut decl = json!({"name": f.name});
                if let Some(d) = &f.description {
                    decl["description"] = json!(d);
                }
                if let Some(params) = f.parameters.as_ref().map(clean_schema)
                    && has_properties(&params)
                {
                    decl["parameters"] = params;
                }
                decl
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        let config = match choice {
            Some(Choice::Auto) => Some(json!({"mode": "AUTO"})),
            Some(Choice::None) => Some(json!({"mode": "NONE"})),
            Some(Choice::Required) => Some(json!({"mode": "ANY"})),
            Some(Choice::Function(name)) => {
                Some(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
            }
            None => None,
        };
        if let Some(config) = config {
            body.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
    }

    let mut generation = Map::new();
    let names = crate::formats::translate::Sampling {
        max_tokens: "maxOutputTokens",
        temperature: "temperature",
        top_p: "topP",
        stop: "stopSequences",
        seed: "seed",
        presence_penalty: "presencePenalty",
        frequency_penalty: "frequencyPenalty",
    };
    crate::formats::translate::copy_sampling(req, &names, &mut generation);
    match crate::formats::translate::output_format(req)? {
        Some(openai::OutputFormat::JsonObject) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(openai::OutputFormat::JsonSchema(schema)) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            generation.insert("responseSchema".into(), clean_schema(schema));
        }
        Some(openai::OutputFormat::Text) | None => {}
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Translated {
        body: Value::Object(body),
        dropped_parts: dropped,
    })
}

fn thought_signature(call: &ToolCall) -> Option<&str> {
    call.rest
        .get("extra_content")?
        .get("google")?
        .get("thought_signature")?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Append parts, merging into the last content when it has the same role and
/// the same kind: function responses share one content (Gemini wants the
/// results of one model turn together), but are not mixed with text.
fn push_content(
    contents: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    parts: Vec<Value>,
) {
    let Some(first) = parts.first() else {
        return;
    };
    let is_response = |p: &Value| p.get("functionResponse").is_some();
    let responses = is_response(first);
    match contents.last_mut() {
        Some((last_role, last))
            if *last_role == role && last.first().is_some_and(|p| is_response(p) == responses) =>
        {
            last.extend(parts);
        }
        _ => contents.push((role, parts)),
    }
}

/// An object schema with at least one property (Gemini rejects an `OBJECT`
/// `parameters` whose `properties` is empty; such a function simply takes
/// no parameters).
fn has_properties(schema: &Value) -> bool {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty())
}

/// Turn a JSON Schema into Gemini's OpenAPI-subset `Schema`.
pub fn clean_schema(schema: &Value) -> Value {
    let root = schema.clone();
    let mut out = inline_refs(schema, &root, 0);
    crate::formats::translate::walk_schema(&mut out, &mut clean_node);
    out
}

fn inline_refs(node: &Value, root: &Value, depth: usize) -> Value {
    match node {
        Value::Object(map) => {
            if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                let target = reference
                    .strip_prefix("#/")
                    .and_then(|path| root.pointer(&format!("/{path}")));
                let mut resolved = match target {
                    Some(t) if depth < MAX_REF_DEPTH => inline_refs(t, root, depth + 1),
                    // Unresolvable or too deep (recursive): any object.
                    _ => json!({"type": "object"}),
                };
                // Siblings of $ref (e.g. description) win over the target's.
                if let Value::Object(resolved_map) = &mut resolved {
                    for (k, v) in map {
                        if k != "$ref" {
                            resolved_map.insert(k.clone(), inline_refs(v, root, depth));
                        }
                    }
                }
                resolved
            } else {
                Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), inline_refs(v, root, depth)))
                        .collect(),
                )
            }
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| inline_refs(v, root, depth)).collect())
        }
        other => other.clone(),
    }
}

fn clean_node(map: &mut Map<String, Value>) {
    // oneOf means anyOf here; a single allOf member is merged in.
    if let Some(one_of) = map.remove("oneOf") {
        map.entry("anyOf").or_insert(one_of);
    }
    if let Some(Value::Array(mut all_of)) = map.remove("allOf")
        && all_of.len() == 1
        && let Value::Object(member) = all_of.swap_remove(0)
    {
        for (k, v) in member {
            map.entry(k).or_insert(v);
        }
    }
    if let Some(c) = map.remove("const") {
        map.insert("enum".into(), json!([c]));
    }
    // ["string", "null"] → "string" + nullable.
    if let Some(Value::Array(types)) = map.get("type").cloned() {
        let non_null: Vec<Value> = types.into_iter().filter(|t| t != "null").collect();
        let nullable = non_null.len()
            < map
                .get("type")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
        match non_null.len() {
            0 => {
                map.remove("type");
            }
            1 => {
                map.insert("type".into(), non_null[0].clone());
            }
            _ => {
                map.remove("type");
                map.insert(
                    "anyOf".into(),
                    Value::Array(non_null.into_iter().map(|t| json!({"type": t})).collect()),
                );
            }
        }
        if nullable {
            map.insert("nullable".into(), json!(true));
        }
    }
    // enum: strings only; a null member means nullable.
    if let Some(Value::Array(values)) = map.remove("enum") {
        if values.iter().any(Value::is_null) {
            map.insert("nullable".into(), json!(true));
        }
        let is_string = map.get("type").is_none_or(|t| t == "string");
        let strings: Vec<Value> = values.into_iter().filter(Value::is_string).collect();
        if is_string && !strings.is_empty() {
            map.insert("enum".into(), Value::Array(strings));
        }
    }
    // format: only the ones Schema documents for each type.
    if let Some(format) = map.get("format").and_then(Value::as_str) {
        let allowed = match map.get("type").and_then(Value::as_str) {
            Some("string") => matches!(format, "enum" | "date-time"),
            Some("number") => matches!(format, "float" | "double"),
            Some("integer") => matches!(format, "int32" | "int64"),
            _ => false,
        };
        if !allowed {
            map.remove("format");
        }
    }
    map.retain(|k, _| SCHEMA_KEYWORDS.contains(&k.as_str()));
    // `required` may only name declared properties.
    let declared: Option<Vec<String>> = map
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect());
    if let Some(Value::Array(required)) = map.get_mut("required") {
        required.retain(|r| {
            r.as_str()
                .is_some_and(|r| declared.as_ref().is_some_and(|d| d.iter().any(|k| k == r)))
        });
        if required.is_empty() {
            map.remove("required");
        }
    }
}

// ---- responses ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    error: Option<NativeError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<NativeFunctionCall>,
    #[serde(default)]
    thought_signature: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct NativeFunctionCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    total_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    fn to_openai(&self) -> Usage {
        let prompt = self.prompt_token_count + self.tool_use_prompt_token_count;
        let completion = self.candidates_token_count + self.thoughts_token_count;
        let mut usage = openai::usage(prompt, completion, Some(self.cached_content_token_count));
        usage.total_tokens = self.total_token_count.unwrap_or(prompt + completion);
        if self.thoughts_token_count > 0 {
            usage.completion_tokens_details = Some(openai::CompletionTokensDetails {
                reasoning_tokens: self.thoughts_token_count,
            });
        }
        usage
    }
}

fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "LANGUAGE"
        | "MODEL_ARMOR" => "content_filter",
        _ if has_calls => "tool_calls",
        // STOP, OTHER, MALFORMED_FUNCTION_CALL and anything new
        _ => "stop",
    }
}

/// The OpenAI tool call for a `functionCall` part: Gemini's id when it sent
/// one, else `call_{response id}_{n}` (stable, and unique per response).
fn tool_call(
    part_call: NativeFunctionCall,
    signature: Option<String>,
    response_id: &str,
    n: usize,
) -> ToolCall {
    let mut rest = Map::new();
    if let Some(sig) = signature {
        rest.insert(
            "extra_content".into(),
            json!({"google": {"thought_signature": sig}}),
        );
    }
    ToolCall {
        id: part_call
            .id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("call_{response_id}_{n}")),
        kind: "function".to_owned(),
        function: FunctionCall {
            name: part_call.name,
            arguments: crate::formats::translate::arguments_string(
                &part_call.args.unwrap_or(Value::Null),
            ),
        },
        rest,
    }
}

/// Translate a Gemini `generateContent` response into a `chat.completion`.
pub fn response(body: &[u8], client_model: &str) -> Result<ChatResponse, TranslateError> {
    let parsed: GenerateContentResponse = crate::formats::translate::upstream_parse(body)?;
    let response_id = parsed
        .response_id
        .clone()
        .unwrap_or_else(|| format!("{:016x}", crate::formats::translate::fnv1a(body)));
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut finish = "stop";
    if let Some(candidate) = parsed.candidates.into_iter().next() {
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(call) = part.function_call {
                calls.push(tool_call(
                    call,
                    part.thought_signature,
                    &response_id,
                    calls.len(),
                ));
            } else if let Some(t) = part.text.filter(|_| part.thought != Some(true)) {
                text.push_str(&t);
            }
        }
        finish = finish_reason(
            candidate.finish_reason.as_deref().unwrap_or("STOP"),
            !calls.is_empty(),
        );
    } else if parsed
        .prompt_feedback
        .as_ref()
        .is_some_and(|f| f.block_reason.is_some())
    {
        finish = "content_filter";
    }
    Ok(openai::completion(
        format!("chatcmpl-{response_id}"),
        0,
        client_model,
        text,
        calls,
        finish,
        parsed.usage_metadata.map(|u| u.to_openai()),
    ))
}

// ---- streaming ----

/// Gemini `streamGenerateContent?alt=sse` events → `chat.completion.chunk`s.
/// Each event is a partial `GenerateContentResponse`; function calls arrive
/// whole, so each becomes one tool-call delta with its full arguments.
#[derive(Debug)]
pub struct StreamTranslator {
    life: StreamLife,
    response_id: Option<String>,
    next_tool: usize,
    usage: Option<UsageMetadata>,
}

impl StreamTranslator {
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        StreamTranslator {
            life: StreamLife::new("chatcmpl-gemini", client_model, include_usage),
            response_id: None,
            next_tool: 0,
            usage: None,
        }
    }

    /// The `created` timestamp (Unix seconds) every chunk carries.
    pub fn set_created(&mut self, created: u64) {
        self.life.chunks.created = created;
    }

    pub fn push(&mut self, event: &SseEvent) -> Vec<StreamOut> {
        let mut out = Vec::new();
        if self.life.ignores(&event.data) {
            return out;
        }
        let parsed = match parse_event(&event.data) {
            Ok(p) => p,
            Err(e) => {
                let error = ErrorBody::new(
                    e.to_string(),
                    "server_error",
                    Some("bad_upstream_response".to_owned()),
                );
                self.life.fail(&mut out, error);
                return out;
            }
        };
        if let Some(error) = parsed.error {
            self.life.fail(&mut out, native_error(None, error));
            return out;
        }
        if self.response_id.is_none() {
            let id = parsed.response_id.clone().unwrap_or_else(|| {
                format!(
                    "{:016x}",
                    crate::formats::translate::fnv1a(event.data.as_bytes())
                )
            });
            self.life.chunks.id = format!("chatcmpl-{id}");
            self.response_id = Some(id);
        }
        self.life.start(&mut out);
        if let Some(usage) = parsed.usage_metadata {
            self.usage = Some(usage);
        }
        let response_id = self.response_id.clone().unwrap_or_default();
        if let Some(candidate) = parsed.candidates.into_iter().next() {
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(call) = part.function_call {
                    let n = self.next_tool;
                    self.next_tool += 1;
                    let call = tool_call(call, part.thought_signature, &response_id, n);
                    out.push(StreamOut::Chunk(self.life.chunks.tool_chunk(
                        ToolCallDelta {
                            index: u32::try_from(n).unwrap_or(u32::MAX),
                            id: Some(call.id),
                            kind: Some("function".to_owned()),
                            function: Some(FunctionDelta {
                                name: Some(call.function.name),
                                arguments: Some(call.function.arguments),
                            }),
                            rest: call.rest,
                        },
                    )));
                } else if let Some(t) = part
                    .text
                    .filter(|t| !t.is_empty() && part.thought != Some(true))
                {
                    out.push(StreamOut::Chunk(self.life.chunks.text_chunk(&t)));
                }
            }
            if let Some(reason) = candidate.finish_reason {
                let reason = finish_reason(&reason, self.next_tool > 0);
                self.life.finish_reason(&mut out, reason);
            }
        } else if parsed
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some())
        {
            self.life.finish_reason(&mut out, "content_filter");
        }
        out
    }

    /// End of the upstream stream: the usage chunk, or an error when the
    /// stream stopped before a finish reason.
    pub fn finish(&mut self) -> Vec<StreamOut> {
        self.life.close(|| {
            self.usage
                .as_ref()
                .map(UsageMetadata::to_openai)
                .unwrap_or_default()
        })
    }
}

/// A stream event: a response chunk, or `{"error": …}` (some frontends wrap
/// it in an array).
fn parse_event(data: &str) -> Result<GenerateContentResponse, TranslateError> {
    let value: Value =
        serde_json::from_str(data).map_err(|e| TranslateError::InvalidUpstream(e.to_string()))?;
    let value = match value {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        v => v,
    };
    serde_json::from_value(value).map_err(|e| TranslateError::InvalidUpstream(e.to_string()))
}

// ---- errors ----

#[derive(Debug, Default, Deserialize)]
struct NativeError {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: NativeError,
}

fn native_error(status: Option<u16>, error: NativeError) -> ErrorBody {
    let status = crate::formats::translate::map_status(status.or(error.code).unwrap_or(500));
    let message = if error.message.is_empty() {
        "the Gemini API answered with an error".to_owned()
    } else {
        crate::formats::translate::redact(&error.message)
    };
    ErrorBody::new(
        message,
        crate::formats::translate::error_type(status),
        error.status,
    )
}

/// Map a Gemini error response (`{"error": {"code", "message", "status"}}`)
/// to the status and body the Model Router answers with.
pub fn error(status: u16, body: &[u8]) -> (u16, ErrorBody) {
    let mapped = crate::formats::translate::map_status(status);
    let envelope = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(mut items)) if !items.is_empty() => {
            serde_json::from_value::<ErrorEnvelope>(items.swap_remove(0)).ok()
        }
        Ok(v) => serde_json::from_value::<ErrorEnvelope>(v).ok(),
        Err(_) => None,
    };
    match envelope {
        Some(e) => (mapped, native_error(Some(status), e.error)),
        None => (
            mapped,
            ErrorBody::new(
                format!("the Gemini API answered with HTTP {status}"),
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

    #[test]
    fn schema_cleaning() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "a": {"type": ["string", "null"], "format": "email"},
                "b": {"$ref": "#/$defs/B", "description": "the b"},
                "c": {"const": "x"},
                "d": {"type": "integer", "enum": [1, 2], "format": "int64"},
                "e": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                "r": {"$ref": "#/$defs/R"}
            },
            "required": ["a", "b", "ghost"],
            "$defs": {
                "B": {"type": "string", "enum": ["u", "v", null]},
                "R": {"type": "object", "properties": {"next": {"$ref": "#/$defs/R"}}}
            }
        });
        let cleaned = clean_schema(&schema);
        assert_eq!(
            cleaned["properties"]["a"],
            json!({"type": "string", "nullable": true})
        );
        assert_eq!(
            cleaned["properties"]["b"],
            json!({"type": "string", "enum": ["u", "v"], "nullable": true, "description": "the b"})
        );
        assert_eq!(cleaned["properties"]["c"], json!({"enum": ["x"]}));
        assert_eq!(
            cleaned["properties"]["d"],
            json!({"type": "integer", "format": "int64"})
        );
        assert_eq!(
            cleaned["properties"]["e"],
            json!({"anyOf": [{"type": "string"}, {"type": "number"}]})
        );
        assert_eq!(cleaned["required"], json!(["a", "b"]));
        assert!(cleaned.get("$defs").is_none());
        assert!(cleaned.get("additionalProperties").is_none());
        // Recursion is cut off, not followed forever.
        assert!(cleaned["properties"]["r"].to_string().len() < 2000);
    }

    #[test]
    fn stream_without_finish_reason_is_an_error() {
        let mut s = StreamTranslator::new("gemini:x", true);
        let out = s.push(&SseEvent {
            event: None,
            data: r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"}}],"responseId":"r1"}"#.into(),
        });
        assert_eq!(out.len(), 2);
        assert!(matches!(s.finish().as_slice(), [StreamOut::Error(_)]));
    }
}
