//! The response side of a reservation: the body passes on to the client while the usage
//! the provider reports is read on the side (SSE events, a Bedrock event stream, or the usage
//! members of a JSON answer — or of each object of a JSON array — found by a scanner that
//! never holds the answer, whatever its size); when the body ends — or the client goes away —
//! the reservation is settled with that usage, or with an estimate from the bytes sent.
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

/// Largest usage member of a JSON answer copied aside to be read.
const MAX_MEMBER_BYTES: usize = 64 * 1024;

/// Members of a JSON answer (or of each object of a JSON array) that carry usage: OpenAI,
/// Anthropic, Bedrock and Cohere v2 `usage`, Gemini `usageMetadata`, Cohere `meta`.
const ANSWER_MEMBERS: [&str; 3] = ["usage", "usageMetadata", "meta"];

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

/// The top-level members of a stream event that [`read_usage`] and [`provisional_usage`]
/// read.
const EVENT_MEMBERS: [&str; 7] = [
    "usageMetadata",
    "usage",
    "response",
    "message",
    "delta",
    "type",
    "candidates",
];

/// A JSON object reduced to what this module reads of it: its [`EVENT_MEMBERS`], and whether
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
                    if EVENT_MEMBERS.contains(&key) {
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

/// Read the usage in one event's JSON data into `acc`: whether it is a usage-only OpenAI
/// chunk, and whether its usage is a running count ([`provisional_usage`]). `None`: not JSON.
fn read_json_usage(json: &[u8], acc: &mut Option<Actual>) -> Option<(bool, Option<bool>)> {
    if let Ok(m) = serde_json::from_slice::<UsageMembers>(json) {
        read_usage(&m.members, acc);
        let usage_only = m.choices_empty && m.members.get("usage").is_some_and(Value::is_object);
        return Some((usage_only, provisional_usage(&m.members)));
    }
    let v = serde_json::from_slice::<Value>(json).ok()?;
    read_usage(&v, acc);
    Some((usage_only_chunk(&v), provisional_usage(&v)))
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
        // Cohere v1 chat (`meta.tokens`) and embed (`meta.billed_units`).
        let meta = ["/meta/tokens", "/meta/billed_units"]
            .iter()
            .find_map(|p| v.pointer(p).filter(|m| m.is_object()));
        if let Some(meta) = meta {
            let m = |k: &str| meta.get(k).and_then(Value::as_u64);
            set(m("input_tokens"), None, m("output_tokens"));
        }
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
    USAGE_PREFIX.find(text).is_some() || USAGE_METADATA.find(text).is_some()
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// The searchers of the per-event paths, built once (building one costs more than a search
/// of a small event).
static QUOTED_USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
static USAGE_PREFIX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage"));
static USAGE_METADATA: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"usageMetadata"));

/// The first index from `j` that is not a space or a tab.
fn skip_blanks(raw: &[u8], mut j: usize) -> usize {
    while raw.get(j).is_some_and(|b| matches!(b, b' ' | b'\t')) {
        j += 1;
    }
    j
}

/// Whether every `"usage"` member of an event is `null` (what asking for usage adds to each
/// OpenAI chunk): such an event has no usage to read and is not a usage-only chunk, so it
/// is not parsed.
fn only_null_usage(raw: &[u8]) -> bool {
    if USAGE_METADATA.find(raw).is_some() {
        return false;
    }
    let ws = |j| skip_blanks(raw, j);
    QUOTED_USAGE.find_iter(raw).all(|at| {
        let colon = ws(at + 7);
        raw.get(colon) == Some(&b':') && raw[ws(colon + 1)..].starts_with(b"null")
    })
}

