//! OpenAI Chat Completions wire types: the request clients send to the Model
//! Router, and the response, chunk, usage and error shapes it answers with.
//!
//! Only the fields translation touches are declared; everything else lands
//! in a flattened `rest` map, so unknown fields survive a round trip.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /chat/completions` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl ChatRequest {
    /// `max_completion_tokens`, else the deprecated `max_tokens`.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client asked for a usage chunk at the end of the stream.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    /// Deprecated `function` role (results of legacy `function_call`).
    Function,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Message content: a plain string or an array of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One content part (`text`, `image_url`, `input_audio`, `file`, `refusal`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Content {
    /// The text parts, in order, and how many non-text parts there were.
    pub fn texts(&self) -> (Vec<&str>, usize) {
        match self {
            Content::Text(s) => (vec![s.as_str()], 0),
            Content::Parts(parts) => {
                let mut texts = Vec::new();
                let mut dropped = 0;
                for part in parts {
                    match (part.kind.as_str(), &part.text, &part.refusal) {
                        ("text", Some(t), _) => texts.push(t.as_str()),
                        ("refusal", _, Some(r)) => texts.push(r.as_str()),
                        _ => dropped += 1,
                    }
                }
                (texts, dropped)
            }
        }
    }

    /// All text joined (parts with no separator, as OpenAI concatenates
    /// them) and the number of non-text parts dropped.
    pub fn joined_text(&self) -> (String, usize) {
        let (texts, dropped) = self.texts();
        (texts.concat(), dropped)
    }
}

/// A tool call made by the assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn function_type() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"auto" | "none" | "required"` or a named function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<NamedFunction>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

/// What the client asked for, in a provider-neutral form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoiceKind<'a> {
    Auto,
    None,
    Required,
    Function(&'a str),
}

impl ToolChoice {
    /// Resolve to a [`ToolChoiceKind`], or a user-facing reason why not.
    pub fn kind(&self) -> Result<ToolChoiceKind<'_>, String> {
        match self {
            ToolChoice::Mode(m) => match m.as_str() {
                "auto" => Ok(ToolChoiceKind::Auto),
                "none" => Ok(ToolChoiceKind::None),
                "required" => Ok(ToolChoiceKind::Required),
                other => Err(format!(
                    "{other:?} is not a tool_choice; use \"auto\", \"none\", \"required\" or {{\"type\":\"function\",\"function\":{{\"name\":…}}}}"
                )),
            },
            ToolChoice::Named(named) => match (named.kind.as_str(), &named.function) {
                ("function", Some(f)) => Ok(ToolChoiceKind::Function(f.name.as_str())),
                (kind, _) => Err(format!(
                    "tool_choice of type {kind:?} is not supported for this provider; use \"auto\", \"none\", \"required\" or a named function"
                )),
            },
        }
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// `response_format`: `text`, `json_object` or `json_schema`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// The provider-neutral reading of `response_format`.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat<'a> {
    Text,
    JsonObject,
    JsonSchema(&'a Value),
}

impl ResponseFormat {
    pub fn output_format(&self) -> Result<OutputFormat<'_>, String> {
        match self.kind.as_str() {
            "text" => Ok(OutputFormat::Text),
            "json_object" => Ok(OutputFormat::JsonObject),
            "json_schema" => match self.json_schema.as_ref().and_then(|j| j.schema.as_ref()) {
                Some(schema) => Ok(OutputFormat::JsonSchema(schema)),
                None => Err("json_schema needs `json_schema.schema`".to_owned()),
            },
            other => Err(format!(
                "{other:?} is not supported; use \"text\", \"json_object\" or \"json_schema\""
            )),
        }
    }
}

/// A non-streaming `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    pub role: String,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    pub refusal: Option<String>,
}

/// Token usage, as OpenAI reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u64,
}

/// A streamed `chat.completion.chunk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[serde(default)]
    pub logprobs: Option<Value>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(message: String, kind: &str, code: Option<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message,
                kind: kind.to_owned(),
                param: None,
                code,
            },
        }
    }
}

/// Builds the chunks of one stream: they all share id, created and model.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkBuilder {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ChunkBuilder {
    pub fn chunk(&self, delta: Delta, finish_reason: Option<String>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        }
    }

    pub fn usage_chunk(&self, usage: Usage) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: Some(usage),
        }
    }

    pub fn role_chunk(&self) -> ChatChunk {
        self.chunk(
            Delta {
                role: Some("assistant".to_owned()),
                content: Some(String::new()),
                tool_calls: None,
            },
            None,
        )
    }

    pub fn text_chunk(&self, text: &str) -> ChatChunk {
        self.chunk(
            Delta {
                content: Some(text.to_owned()),
                ..Delta::default()
            },
            None,
        )
    }

    pub fn tool_chunk(&self, call: ToolCallDelta) -> ChatChunk {
        self.chunk(
            Delta {
                tool_calls: Some(vec![call]),
                ..Delta::default()
            },
            None,
        )
    }

    pub fn finish_chunk(&self, finish_reason: &str) -> ChatChunk {
        self.chunk(Delta::default(), Some(finish_reason.to_owned()))
    }
}

/// Assemble a single-choice `chat.completion`.
pub(crate) fn completion(
    id: String,
    created: u64,
    model: &str,
    text: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: &str,
    usage: Option<Usage>,
) -> ChatResponse {
    let content = if text.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(text)
    };
    ChatResponse {
        id,
        object: "chat.completion".to_owned(),
        created,
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
            },
            finish_reason: Some(finish_reason.to_owned()),
            logprobs: None,
        }],
        usage,
    }
}

/// A usage record from prompt / completion counts.
pub(crate) fn usage(prompt: u64, completion: u64, cached: Option<u64>) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: cached.map(|cached_tokens| PromptTokensDetails { cached_tokens }),
        completion_tokens_details: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_round_trip() {
        let input = json!({
            "model": "anthropic:claude",
            "messages": [
                {"role": "developer", "content": "be brief", "x_custom": 1},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:"}}]},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}, "extra_content": {"google": {"thought_signature": "s"}}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}
            ],
            "stop": "END",
            "logit_bias": {"1": 2},
            "stream_options": {"include_usage": true}
        });
        let req: ChatRequest = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(req.rest.get("logit_bias"), Some(&json!({"1": 2})));
        assert!(req.include_usage());
        assert_eq!(req.stop.as_ref().unwrap().to_vec(), vec!["END"]);
        let (text, dropped) = req.messages[1].content.as_ref().unwrap().joined_text();
        assert_eq!((text.as_str(), dropped), ("hi", 1));
        assert_eq!(serde_json::to_value(&req).unwrap(), input);
    }

    #[test]
    fn tool_choice_kinds() {
        let named: ToolChoice =
            serde_json::from_value(json!({"type": "function", "function": {"name": "f"}})).unwrap();
        assert_eq!(named.kind().unwrap(), ToolChoiceKind::Function("f"));
        let mode: ToolChoice = serde_json::from_value(json!("required")).unwrap();
        assert_eq!(mode.kind().unwrap(), ToolChoiceKind::Required);
        assert!(ToolChoice::Mode("sometimes".into()).kind().is_err());
    }
}
