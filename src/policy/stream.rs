//! Guardrails on streamed answers, one small state machine per format, over parsed SSE
//! events. Pure and synchronous: bytes in, bytes out.
//!
//! Content and the calls of tools that cannot be blocked in this context pass at once. The
//! events of a call that may be blocked are held back until the call is complete (its
//! arguments are whole), then released as they were, or replaced by text that says which
//! tool was refused and why; the stop reason is adjusted when no call is left.
//! [`SseGuard::holding`] tells the caller when to send keep-alive comments.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::guardrails::{Arguments, Decision, Format, ToolPolicy, Trust, guard_gemini_json};
use crate::formats::sse::{SseEvent, SseParser};

/// Token usage seen in an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
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

/// A guard over one streamed answer.
pub struct SseGuard {
    parser: SseParser,
    policy: Arc<ToolPolicy>,
    trust: Trust,
    kind: Kind,
    decisions: Vec<Decision>,
    /// Usage seen so far.
    pub usage: Usage,
}

enum Kind {
    OpenAi(OpenAiState),
    Anthropic(AnthropicState),
    Gemini,
    Cohere(CohereState),
}

impl SseGuard {
    /// A guard for `format`, or `None` when this build cannot guard that format's streams
    /// (Bedrock's binary event streams).
    pub fn new(format: Format, policy: Arc<ToolPolicy>, trust: Trust) -> Option<Self> {
        let kind = match format {
            Format::OpenAi => Kind::OpenAi(OpenAiState::default()),
            Format::Anthropic => Kind::Anthropic(AnthropicState::default()),
            Format::Gemini => Kind::Gemini,
            Format::Cohere => Kind::Cohere(CohereState::default()),
            Format::Bedrock => return None,
        };
        Some(Self {
            parser: SseParser::default(),
            policy,
            trust,
            kind,
            decisions: Vec::new(),
            usage: Usage::default(),
        })
    }

    /// Whether a call is being held back (the caller sends keep-alive comments meanwhile).
    pub fn holding(&self) -> bool {
        match &self.kind {
            Kind::OpenAi(s) => !s.held.is_empty(),
            Kind::Anthropic(s) => s.held.is_some(),
            Kind::Cohere(s) => !s.held.is_empty(),
            Kind::Gemini => false,
        }
    }

    /// Decisions made since the last call.
    pub fn take_decisions(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.decisions)
    }

    /// Feed upstream bytes; returns what the client may have now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let events = self.parser.push(bytes);
        self.events(events, false)
    }

    /// The upstream ended: flush.
    pub fn finish(&mut self) -> Vec<u8> {
        let events = self.parser.finish();
        self.events(events, true)
    }

    fn events(&mut self, events: Vec<SseEvent>, last: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for event in events {
            self.event(event, &mut out);
        }
        if last && let Kind::OpenAi(state) = &mut self.kind {
            // A stream that ended without a finish_reason: decide on what was held.
            let held = std::mem::take(&mut state.held);
            let template = state.template.clone();
            for chunk in finalize_openai(
                &self.policy,
                &self.trust,
                held,
                &template,
                &mut self.decisions,
            ) {
                write_data(&mut out, None, &chunk);
            }
        }
        out
    }

    fn event(&mut self, event: SseEvent, out: &mut Vec<u8>) {
        let parsed = if event.data.starts_with('{') {
            serde_json::from_str::<Value>(&event.data).ok()
        } else {
            None
        };
        let Some(mut value) = parsed else {
            if let Kind::OpenAi(state) = &mut self.kind
                && event.data.trim() == "[DONE]"
            {
                let held = std::mem::take(&mut state.held);
                let template = state.template.clone();
                for chunk in finalize_openai(
                    &self.policy,
                    &self.trust,
                    held,
                    &template,
                    &mut self.decisions,
                ) {
                    write_data(out, None, &chunk);
                }
            }
            write_raw(out, event.event.as_deref(), &event.data);
            return;
        };
        let format = match &self.kind {
            Kind::OpenAi(_) => Format::OpenAi,
            Kind::Anthropic(_) => Format::Anthropic,
            Kind::Gemini => Format::Gemini,
            Kind::Cohere(_) => Format::Cohere,
        };
        self.usage.read(format, &value);
        match &mut self.kind {
            Kind::OpenAi(state) => {
                let before =
                    state.chunk(&self.policy, &self.trust, &mut value, &mut self.decisions);
                for chunk in before {
                    write_data(out, event.event.as_deref(), &chunk);
                }
                write_data(out, event.event.as_deref(), &value);
            }
            Kind::Anthropic(state) => {
                for (name, data) in state.event(
                    &self.policy,
                    &self.trust,
                    event.event,
                    value,
                    &mut self.decisions,
                ) {
                    write_data(out, name.as_deref(), &data);
                }
            }
            Kind::Cohere(state) => {
                for (name, data) in state.event(
                    &self.policy,
                    &self.trust,
                    event.event,
                    value,
                    &mut self.decisions,
                ) {
                    write_data(out, name.as_deref(), &data);
                }
            }
            Kind::Gemini => {
                let decisions = guard_gemini_json(&self.policy, &self.trust, &mut value);
                if decisions.iter().any(Decision::blocked) {
                    write_data(out, event.event.as_deref(), &value);
                } else {
                    write_raw(out, event.event.as_deref(), &event.data);
                }
                self.decisions.extend(decisions);
            }
        }
    }
}