/// Copy an event, without the `"usage": null` member that asking for usage adds to every
/// chunk (the client did not ask for it). Whitespace around the member is the upstream's own.
fn strip_null_usage(raw: &[u8], out: &mut Vec<u8>) {
    // Whole slices are copied between the members found (most events have none or one).
    let mut copied = 0;
    for at in QUOTED_USAGE.find_iter(raw) {
        // The member starts at the comma before it, or at its quote when it comes first.
        let before = raw[..at].iter().rposition(|b| !matches!(b, b' ' | b'\t'));
        let start = match before.map(|k| (k, raw[k])) {
            Some((k, b',')) => k,
            Some((_, b'{')) => at,
            _ => continue,
        };
        if start < copied {
            continue;
        }
        if let Some(end) = null_usage_at(raw, start) {
            out.extend_from_slice(&raw[copied..start]);
            copied = end;
        }
    }
    out.extend_from_slice(&raw[copied..]);
}

/// If `raw[i..]` starts a `, "usage": null` member (or `"usage": null,` as the first one),
/// where it ends.
fn null_usage_at(raw: &[u8], i: usize) -> Option<usize> {
    let ws = |j| skip_blanks(raw, j);
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

/// Whether the usage a stream event carries is a running count that a later event
/// replaces: Anthropic `message_start` (output 1 until `message_delta`), a Gemini chunk
/// whose candidates have not finished. `None`: the event carries no usage.
fn provisional_usage(v: &Value) -> Option<bool> {
    if v.get("usageMetadata").is_some_and(Value::is_object) {
        // A chunk of candidates none of which has finished (a usage-only chunk is final).
        let running = v
            .get("candidates")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c.get("finishReason").is_none()));
        return Some(running);
    }
    if v.get("type").and_then(Value::as_str) == Some("message_start") {
        return v
            .pointer("/message/usage")
            .is_some_and(Value::is_object)
            .then_some(true);
    }
    ["/usage", "/response/usage", "/delta/usage"]
        .iter()
        .any(|p| v.pointer(p).is_some_and(Value::is_object))
        .then_some(false)
}

/// An OpenAI chunk that carries only usage (`"choices": []`): the one the gateway asked for.
fn usage_only_chunk(v: &Value) -> bool {
    v.get("usage").is_some_and(Value::is_object)
        && v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
}

