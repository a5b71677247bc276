//! The response side of a reservation: the body passes on to the client while the usage
//! the provider reports is read on the side (SSE events, a Bedrock event stream, or a JSON
//! answer up to a bound); when the body ends — or the client goes away — the reservation is
//! settled with that usage, or with an estimate from the bytes sent.
//!
//! When the gateway itself asked an OpenAI-format stream for usage
//! (`stream_options.include_usage`), the usage-only chunk it added is kept from the client.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header;
use serde_json::Value;

use super::{Actual, Outcome, Reservation};

/// Largest JSON answer copied aside to read its usage.
pub const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Sse,
    EventStream,
    Json,
}

/// `Value::pointer` for the plain paths of this module (`/a/b`: no `~` escapes, no array
/// index), without the two `String`s `pointer` allocates per path segment.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').skip(1).try_fold(v, |v, key| v.get(key))
}

/// The top-level members of an answer that [`read_usage`] reads.
const USAGE_MEMBERS: [&str; 5] = ["usageMetadata", "usage", "response", "message", "delta"];

/// A JSON object reduced to what this module reads of it: its [`USAGE_MEMBERS`], and whether
/// its `choices` is an empty array. Every other member is skipped without being built (an
/// answer or a stream chunk is never made a whole `Value` just to find its usage). Anything
/// but an object, a key with an escape, or `choices` that is not an array is an error: the
/// caller then parses the whole value, so the result is always what the whole value says.
struct UsageMembers {
    members: Value,
    choices_empty: bool,
}

/// Whether a JSON array is empty, its elements skipped unparsed.
struct EmptyArray(bool);

impl<'de> serde::Deserialize<'de> for EmptyArray {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = EmptyArray;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EmptyArray, A::Error> {
                let empty = seq.next_element::<serde::de::IgnoredAny>()?.is_none();
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(EmptyArray(empty))
            }
        }
        d.deserialize_seq(Visit)
    }
}

