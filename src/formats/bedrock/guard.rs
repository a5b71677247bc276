//! Tool-call guardrails for Bedrock Converse answers: `toolUse` content blocks. A blocked
//! block becomes a `text` block, and `stopReason` becomes `end_turn` when none is left; a
//! `toolUse` whose `toolUseId` repeats an earlier one in the same answer is blocked.
//! ConverseStream's event-stream frames are not read here: the native table marks that
//! endpoint `ToolCalls::Unreadable`, so it is refused under `spec.tools`.

use serde_json::{Value, json};

use crate::formats::guard::{
    Arguments, CallIds, Conversation, Decide, Decision, Decisions, Fault, array, str_of,
};

/// Read the calls and results of a Converse conversation.
pub fn read_conversation(body: &Value) -> Conversation {
    let mut c = Conversation::default();
    for m in array(body, "messages") {
        for block in array(m, "content") {
            if let Some(call) = block.get("toolUse")
                && let (Some(id), Some(name)) = (str_of(call, "toolUseId"), str_of(call, "name"))
            {
                c.calls.push((id.to_owned(), name.to_owned()));
            }
            if let Some(result) = block.get("toolResult") {
                c.results
                    .push((str_of(result, "toolUseId").map(str::to_owned), None));
            }
        }
    }
    c
}

fn decide_call(decide: &dyn Decide, call: &Value, ids: &mut CallIds) -> Decision {
    let name = str_of(call, "name").unwrap_or("");
    if name.is_empty() {
        return Decision::unreadable("", "a toolUse block without a name");
    }
    if let Some(id) = str_of(call, "toolUseId")
        && !ids.first(id)
    {
        return Decision::duplicate_id(name, id);
    }
    let empty = json!({});
    decide.decide(name, Arguments::Value(call.get("input").unwrap_or(&empty)))
}

/// Apply the guardrails to a Converse response.
pub fn guard_json(decide: &dyn Decide, body: &mut Value) -> Result<Decisions, Fault> {
    let mut decisions = Vec::new();
    let mut ids = CallIds::default();
    let content = match body.pointer_mut("/output/message/content") {
        None | Some(Value::Null) => return Ok(decisions),
        Some(Value::Array(content)) => content,
        Some(_) => {
            return Err(Fault(
                "the answer's `output.message.content` is not a list; the guardrails cannot read it"
                    .to_owned(),
            ));
        }
    };
    let mut blocked_any = false;
    for block in content.iter_mut() {
        let Some(call) = block.get("toolUse") else {
            continue;
        };
        let d = decide_call(decide, call, &mut ids);
        if d.blocked() {
            *block = json!({"text": d.refusal()});
            blocked_any = true;
        }
        decisions.push(d);
    }
    let left = content.iter().any(|b| b.get("toolUse").is_some());
    if blocked_any && !left && str_of(body, "stopReason") == Some("tool_use") {
        body["stopReason"] = json!("end_turn");
    }
    Ok(decisions)
}
