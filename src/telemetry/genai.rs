//! The GenAI semantic conventions' view of a request: which operation it is, the request
//! parameters worth recording (`max_tokens`, `temperature`), and what the answer says about
//! itself (`id`, `model`, finish reasons), read on the side of the response body.
//!
//! Everything here is bounded: the request body is read only when a span records it, a JSON
//! answer is held only up to [`MAX_JSON_BYTES`] and only when a span records it, and a stream
//! is split into lines of at most [`MAX_LINE_BYTES`], of which only the first event and those
//! carrying a finish reason are parsed.

use opentelemetry::KeyValue;
use serde::Deserialize;

/// The GenAI operation of a request (`gen_ai.operation.name`), from its method and the path
/// after the proxy (`chat/completions`, `v1/messages`, `models/x:generateContent`, …).
/// `None` for what is not a model call (model lists, token counts, files, …).
pub fn operation(method: &http::Method, rest: &str) -> Option<&'static str> {
    if method != http::Method::POST {
        return None;
    }
    let rest = rest.split('?').next().unwrap_or(rest).trim_end_matches('/');
    let mut segments = rest.rsplit('/');
    let last = segments.next().unwrap_or_default();
    if let Some((_, verb)) = last.rsplit_once(':') {
        return match verb {
            "generateContent" | "streamGenerateContent" => Some("generate_content"),
            "embedContent" | "batchEmbedContents" => Some("embeddings"),
            _ => None,
        };
    }
    match last {
        "completions" if segments.next() == Some("chat") => Some("chat"),
        "completions" => Some("text_completion"),
        "embeddings" | "embed" => Some("embeddings"),
        "messages" | "chat" | "responses" | "converse" | "converse-stream" => Some("chat"),
        _ => None,
    }
}

/// Whether an answer of this `content-type` is a stream (SSE, or AWS event stream): its first
/// chunk is the time to first token.
pub fn is_stream(content_type: Option<&str>) -> bool {
    let essence = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    essence.eq_ignore_ascii_case("text/event-stream")
        || essence.eq_ignore_ascii_case("application/vnd.amazon.eventstream")
}