fn write_raw(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
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

fn write_data(out: &mut Vec<u8>, event: Option<&str>, value: &Value) {
    write_raw(out, event, &value.to_string());
}

// ---------------------------------------------------------------- OpenAI chat.completion.chunk

struct HeldCall {
    choice: u64,
    index: u64,
    id: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Default)]
struct OpenAiState {
    /// (choice, tool index) → held?
    seen: HashMap<(u64, u64), bool>,
    held: Vec<HeldCall>,
    /// Choices where at least one call reached the client.
    passed: HashSet<u64>,
    /// `id`, `object`, `created`, `model`, `system_fingerprint` of the stream, for chunks the
    /// guard writes itself.
    template: Map<String, Value>,
}

fn chunk_with(template: &Map<String, Value>, choice: Value) -> Value {
    let mut chunk = template.clone();
    chunk.insert("choices".to_owned(), json!([choice]));
    Value::Object(chunk)
}

/// Decide on held calls; the chunks that release or replace them.
fn finalize_openai(
    policy: &ToolPolicy,
    trust: &Trust,
    held: Vec<HeldCall>,
    template: &Map<String, Value>,
    decisions: &mut Vec<Decision>,
) -> Vec<Value> {
    let mut chunks = Vec::new();
    for call in held {
        let d = policy.decide(&call.name, Arguments::Text(&call.arguments), trust);
        if d.blocked() {
            chunks.push(chunk_with(
                template,
                json!({"index": call.choice, "delta": {"content": format!("{}\n", d.refusal())}, "finish_reason": null}),
            ));
        } else {
            let mut tc = json!({"index": call.index, "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}});
            if let Some(id) = call.id {
                tc["id"] = json!(id);
            }
            chunks.push(chunk_with(
                template,
                json!({"index": call.choice, "delta": {"tool_calls": [tc]}, "finish_reason": null}),
            ));
        }
        decisions.push(d);
    }
    chunks
}

impl OpenAiState {
    /// Process one chunk in place; returns chunks to send before it.
    fn chunk(
        &mut self,
        policy: &ToolPolicy,
        trust: &Trust,
        value: &mut Value,
        decisions: &mut Vec<Decision>,
    ) -> Vec<Value> {
        for key in ["id", "object", "created", "model", "system_fingerprint"] {
            if let Some(v) = value.get(key) {
                self.template.insert(key.to_owned(), v.clone());
            }
        }
        let mut before = Vec::new();
        let Some(choices) = value.get_mut("choices").and_then(Value::as_array_mut) else {
            return before;
        };
        for choice in choices.iter_mut() {
            let c = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            if let Some(calls) = choice
                .get_mut("delta")
                .and_then(|d| d.get_mut("tool_calls"))
                .and_then(Value::as_array_mut)
            {
                let mut position = 0u64;
                calls.retain(|tc| {
                    let i = tc.get("index").and_then(Value::as_u64).unwrap_or(position);
                    position += 1;
                    let function = tc.get("function");
                    let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
                    let args = function
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let held = match self.seen.get(&(c, i)) {
                        Some(held) => *held,
                        None => {
                            // A call whose first delta names no tool is held: its name may
                            // come later, and only a known name can be let through.
                            let hold = name
                                .filter(|n| !n.is_empty())
                                .is_none_or(|n| policy.may_block(n, trust));
                            let name = name.unwrap_or("");
                            self.seen.insert((c, i), hold);
                            if hold {
                                self.held.push(HeldCall {
                                    choice: c,
                                    index: i,
                                    id: None,
                                    name: String::new(),
                                    arguments: String::new(),
                                });
                            } else {
                                decisions.push(policy.decide(name, Arguments::Text("{}"), trust));
                                self.passed.insert(c);
                            }
                            hold
                        }
                    };
                    if held
                        && let Some(call) =
                            self.held.iter_mut().find(|h| h.choice == c && h.index == i)
                    {
                        if let Some(id) = tc.get("id").and_then(Value::as_str) {
                            call.id = Some(id.to_owned());
                        }
                        if let Some(name) = name {
                            call.name.push_str(name);
                        }
                        call.arguments.push_str(args);
                    }
                    !held
                });
                if calls.is_empty()
                    && let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut)
                {
                    delta.remove("tool_calls");
                }
            }
            let finish = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(reason) = finish {
                let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|h| h.choice == c);
                self.held = rest;
                let before_len = decisions.len();
                before.extend(finalize_openai(
                    policy,
                    trust,
                    mine,
                    &self.template,
                    decisions,
                ));
                if decisions[before_len..].iter().any(|d| !d.blocked()) {
                    self.passed.insert(c);
                }
                if reason == "tool_calls" && !self.passed.contains(&c) {
                    choice["finish_reason"] = json!("stop");
                }
            }
        }
        before
    }
}

