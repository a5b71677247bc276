//! Tool-call guardrails for OpenAI Chat Completions answers (native OpenAI family, Azure, and
//! the Model Router's own answers): the whole family of calls.
//!
//! - `tool_calls` of `type: "function"` (`function.name`, `function.arguments` JSON text) and
//!   of `type: "custom"` (`custom.name`, free-form `custom.input`);
//! - the legacy message-level `function_call` (`{name, arguments}`), whole and streamed;
//! - streamed calls with an `index`, and without one (matched by their `id`, else continuing
//!   the choice's last call without an index);
//! - a call whose ID repeats an earlier call's ID in the same answer is blocked; a call of a
//!   type the guard does not know is blocked; a streamed call that changes its ID, kind or
//!   (once let through) its name ends the stream.
//!
//! Cohere v2 carries the same call objects: [`decide_calls`] serves both.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::formats::guard::{
    Arguments, CallIds, Conversation, Decide, Decision, Decisions, Fault, MAX_HELD_BYTES, Out,
    StreamGuard as StreamGuardTrait, array, clip, str_of,
};

/// Read the calls and results of a Chat Completions conversation.
pub fn read_conversation(body: &Value) -> Conversation {
    let mut c = Conversation::default();
    for m in array(body, "messages") {
        for call in array(m, "tool_calls") {
            let name = call
                .get("function")
                .and_then(|f| str_of(f, "name"))
                .or_else(|| call.get("custom").and_then(|f| str_of(f, "name")));
            if let (Some(id), Some(name)) = (str_of(call, "id"), name) {
                c.calls.push((id.to_owned(), name.to_owned()));
            }
        }
        match str_of(m, "role") {
            Some("tool") => c
                .results
                .push((str_of(m, "tool_call_id").map(str::to_owned), None)),
            // The legacy `function` role names the function itself.
            Some("function") => c.results.push((
                None,
                str_of(m, "name")
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
            )),
            _ => {}
        }
    }
    c
}

/// The arguments of a `function` object: JSON text, or (from a lax upstream) a JSON value.
fn function_arguments(function: Option<&Value>) -> Arguments<'_> {
    match function.and_then(|f| f.get("arguments")) {
        None | Some(Value::Null) => Arguments::Text(""),
        Some(Value::String(s)) => Arguments::Text(s),
        Some(other) => Arguments::Value(other),
    }
}

/// A whole call's tool name and arguments, or the refusal of a call the guard cannot read.
fn call_parts(call: &Value) -> Result<(&str, Arguments<'_>), Decision> {
    let kind = str_of(call, "type");
    let function = call.get("function").filter(|f| !f.is_null());
    let custom = call.get("custom").filter(|f| !f.is_null());
    let custom_kind = match (kind, function.is_some(), custom.is_some()) {
        (None | Some("function" | "custom"), true, true) => {
            return Err(Decision::unreadable(
                "",
                "a tool call that is both a function and a custom call",
            ));
        }
        (Some("custom"), false, _) | (None, false, true) => true,
        (Some("function") | None, _, false) => false,
        (Some(other), _, _) => {
            let name = call
                .get(other)
                .and_then(|c| str_of(c, "name"))
                .unwrap_or("");
            return Err(Decision::unreadable(
                name,
                &format!("tool calls of type `{}`", clip(other)),
            ));
        }
    };
    if custom_kind {
        let name = custom.and_then(|c| str_of(c, "name")).unwrap_or("");
        if name.is_empty() {
            return Err(Decision::unreadable(
                "",
                "a custom tool call without a name",
            ));
        }
        return match custom.and_then(|c| c.get("input")) {
            None | Some(Value::Null) => Ok((name, Arguments::Free(""))),
            Some(Value::String(s)) => Ok((name, Arguments::Free(s))),
            Some(_) => Err(Decision::unreadable(
                name,
                "a custom tool call whose input is not text",
            )),
        };
    }
    let name = function.and_then(|f| str_of(f, "name")).unwrap_or("");
    if name.is_empty() {
        return Err(Decision::unreadable("", "a tool call without a name"));
    }
    Ok((name, function_arguments(function)))
}