impl<'de> serde::Deserialize<'de> for UsageMembers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = UsageMembers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UsageMembers, A::Error> {
                let mut members = serde_json::Map::new();
                let mut choices_empty = false;
                // A repeated member: the last one counts, as in a parsed `Value`.
                while let Some(key) = map.next_key::<&'de str>()? {
                    if USAGE_MEMBERS.contains(&key) {
                        members.insert(key.to_owned(), map.next_value::<Value>()?);
                    } else if key == "choices" {
                        choices_empty = map.next_value::<EmptyArray>()?.0;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(UsageMembers {
                    members: Value::Object(members),
                    choices_empty,
                })
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Read the usage in one JSON text (a whole answer, or one event's data) into `acc`; whether
/// it is a usage-only OpenAI chunk. `None`: not JSON.
fn read_json_usage(json: &[u8], acc: &mut Option<Actual>) -> Option<bool> {
    if let Ok(m) = serde_json::from_slice::<UsageMembers>(json) {
        read_usage(&m.members, acc);
        return Some(m.choices_empty && m.members.get("usage").is_some_and(Value::is_object));
    }
    let v = serde_json::from_slice::<Value>(json).ok()?;
    read_usage(&v, acc);
    Some(usage_only_chunk(&v))
}

/// Read usage from one JSON value of any format; fields it lacks stay as they were.
pub fn read_usage(v: &Value, acc: &mut Option<Actual>) {
    let u = |p: &str| at(v, p).and_then(Value::as_u64);
    let mut set = |input: Option<u64>, cached: Option<u64>, output: Option<u64>| {
        if input.is_none() && cached.is_none() && output.is_none() {
            return;
        }
        let a = acc.get_or_insert_with(Actual::default);
        if let Some(i) = input {
            a.input = i;
        }
        if let Some(c) = cached {
            a.cached_input = c;
        }
        if let Some(o) = output {
            a.output = o;
        }
    };
    // Gemini: usageMetadata (cached tokens are part of the prompt count).
    if let Some(prompt) = u("/usageMetadata/promptTokenCount") {
        let cached = u("/usageMetadata/cachedContentTokenCount").unwrap_or(0);
        let output = u("/usageMetadata/candidatesTokenCount").unwrap_or(0)
            + u("/usageMetadata/thoughtsTokenCount").unwrap_or(0);
        set(
            Some(prompt.saturating_sub(cached)),
            Some(cached),
            Some(output),
        );
        return;
    }
    let usage = [
        "/usage",
        "/response/usage",
        "/message/usage",
        "/delta/usage",
    ]
    .iter()
    .find_map(|p| at(v, p).filter(|u| u.is_object()));
    let Some(usage) = usage else {
        return;
    };
    let g = |p: &str| at(usage, p).and_then(Value::as_u64);
    if let Some(prompt) = g("/prompt_tokens") {
        // OpenAI Chat Completions: cached tokens are part of prompt_tokens.
        let cached = g("/prompt_tokens_details/cached_tokens").unwrap_or(0);
        set(
            Some(prompt.saturating_sub(cached)),
            Some(cached),
            g("/completion_tokens"),
        );
    } else if g("/input_tokens_details/cached_tokens").is_some() {
        // OpenAI Responses: cached tokens are part of input_tokens.
        let cached = g("/input_tokens_details/cached_tokens").unwrap_or(0);
        set(
            g("/input_tokens").map(|i| i.saturating_sub(cached)),
            Some(cached),
            g("/output_tokens"),
        );
    } else if g("/inputTokens").is_some() || g("/outputTokens").is_some() {
        // Bedrock Converse.
        set(
            g("/inputTokens").map(|i| i + g("/cacheWriteInputTokens").unwrap_or(0)),
            g("/cacheReadInputTokens"),
            g("/outputTokens"),
        );
    } else if let Some(tokens) = usage.get("tokens").filter(|t| t.is_object()) {
        // Cohere v2.
        let t = |k: &str| tokens.get(k).and_then(Value::as_u64);
        set(t("input_tokens"), None, t("output_tokens"));
    } else {
        // Anthropic (cache reads and writes are counted apart from input_tokens), and the
        // Responses API without details.
        let input = g("/input_tokens").map(|i| i + g("/cache_creation_input_tokens").unwrap_or(0));
        set(input, g("/cache_read_input_tokens"), g("/output_tokens"));
    }
}

/// Whether some JSON text may carry usage, without parsing it.
fn mentions_usage(text: &[u8]) -> bool {
    memfind(text, b"\"usage") || memfind(text, b"usageMetadata")
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Copy an event, without the `"usage": null` member that asking for usage adds to every
/// chunk (the client did not ask for it). Whitespace around the member is the upstream's own.
fn strip_null_usage(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        if let Some(end) = null_usage_at(raw, i) {
            i = end;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
}

/// If `raw[i..]` starts a `, "usage": null` member (or `"usage": null,` as the first one),
/// where it ends.
fn null_usage_at(raw: &[u8], i: usize) -> Option<usize> {
    let ws = |mut j: usize| {
        while raw.get(j).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            j += 1;
        }
        j
    };
    let member = |j: usize| -> Option<usize> {
        let j = j + raw.get(j..)?.strip_prefix(b"\"usage\"").map(|_| 7)?;
        let j = ws(j);
        (raw.get(j) == Some(&b':')).then_some(())?;
        let j = ws(j + 1);
        raw.get(j..)?.starts_with(b"null").then_some(j + 4)
    };
    match raw[i] {
        b',' => {
            let end = member(ws(i + 1))?;
            // Only a whole member: what follows is the next member or the object's end.
            matches!(raw.get(ws(end)), Some(b',' | b'}')).then_some(end)
        }
        b'"' if i > 0
            && raw[..i].iter().rev().find(|b| !matches!(b, b' ' | b'\t')) == Some(&b'{') =>
        {
            let end = member(i)?;
            let after = ws(end);
            (raw.get(after) == Some(&b',')).then(|| ws(after + 1))
        }
        _ => None,
    }
}

/// An OpenAI chunk that carries only usage (`"choices": []`): the one the gateway asked for.
fn usage_only_chunk(v: &Value) -> bool {
    v.get("usage").is_some_and(Value::is_object)
        && v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
}

struct Tap {
    reservation: Option<Reservation>,
    framing: Framing,
    reached: bool,
    hide: bool,
    usage: Option<Actual>,
    bytes_out: u64,
    pending: Vec<u8>,
    json: Vec<u8>,
    overflow: bool,
    decoder: crate::formats::bedrock::eventstream::Decoder,
}

/// Index just past the first SSE event separator (blank line) at or after `from`.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

impl Tap {
    /// One SSE event's text: read its usage; whether it goes to the client.
    fn event(&mut self, raw: &[u8]) -> bool {
        if !mentions_usage(raw) {
            return true;
        }
        let text = String::from_utf8_lossy(raw);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        let Some(usage_only) = read_json_usage(data.as_bytes(), &mut self.usage) else {
            return true;
        };
        !(self.hide && usage_only)
    }

    fn push(&mut self, bytes: Bytes) -> Bytes {
        match self.framing {
            Framing::Json => {
                if !self.overflow {
                    if self.json.len() + bytes.len() > MAX_JSON_BYTES {
                        self.overflow = true;
                        self.json = Vec::new();
                    } else {
                        self.json.extend_from_slice(&bytes);
                    }
                }
                self.bytes_out += bytes.len() as u64;
                bytes
            }
            Framing::EventStream => {
                for message in self.decoder.push(&bytes).into_iter().flatten() {
                    if mentions_usage(&message.payload)
                        && let Ok(v) = serde_json::from_slice::<Value>(&message.payload)
                    {
                        read_usage(&v, &mut self.usage);
                    }
                }
                self.bytes_out += bytes.len() as u64;
                bytes
            }
            Framing::Sse if !self.hide => {
                // Pass through unchanged; frame a copy to read usage.
                self.pending.extend_from_slice(&bytes);
                self.drain(false);
                self.bytes_out += bytes.len() as u64;
                bytes
            }
            Framing::Sse => {
                self.pending.extend_from_slice(&bytes);
                let out = self.drain(true);
                self.bytes_out += out.len() as u64;
                Bytes::from(out)
            }
        }
    }

    /// Take the complete events from `pending`; with `emit`, return those the client gets.
    fn drain(&mut self, emit: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0;
        let pending = std::mem::take(&mut self.pending);
        while let Some(end) = event_end(&pending, start) {
            let raw = &pending[start..end];
            if self.event(raw) && emit {
                strip_null_usage(raw, &mut out);
            }
            start = end;
        }
        self.pending = pending[start..].to_vec();
        // An event can be large but never unbounded: past 1 MiB it is passed on unread.
        if self.pending.len() > 1024 * 1024 {
            if emit {
                out.extend_from_slice(&self.pending);
            }
            self.pending.clear();
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        if self.framing == Framing::Sse && !self.pending.is_empty() {
            let raw = std::mem::take(&mut self.pending);
            if self.event(&raw) && self.hide {
                rest = raw;
            }
        }
        if self.framing == Framing::Json && !self.overflow {
            read_json_usage(&self.json, &mut self.usage);
        }
        rest
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.finish();
            r.settle(Outcome {
                reached_upstream: self.reached,
                usage: self.usage,
                bytes_out: self.bytes_out,
            });
        }
    }
}

/// Wrap a response so that its reservation is settled when the body ends. `reached`: the
/// upstream answered; `hide`: drop the usage-only chunk the gateway asked for.
pub fn wrap(response: Response, reservation: Reservation, reached: bool, hide: bool) -> Response {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let framing = if content_type.starts_with("text/event-stream") {
        Framing::Sse
    } else if content_type.starts_with("application/vnd.amazon.eventstream") {
        Framing::EventStream
    } else {
        Framing::Json
    };
    let (mut parts, body) = response.into_parts();
    if hide && framing == Framing::Sse {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let mut tap = Tap {
        reservation: Some(reservation),
        framing,
        reached,
        hide: hide && framing == Framing::Sse,
        usage: None,
        bytes_out: 0,
        pending: Vec::new(),
        json: Vec::new(),
        overflow: false,
        decoder: Default::default(),
    };
    let body = body
        .into_data_stream()
        .map(Some)
        .chain(futures_util::stream::once(async { None }))
        .map(move |item| match item {
            Some(Ok(bytes)) => Some(Ok(tap.push(bytes))),
            Some(Err(e)) => Some(Err(e)),
            None => {
                let rest = tap.finish();
                let settle = tap.reservation.take();
                if let Some(r) = settle {
                    r.settle(Outcome {
                        reached_upstream: tap.reached,
                        usage: tap.usage,
                        bytes_out: tap.bytes_out,
                    });
                }
                (!rest.is_empty()).then(|| Ok(Bytes::from(rest)))
            }
        })
        .filter_map(|x| async move { x })
        .filter(|r| {
            let keep = !matches!(r, Ok(b) if b.is_empty());
            async move { keep }
        });
    Response::from_parts(parts, Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(v: Value) -> Option<Actual> {
        let mut acc = None;
        read_usage(&v, &mut acc);
        acc
    }

    #[test]
    fn usage_of_every_format_counts_cached_input() {
        let a = |input, cached_input, output| {
            Some(Actual {
                input,
                cached_input,
                output,
            })
        };
        assert_eq!(
            usage(
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4}}})
            ),
            a(6, 4, 5)
        );
        assert_eq!(
            usage(json!({"usage": {"input_tokens": 10, "output_tokens": 5,
                "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}})),
            a(17, 100, 5)
        );
        assert_eq!(
            usage(
                json!({"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                "cachedContentTokenCount": 3}})
            ),
            a(7, 3, 5)
        );
        assert_eq!(
            usage(
                json!({"usage": {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 2}})
            ),
            a(10, 2, 5)
        );
        assert_eq!(
            usage(json!({"type": "message_delta", "usage": {"output_tokens": 9}})),
            a(0, 0, 9)
        );
        assert_eq!(usage(json!({"choices": []})), None);
    }

    #[test]
    fn an_answer_reads_as_its_parsed_value_does() {
        let answers = [
            // OpenAI Chat Completions, with the members read skipped around it.
            json!({"id": "c", "object": "chat.completion", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": "hi", "usage": {"x": 1}}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 8,
                          "prompt_tokens_details": {"cached_tokens": 2}}}),
            // Anthropic Messages, Gemini, Bedrock Converse, Responses, Cohere v2.
            json!({"type": "message", "content": [{"type": "text", "text": "hi"}],
                "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3}}),
            json!({"candidates": [{"content": {"parts": [{"text": "hi"}]}}],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5}}),
            json!({"output": {"message": {}}, "usage": {"inputTokens": 10, "outputTokens": 5}}),
            json!({"object": "response", "output": [], "usage": {"input_tokens": 10,
                "output_tokens": 5, "input_tokens_details": {"cached_tokens": 4}}}),
            json!({"message": {"content": []}, "usage": {"tokens": {"input_tokens": 10,
                "output_tokens": 5}}}),
            // Nested places, and none at all.
            json!({"response": {"usage": {"input_tokens": 1, "output_tokens": 2}}}),
            json!({"message": {"usage": {"input_tokens": 3, "output_tokens": 4}}}),
            json!({"choices": [], "usage": null}),
            json!([{"usageMetadata": {"promptTokenCount": 1}}]),
            json!("text"),
        ];
        let chunks = [
            // OpenAI chunks: content (usage null), the usage-only one, and look-alikes.
            json!({"choices": [{"index": 0, "delta": {"content": "a"}}], "usage": null}),
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 20}}),
            json!({"choices": [], "usage": null}),
            json!({"choices": [{}], "usage": {"prompt_tokens": 9}}),
            json!({"choices": null, "usage": {"prompt_tokens": 9}}),
            json!({"choices": {}, "usage": {"prompt_tokens": 9}}),
            json!({"usage": {"prompt_tokens": 9}}),
        ];
        for answer in answers.iter().chain(&chunks) {
            let bytes = answer.to_string().into_bytes();
            let mut acc = None;
            let usage_only = read_json_usage(&bytes, &mut acc);
            assert_eq!(acc, usage(answer.clone()), "{answer}");
            assert_eq!(usage_only, Some(usage_only_chunk(answer)), "{answer}");
        }
        assert_eq!(
            chunks.iter().map(usage_only_chunk).collect::<Vec<_>>(),
            [false, true, false, false, false, false, false]
        );
        // A repeated member: the last one counts, as in a parsed value.
        let twice = br#"{"usage": {"prompt_tokens": 1}, "usage": {"prompt_tokens": 7}}"#;
        let mut acc = None;
        read_json_usage(twice, &mut acc);
        assert_eq!(acc.map(|a| a.input), Some(7));
        let twice = br#"{"choices": [], "usage": {"prompt_tokens": 1}, "choices": [1]}"#;
        assert_eq!(read_json_usage(twice, &mut None), Some(false));
        // An escaped key falls back to the whole parse; invalid JSON reads nothing.
        let escaped = br#"{"\u0075sage": {"prompt_tokens": 5, "completion_tokens": 1}}"#;
        let mut acc = None;
        read_json_usage(escaped, &mut acc);
        assert_eq!(acc.map(|a| (a.input, a.output)), Some((5, 1)));
        let mut acc = None;
        assert_eq!(
            read_json_usage(br#"{"usage": {"prompt_tokens": 5}"#, &mut acc),
            None
        );
        assert_eq!(
            read_json_usage(br#"{"usage": {"prompt_tokens": 5}} x"#, &mut acc),
            None
        );
        assert_eq!(acc, None);
    }

    #[test]
    fn null_usage_members_are_stripped() {
        let mut out = Vec::new();
        strip_null_usage(
            br#"data: {"id":"x","choices":[{"delta":{"content":"a"}}],"usage":null}"#,
            &mut out,
        );
        assert_eq!(
            out,
            br#"data: {"id":"x","choices":[{"delta":{"content":"a"}}]}"#
        );
        out.clear();
        strip_null_usage(br#"data: {"usage": null, "id":"x"}"#, &mut out);
        assert_eq!(out, br#"data: {"id":"x"}"#);
        out.clear();
        strip_null_usage(br#"data: {"id": "x", "usage": null}"#, &mut out);
        assert_eq!(out, br#"data: {"id": "x"}"#);
        // Content that merely mentions it stays.
        out.clear();
        let text = br#"data: {"choices": [{"delta": {"content": "a, \"usage\": null"}}]}"#;
        strip_null_usage(text, &mut out);
        assert_eq!(out, text.to_vec());
    }

    #[test]
    fn events_are_framed_across_chunks() {
        let buf = b"data: a\n\ndata: b\r\n\r\ndata: c";
        assert_eq!(event_end(buf, 0), Some(9));
        assert_eq!(event_end(buf, 9), Some(20));
        assert_eq!(event_end(buf, 20), None);
    }
}
