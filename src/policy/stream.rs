//! Guardrails on streamed answers: the SSE driver over each format's stream guard
//! (`formats::<format>::guard::StreamGuard`). Pure and synchronous: bytes in, bytes out.
//!
//! Each upstream event is framed once, parsed into JSON once, its usage read from that
//! parse, and handed to the format's guard. Content and the calls of tools that cannot be
//! blocked in this context pass at once. The events of a call that may be blocked are held
//! back until the call is complete (its arguments are whole), then released as they were,
//! or replaced by text that says which tool was refused and why; the stop reason is adjusted
//! when no call is left. [`SseGuard::holding`] tells the caller when to send keep-alive
//! comments.
//!
//! Fail closed: an event the guard cannot read (not a JSON object: malformed, or nested
//! deeper than the parser's recursion limit), an event over [`MAX_EVENT_BYTES`], held-back
//! arguments over `MAX_HELD_BYTES`, or a call the format's guard cannot follow end the
//! stream with an error event in the format's shape ([`SseGuard::failed`]); nothing after it
//! is written.

use std::sync::Arc;

use serde_json::Value;

use crate::formats::GatewayError;
pub use crate::formats::guard::Usage;
use crate::formats::guard::{self, Fault, MAX_EVENT_BYTES, Out, StreamGuard};
use crate::formats::sse::{SseEvent, SseParser};
use crate::formats::{anthropic, cohere, gemini, openai};

use super::guardrails::{Decision, Format, Judge, ToolPolicy, Trust};

/// A guard over one streamed answer.
pub struct SseGuard {
    parser: SseParser,
    policy: Arc<ToolPolicy>,
    trust: Trust,
    format: Format,
    kind: Kind,
    decisions: Vec<Decision>,
    failed: bool,
    /// Usage seen so far.
    pub usage: Usage,
}

enum Kind {
    OpenAi(openai::guard::StreamGuard),
    Anthropic(anthropic::guard::StreamGuard),
    Gemini(gemini::guard::StreamGuard),
    Cohere(cohere::guard::StreamGuard),
}

impl Kind {
    fn guard(&mut self) -> &mut dyn StreamGuard {
        match self {
            Kind::OpenAi(g) => g,
            Kind::Anthropic(g) => g,
            Kind::Gemini(g) => g,
            Kind::Cohere(g) => g,
        }
    }

    fn holding(&self) -> bool {
        match self {
            Kind::OpenAi(g) => g.holding(),
            Kind::Anthropic(g) => g.holding(),
            Kind::Gemini(g) => g.holding(),
            Kind::Cohere(g) => g.holding(),
        }
    }
}

impl SseGuard {
    /// A guard for `format`, or `None` when this build cannot guard that format's streams
    /// (Bedrock's binary event streams: the native table refuses them under `spec.tools`).
    pub fn new(format: Format, policy: Arc<ToolPolicy>, trust: Trust) -> Option<Self> {
        let kind = match format {
            Format::OpenAi => Kind::OpenAi(openai::guard::StreamGuard::default()),
            Format::Anthropic => Kind::Anthropic(anthropic::guard::StreamGuard::default()),
            Format::Gemini => Kind::Gemini(gemini::guard::StreamGuard::default()),
            Format::Cohere => Kind::Cohere(cohere::guard::StreamGuard::default()),
            Format::Bedrock => return None,
        };
        Some(Self {
            parser: SseParser::default(),
            policy,
            trust,
            format,
            kind,
            decisions: Vec::new(),
            failed: false,
            usage: Usage::default(),
        })
    }

    /// Whether a call is being held back (the caller sends keep-alive comments meanwhile).
    pub fn holding(&self) -> bool {
        !self.failed && self.kind.holding()
    }