/// Reads the usage members of a JSON text as it passes, in bounded memory: a small state
/// machine tracks strings and nesting; the value of a member named in [`ANSWER_MEMBERS`] of a
/// record — the top-level object, or each object of a top-level array (Gemini
/// `streamGenerateContent` without `alt=sse`) — is copied aside (up to [`MAX_MEMBER_BYTES`])
/// and read when it ends. Members nested deeper, and text inside strings, are never taken.
#[derive(Default)]
struct JsonScan {
    /// Open objects and arrays.
    depth: u32,
    /// Depth of the records: 1 (the root is an object) or 2 (objects of a root array).
    record: u32,
    /// The container at the record depth is an object.
    record_object: bool,
    in_string: bool,
    escaped: bool,
    /// At the record depth, the next string is a member name.
    expect_key: bool,
    /// The member name being read (bounded).
    key: Option<Vec<u8>>,
    /// The member just named is a usage member (its value follows the colon).
    wanted: Option<&'static str>,
    /// The usage member whose value is being copied, and the copy (`None` past the bound).
    capture: Option<(&'static str, Option<Vec<u8>>)>,
    /// Not JSON as expected (a close without an open, nesting past `u32`): stop reading.
    broken: bool,
}

impl JsonScan {
    fn push(&mut self, bytes: &[u8], acc: &mut Option<Actual>) {
        let mut i = 0;
        while i < bytes.len() && !self.broken {
            if self.in_string {
                // Jump to the next quote or backslash; copy the run.
                let end = if self.escaped {
                    self.escaped = false;
                    i + 1
                } else {
                    match bytes[i..].iter().position(|&c| c == b'"' || c == b'\\') {
                        None => bytes.len(),
                        Some(k) if bytes[i + k] == b'\\' => {
                            self.escaped = true;
                            i + k + 1
                        }
                        Some(k) => {
                            self.in_string = false;
                            i + k + 1
                        }
                    }
                };
                self.copy(&bytes[i..end]);
                if let Some(key) = self.key.as_mut() {
                    let run = &bytes[i..end];
                    let run = if self.in_string {
                        run
                    } else {
                        &run[..run.len() - 1]
                    };
                    if key.len() + run.len() <= 32 {
                        key.extend_from_slice(run);
                    } else {
                        key.clear();
                        key.push(0);
                    }
                }
                if !self.in_string
                    && let Some(key) = self.key.take()
                {
                    self.wanted = ANSWER_MEMBERS.iter().copied().find(|m| m.as_bytes() == key);
                    self.expect_key = false;
                }
                i = end;
                continue;
            }
            let b = bytes[i];
            i += 1;
            let at_record = self.depth == self.record && self.record > 0;
            match b {
                b'"' => {
                    self.in_string = true;
                    if at_record && self.record_object && self.expect_key && self.capture.is_none()
                    {
                        self.key = Some(Vec::new());
                    }
                    self.copy(&[b]);
                }
                b'{' | b'[' => {
                    if self.record == 0 {
                        self.record = if b == b'{' { 1 } else { 2 };
                    }
                    match self.depth.checked_add(1) {
                        Some(d) => self.depth = d,
                        None => self.broken = true,
                    }
                    if self.depth == self.record {
                        self.record_object = b == b'{';
                        self.expect_key = self.record_object;
                        self.wanted = None;
                    }
                    self.copy(&[b]);
                }
                b'}' | b']' => {
                    if at_record {
                        self.end_capture(acc);
                    } else {
                        self.copy(&[b]);
                    }
                    match self.depth.checked_sub(1) {
                        Some(d) => self.depth = d,
                        None => self.broken = true,
                    }
                }
                b',' if at_record => {
                    self.end_capture(acc);
                    self.expect_key = self.record_object;
                    self.wanted = None;
                }
                b':' if at_record && self.capture.is_none() => {
                    if let Some(name) = self.wanted.take() {
                        self.capture = Some((name, Some(Vec::new())));
                    }
                }
                _ => self.copy(&[b]),
            }
        }
    }

    /// Copy bytes of the value being captured, dropping the copy past the bound.
    fn copy(&mut self, run: &[u8]) {
        if let Some((_, slot)) = self.capture.as_mut()
            && let Some(buf) = slot
        {
            if buf.len() + run.len() > MAX_MEMBER_BYTES {
                *slot = None;
            } else {
                buf.extend_from_slice(run);
            }
        }
    }

