//! Tool-call guardrails for Gemini `GenerateContentResponse` answers (AI Studio and Vertex
//! AI): `functionCall` parts, in camelCase as the API writes them and in snake_case
//! (`function_call`) as its protobuf JSON also accepts, whole, in a JSON array of responses
//! (`streamGenerateContent` without `alt=sse`) and streamed (Gemini sends each call complete
//! in one chunk). A blocked part becomes a text part. A call whose `id` repeats an earlier
//! one in the same answer is blocked.

use serde_json::{Value, json};

use crate::formats::guard::{
    Arguments, CallIds, Conversation, Decide, Decision, Decisions, Fault, Out,
    StreamGuard as StreamGuardTrait, array, str_of,
};

/// The two spellings of a call and of a result.
const CALL_KEYS: [&str; 2] = ["functionCall", "function_call"];
const RESULT_KEYS: [&str; 2] = ["functionResponse", "function_response"];

/// Read the calls and results of a `contents` conversation, in either spelling.
pub fn read_conversation(body: &Value) -> Conversation {
    let mut c = Conversation::default();
    for content in array(body, "contents") {
        for part in array(content, "parts") {
            for key in CALL_KEYS {
                if let Some(call) = part.get(key)
                    && let (Some(id), Some(name)) = (str_of(call, "id"), str_of(call, "name"))
                {
                    c.calls.push((id.to_owned(), name.to_owned()));
                }
            }
            for key in RESULT_KEYS {
                if let Some(response) = part.get(key) {
                    c.results.push((
                        str_of(response, "id").map(str::to_owned),
                        str_of(response, "name").map(str::to_owned),
                    ));
                }
            }
        }
    }
    c
}

fn decide_call(decide: &dyn Decide, call: &Value, ids: &mut CallIds) -> Decision {
    if !call.is_object() {
        return Decision::unreadable("", "a function call that is not an object");
    }
    let name = str_of(call, "name").unwrap_or("");
    if name.is_empty() {
        return Decision::unreadable("", "a function call without a name");
    }
    if let Some(id) = str_of(call, "id")
        && !ids.first(id)
    {
        return Decision::duplicate_id(name, id);
    }
    let empty = json!({});
    decide.decide(name, Arguments::Value(call.get("args").unwrap_or(&empty)))
}

fn list_mut<'a>(holder: &'a mut Value, key: &str) -> Result<Option<&'a mut Vec<Value>>, Fault> {
    match holder.get_mut(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(list)) => Ok(Some(list)),
        Some(_) => Err(Fault(format!(
            "the answer's `{key}` is not a list; the guardrails cannot read it"
        ))),
    }
}

/// Guard one response object.
fn guard_one(
    decide: &dyn Decide,
    body: &mut Value,
    ids: &mut CallIds,
    decisions: &mut Decisions,
) -> Result<bool, Fault> {
    let mut changed = false;
    for candidate in list_mut(body, "candidates")?.into_iter().flatten() {
        let Some(content) = candidate.get_mut("content").filter(|c| c.is_object()) else {
            continue;
        };
        for part in list_mut(content, "parts")?.into_iter().flatten() {
            let mut refusal = None;
            for key in CALL_KEYS {
                let Some(call) = part.get(key) else {
                    continue;
                };
                let d = decide_call(decide, call, ids);
                if d.blocked() && refusal.is_none() {
                    refusal = Some(d.refusal());
                }
                decisions.push(d);
            }
            if let Some(text) = refusal {
                *part = json!({ "text": text });
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// Apply the guardrails to a whole answer: one response, or a JSON array of them.
pub fn guard_json(decide: &dyn Decide, body: &mut Value) -> Result<Decisions, Fault> {
    let mut decisions = Vec::new();
    let mut ids = CallIds::default();
    match body {
        Value::Array(items) => {
            for item in items {
                guard_one(decide, item, &mut ids, &mut decisions)?;
            }
        }
        item => {
            guard_one(decide, item, &mut ids, &mut decisions)?;
        }
    }
    Ok(decisions)
}

/// The guard of one `streamGenerateContent?alt=sse` stream: each chunk is guarded whole;
/// call IDs are remembered across chunks.
#[derive(Default)]
pub struct StreamGuard {
    ids: CallIds,
}

impl StreamGuardTrait for StreamGuard {
    fn event(
        &mut self,
        decide: &dyn Decide,
        name: Option<&str>,
        value: &mut Value,
        decisions: &mut Decisions,
    ) -> Result<Vec<Out>, Fault> {
        if guard_one(decide, value, &mut self.ids, decisions)? {
            return Ok(vec![Out::Json(name.map(str::to_owned), value.clone())]);
        }
        Ok(vec![Out::Same])
    }

    fn end(&mut self, _decide: &dyn Decide, _decisions: &mut Decisions) -> Vec<Out> {
        Vec::new()
    }

    fn holding(&self) -> bool {
        false
    }
}
