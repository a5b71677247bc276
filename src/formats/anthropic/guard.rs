//! Tool-call guardrails for Anthropic Messages answers (also Claude on Azure Foundry):
//! `tool_use` content blocks, whole and streamed (`content_block_start` → `input_json_delta`
//! … → `content_block_stop`). A blocked block becomes a `text` block at the same index, and
//! `stop_reason` becomes `end_turn` when no call is left. A `tool_use` whose `id` repeats an
//! earlier one in the same answer is blocked. Server-side tools (`server_tool_use`,
//! `mcp_tool_use`) are run by Anthropic, not by the client, and pass.

use serde_json::{Value, json};

use crate::formats::guard::{
    Arguments, CallIds, Conversation, Decide, Decision, Decisions, Fault, MAX_HELD_BYTES, Out,
    StreamGuard as StreamGuardTrait, array, str_of,
};

/// Read the calls and results of a Messages conversation (server tools' blocks included:
/// their results are data in the context too).
pub fn read_conversation(body: &Value) -> Conversation {
    let mut c = Conversation::default();
    for m in array(body, "messages") {
        for block in array(m, "content") {
            let kind = str_of(block, "type").unwrap_or_default();
            if kind.ends_with("tool_use") {
                if let (Some(id), Some(name)) = (str_of(block, "id"), str_of(block, "name")) {
                    c.calls.push((id.to_owned(), name.to_owned()));
                }
            } else if kind.ends_with("tool_result") {
                c.results
                    .push((str_of(block, "tool_use_id").map(str::to_owned), None));
            }
        }
    }
    c
}

fn decide_block(decide: &dyn Decide, block: &Value, ids: &mut CallIds) -> Decision {
    let name = str_of(block, "name").unwrap_or("");
    if name.is_empty() {
        return Decision::unreadable("", "a tool_use block without a name");
    }
    if let Some(id) = str_of(block, "id")
        && !ids.first(id)
    {
        return Decision::duplicate_id(name, id);
    }
    let empty = json!({});
    decide.decide(name, Arguments::Value(block.get("input").unwrap_or(&empty)))
}

/// Apply the guardrails to a `message`: blocked `tool_use` blocks become `text` blocks in
/// place; `stop_reason` becomes `end_turn` when no `tool_use` is left.
pub fn guard_json(decide: &dyn Decide, body: &mut Value) -> Result<Decisions, Fault> {
    let mut decisions = Vec::new();
    let mut ids = CallIds::default();
    let content = match body.get_mut("content") {
        None | Some(Value::Null) => return Ok(decisions),
        Some(Value::Array(content)) => content,
        Some(_) => {
            return Err(Fault(
                "the answer's `content` is not a list; the guardrails cannot read it".to_owned(),
            ));
        }
    };
    let mut blocked_any = false;
    for block in content.iter_mut() {
        if str_of(block, "type") != Some("tool_use") {
            continue;
        }
        let d = decide_block(decide, block, &mut ids);
        if d.blocked() {
            *block = json!({"type": "text", "text": d.refusal()});
            blocked_any = true;
        }
        decisions.push(d);
    }
    let left = content
        .iter()
        .any(|b| str_of(b, "type") == Some("tool_use"));
    if blocked_any && !left && str_of(body, "stop_reason") == Some("tool_use") {
        body["stop_reason"] = json!("end_turn");
    }
    Ok(decisions)
}

struct Held {
    index: u64,
    name: String,
    /// The start block's `input` (used when no delta follows).
    input: Value,
    json: String,
    events: Vec<Out>,
    forced: Option<Decision>,
}

/// The guard of one Messages event stream.
#[derive(Default)]
pub struct StreamGuard {
    held: Option<Held>,
    ids: CallIds,
    passed: bool,
    blocked: bool,
}