    /// Whether the guard ended the stream with an error event: the caller stops reading the
    /// upstream.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Decisions made since the last call.
    pub fn take_decisions(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.decisions)
    }

    /// Feed upstream bytes; returns what the client may have now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        let events = self.parser.push(bytes);
        let mut out = self.events(events, false);
        if !self.failed && self.parser.buffered() > MAX_EVENT_BYTES {
            self.fail(&mut out, &too_large());
        }
        out
    }

    /// The upstream ended: flush.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        let events = self.parser.finish();
        self.events(events, true)
    }

    fn fail(&mut self, out: &mut Vec<u8>, fault: &Fault) {
        self.failed = true;
        let error = GatewayError {
            status: 502,
            message: format!(
                "the upstream's answer could not be checked by the tool-call guardrails, so the stream was ended: {}",
                fault.0
            ),
            kind: "api_error".to_owned(),
            code: "upstream_invalid_response".to_owned(),
            param: None,
        };
        // Every format this guard streams has an SSE error event; the stream ends either way.
        out.extend(self.format.stream_error_event(&error).unwrap_or_default());
    }

    fn events(&mut self, events: Vec<SseEvent>, last: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for event in events {
            if self.failed {
                return out;
            }
            self.event(event, &mut out);
        }
        if last && !self.failed {
            // The stream ended: decide on what is held.
            self.end(&mut out);
        }
        out
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        let judge = Judge {
            policy: &self.policy,
            trust: &self.trust,
        };
        let outs = self.kind.guard().end(&judge, &mut self.decisions);
        for o in outs {
            if let Out::Json(name, value) = o {
                guard::write_raw(out, name.as_deref(), &value.to_string());
            }
        }
    }

    fn event(&mut self, event: SseEvent, out: &mut Vec<u8>) {
        if event.data.len() > MAX_EVENT_BYTES {
            self.fail(out, &too_large());
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.end(out);
            guard::write_raw(out, event.event.as_deref(), &event.data);
            return;
        }
        if data.is_empty() {
            guard::write_raw(out, event.event.as_deref(), &event.data);
            return;
        }
        let value = match serde_json::from_str::<Value>(&event.data) {
            Ok(v) if v.is_object() => v,
            Ok(_) | Err(_) => {
                self.fail(
                    out,
                    &Fault(
                        "an event is not a JSON object the gateway can read (malformed, or nested deeper than 128 levels)"
                            .to_owned(),
                    ),
                );
                return;
            }
        };
        self.guard_value(event.event.as_deref(), Some(&event.data), value, out);
    }

    /// One parsed event through the format's guard; `raw` is its data as it came (written
    /// again when the guard leaves the event unchanged).
    fn guard_value(
        &mut self,
        name: Option<&str>,
        raw: Option<&str>,
        mut value: Value,
        out: &mut Vec<u8>,
    ) {
        self.usage.read(self.format, &value);
        let judge = Judge {
            policy: &self.policy,
            trust: &self.trust,
        };
        match self
            .kind
            .guard()
            .event(&judge, name, &mut value, &mut self.decisions)
        {
            Ok(outs) => {
                for o in outs {
                    match o {
                        Out::Same => match raw {
                            Some(data) => guard::write_raw(out, name, data),
                            None => guard::write_raw(out, name, &value.to_string()),
                        },
                        Out::Json(n, v) => guard::write_raw(out, n.as_deref(), &v.to_string()),
                    }
                }
            }
            Err(fault) => self.fail(out, &fault),
        }
    }

    /// Feed one event that the caller has already parsed (the Model Router's translator holds
    /// each chunk as a value: it need not be written and parsed again before the guard reads
    /// it); returns what the client may have now, framed as SSE.
    pub fn push_value(&mut self, name: Option<&str>, value: Value) -> Vec<u8> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        if !value.is_object() {
            self.fail(
                &mut out,
                &Fault("an event is not a JSON object the gateway can read".to_owned()),
            );
            return out;
        }
        self.guard_value(name, None, value, &mut out);
        out
    }

    /// The caller's stream ended (after [`Self::push_value`]): decide on what is held.
    pub fn finish_values(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.failed {
            self.end(&mut out);
        }
        out
    }
}

