//! What the tool-call guardrails need from a wire format, without the rules.
//!
//! Each format's `guard` module reads the tool calls of its answers (whole, or streamed
//! event by event) and the calls and results of its request conversations, and rewrites a
//! blocked call into text. The decision itself comes from outside through [`Decide`], which
//! `policy::guardrails` implements: `formats` never imports `policy`.
//!
//! ```text
//! request body ──▶ <format>::guard::read_conversation ──▶ Conversation ──▶ policy: Trust
//! answer JSON  ──▶ <format>::guard::guard_json ──(tool, arguments)──▶ Decide ──▶ rewrite
//! SSE event    ──▶ <format>::guard::StreamGuard::event (hold, decide, release/rewrite)
//! ```
//!
//! What a guard cannot read it refuses: a call whose kind it does not know, or whose ID
//! repeats an earlier call's in the same answer, is blocked ([`Decision::refused`]); a
//! stream event it cannot parse, or held-back arguments over [`MAX_HELD_BYTES`], end the
//! stream with an error event ([`Fault`]).

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

use super::Format;

/// Most bytes of tool-call arguments a stream guard holds back at once (over every held
/// call); beyond it the stream ends with an error.
pub const MAX_HELD_BYTES: usize = 4 << 20;
/// Largest SSE event (or unfinished line) a stream guard reads; beyond it the stream ends
/// with an error.
pub const MAX_EVENT_BYTES: usize = 8 << 20;
/// Tool-call IDs and names are clipped to this length in decisions and messages.
const MAX_SHOWN: usize = 128;

/// A tool call's arguments, as the format carries them.
#[derive(Clone, Copy, Debug)]
pub enum Arguments<'a> {
    /// JSON text (OpenAI, Cohere, streamed deltas).
    Text(&'a str),
    /// A JSON value (Anthropic `input`, Gemini `args`, Bedrock `input`).
    Value(&'a Value),
    /// Free-form text (OpenAI custom tools' `input`): only the whole-input pointer `""`
    /// reads it.
    Free(&'a str),
}

/// The verdict on one tool call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Tool name.
    pub tool: String,
    /// `allow` or `block`.
    pub action: &'static str,
    /// The rule that decided (`default` when none matched; `unreadable-call` or
    /// `duplicate-call-id` when the guard refused what it could not read).
    pub rule: String,
    /// Why a call was blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Decision {
    /// Whether the call is blocked.
    pub fn blocked(&self) -> bool {
        self.action == "block"
    }

    /// The text the client receives instead of a blocked call.
    pub fn refusal(&self) -> String {
        let reason = self.reason.as_deref().unwrap_or("blocked by policy");
        if self.tool.is_empty() {
            return format!("[portcullis] A tool call was blocked: {reason}.");
        }
        format!(
            "[portcullis] The call to tool `{}` was blocked: {reason}.",
            self.tool
        )
    }

    /// A call the guard blocks whatever the rules say, because it cannot read it safely.
    pub fn refused(tool: &str, rule: &'static str, reason: String) -> Self {
        Self {
            tool: clip(tool),
            action: "block",
            rule: rule.to_owned(),
            reason: Some(reason),
        }
    }

    /// A call whose ID repeats an earlier call's ID in the same answer: a client that
    /// matches calls (or merges streamed deltas) by ID could read it as another call.
    pub fn duplicate_id(tool: &str, id: &str) -> Self {
        Self::refused(
            tool,
            "duplicate-call-id",
            format!(
                "its call ID `{}` repeats the ID of an earlier call in the same answer",
                clip(id)
            ),
        )
    }

    /// A call of a kind the guard cannot read.
    pub fn unreadable(tool: &str, what: &str) -> Self {
        Self::refused(
            tool,
            "unreadable-call",
            format!("the gateway cannot inspect {what}"),
        )
    }
}

/// The rules, as the format guards see them.
pub trait Decide {
    /// Whether a call of `tool` may end up blocked (its arguments must be held back until
    /// complete); `false` means it is allowed whatever its arguments.
    fn may_block(&self, tool: &str) -> bool;
    /// Decide on one complete call.
    fn decide(&self, tool: &str, arguments: Arguments<'_>) -> Decision;
}

/// The decisions on one answer.
pub type Decisions = Vec<Decision>;

/// The tool calls and tool results of a request's conversation, as data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    /// (call ID, tool name) of every call, duplicates included.
    pub calls: Vec<(String, String)>,
    /// Results: (call ID, tool name when the format carries it).
    pub results: Vec<(Option<String>, Option<String>)>,
}

/// What a stream guard writes: the event as it came, or a (new or changed) JSON event.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    /// The incoming event, unchanged.
    Same,
    /// An event with this name (if any) and JSON data.
    Json(Option<String>, Value),
}