impl StreamGuard {
    fn settle(
        &mut self,
        decide: &dyn Decide,
        mut held: Held,
        decisions: &mut Decisions,
    ) -> Vec<Out> {
        let d = match held.forced.take() {
            Some(d) => d,
            None if held.json.trim().is_empty() => {
                decide.decide(&held.name, Arguments::Value(&held.input))
            }
            None => decide.decide(&held.name, Arguments::Text(&held.json)),
        };
        let out = if d.blocked() {
            self.blocked = true;
            let i = held.index;
            let event = |name: &str, v: Value| Out::Json(Some(name.to_owned()), v);
            vec![
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                ),
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": d.refusal()}}),
                ),
                event(
                    "content_block_stop",
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
        let index = value.get("index").and_then(Value::as_u64);
        let held_here = self.held.as_ref().is_some_and(|h| Some(h.index) == index);
        match kind.as_str() {
            "content_block_start" => {
                if self.held.is_some() {
                    return Err(Fault(
                        "a content block started while a tool call was still open; the guardrails cannot read interleaved blocks"
                            .to_owned(),
                    ));
                }
                let Some(block) = value.get("content_block") else {
                    return Ok(vec![Out::Same]);
                };
                if str_of(block, "type") != Some("tool_use") {
                    return Ok(vec![Out::Same]);
                }
                let tool = str_of(block, "name").unwrap_or("").to_owned();
                let mut forced = None;
                if tool.is_empty() {
                    forced = Some(Decision::unreadable("", "a tool_use block without a name"));
                } else if let Some(id) = str_of(block, "id")
                    && !self.ids.first(id)
                {
                    forced = Some(Decision::duplicate_id(&tool, id));
                }
                if forced.is_some() || decide.may_block(&tool) {
                    let Some(index) = index else {
                        return Err(Fault(
                            "a tool_use block has no index; the guardrails cannot follow it"
                                .to_owned(),
                        ));
                    };
                    self.held = Some(Held {
                        index,
                        input: block.get("input").cloned().unwrap_or_else(|| json!({})),
                        name: tool,
                        json: String::new(),
                        events: vec![Out::Json(name.map(str::to_owned), value.clone())],
                        forced,
                    });
                    return Ok(Vec::new());
                }
                decisions.push(decide.decide(&tool, Arguments::Text("{}")));
                self.passed = true;
                Ok(vec![Out::Same])
            }
            "content_block_delta" if held_here => {
                let Some(held) = self.held.as_mut() else {
                    return Ok(Vec::new());
                };
                if let Some(part) = value.pointer("/delta/partial_json").and_then(Value::as_str) {
                    held.json.push_str(part);
                    if held.json.len() > MAX_HELD_BYTES {
                        return Err(Fault::too_big());
                    }
                }
                held.events
                    .push(Out::Json(name.map(str::to_owned), value.clone()));
                Ok(Vec::new())
            }
            "content_block_stop" if held_here => {
                let Some(mut held) = self.held.take() else {
                    return Ok(Vec::new());
                };
                held.events
                    .push(Out::Json(name.map(str::to_owned), value.clone()));
                Ok(self.settle(decide, held, decisions))
            }
            "message_delta" => {
                let stop = value.pointer("/delta/stop_reason").and_then(Value::as_str);
                if stop == Some("tool_use") && self.blocked && !self.passed {
                    value["delta"]["stop_reason"] = json!("end_turn");
                    return Ok(vec![Out::Json(name.map(str::to_owned), value.clone())]);
                }
                Ok(vec![Out::Same])
            }
            _ if self.held.is_some() && kind != "ping" => {
                // Another block's delta, or the message's end, while a call is open: the
                // stream is not one the guard can follow.
                Err(Fault(
                    "the stream moved on while a tool call was still open; the guardrails cannot read it"
                        .to_owned(),
                ))
            }
            _ => Ok(vec![Out::Same]),
        }
    }

    fn end(&mut self, _decide: &dyn Decide, _decisions: &mut Decisions) -> Vec<Out> {
        // A call still open at the end was never completed: it is not released.
        self.held = None;
        Vec::new()
    }

    fn holding(&self) -> bool {
        self.held.is_some()
    }
}
