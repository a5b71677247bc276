//! Tool-call guardrails for Cohere v2 chat answers: `message.tool_calls` (the OpenAI call
//! shape), whole and streamed (`tool-call-start` → `tool-call-delta` … → `tool-call-end`). A
//! blocked call becomes text content, and `finish_reason` becomes `COMPLETE` when no call is
//! left. A call whose `id` repeats an earlier one in the same answer is blocked; a delta for
//! a call that never started, or that renames a call already let through, ends the stream.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::formats::guard::{
    Arguments, CallIds, Conversation, Decide, Decision, Decisions, Fault, MAX_HELD_BYTES, Out,
    StreamGuard as StreamGuardTrait, str_of,
};
use crate::formats::openai::guard::{calls_mut, decide_calls};

/// Read the calls and results of a v2 conversation (the Chat Completions shape).
pub fn read_conversation(body: &Value) -> Conversation {
    crate::formats::openai::guard::read_conversation(body)
}

/// Apply the guardrails to a v2 chat response: blocked calls leave `message.tool_calls` and
/// become text content; `finish_reason` becomes `COMPLETE` when none is left.
pub fn guard_json(decide: &dyn Decide, body: &mut Value) -> Result<Decisions, Fault> {
    let mut decisions = Vec::new();
    let mut ids = CallIds::default();
    let Some(message) = body.get_mut("message").filter(|m| m.is_object()) else {
        return Ok(decisions);
    };
    let Some(calls) = calls_mut(message, "tool_calls")? else {
        return Ok(decisions);
    };
    let refusals = decide_calls(decide, calls, &mut ids, &mut decisions);
    if refusals.is_empty() {
        return Ok(decisions);
    }
    let none_left = calls.is_empty();
    if none_left && let Some(m) = message.as_object_mut() {
        m.remove("tool_calls");
    }
    let text = json!({"type": "text", "text": refusals.join("\n")});
    match message.get_mut("content").and_then(Value::as_array_mut) {
        Some(content) => content.push(text),
        None => message["content"] = json!([text]),
    }
    if none_left && str_of(body, "finish_reason") == Some("TOOL_CALL") {
        body["finish_reason"] = json!("COMPLETE");
    }
    Ok(decisions)
}

struct Held {
    index: u64,
    name: String,
    arguments: String,
    events: Vec<Out>,
    forced: Option<Decision>,
}

/// The guard of one v2 chat event stream.
#[derive(Default)]
pub struct StreamGuard {
    held: Vec<Held>,
    /// Indexes of calls let through.
    open: HashSet<u64>,
    ids: CallIds,
    held_bytes: usize,
    /// Next free content index, for refusal text.
    next_content: u64,
    passed: bool,
    blocked: bool,
}

impl StreamGuardTrait for StreamGuard {
    fn event(
        &mut self,
        decide: &dyn Decide,
        name: Option<&str>,
        value: &mut Value,
        decisions: &mut Decisions,
    ) -> Result<Vec<Out>, Fault> {
        let kind = str_of(value, "type").unwrap_or_default().to_owned();
        let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
        let call = value.pointer("/delta/message/tool_calls");
        let tool = call
            .and_then(|c| c.pointer("/function/name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let arguments = call
            .and_then(|c| c.pointer("/function/arguments"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let id = call
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let event = |v: &Value| Out::Json(name.map(str::to_owned), v.clone());
        match kind.as_str() {
            "content-start" => {
                self.next_content = self.next_content.max(index + 1);
                Ok(vec![Out::Same])
            }
            "tool-call-start" => {
                if self.open.contains(&index) || self.held.iter().any(|h| h.index == index) {
                    return Err(Fault(format!(
                        "tool call {index} started twice; the guardrails cannot tell the calls apart"
                    )));
                }
                let mut forced = None;
                if tool.is_empty() {
                    forced = Some(Decision::unreadable("", "a tool call without a name"));
                } else if let Some(id) = &id
                    && !self.ids.first(id)
                {
                    forced = Some(Decision::duplicate_id(&tool, id));
                }
                if forced.is_some() || decide.may_block(&tool) {
                    self.held_bytes += arguments.len();
                    if self.held_bytes > MAX_HELD_BYTES {
                        return Err(Fault::too_big());
                    }
                    self.held.push(Held {
                        index,
                        name: tool,
                        arguments,
                        events: vec![event(value)],
                        forced,
                    });
                    return Ok(Vec::new());
                }
                decisions.push(decide.decide(&tool, Arguments::Text("{}")));
                self.open.insert(index);
                self.passed = true;
                Ok(vec![Out::Same])
            }
            "tool-call-delta" | "tool-call-end" => {
                let Some(pos) = self.held.iter().position(|h| h.index == index) else {
                    if !self.open.contains(&index) {
                        return Err(Fault(format!(
                            "`{kind}` for tool call {index}, which never started; the guardrails cannot read it"
                        )));
                    }
                    if !tool.is_empty() || id.is_some() {
                        return Err(Fault(
                            "a streamed tool call that was already let through was renamed or re-identified; the guardrails cannot read it"
                                .to_owned(),
                        ));
                    }
                    if kind == "tool-call-end" {
                        self.open.remove(&index);
                    }
                    return Ok(vec![Out::Same]);
                };
                if kind == "tool-call-delta" {
                    if !tool.is_empty() || id.is_some() {
                        return Err(Fault(
                            "a streamed tool call was renamed or re-identified mid-call; the guardrails cannot read it"
                                .to_owned(),
                        ));
                    }
                    self.held_bytes += arguments.len();
                    if self.held_bytes > MAX_HELD_BYTES {
                        return Err(Fault::too_big());
                    }
                    self.held[pos].arguments.push_str(&arguments);
                    self.held[pos].events.push(event(value));
                    return Ok(Vec::new());
                }
                let mut held = self.held.remove(pos);
                self.held_bytes = self.held_bytes.saturating_sub(held.arguments.len());
                held.events.push(event(value));
                let d = match held.forced.take() {
                    Some(d) => d,
                    None => decide.decide(&held.name, Arguments::Text(&held.arguments)),
                };
                let out = if d.blocked() {
                    self.blocked = true;
                    let i = self.next_content;
                    self.next_content += 1;
                    let named = |n: &str, v: Value| Out::Json(Some(n.to_owned()), v);
                    vec![
                        named(
                            "content-start",
                            json!({"type": "content-start", "index": i, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
                        ),
                        named(
                            "content-delta",
                            json!({"type": "content-delta", "index": i, "delta": {"message": {"content": {"text": d.refusal()}}}}),
                        ),
                        named("content-end", json!({"type": "content-end", "index": i})),
                    ]
                } else {
                    self.passed = true;
                    held.events
                };
                decisions.push(d);
                Ok(out)
            }
            "message-end" => {
                let finish = value
                    .pointer("/delta/finish_reason")
                    .and_then(Value::as_str);
                if finish == Some("TOOL_CALL") && self.blocked && !self.passed {
                    value["delta"]["finish_reason"] = json!("COMPLETE");
                    return Ok(vec![event(value)]);
                }
                Ok(vec![Out::Same])
            }
            _ => Ok(vec![Out::Same]),
        }
    }

    fn end(&mut self, _decide: &dyn Decide, _decisions: &mut Decisions) -> Vec<Out> {
        // Calls still open at the end were never completed: they are not released.
        self.held.clear();
        Vec::new()
    }

    fn holding(&self) -> bool {
        !self.held.is_empty()
    }
}