/// Decide on one whole call of a `tool_calls` list.
fn decide_call(decide: &dyn Decide, call: &Value, ids: &mut CallIds) -> Decision {
    let (name, arguments) = match call_parts(call) {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    if let Some(id) = str_of(call, "id")
        && !ids.first(id)
    {
        return Decision::duplicate_id(name, id);
    }
    decide.decide(name, arguments)
}

/// Drop the blocked calls of a `tool_calls` list (OpenAI and Cohere v2 share the call shape);
/// their refusals.
pub(crate) fn decide_calls(
    decide: &dyn Decide,
    calls: &mut Vec<Value>,
    ids: &mut CallIds,
    decisions: &mut Decisions,
) -> Vec<String> {
    let mut refusals = Vec::new();
    calls.retain(|call| {
        let d = decide_call(decide, call, ids);
        let keep = !d.blocked();
        if !keep {
            refusals.push(d.refusal());
        }
        decisions.push(d);
        keep
    });
    refusals
}

/// A `tool_calls` value that is neither a list nor null cannot be read: the answer is refused.
pub(crate) fn calls_mut<'a>(
    holder: &'a mut Value,
    key: &str,
) -> Result<Option<&'a mut Vec<Value>>, Fault> {
    match holder.get_mut(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(calls)) => Ok(Some(calls)),
        Some(_) => Err(Fault(format!(
            "the answer's `{key}` is not a list; the guardrails cannot read it"
        ))),
    }
}

/// Apply the guardrails to a `chat.completion`: blocked calls leave the message and become
/// text; `finish_reason` becomes `stop` when no call is left.
pub fn guard_json(decide: &dyn Decide, body: &mut Value) -> Result<Decisions, Fault> {
    let mut decisions = Vec::new();
    let mut ids = CallIds::default();
    let choices = match body.get_mut("choices") {
        None | Some(Value::Null) => return Ok(decisions),
        Some(Value::Array(choices)) => choices,
        Some(_) => {
            return Err(Fault(
                "the answer's `choices` is not a list; the guardrails cannot read it".to_owned(),
            ));
        }
    };
    for choice in choices {
        let Some(message) = choice.get_mut("message").filter(|m| m.is_object()) else {
            continue;
        };
        let mut refusals = Vec::new();
        let mut calls_left = false;
        if let Some(calls) = calls_mut(message, "tool_calls")? {
            let had = !calls.is_empty();
            refusals.extend(decide_calls(decide, calls, &mut ids, &mut decisions));
            calls_left = !calls.is_empty();
            if had
                && !calls_left
                && let Some(m) = message.as_object_mut()
            {
                m.remove("tool_calls");
            }
        }
        let mut legacy_blocked = false;
        match message.get("function_call") {
            None | Some(Value::Null) => {}
            Some(call @ Value::Object(_)) => {
                let name = str_of(call, "name").unwrap_or("");
                let d = if name.is_empty() {
                    Decision::unreadable("", "a function call without a name")
                } else {
                    decide.decide(name, function_arguments(Some(call)))
                };
                if d.blocked() {
                    refusals.push(d.refusal());
                    legacy_blocked = true;
                }
                decisions.push(d);
            }
            Some(_) => {
                return Err(Fault(
                    "the answer's `function_call` is not an object; the guardrails cannot read it"
                        .to_owned(),
                ));
            }
        }
        if legacy_blocked && let Some(m) = message.as_object_mut() {
            m.remove("function_call");
        }
        if refusals.is_empty() {
            continue;
        }
        let text = match message.get("content").and_then(Value::as_str) {
            Some(c) if !c.is_empty() => format!("{c}\n\n{}", refusals.join("\n")),
            _ => refusals.join("\n"),
        };
        message["content"] = Value::String(text);
        let finish = str_of(choice, "finish_reason");
        if (finish == Some("tool_calls") && !calls_left)
            || (finish == Some("function_call") && legacy_blocked)
        {
            choice["finish_reason"] = json!("stop");
        }
    }
    Ok(decisions)
}

// ------------------------------------------------------------------------------ streams

/// Where a streamed call sits in its choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// `tool_calls[].index`.
    Index(u64),
    /// A call sent without an `index` (the guard's own numbering).
    Unindexed(u64),
    /// The legacy `delta.function_call`.
    Legacy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Function,
    Custom,
    Legacy,
}

struct Call {
    choice: u64,
    slot: Slot,
    kind: Kind,
    id: Option<String>,
    name: String,
    arguments: String,
    held: bool,
    /// Blocked whatever the rules say (duplicate ID, unreadable).
    forced: Option<Decision>,
    done: bool,
}