fn too_large() -> Fault {
    Fault(format!(
        "an event of the answer exceeds the guardrails' limit of {MAX_EVENT_BYTES} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::guardrails::tests::policy;
    use serde_json::json;

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

    #[test]
    fn held_arguments_over_the_cap_end_the_stream() {
        let mut g = guard(Format::OpenAi, untrusted());
        let events = openai_tool_stream("send_email", &[]);
        let mut out = Vec::new();
        for e in &events[..3] {
            out.extend(g.push(e.as_bytes()));
        }
        let piece = "x".repeat(1 << 20);
        let delta = format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}}]})
        );
        for _ in 0..5 {
            out.extend(g.push(delta.as_bytes()));
        }
        assert!(g.failed());
        assert!(!g.holding());
        // Nothing after the error event, and the held call never reaches the client.
        assert!(g.push(events[3].as_bytes()).is_empty());
        assert!(g.finish().is_empty());
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("send_email") && !text.contains("xxxx"));
        let last = sse_datas(&out).pop().unwrap_or_default();
        assert_eq!(last["error"]["code"], "upstream_invalid_response", "{last}");
        assert!(
            last["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("limit of 4194304 bytes")
        );
    }

    #[test]
    fn an_endless_event_ends_the_stream_with_an_error_in_the_format_shape() {
        let mut g = guard(Format::Anthropic, untrusted());
        let chunk = vec![b'a'; 1 << 20];
        let mut out = g.push(b"event: content_block_delta\ndata: {\"x\":\"");
        for _ in 0..9 {
            out.extend(g.push(&chunk));
        }
        assert!(g.failed());
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            text.starts_with("event: error\ndata: "),
            "{}",
            &text[..80.min(text.len())]
        );
        let data = sse_datas(&out).pop().unwrap_or_default();
        assert_eq!(data["type"], "error");
        assert!(
            data["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("exceeds the guardrails' limit")
        );
    }

    #[test]
    fn unreadable_events_end_the_stream_instead_of_passing_raw() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for (format, event) in [
            (Format::OpenAi, format!("data: {{\"choices\":{deep}}}\n\n")),
            (
                Format::Gemini,
                "data: {\"candidates\":[{\"content\"\n\n".to_owned(),
            ),
            (
                Format::Cohere,
                "event: tool-call-start\ndata: [1]\n\n".to_owned(),
            ),
        ] {
            let mut g = guard(format, untrusted());
            let out = g.push(event.as_bytes());
            assert!(g.failed(), "{format:?}");
            let text = String::from_utf8_lossy(&out);
            assert!(
                !text.contains("[[[") && !text.contains("candidates"),
                "{text}"
            );
            assert!(text.contains("could not be checked"), "{text}");
        }
        // Comments, empty data and `[DONE]` are not JSON and pass.
        let mut g = guard(Format::OpenAi, untrusted());
        let out = g.push(b": keep-alive\n\ndata:\n\ndata: [DONE]\n\n");
        assert!(!g.failed());
        assert!(String::from_utf8_lossy(&out).contains("[DONE]"));
    }

    #[test]
    fn parsed_events_are_guarded_like_framed_ones() {
        let events = openai_tool_stream("send_email", &["{\"to\":", "\"evil@example.net\"}"]);
        let mut framed = guard(Format::OpenAi, untrusted());
        let mut by_value = guard(Format::OpenAi, untrusted());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for e in &events {
            a.extend(framed.push(e.as_bytes()));
            let data = e.trim().trim_start_matches("data: ");
            match serde_json::from_str::<Value>(data) {
                Ok(v) => b.extend(by_value.push_value(None, v)),
                Err(_) => b.extend(by_value.finish_values()),
            }
        }
        a.extend(framed.finish());
        let (a, b) = (sse_datas(&a), sse_datas(&b));
        // The same JSON events (the value path writes no `[DONE]`: its caller does).
        assert_eq!(a, b);
        assert_eq!(framed.take_decisions(), by_value.take_decisions());
        assert!(
            !String::from_utf8_lossy(&serde_json::to_vec(&b).unwrap_or_default()).contains("evil@")
        );
    }
}