/// Why a guard refused an answer: a whole answer gets a 502, a stream ends with an error
/// event (`Format::stream_error_event`) saying this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault(pub String);

impl Fault {
    /// Held-back arguments over [`MAX_HELD_BYTES`].
    pub fn too_big() -> Self {
        Self(format!(
            "tool-call arguments in the answer exceed the guardrails' limit of {MAX_HELD_BYTES} bytes; the stream was ended"
        ))
    }
}

/// The guard of one format's event stream.
pub trait StreamGuard {
    /// One parsed event (`name` is its SSE `event:`); what the client may have now.
    fn event(
        &mut self,
        decide: &dyn Decide,
        name: Option<&str>,
        value: &mut Value,
        decisions: &mut Decisions,
    ) -> Result<Vec<Out>, Fault>;
    /// The answer ended (OpenAI `[DONE]`, or the end of the body): decide on what is held;
    /// the events that release or replace it.
    fn end(&mut self, decide: &dyn Decide, decisions: &mut Decisions) -> Vec<Out>;
    /// Whether a call is being held back.
    fn holding(&self) -> bool;
}

/// Call IDs seen in one answer.
#[derive(Debug, Default)]
pub struct CallIds(HashSet<String>);

impl CallIds {
    /// Record `id`; `false` when it was seen before.
    pub fn first(&mut self, id: &str) -> bool {
        self.0.insert(id.to_owned())
    }
}

/// Write one SSE event.
pub fn write_raw(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// `s`, clipped for messages.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_SHOWN {
        return s.to_owned();
    }
    let mut end = MAX_SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

pub(crate) fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Token usage seen in an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt / input tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Completion / output tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
}

impl Usage {
    /// Read usage from a whole answer (or a stream event) in `format`; fields it lacks stay.
    pub fn read(&mut self, format: Format, v: &Value) {
        let u = |p: &str| v.pointer(p).and_then(Value::as_u64);
        let (i, o) = match format {
            Format::OpenAi => (u("/usage/prompt_tokens"), u("/usage/completion_tokens")),
            Format::Anthropic => (
                u("/usage/input_tokens").or_else(|| u("/message/usage/input_tokens")),
                u("/usage/output_tokens"),
            ),
            Format::Gemini => (
                u("/usageMetadata/promptTokenCount"),
                u("/usageMetadata/candidatesTokenCount"),
            ),
            Format::Cohere => (
                u("/usage/tokens/input_tokens")
                    .or_else(|| u("/usage/billed_units/input_tokens"))
                    .or_else(|| u("/delta/usage/tokens/input_tokens")),
                u("/usage/tokens/output_tokens")
                    .or_else(|| u("/usage/billed_units/output_tokens"))
                    .or_else(|| u("/delta/usage/tokens/output_tokens")),
            ),
            Format::Bedrock => (u("/usage/inputTokens"), u("/usage/outputTokens")),
        };
        if i.is_some() {
            self.input_tokens = i;
        }
        if o.is_some() {
            self.output_tokens = o;
        }
    }
}