    /// The captured value ended: read it as that member of a record.
    fn end_capture(&mut self, acc: &mut Option<Actual>) {
        if let Some((name, Some(buf))) = self.capture.take()
            && let Ok(value) = serde_json::from_slice::<Value>(&buf)
        {
            let mut record = serde_json::Map::new();
            record.insert(name.to_owned(), value);
            read_usage(&Value::Object(record), acc);
        }
    }
}

struct Tap {
    reservation: Option<Reservation>,
    framing: Framing,
    reached: bool,
    hide: bool,
    usage: Option<Actual>,
    /// The last usage read is a running count, not the final one.
    provisional: bool,
    bytes_out: u64,
    pending: Vec<u8>,
    json: JsonScan,
    decoder: crate::formats::bedrock::eventstream::Decoder,
}

/// Index just past the first SSE event separator (blank line) at or after `from`.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(at) = memchr::memchr(b'\n', buf.get(i..)?) {
        let nl = i + at;
        if buf.get(nl + 1) == Some(&b'\n') {
            return Some(nl + 2);
        }
        if buf.get(nl + 1) == Some(&b'\r') && buf.get(nl + 2) == Some(&b'\n') {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

impl Tap {
    /// One SSE event's text: read its usage; whether it goes to the client.
    fn event(&mut self, raw: &[u8]) -> bool {
        if !mentions_usage(raw) || only_null_usage(raw) {
            return true;
        }
        let text = String::from_utf8_lossy(raw);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        let Some((usage_only, provisional)) = read_json_usage(data.as_bytes(), &mut self.usage)
        else {
            return true;
        };
        if let Some(provisional) = provisional {
            self.provisional = provisional;
        }
        !(self.hide && usage_only)
    }

    /// Read the usage of one stream event, and whether it is a running count.
    fn read_event(&mut self, v: &Value) {
        read_usage(v, &mut self.usage);
        if let Some(provisional) = provisional_usage(v) {
            self.provisional = provisional;
        }
    }

    /// One Bedrock event-stream message: a Converse event, or an InvokeModelWithResponseStream
    /// `chunk` whose `bytes` hold the model's own event (base64), the last one with
    /// `amazon-bedrock-invocationMetrics`.
    fn bedrock_message(&mut self, payload: &[u8]) {
        if !mentions_usage(payload) && !memfind(payload, b"\"bytes\"") {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        let Some(encoded) = v.get("bytes").and_then(Value::as_str) else {
            self.read_event(&v);
            return;
        };
        use base64::Engine;
        let Some(inner) = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            return;
        };
        self.read_event(&inner);
        if let Some(m) = inner
            .get("amazon-bedrock-invocationMetrics")
            .filter(|m| m.is_object())
        {
            // Counted as Converse counts: cache reads apart, cache writes as input.
            let usage = serde_json::json!({"usage": {
                "inputTokens": m.get("inputTokenCount"),
                "outputTokens": m.get("outputTokenCount"),
                "cacheReadInputTokens": m.get("cacheReadInputTokenCount"),
                "cacheWriteInputTokens": m.get("cacheWriteInputTokenCount"),
            }});
            read_usage(&usage, &mut self.usage);
            self.provisional = false;
        }
    }

    /// What the reservation settles with. A stream whose last usage was provisional (it
    /// ended — or its client left — before the final count) is charged at least one output
    /// token per 4 bytes sent, as a stream without usage is.
    fn outcome(&self) -> Outcome {
        let usage = self.usage.map(|mut u| {
            if self.provisional {
                u.output = u.output.max(self.bytes_out.div_ceil(4));
            }
            u
        });
        Outcome {
            reached_upstream: self.reached,
            usage,
            bytes_out: self.bytes_out,
        }
    }

    fn push(&mut self, bytes: Bytes) -> Bytes {
        match self.framing {
            Framing::Json => {
                self.json.push(&bytes, &mut self.usage);
                self.bytes_out += bytes.len() as u64;
                bytes
            }
            Framing::EventStream => {
                for message in self.decoder.push(&bytes).into_iter().flatten() {
                    self.bedrock_message(&message.payload);
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
        rest
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.finish();
            r.settle(self.outcome());
        }
    }
}

/// Usage in the response headers: Bedrock `InvokeModel` counts every model's tokens in
/// `x-amzn-bedrock-{input,output}-token-count` (Titan embeddings report nothing else). Usage
/// in the body, where there is some, replaces what it names.
fn header_usage(headers: &http::HeaderMap) -> Option<Actual> {
    let count = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let input = count("x-amzn-bedrock-input-token-count");
    let output = count("x-amzn-bedrock-output-token-count");
    (input.is_some() || output.is_some()).then(|| Actual {
        input: input.unwrap_or(0),
        cached_input: 0,
        output: output.unwrap_or(0),
    })
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
    let usage = header_usage(response.headers());
    let (mut parts, body) = response.into_parts();
    if hide && framing == Framing::Sse {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let mut tap = Tap {
        reservation: Some(reservation),
        framing,
        reached,
        hide: hide && framing == Framing::Sse,
        usage,
        provisional: false,
        bytes_out: 0,
        pending: Vec::new(),
        json: JsonScan::default(),
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
                    r.settle(tap.outcome());
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
        // Cohere: v2 embed bills input only; v1 chat reports both.
        assert_eq!(
            usage(json!({"meta": {"api_version": {"version": "2"},
                "billed_units": {"input_tokens": 12}}})),
            a(12, 0, 0)
        );
        assert_eq!(
            usage(
                json!({"meta": {"billed_units": {"input_tokens": 1, "output_tokens": 1},
                "tokens": {"input_tokens": 30, "output_tokens": 7}}})
            ),
            a(30, 0, 7)
        );
    }

    fn scan(chunks: &[&[u8]]) -> Option<Actual> {
        let mut s = JsonScan::default();
        let mut acc = None;
        for c in chunks {
            s.push(c, &mut acc);
        }
        acc
    }

    #[test]
    fn json_usage_is_read_as_it_passes_however_it_is_cut() {
        // Usage nested in the data, or written inside a string, is not the answer's.
        let text = br#"{"id": "x", "data": [{"usage": {"prompt_tokens": 999}}],
            "note": "say \"usage\": {\"prompt_tokens\": 5} \\", "list": [1, {"a": "}"}],
            "usage" : {"prompt_tokens": 10, "completion_tokens": 5,
                       "prompt_tokens_details": {"cached_tokens": 4}}, "tail": null}"#;
        assert!(serde_json::from_slice::<Value>(text).is_ok());
        let want = Some(Actual {
            input: 6,
            cached_input: 4,
            output: 5,
        });
        assert_eq!(scan(&[text]), want);
        for cut in 0..text.len() {
            assert_eq!(scan(&[&text[..cut], &text[cut..]]), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(scan(&bytes), want);
        // A member called usage elsewhere in a record is not taken.
        assert_eq!(scan(&[br#"{"x": {"usage": {"prompt_tokens": 3}}}"#]), None);
        assert_eq!(scan(&[br#"{"usage": null, "id": "x"}"#]), None);
    }

    #[test]
    fn a_gemini_json_array_is_read_element_by_element() {
        let text = br#"[{"candidates": [], "usageMetadata": {"promptTokenCount": 40}},
            {"candidates": [{"content": {"parts": [{"text": "]}"}]}}],
             "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 12,
                               "cachedContentTokenCount": 10}, "modelVersion": "m"}]"#;
        assert!(serde_json::from_slice::<Value>(text).is_ok());
        let want = Some(Actual {
            input: 30,
            cached_input: 10,
            output: 12,
        });
        assert_eq!(scan(&[text]), want);
        for cut in 0..text.len() {
            assert_eq!(scan(&[&text[..cut], &text[cut..]]), want, "cut at {cut}");
        }
    }

    #[test]
    fn an_answer_of_any_size_is_read_in_bounded_memory() {
        // 20 MiB of embeddings, then the usage: read, and nothing of the data kept.
        let mut s = JsonScan::default();
        let mut acc = None;
        s.push(br#"{"object": "list", "data": ["#, &mut acc);
        let item = br#"{"object": "embedding", "embedding": "AAAAPgAAAD4AAAA+", "index": 0},"#;
        for _ in 0..(20 * 1024 * 1024 / item.len()) {
            s.push(item, &mut acc);
        }
        s.push(
            br#"{"index": 1}], "usage": {"prompt_tokens": 4, "total_tokens": 4}}"#,
            &mut acc,
        );
        assert_eq!(
            acc,
            Some(Actual {
                input: 4,
                cached_input: 0,
                output: 0,
            })
        );
        // A usage member past its bound is dropped, not copied on.
        let mut s = JsonScan::default();
        let mut acc = None;
        s.push(br#"{"usage": {"input_tokens": 1, "pad": ""#, &mut acc);
        s.push(&vec![b'x'; MAX_MEMBER_BYTES], &mut acc);
        assert!(matches!(&s.capture, Some((_, None))));
        s.push(br#""}}"#, &mut acc);
        assert_eq!(acc, None);
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
            assert_eq!(
                usage_only,
                Some((usage_only_chunk(answer), provisional_usage(answer))),
                "{answer}"
            );
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
        assert_eq!(
            read_json_usage(twice, &mut None).map(|(only, _)| only),
            Some(false)
        );
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
    fn events_whose_usage_is_null_are_not_parsed() {
        assert!(only_null_usage(
            br#"data: {"choices":[{"delta":{"content":"a"}}],"usage":null}"#
        ));
        assert!(only_null_usage(br#"data: {"usage" :  null, "id": 1}"#));
        for e in [
            br#"data: {"choices":[],"usage":{"prompt_tokens":1}}"#.as_slice(),
            br#"data: {"usage":null,"response":{"usage":{"input_tokens":1}}}"#,
            br#"data: {"usageMetadata":{"promptTokenCount":1},"usage":null}"#,
            br#"data: {"type":"usage","x":1}"#,
        ] {
            assert!(!only_null_usage(e), "{}", String::from_utf8_lossy(e));
        }
        // What is skipped reads as the parse would have read it.
        let mut tap_usage = None;
        let chunk = br#"{"choices":[{"delta":{"content":"a"}}],"usage":null}"#;
        assert_eq!(read_json_usage(chunk, &mut tap_usage), Some((false, None)));
        assert_eq!(tap_usage, None);
    }

    #[test]
    fn stripping_copies_slices_as_the_byte_walk_did() {
        // The byte-by-byte walk this replaced, as the reference.
        fn walk(raw: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < raw.len() {
                if let Some(end) = null_usage_at(raw, i) {
                    i = end;
                    continue;
                }
                out.push(raw[i]);
                i += 1;
            }
            out
        }
        let events: [&[u8]; 9] = [
            br#"data: {"id":"x","choices":[{"delta":{"content":"a"}}],"usage":null}"#,
            br#"data: {"usage": null, "id":"x"}"#,
            br#"data: {"usage": null, "usage": null}"#,
            br#"data: {"a":1 ,  "usage" :	null ,"b":{"usage":null}}"#,
            br#"data: {"c":"x, "usage": null, y","usage":{"prompt_tokens":1}}"#,
            br#"data: {"usage":nullx}"#,
            br#"data: {"usage":null"#,
            br#"event: x
data: {"usage":null,"u":""usage""}"#,
            b"",
        ];
        for e in events {
            let mut out = Vec::new();
            strip_null_usage(e, &mut out);
            assert_eq!(out, walk(e), "{}", String::from_utf8_lossy(e));
        }
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
    fn running_counts_are_told_from_final_ones() {
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 9,
            "output_tokens": 1}}});
        assert_eq!(provisional_usage(&start), Some(true));
        let delta = json!({"type": "message_delta", "usage": {"output_tokens": 40}});
        assert_eq!(provisional_usage(&delta), Some(false));
        let running =
            json!({"candidates": [{"content": {}}], "usageMetadata": {"promptTokenCount": 9}});
        assert_eq!(provisional_usage(&running), Some(true));
        let last = json!({"candidates": [{"finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4}});
        assert_eq!(provisional_usage(&last), Some(false));
        let summary = json!({"usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4}});
        assert_eq!(provisional_usage(&summary), Some(false));
        assert_eq!(
            provisional_usage(&json!({"choices": [], "usage": {"prompt_tokens": 1}})),
            Some(false)
        );
        assert_eq!(
            provisional_usage(&json!({"type": "response.created", "response": {"usage": null}})),
            None
        );
        assert_eq!(
            provisional_usage(&json!({"type": "content_block_delta"})),
            None
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = "[a-z{}\\[\\]\":,\\\\ ]{0,8}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<u32>().prop_map(Value::from),
            text.prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (prop_oneof![Just("usage".to_owned()), text], inner),
                    0..4
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 256, failure_persistence: None, ..Default::default()
        })]

        /// Whatever surrounds it and however the text is cut, the top-level usage is read
        /// (members nested deeper, and names inside strings, are not).
        #[test]
        fn the_scanner_reads_the_top_level_usage_however_cut(
            before in json_value(), after in json_value(), input in 0u64..1_000_000,
            output in 0u64..1_000_000, cut in 0usize..10_000, pretty in proptest::bool::ANY,
        ) {
            let doc = json!({"before": before, "usage": {"prompt_tokens": input,
                "completion_tokens": output}, "after": after});
            let text = if pretty {
                serde_json::to_vec_pretty(&doc).unwrap_or_default()
            } else {
                serde_json::to_vec(&doc).unwrap_or_default()
            };
            let cut = cut % text.len();
            let want = Some(Actual { input, cached_input: 0, output });
            proptest::prop_assert_eq!(scan(&[&text[..cut], &text[cut..]]), want);
        }

        /// Any bytes: no panic, and the copy aside stays within its bound.
        #[test]
        fn the_scanner_takes_any_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let mut s = JsonScan::default();
            let mut acc = None;
            s.push(&bytes, &mut acc);
            let held = s.capture.as_ref().and_then(|(_, b)| b.as_ref()).map_or(0, Vec::len);
            proptest::prop_assert!(held <= MAX_MEMBER_BYTES);
            proptest::prop_assert!(s.key.as_ref().map_or(0, Vec::len) <= 32);
        }
    }

    fn bare_tap(framing: Framing) -> Tap {
        Tap {
            reservation: None,
            framing,
            reached: true,
            hide: false,
            usage: None,
            provisional: false,
            bytes_out: 0,
            pending: Vec::new(),
            json: JsonScan::default(),
            decoder: Default::default(),
        }
    }

    #[test]
    fn invoke_model_stream_chunks_are_decoded_and_a_running_count_is_floored() {
        use base64::Engine;
        let chunk = |v: Value| {
            let b = base64::engine::general_purpose::STANDARD.encode(v.to_string());
            json!({"bytes": b, "p": "abc"}).to_string().into_bytes()
        };
        let mut tap = bare_tap(Framing::EventStream);
        tap.bedrock_message(&chunk(json!({"type": "message_start", "message": {"usage":
            {"input_tokens": 21, "output_tokens": 1, "cache_read_input_tokens": 5}}})));
        tap.bytes_out = 400;
        // Cut here: the input reported, at least a token per 4 bytes sent.
        assert_eq!(
            tap.outcome().usage,
            Some(Actual {
                input: 21,
                cached_input: 5,
                output: 100
            })
        );
        tap.bedrock_message(&chunk(
            json!({"type": "message_delta", "usage": {"output_tokens": 9}}),
        ));
        tap.bedrock_message(&chunk(json!({"type": "message_stop",
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 21, "outputTokenCount": 9,
                "invocationLatency": 1, "firstByteLatency": 1}})));
        assert_eq!(
            tap.outcome().usage,
            Some(Actual {
                input: 21,
                cached_input: 5,
                output: 9
            })
        );
        // A model that reports only the metrics (Llama, Titan text).
        let mut tap = bare_tap(Framing::EventStream);
        tap.bedrock_message(&chunk(
            json!({"generation": "hi", "prompt_token_count": null}),
        ));
        assert_eq!(tap.usage, None);
        tap.bedrock_message(&chunk(json!({"generation": "", "stop_reason": "stop",
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 7, "outputTokenCount": 3}})));
        assert_eq!(
            tap.outcome().usage,
            Some(Actual {
                input: 7,
                cached_input: 0,
                output: 3
            })
        );
    }

    #[test]
    fn events_are_framed_across_chunks() {
        let buf = b"data: a\n\ndata: b\r\n\r\ndata: c";
        assert_eq!(event_end(buf, 0), Some(9));
        assert_eq!(event_end(buf, 9), Some(20));
        assert_eq!(event_end(buf, 20), None);
    }
}