/// One streamed call delta, read.
struct Piece<'a> {
    id: Option<&'a str>,
    /// The kind the delta declares (`None`: it says nothing about it).
    kind: Result<Option<Kind>, String>,
    name: Option<&'a str>,
    arguments: Option<&'a str>,
}

fn text_piece<'a>(v: Option<&'a Value>, what: &str) -> Result<Option<&'a str>, Fault> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Fault(format!(
            "a streamed tool call's `{what}` is not text; the guardrails cannot read it"
        ))),
    }
}

fn read_piece(tc: &Value) -> Result<Piece<'_>, Fault> {
    if !tc.is_object() {
        return Err(Fault(
            "a streamed tool call is not an object; the guardrails cannot read it".to_owned(),
        ));
    }
    let function = tc.get("function").filter(|f| !f.is_null());
    let custom = tc.get("custom").filter(|f| !f.is_null());
    let kind = match (str_of(tc, "type"), function.is_some(), custom.is_some()) {
        (_, true, true) => Err("a tool call that is both a function and a custom call".to_owned()),
        (Some("function"), _, false) | (None, true, false) => Ok(Some(Kind::Function)),
        (Some("custom"), false, _) | (None, false, true) => Ok(Some(Kind::Custom)),
        (None, false, false) => Ok(None),
        (Some(other), _, _) => Err(format!("tool calls of type `{}`", clip(other))),
    };
    let (name, arguments) = match (function, custom) {
        (Some(f), None) => (
            text_piece(f.get("name"), "name")?,
            text_piece(f.get("arguments"), "arguments")?,
        ),
        (None, Some(c)) => (
            text_piece(c.get("name"), "name")?,
            text_piece(c.get("input"), "input")?,
        ),
        _ => (None, None),
    };
    Ok(Piece {
        id: str_of(tc, "id").filter(|id| !id.is_empty()),
        kind,
        name: name.filter(|n| !n.is_empty()),
        arguments,
    })
}

/// The guard of one `chat.completion.chunk` stream.
#[derive(Default)]
pub struct StreamGuard {
    calls: Vec<Call>,
    ids: CallIds,
    held_bytes: usize,
    /// Choices where at least one call reached the client.
    passed: HashSet<u64>,
    /// Choices where a call was blocked.
    blocked: HashSet<u64>,
    next_unindexed: u64,
    /// `id`, `object`, `created`, `model`, `system_fingerprint` of the stream, for chunks the
    /// guard writes itself.
    template: Map<String, Value>,
}

impl StreamGuard {
    fn hold_bytes(&mut self, n: usize) -> Result<(), Fault> {
        self.held_bytes = self.held_bytes.saturating_add(n);
        if self.held_bytes > MAX_HELD_BYTES {
            return Err(Fault::too_big());
        }
        Ok(())
    }

    fn slot_of(&mut self, choice: u64, tc: &Value, id: Option<&str>) -> Result<Slot, Fault> {
        match tc.get("index") {
            Some(v) => v.as_u64().map(Slot::Index).ok_or_else(|| {
                Fault(
                    "a streamed tool call's `index` is not a number; the guardrails cannot read it"
                        .to_owned(),
                )
            }),
            None => {
                let open = |c: &&Call| {
                    c.choice == choice && matches!(c.slot, Slot::Unindexed(_)) && !c.done
                };
                let found = match id {
                    // A call without an index but with an ID: the call with that ID.
                    Some(id) => self
                        .calls
                        .iter()
                        .filter(open)
                        .find(|c| c.id.as_deref() == Some(id)),
                    // Neither: a continuation of the choice's last call without an index.
                    None => self.calls.iter().rev().find(open),
                };
                Ok(match found {
                    Some(c) => c.slot,
                    None => {
                        self.next_unindexed += 1;
                        Slot::Unindexed(self.next_unindexed)
                    }
                })
            }
        }
    }