// ---------------------------------------------------------------- Anthropic Messages events

struct HeldBlock {
    index: u64,
    name: String,
    json: String,
    events: Vec<(Option<String>, Value)>,
}

#[derive(Default)]
struct AnthropicState {
    held: Option<HeldBlock>,
    passed: bool,
    blocked: bool,
}

impl AnthropicState {
    fn event(
        &mut self,
        policy: &ToolPolicy,
        trust: &Trust,
        name: Option<String>,
        mut value: Value,
        decisions: &mut Vec<Decision>,
    ) -> Vec<(Option<String>, Value)> {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let index = value.get("index").and_then(Value::as_u64);
        match kind.as_str() {
            "content_block_start" => {
                let block = value.get("content_block");
                if block.and_then(|b| b.get("type")).and_then(Value::as_str) == Some("tool_use") {
                    let tool = block
                        .and_then(|b| b.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    if policy.may_block(&tool, trust) {
                        self.held = Some(HeldBlock {
                            index: index.unwrap_or(0),
                            name: tool,
                            json: String::new(),
                            events: vec![(name, value)],
                        });
                        return Vec::new();
                    }
                    decisions.push(policy.decide(&tool, Arguments::Text("{}"), trust));
                    self.passed = true;
                }
                vec![(name, value)]
            }
            "content_block_delta" | "content_block_stop"
                if self.held.as_ref().is_some_and(|h| Some(h.index) == index) =>
            {
                let Some(mut held) = self.held.take() else {
                    return Vec::new();
                };
                if kind == "content_block_delta" {
                    if let Some(part) = value
                        .get("delta")
                        .and_then(|d| d.get("partial_json"))
                        .and_then(Value::as_str)
                    {
                        held.json.push_str(part);
                    }
                    held.events.push((name, value));
                    self.held = Some(held);
                    return Vec::new();
                }
                held.events.push((name, value));
                let d = policy.decide(&held.name, Arguments::Text(&held.json), trust);
                let out = if d.blocked() {
                    self.blocked = true;
                    let i = held.index;
                    vec![
                        (
                            Some("content_block_start".to_owned()),
                            json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                        ),
                        (
                            Some("content_block_delta".to_owned()),
                            json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": d.refusal()}}),
                        ),
                        (
                            Some("content_block_stop".to_owned()),
                            json!({"type": "content_block_stop", "index": i}),
                        ),
                    ]
                } else {
                    self.passed = true;
                    held.events
                };
                decisions.push(d);
                out
            }
            "message_delta" => {
                let stop = value
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if stop == Some("tool_use") && self.blocked && !self.passed {
                    value["delta"]["stop_reason"] = json!("end_turn");
                }
                vec![(name, value)]
            }
            _ => vec![(name, value)],
        }
    }
}

// ---------------------------------------------------------------- Cohere v2 chat events

struct HeldCohere {
    index: u64,
    name: String,
    arguments: String,
    events: Vec<(Option<String>, Value)>,
}

#[derive(Default)]
struct CohereState {
    held: Vec<HeldCohere>,
    /// Next free content index, for refusal text.
    next_content: u64,
    passed: bool,
    blocked: bool,
}

impl CohereState {
    fn event(
        &mut self,
        policy: &ToolPolicy,
        trust: &Trust,
        name: Option<String>,
        mut value: Value,
        decisions: &mut Vec<Decision>,
    ) -> Vec<(Option<String>, Value)> {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
        let call = value.pointer("/delta/message/tool_calls").cloned();
        match kind.as_str() {
            "content-start" => {
                self.next_content = self.next_content.max(index + 1);
                vec![(name, value)]
            }
            "tool-call-start" => {
                let tool = call
                    .as_ref()
                    .and_then(|c| c.pointer("/function/name"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if policy.may_block(&tool, trust) {
                    let arguments = call
                        .as_ref()
                        .and_then(|c| c.pointer("/function/arguments"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    self.held.push(HeldCohere {
                        index,
                        name: tool,
                        arguments,
                        events: vec![(name, value)],
                    });
                    return Vec::new();
                }
                decisions.push(policy.decide(&tool, Arguments::Text("{}"), trust));
                self.passed = true;
                vec![(name, value)]
            }
            "tool-call-delta" | "tool-call-end" => {
                let Some(pos) = self.held.iter().position(|h| h.index == index) else {
                    return vec![(name, value)];
                };
                if kind == "tool-call-delta" {
                    if let Some(part) = call
                        .as_ref()
                        .and_then(|c| c.pointer("/function/arguments"))
                        .and_then(Value::as_str)
                    {
                        self.held[pos].arguments.push_str(part);
                    }
                    self.held[pos].events.push((name, value));
                    return Vec::new();
                }
                let mut held = self.held.remove(pos);
                held.events.push((name, value));
                let d = policy.decide(&held.name, Arguments::Text(&held.arguments), trust);
                let out = if d.blocked() {
                    self.blocked = true;
                    let i = self.next_content;
                    self.next_content += 1;
                    vec![
                        (
                            Some("content-start".to_owned()),
                            json!({"type": "content-start", "index": i, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
                        ),
                        (
                            Some("content-delta".to_owned()),
                            json!({"type": "content-delta", "index": i, "delta": {"message": {"content": {"text": d.refusal()}}}}),
                        ),
                        (
                            Some("content-end".to_owned()),
                            json!({"type": "content-end", "index": i}),
                        ),
                    ]
                } else {
                    self.passed = true;
                    held.events
                };
                decisions.push(d);
                out
            }
            "message-end" => {
                let finish = value
                    .pointer("/delta/finish_reason")
                    .and_then(Value::as_str);
                if finish == Some("TOOL_CALL") && self.blocked && !self.passed {
                    value["delta"]["finish_reason"] = json!("COMPLETE");
                }
                vec![(name, value)]
            }
            _ => vec![(name, value)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::guardrails::tests::policy;

    fn guard(format: Format, trust: Trust) -> SseGuard {
        match SseGuard::new(format, Arc::new(policy()), trust) {
            Some(g) => g,
            None => panic!("no guard for {format:?}"),
        }
    }

    fn untrusted() -> Trust {
        Trust {
            sources: vec!["web_fetch".into()],
        }
    }

    fn sse_datas(bytes: &[u8]) -> Vec<Value> {
        let mut p = SseParser::default();
        let mut events = p.push(bytes);
        events.extend(p.finish());
        events
            .into_iter()
            .filter_map(|e| serde_json::from_str(&e.data).ok())
            .collect()
    }

    fn openai_tool_stream(tool: &str, args: &[&str]) -> Vec<String> {
        let mut out = vec![
            r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Let me "},"finish_reason":null}]}"#.to_owned(),
            r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"do that."},"finish_reason":null}]}"#.to_owned(),
            format!(r#"data: {{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"call_9","type":"function","function":{{"name":"{tool}","arguments":""}}}}]}},"finish_reason":null}}]}}"#),
        ];
        for a in args {
            out.push(format!(
                r#"data: {{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}},"finish_reason":null}}]}}"#,
                serde_json::to_string(a).unwrap_or_default()
            ));
        }
        out.push(r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#.to_owned());
        out.push("data: [DONE]".to_owned());
        out.into_iter().map(|l| format!("{l}\n\n")).collect()
    }

    #[test]
    fn openai_blocked_call_is_held_then_replaced() {
        let mut g = guard(Format::OpenAi, untrusted());
        let events = openai_tool_stream("send_email", &["{\"to\":", "\"evil@example.net\"}"]);
        // Content passes at once.
        let first = g.push(events[0].as_bytes());
        assert!(String::from_utf8_lossy(&first).contains("Let me "));
        g.push(events[1].as_bytes());
        // The call's start and argument deltas are held.
        let held = g.push(events[2].as_bytes());
        assert!(!String::from_utf8_lossy(&held).contains("send_email"));
        assert!(g.holding());
        let mut rest = Vec::new();
        for e in &events[3..] {
            rest.extend(g.push(e.as_bytes()));
        }
        rest.extend(g.finish());
        assert!(!g.holding());
        let text = String::from_utf8_lossy(&rest).to_string();
        assert!(!text.contains("evil@example.net"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let chunks = sse_datas(&rest);
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(
            content.contains("send_email") && content.contains("blocked"),
            "{content}"
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none())
        );
        let last = chunks.last().cloned().unwrap_or_default();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let d = g.take_decisions();
        assert_eq!(d.len(), 1);
        assert!(d[0].blocked());
    }

    #[test]
    fn openai_allowed_held_call_is_released_whole() {
        let mut g = guard(Format::OpenAi, Trust::default());
        let mut out = Vec::new();
        for e in openai_tool_stream("shell", &["{\"cmd\":", "\"ls -la\"}"]) {
            out.extend(g.push(e.as_bytes()));
        }
        let chunks = sse_datas(&out);
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["id"], "call_9");
        assert_eq!(calls[0]["function"]["name"], "shell");
        assert_eq!(calls[0]["function"]["arguments"], "{\"cmd\":\"ls -la\"}");
        assert_eq!(
            chunks
                .last()
                .map(|c| c["choices"][0]["finish_reason"].clone()),
            Some(json!("tool_calls"))
        );
    }

    #[test]
    fn openai_unguarded_calls_stream_undelayed() {
        let mut g = guard(Format::OpenAi, untrusted());
        let events = openai_tool_stream("get_weather", &["{\"city\":", "\"Oslo\"}"]);
        g.push(events[0].as_bytes());
        g.push(events[1].as_bytes());
        let start = g.push(events[2].as_bytes());
        assert!(String::from_utf8_lossy(&start).contains("get_weather"));
        assert!(!g.holding());
        let delta = g.push(events[3].as_bytes());
        assert!(String::from_utf8_lossy(&delta).contains("city"));
    }

    #[test]
    fn openai_calls_without_a_name_at_first_are_held() {
        let mut g = guard(Format::OpenAi, untrusted());
        let chunk = |tc: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{"index": 0, "delta": {"tool_calls": [tc]}, "finish_reason": finish}]})
            )
        };
        let mut out = g.push(chunk(json!({"index": 0, "id": "call_1", "type": "function", "function": {"arguments": ""}}), Value::Null).as_bytes());
        out.extend(g.push(chunk(json!({"index": 0, "function": {"name": "send_email", "arguments": "{\"to\":\"evil@example.net\"}"}}), Value::Null).as_bytes()));
        assert!(out.is_empty() || !String::from_utf8_lossy(&out).contains("send_email"));
        out.extend(
            g.push(
                chunk(
                    json!({"index": 0, "function": {"arguments": ""}}),
                    json!("tool_calls"),
                )
                .as_bytes(),
            ),
        );
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            !text.contains("evil@example.net") && text.contains("blocked"),
            "{text}"
        );
    }

    #[test]
    fn openai_stream_cut_before_finish_still_decides() {
        let mut g = guard(Format::OpenAi, untrusted());
        let events = openai_tool_stream("send_email", &["{\"to\":\"x\"}"]);
        let mut out = Vec::new();
        for e in &events[..4] {
            out.extend(g.push(e.as_bytes()));
        }
        out.extend(g.finish());
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("\"name\":\"send_email\""), "{text}");
        assert!(text.contains("blocked"));
    }