/// Request parameters of the GenAI conventions, from an upstream request body of any format.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RequestParams {
    /// `gen_ai.request.max_tokens`.
    pub max_tokens: Option<u64>,
    /// `gen_ai.request.temperature`.
    pub temperature: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Knobs {
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    /// Gemini.
    #[serde(rename = "generationConfig")]
    generation_config: Option<Box<GeminiKnobs>>,
    /// Bedrock Converse.
    #[serde(rename = "inferenceConfig")]
    inference_config: Option<Box<BedrockKnobs>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct GeminiKnobs {
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct BedrockKnobs {
    max_tokens: Option<u64>,
    temperature: Option<f64>,
}

impl RequestParams {
    /// Read a JSON body (OpenAI, Anthropic, Cohere, Gemini or Bedrock Converse shape);
    /// anything else gives no parameters.
    pub fn read(body: &[u8]) -> Self {
        let Ok(k) = serde_json::from_slice::<Knobs>(body) else {
            return Self::default();
        };
        let gemini = k.generation_config.unwrap_or_default();
        let bedrock = k.inference_config.unwrap_or_default();
        Self {
            max_tokens: k
                .max_tokens
                .or(k.max_completion_tokens)
                .or(k.max_output_tokens)
                .or(gemini.max_output_tokens)
                .or(bedrock.max_tokens),
            temperature: k.temperature.or(gemini.temperature).or(bedrock.temperature),
        }
    }

    /// The span attributes.
    pub fn attributes(&self, out: &mut Vec<KeyValue>) {
        if let Some(v) = self.max_tokens {
            out.push(KeyValue::new(
                "gen_ai.request.max_tokens",
                i64::try_from(v).unwrap_or(i64::MAX),
            ));
        }
        if let Some(v) = self.temperature {
            out.push(KeyValue::new("gen_ai.request.temperature", v));
        }
    }
}

/// What an answer says about itself.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResponseMeta {
    /// `gen_ai.response.id`.
    pub id: Option<String>,
    /// `gen_ai.response.model`.
    pub model: Option<String>,
    /// `gen_ai.response.finish_reasons` (one per choice).
    pub finish_reasons: Vec<String>,
}

/// Most finish reasons kept (one per choice; `n` is small in practice).
const MAX_REASONS: usize = 16;
/// Largest JSON answer read for its `id` / `model` / finish reasons.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;
/// Longest SSE line read; longer lines are skipped.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Answer {
    id: Option<String>,
    model: Option<String>,
    choices: Vec<Choice>,
    /// Anthropic (`message`, and `message_delta.delta`).
    stop_reason: Option<String>,
    message: Option<Box<Answer>>,
    delta: Option<Box<Answer>>,
    /// Gemini.
    #[serde(rename = "responseId")]
    response_id: Option<String>,
    #[serde(rename = "modelVersion")]
    model_version: Option<String>,
    candidates: Vec<Candidate>,
    /// Cohere v2.
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice {
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Candidate {
    #[serde(rename = "finishReason")]
    finish_reason: Option<String>,
}

impl ResponseMeta {
    fn absorb(&mut self, a: Answer) {
        if self.id.is_none() {
            self.id = a.id.or(a.response_id);
        }
        if self.model.is_none() {
            self.model = a.model.or(a.model_version);
        }
        let reasons = a
            .choices
            .into_iter()
            .map(|c| c.finish_reason)
            .chain(a.candidates.into_iter().map(|c| c.finish_reason))
            .chain([a.stop_reason, a.finish_reason]);
        for reason in reasons.flatten() {
            if self.finish_reasons.len() < MAX_REASONS {
                self.finish_reasons.push(reason);
            }
        }
        for inner in [a.message, a.delta].into_iter().flatten() {
            self.absorb(*inner);
        }
    }
}

/// Whether a JSON text has `"key"` followed by a string value (not `null`), without parsing.
fn has_string(data: &str, key: &str) -> bool {
    data.match_indices(key).any(|(i, k)| {
        data[i + k.len()..]
            .trim_start()
            .strip_prefix(':')
            .is_some_and(|rest| rest.trim_start().starts_with('"'))
    })
}

/// Reads [`ResponseMeta`] from a response body as it passes, chunk by chunk.
#[derive(Debug)]
pub enum ResponseTap {
    /// A JSON answer's chunks (shared, not copied), held until its end (up to
    /// [`MAX_JSON_BYTES`] in all).
    Json(Vec<bytes::Bytes>, usize),
    /// An SSE stream: the partial line, and what was read so far.
    Sse {
        /// Bytes of the current line.
        line: Vec<u8>,
        /// The current line went over [`MAX_LINE_BYTES`] and is skipped.
        skipping: bool,
        /// What was read.
        meta: ResponseMeta,
    },
    /// Too large, or not readable.
    Off,
}

impl ResponseTap {
    /// A tap for a response of this `content-type` (JSON or SSE; anything else is `Off`).
    pub fn new(content_type: Option<&str>) -> Self {
        let essence = content_type
            .and_then(|c| c.split(';').next())
            .map(str::trim)
            .unwrap_or_default();
        if essence.eq_ignore_ascii_case("application/json") {
            Self::Json(Vec::new(), 0)
        } else if essence.eq_ignore_ascii_case("text/event-stream") {
            Self::Sse {
                line: Vec::new(),
                skipping: false,
                meta: ResponseMeta::default(),
            }
        } else {
            Self::Off
        }
    }

    /// Read a chunk.
    pub fn push(&mut self, chunk: &bytes::Bytes) {
        match self {
            Self::Json(held, size) => {
                *size += chunk.len();
                if *size > MAX_JSON_BYTES {
                    *self = Self::Off;
                } else {
                    held.push(chunk.clone());
                }
            }
            Self::Sse {
                line,
                skipping,
                meta,
            } => {
                let mut rest = &chunk[..];
                while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                    if !*skipping {
                        line.extend_from_slice(&rest[..end]);
                        read_line(line, meta);
                    }
                    line.clear();
                    *skipping = false;
                    rest = &rest[end + 1..];
                }
                if !*skipping {
                    if line.len() + rest.len() > MAX_LINE_BYTES {
                        line.clear();
                        *skipping = true;
                    } else {
                        line.extend_from_slice(rest);
                    }
                }
            }
            Self::Off => {}
        }
    }

    /// What the answer said.
    pub fn finish(self) -> ResponseMeta {
        match self {
            Self::Json(held, _) => {
                let whole = match held.as_slice() {
                    [one] => one.clone(),
                    _ => held.concat().into(),
                };
                let mut meta = ResponseMeta::default();
                if let Ok(answer) = serde_json::from_slice::<Answer>(&whole) {
                    meta.absorb(answer);
                }
                meta
            }
            Self::Sse {
                line,
                skipping,
                mut meta,
            } => {
                if !skipping {
                    read_line(&line, &mut meta);
                }
                meta
            }
            Self::Off => ResponseMeta::default(),
        }
    }
}

/// One SSE line: only `data:` lines of the first event (its `id` and `model`) and of events
/// with a finish reason are parsed.
fn read_line(line: &[u8], meta: &mut ResponseMeta) {
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    let Ok(data) = std::str::from_utf8(data) else {
        return;
    };
    let data = data.trim();
    if !data.starts_with('{') {
        return;
    }
    let wanted = meta.id.is_none()
        || has_string(data, "\"finish_reason\"")
        || has_string(data, "\"stop_reason\"")
        || has_string(data, "\"finishReason\"");
    if wanted && let Ok(answer) = serde_json::from_str::<Answer>(data) {
        meta.absorb(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_by_path() {
        let post = http::Method::POST;
        assert_eq!(operation(&post, "chat/completions"), Some("chat"));
        assert_eq!(operation(&post, "v1/chat/completions"), Some("chat"));
        assert_eq!(operation(&post, "completions"), Some("text_completion"));
        assert_eq!(operation(&post, "embeddings"), Some("embeddings"));
        assert_eq!(operation(&post, "v1/messages"), Some("chat"));
        assert_eq!(operation(&post, "v1/messages/count_tokens"), None);
        assert_eq!(operation(&post, "v2/chat"), Some("chat"));
        assert_eq!(operation(&post, "v2/embed"), Some("embeddings"));
        assert_eq!(
            operation(
                &post,
                "v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
            ),
            Some("generate_content")
        );
        assert_eq!(operation(&post, "v1beta/models/g:countTokens"), None);
        assert_eq!(operation(&post, "model/m/converse-stream"), Some("chat"));
        assert_eq!(operation(&post, "files"), None);
        assert_eq!(operation(&http::Method::GET, "models"), None);
    }

    #[test]
    fn request_params_of_every_shape() {
        let r = RequestParams::read(br#"{"model":"m","max_tokens":50,"temperature":0.5}"#);
        assert_eq!(r.max_tokens, Some(50));
        assert_eq!(r.temperature, Some(0.5));
        let r = RequestParams::read(br#"{"max_completion_tokens":7}"#);
        assert_eq!(r.max_tokens, Some(7));
        let r = RequestParams::read(
            br#"{"contents":[],"generationConfig":{"maxOutputTokens":9,"temperature":1}}"#,
        );
        assert_eq!((r.max_tokens, r.temperature), (Some(9), Some(1.0)));
        let r = RequestParams::read(br#"{"inferenceConfig":{"maxTokens":3}}"#);
        assert_eq!(r.max_tokens, Some(3));
        assert_eq!(RequestParams::read(b"not json"), RequestParams::default());
    }

    #[test]
    fn json_answers() {
        let mut tap = ResponseTap::new(Some("application/json; charset=utf-8"));
        let body = br#"{"id":"chatcmpl-1","model":"gpt-x","choices":[{"finish_reason":"stop"},{"finish_reason":"length"}]}"#;
        tap.push(&bytes::Bytes::copy_from_slice(&body[..10]));
        tap.push(&bytes::Bytes::copy_from_slice(&body[10..]));
        let meta = tap.finish();
        assert_eq!(meta.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(meta.model.as_deref(), Some("gpt-x"));
        assert_eq!(meta.finish_reasons, ["stop", "length"]);

        let mut tap = ResponseTap::new(Some("application/json"));
        tap.push(&bytes::Bytes::copy_from_slice(
            br#"{"id":"msg_1","model":"claude","stop_reason":"end_turn"}"#,
        ));
        assert_eq!(tap.finish().finish_reasons, ["end_turn"]);
    }

    #[test]
    fn big_json_answers_are_not_held() {
        let mut tap = ResponseTap::new(Some("application/json"));
        tap.push(&bytes::Bytes::copy_from_slice(&vec![b' '; MAX_JSON_BYTES]));
        tap.push(&bytes::Bytes::copy_from_slice(b"{}"));
        assert!(matches!(tap, ResponseTap::Off));
    }

    #[test]
    fn streams_across_chunks() {
        let mut tap = ResponseTap::new(Some("text/event-stream"));
        let stream = concat!(
            "data: {\"id\":\"c1\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        for chunk in stream.as_bytes().chunks(7) {
            tap.push(&bytes::Bytes::copy_from_slice(chunk));
        }
        let meta = tap.finish();
        assert_eq!(meta.id.as_deref(), Some("c1"));
        assert_eq!(meta.model.as_deref(), Some("gpt-x"));
        assert_eq!(meta.finish_reasons, ["stop"]);
    }

    #[test]
    fn anthropic_streams() {
        let mut tap = ResponseTap::new(Some("text/event-stream"));
        tap.push(&bytes::Bytes::copy_from_slice(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"stop_reason\":null}}\n\n"));
        tap.push(&bytes::Bytes::copy_from_slice(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"}}\n\n"));
        let meta = tap.finish();
        assert_eq!(meta.id.as_deref(), Some("msg_1"));
        assert_eq!(meta.finish_reasons, ["tool_use"]);
    }

    #[test]
    fn long_lines_are_skipped() {
        let mut tap = ResponseTap::new(Some("text/event-stream"));
        tap.push(&bytes::Bytes::copy_from_slice(b"data: {\"id\":\""));
        tap.push(&bytes::Bytes::copy_from_slice(&vec![b'x'; MAX_LINE_BYTES]));
        tap.push(&bytes::Bytes::copy_from_slice(
            b"\"}\n\ndata: {\"id\":\"c2\"}\n\n",
        ));
        assert_eq!(tap.finish().id.as_deref(), Some("c2"));
    }

    #[test]
    fn string_values_only() {
        assert!(has_string(
            r#"{"finish_reason" : "stop"}"#,
            "\"finish_reason\""
        ));
        assert!(!has_string(
            r#"{"finish_reason":null}"#,
            "\"finish_reason\""
        ));
    }
}