    /// One call delta: whether it passes now (`false`: held).
    fn delta(
        &mut self,
        decide: &dyn Decide,
        choice: u64,
        slot: Slot,
        piece: Piece<'_>,
        decisions: &mut Decisions,
    ) -> Result<bool, Fault> {
        let declared = match &piece.kind {
            Ok(kind) => *kind,
            Err(_) => None,
        };
        let position = self
            .calls
            .iter()
            .position(|c| c.choice == choice && c.slot == slot && !c.done);
        if let Some(pos) = position {
            let duplicate = match piece.id {
                Some(id) => match &self.calls[pos].id {
                    Some(old) if old != id => {
                        return Err(Fault(format!(
                            "the upstream changed the ID of a streamed tool call (`{}` to `{}`); the guardrails cannot tell which call it is",
                            clip(old),
                            clip(id)
                        )));
                    }
                    Some(_) => false,
                    None => !self.ids.first(id),
                },
                None => false,
            };
            let call = &mut self.calls[pos];
            if let Err(what) = &piece.kind {
                return Err(Fault(format!(
                    "a streamed tool call turned into {what}; the guardrails cannot read it"
                )));
            }
            if declared.is_some_and(|k| k != call.kind) {
                return Err(Fault(
                    "a streamed tool call changed its type mid-call; the guardrails cannot read it"
                        .to_owned(),
                ));
            }
            if let Some(id) = piece.id {
                call.id = Some(id.to_owned());
            }
            if !call.held {
                if duplicate || piece.name.is_some() {
                    return Err(Fault(
                        "a streamed tool call that was already let through was renamed or re-identified; the guardrails cannot read it"
                            .to_owned(),
                    ));
                }
                return Ok(true);
            }
            if duplicate && call.forced.is_none() {
                call.forced = Some(Decision::duplicate_id(
                    &call.name,
                    piece.id.unwrap_or_default(),
                ));
            }
            let added = piece.name.map_or(0, str::len) + piece.arguments.map_or(0, str::len);
            call.name.push_str(piece.name.unwrap_or_default());
            call.arguments.push_str(piece.arguments.unwrap_or_default());
            self.hold_bytes(added)?;
            return Ok(false);
        }
        let kind = match slot {
            Slot::Legacy => Kind::Legacy,
            Slot::Index(_) | Slot::Unindexed(_) => declared.unwrap_or(Kind::Function),
        };
        let name = piece.name.unwrap_or_default();
        let mut forced = piece
            .kind
            .as_ref()
            .err()
            .map(|what| Decision::unreadable(name, what));
        if forced.is_none()
            && let Some(id) = piece.id
            && !self.ids.first(id)
        {
            forced = Some(Decision::duplicate_id(name, id));
        }
        // A call whose first delta names no tool is held: its name may come later, and only a
        // known name can be let through.
        let held = forced.is_some() || name.is_empty() || decide.may_block(name);
        let arguments = piece.arguments.unwrap_or_default();
        self.calls.push(Call {
            choice,
            slot,
            kind,
            id: piece.id.map(str::to_owned),
            name: name.to_owned(),
            arguments: if held {
                arguments.to_owned()
            } else {
                String::new()
            },
            held,
            forced,
            done: false,
        });
        if held {
            self.hold_bytes(name.len() + arguments.len())?;
        } else {
            decisions.push(decide.decide(name, Arguments::Text("{}")));
            self.passed.insert(choice);
        }
        Ok(!held)
    }

    /// Decide on the held calls of `choice` (every choice with `None`); the chunks that
    /// release or replace them.
    fn settle(
        &mut self,
        decide: &dyn Decide,
        choice: Option<u64>,
        decisions: &mut Decisions,
    ) -> Vec<Value> {
        let mut chunks = Vec::new();
        for call in self
            .calls
            .iter_mut()
            .filter(|c| !c.done && choice.is_none_or(|ch| ch == c.choice))
        {
            call.done = true;
            if !call.held {
                continue;
            }
            self.held_bytes = self
                .held_bytes
                .saturating_sub(call.name.len() + call.arguments.len());
            let d = match call.forced.take() {
                Some(d) => d,
                None if call.name.is_empty() => {
                    Decision::unreadable("", "a tool call without a name")
                }
                None => {
                    let arguments = match call.kind {
                        Kind::Custom => Arguments::Free(&call.arguments),
                        Kind::Function | Kind::Legacy => Arguments::Text(&call.arguments),
                    };
                    decide.decide(&call.name, arguments)
                }
            };
            let delta = if d.blocked() {
                self.blocked.insert(call.choice);
                json!({"content": format!("{}\n", d.refusal())})
            } else {
                self.passed.insert(call.choice);
                let mut tc = match call.kind {
                    Kind::Legacy => {
                        json!({"function_call": {"name": call.name, "arguments": call.arguments}})
                    }
                    Kind::Function => {
                        json!({"type": "function", "function": {"name": call.name, "arguments": call.arguments}})
                    }
                    Kind::Custom => {
                        json!({"type": "custom", "custom": {"name": call.name, "input": call.arguments}})
                    }
                };
                if call.kind != Kind::Legacy {
                    if let Slot::Index(i) = call.slot {
                        tc["index"] = json!(i);
                    }
                    if let Some(id) = &call.id {
                        tc["id"] = json!(id);
                    }
                    tc = json!({"tool_calls": [tc]});
                }
                tc
            };
            let mut chunk = self.template.clone();
            chunk.insert(
                "choices".to_owned(),
                json!([{"index": call.choice, "delta": delta, "finish_reason": null}]),
            );
            chunks.push(Value::Object(chunk));
            decisions.push(d);
        }
        self.calls.retain(|c| !c.done);
        chunks
    }