    fn anthropic_stream(tool: &str, parts: &[&str]) -> Vec<String> {
        let mut ev = vec![
            (
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Sending now."}}),
            ),
            (
                "content_block_stop",
                json!({"type":"content_block_stop","index":0}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_9","name":tool,"input":{}}}),
            ),
        ];
        for p in parts {
            ev.push(("content_block_delta", json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":p}})));
        }
        ev.push((
            "content_block_stop",
            json!({"type":"content_block_stop","index":1}),
        ));
        ev.push(("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":30}})));
        ev.push(("message_stop", json!({"type":"message_stop"})));
        ev.into_iter()
            .map(|(n, v)| format!("event: {n}\ndata: {v}\n\n"))
            .collect()
    }

    #[test]
    fn anthropic_blocked_tool_use_becomes_a_text_block() {
        let mut g = guard(Format::Anthropic, untrusted());
        let events = anthropic_stream("send_email", &["{\"to\": ", "\"evil@example.net\"}"]);
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let piece = g.push(e.as_bytes());
            if i == 2 {
                assert!(String::from_utf8_lossy(&piece).contains("Sending now."));
            }
            if i == 5 {
                assert!(piece.is_empty() && g.holding());
            }
            out.extend(piece);
        }
        out.extend(g.finish());
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            !text.contains("evil@example.net") && !text.contains("toolu_9"),
            "{text}"
        );
        let datas = sse_datas(&out);
        let block1: Vec<&Value> = datas.iter().filter(|d| d["index"] == 1).collect();
        assert_eq!(block1[0]["content_block"]["type"], "text");
        assert!(
            block1[1]["delta"]["text"]
                .as_str()
                .unwrap_or("")
                .contains("send_email")
        );
        let md = datas
            .iter()
            .find(|d| d["type"] == "message_delta")
            .cloned()
            .unwrap_or_default();
        assert_eq!(md["delta"]["stop_reason"], "end_turn");
        assert_eq!(g.usage.input_tokens, Some(12));
        assert_eq!(g.usage.output_tokens, Some(30));
        assert!(text.contains("event: content_block_start\n"));
    }

    #[test]
    fn anthropic_trusted_call_passes_unchanged() {
        let mut g = guard(Format::Anthropic, Trust::default());
        let mut out = Vec::new();
        for e in anthropic_stream("send_email", &["{\"to\": \"me@example.com\"}"]) {
            out.extend(g.push(e.as_bytes()));
        }
        let datas = sse_datas(&out);
        assert!(
            datas
                .iter()
                .any(|d| d["content_block"]["name"] == "send_email")
        );
        let md = datas
            .iter()
            .find(|d| d["type"] == "message_delta")
            .cloned()
            .unwrap_or_default();
        assert_eq!(md["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn gemini_chunks_with_function_calls_are_rewritten() {
        let mut g = guard(Format::Gemini, untrusted());
        let chunk = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "send_email", "args": {"to": "evil@example.net"}}}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 7}});
        let out = g.push(format!("data: {chunk}\r\n\r\n").as_bytes());
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains("evil@example.net") && text.contains("blocked"),
            "{text}"
        );
        assert_eq!(g.usage.output_tokens, Some(7));
    }

    #[test]
    fn garbage_streams_pass_without_panic() {
        let mut g = guard(Format::OpenAi, untrusted());
        for junk in [
            &b"data: {\"choices\": 5}\n\n"[..],
            b"data: {\"choices\":[{\"delta\":{\"tool_calls\":\"x\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":\"a\"}]},\"finish_reason\":7}]}\n\n",
            b"data: {not json\n\n",
            b"\xff\xfe\n\n",
        ] {
            g.push(junk);
        }
        g.finish();
        assert!(SseGuard::new(Format::Bedrock, Arc::new(policy()), untrusted()).is_none());
    }

    #[test]
    fn cohere_blocked_call_becomes_content_and_finish_is_complete() {
        let events = [
            (
                "message-start",
                json!({"id":"s1","type":"message-start","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}),
            ),
            (
                "tool-plan-delta",
                json!({"type":"tool-plan-delta","delta":{"message":{"tool_plan":"I will send it."}}}),
            ),
            (
                "tool-call-start",
                json!({"type":"tool-call-start","index":0,"delta":{"message":{"tool_calls":{"id":"send_email_1","type":"function","function":{"name":"send_email","arguments":""}}}}}),
            ),
            (
                "tool-call-delta",
                json!({"type":"tool-call-delta","index":0,"delta":{"message":{"tool_calls":{"function":{"arguments":"{\"to\": \"evil@"}}}}}),
            ),
            (
                "tool-call-delta",
                json!({"type":"tool-call-delta","index":0,"delta":{"message":{"tool_calls":{"function":{"arguments":"example.net\"}"}}}}}),
            ),
            ("tool-call-end", json!({"type":"tool-call-end","index":0})),
            (
                "message-end",
                json!({"type":"message-end","delta":{"finish_reason":"TOOL_CALL","usage":{"tokens":{"input_tokens":9,"output_tokens":4}}}}),
            ),
        ];
        let mut g = guard(Format::Cohere, untrusted());
        let mut out = Vec::new();
        for (i, (name, data)) in events.iter().enumerate() {
            let piece = g.push(format!("event: {name}\ndata: {data}\n\n").as_bytes());
            if (2..5).contains(&i) {
                assert!(piece.is_empty() && g.holding(), "{i}");
            }
            out.extend(piece);
        }
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            !text.contains("evil@example.net") && !text.contains("send_email_1"),
            "{text}"
        );
        assert!(text.contains("I will send it."));
        let datas = sse_datas(&out);
        let delta = datas
            .iter()
            .find(|d| d["type"] == "content-delta")
            .cloned()
            .unwrap_or_default();
        assert!(
            delta["delta"]["message"]["content"]["text"]
                .as_str()
                .unwrap_or("")
                .contains("send_email")
        );
        let end = datas
            .iter()
            .find(|d| d["type"] == "message-end")
            .cloned()
            .unwrap_or_default();
        assert_eq!(end["delta"]["finish_reason"], "COMPLETE");
        assert_eq!(g.usage.output_tokens, Some(4));

        let mut g = guard(Format::Cohere, Trust::default());
        let mut out = Vec::new();
        for (name, data) in &events {
            out.extend(g.push(format!("event: {name}\ndata: {data}\n\n").as_bytes()));
        }
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            text.contains("send_email_1") && text.contains("TOOL_CALL"),
            "{text}"
        );
    }
}