    fn choice(
        &mut self,
        decide: &dyn Decide,
        choice: &mut Value,
        before: &mut Vec<Value>,
        decisions: &mut Decisions,
    ) -> Result<bool, Fault> {
        let mut changed = false;
        let c = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
        if let Some(delta) = choice.get_mut("delta").filter(|d| d.is_object()) {
            if let Some(calls) = calls_mut(delta, "tool_calls")? {
                let mut kept = Vec::with_capacity(calls.len());
                let had = !calls.is_empty();
                let sent = std::mem::take(calls);
                let count = sent.len();
                for tc in sent {
                    let piece = read_piece(&tc)?;
                    let slot = self.slot_of(c, &tc, piece.id)?;
                    if self.delta(decide, c, slot, piece, decisions)? {
                        kept.push(tc);
                    }
                }
                let empty = kept.is_empty();
                changed |= kept.len() != count;
                *calls = kept;
                if had
                    && empty
                    && let Some(d) = delta.as_object_mut()
                {
                    d.remove("tool_calls");
                }
            }
            match delta.get("function_call") {
                None | Some(Value::Null) => {}
                Some(fc @ Value::Object(_)) => {
                    let piece = Piece {
                        id: None,
                        kind: Ok(None),
                        name: text_piece(fc.get("name"), "name")?.filter(|n| !n.is_empty()),
                        arguments: text_piece(fc.get("arguments"), "arguments")?,
                    };
                    if !self.delta(decide, c, Slot::Legacy, piece, decisions)?
                        && let Some(d) = delta.as_object_mut()
                    {
                        d.remove("function_call");
                        changed = true;
                    }
                }
                Some(_) => {
                    return Err(Fault(
                        "a streamed `function_call` is not an object; the guardrails cannot read it"
                            .to_owned(),
                    ));
                }
            }
        }
        let finish = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(reason) = finish {
            before.extend(self.settle(decide, Some(c), decisions));
            if matches!(reason.as_str(), "tool_calls" | "function_call")
                && self.blocked.contains(&c)
                && !self.passed.contains(&c)
            {
                choice["finish_reason"] = json!("stop");
                changed = true;
            }
        }
        Ok(changed)
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
        for key in ["id", "object", "created", "model", "system_fingerprint"] {
            if let Some(v) = value.get(key) {
                self.template.insert(key.to_owned(), v.clone());
            }
        }
        let mut before = Vec::new();
        let choices = match value.get_mut("choices") {
            None | Some(Value::Null) => return Ok(vec![Out::Same]),
            Some(Value::Array(choices)) => choices,
            Some(_) => {
                return Err(Fault(
                    "a streamed chunk's `choices` is not a list; the guardrails cannot read it"
                        .to_owned(),
                ));
            }
        };
        let mut changed = false;
        for choice in choices.iter_mut() {
            changed |= self.choice(decide, choice, &mut before, decisions)?;
        }
        let mut out: Vec<Out> = before
            .into_iter()
            .map(|chunk| Out::Json(name.map(str::to_owned), chunk))
            .collect();
        out.push(if changed {
            Out::Json(name.map(str::to_owned), value.clone())
        } else {
            Out::Same
        });
        Ok(out)
    }

    fn end(&mut self, decide: &dyn Decide, decisions: &mut Decisions) -> Vec<Out> {
        self.settle(decide, None, decisions)
            .into_iter()
            .map(|chunk| Out::Json(None, chunk))
            .collect()
    }

    fn holding(&self) -> bool {
        self.calls.iter().any(|c| c.held && !c.done)
    }
}
