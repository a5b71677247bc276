//! Golden tests for the Model Router's Responses, Messages and embeddings endpoints, for every
//! endpoint × format pair, streamed and not. Each endpoint runs through the chat path, so a
//! case composes the endpoint's conversion with the format's chat translation, as the data
//! plane does:
//!
//! - `fixtures/{responses,messages}/requests/<case>.json` (the client's request) →
//!   `<case>.<format>.json`: `{"dropped_parts", "body"}` with the body the provider gets
//!   (`openai`: the chat request the OpenAI-compatible family gets; OpenAI itself is sent
//!   Responses requests as they are, and Anthropic Messages requests, see
//!   `tests/sdk/test_router_*.py`), or `{"translate_error": …}`.
//! - `fixtures/translate/responses/<format>/<case>.json` (a native answer; `openai/` holds
//!   chat completions) → `fixtures/{responses,messages}/answers/<format>/<case>.json`.
//! - `fixtures/translate/streams/<format>/<case>.sse` (Bedrock: `.eventstream`) →
//!   `fixtures/{responses,messages}/streams/<format>/<case>.json`: the events the client gets.
//! - `fixtures/embeddings/requests/<case>.json` → `<case>.<format>.json`: the batches the
//!   provider gets; `fixtures/embeddings/answers/<format>/<case>.json` (`{"inputs", "base64",
//!   "body"}`) → `<case>.openai.json`.
//!
//! `UPDATE_GOLDEN=1 cargo test --test router_apis_golden` rewrites the expected files; review
//! every change against the APIs' references.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use portcullis::formats::anthropic::messages;
use portcullis::formats::bedrock::eventstream::Decoder;
use portcullis::formats::openai::embeddings as oai_embeddings;
use portcullis::formats::openai::responses;
use portcullis::formats::openai::{ChatRequest, ChatResponse};
use portcullis::formats::sse::SseParser;
use portcullis::formats::{StreamOut, TranslateError, anthropic, bedrock, cohere, gemini};
use serde_json::{Map, Value, json};

const FORMATS: [&str; 5] = ["openai", "anthropic", "gemini", "cohere", "bedrock"];

fn upstream_model(format: &str) -> &'static str {
    match format {
        "openai" => "gpt-4o-mini",
        "anthropic" => "claude-sonnet-4-5",
        "gemini" => "gemini-2.5-flash",
        "bedrock" => "us.anthropic.claude-sonnet-4-20250514-v1:0",
        _ => "command-a-03-2025",
    }
}

fn client_model(format: &str) -> String {
    format!("{format}:{}", upstream_model(format))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn updating() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(path: &Path, actual: &Value, failures: &mut Vec<String>) {
    let pretty = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if updating() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, pretty).unwrap();
        return;
    }
    if !path.exists() {
        failures.push(format!(
            "{}: missing (run with UPDATE_GOLDEN=1, then review it)\nactual:\n{pretty}",
            path.display()
        ));
        return;
    }
    if &read_json(path) != actual {
        failures.push(format!("{}: differs\n--- actual\n{pretty}", path.display()));
    }
}

/// `(case, path)` of the inputs in `dir` with extension `ext` (names without a dot).
fn inputs(dir: &Path, ext: &str) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let case = name.strip_suffix(&format!(".{ext}"))?.to_owned();
            (!case.contains('.')).then_some((case, p))
        })
        .collect();
    out.sort();
    out
}

fn finish(kind: &str, checked: usize, failures: Vec<String>) {
    assert!(checked > 0, "no {kind} fixtures found");
    assert!(
        failures.is_empty(),
        "{} of {checked} {kind} goldens failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A chat request body as the provider of `format` gets it.
fn to_native(format: &str, chat: Map<String, Value>, dropped: usize) -> Value {
    let req: ChatRequest = match serde_json::from_value(Value::Object(chat.clone())) {
        Ok(r) => r,
        Err(e) => return json!({"translate_error": e.to_string()}),
    };
    let model = upstream_model(format);
    let translated = match format {
        "openai" => {
            let mut body = chat;
            body.insert("model".to_owned(), json!(model));
            return json!({"dropped_parts": dropped, "body": body});
        }
        "anthropic" => anthropic::request(&req, model),
        "gemini" => gemini::request(&req, model),
        "bedrock" => bedrock::request(&req, model),
        _ => cohere::request(&req, model),
    };
    match translated {
        Ok(t) => json!({"dropped_parts": dropped + t.dropped_parts, "body": t.body}),
        Err(e) => json!({"translate_error": e.to_string()}),
    }
}

fn request_goldens(
    api: &str,
    convert: impl Fn(&Value) -> Result<(Map<String, Value>, usize), TranslateError>,
) {
    let dir = fixtures().join(api).join("requests");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, path) in inputs(&dir, "json") {
        let input = read_json(&path);
        for format in FORMATS {
            checked += 1;
            let actual = match convert(&input) {
                Ok((mut chat, dropped)) => {
                    chat.insert("model".to_owned(), json!(client_model(format)));
                    to_native(format, chat, dropped)
                }
                Err(e) => json!({"translate_error": e.to_string()}),
            };
            check(
                &dir.join(format!("{case}.{format}.json")),
                &actual,
                &mut failures,
            );
        }
    }
    finish(&format!("{api} request"), checked, failures);
}

#[test]
fn responses_requests() {
    request_goldens("responses", |v| {
        responses::to_chat(v).map(|c| (c.chat, c.dropped))
    });
}

#[test]
fn messages_requests() {
    request_goldens("messages", |v| {
        messages::to_chat(v).map(|c| (c.chat, c.dropped))
    });
}

/// A native answer as the chat path answers it.
fn chat_answer(format: &str, body: &[u8]) -> Result<ChatResponse, TranslateError> {
    let model = client_model(format);
    match format {
        "openai" => {
            let mut r: ChatResponse = serde_json::from_slice(body)
                .map_err(|e| TranslateError::InvalidUpstream(e.to_string()))?;
            r.model = model;
            Ok(r)
        }
        "anthropic" => anthropic::response(body, &model),
        "gemini" => gemini::response(body, &model),
        "bedrock" => bedrock::response(body, &model),
        _ => cohere::response(body, &model),
    }
}

fn answer_goldens(api: &str, convert: impl Fn(&ChatResponse, &str) -> Value) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for format in FORMATS {
        let dir = fixtures().join("translate/responses").join(format);
        let out = fixtures().join(api).join("answers").join(format);
        for (case, path) in inputs(&dir, "json") {
            checked += 1;
            let actual = match chat_answer(format, &fs::read(&path).unwrap()) {
                Ok(chat) => convert(&chat, &client_model(format)),
                Err(e) => json!({"translate_error": e.to_string()}),
            };
            check(&out.join(format!("{case}.json")), &actual, &mut failures);
        }
    }
    finish(&format!("{api} answer"), checked, failures);
}

#[test]
fn responses_answers() {
    answer_goldens("responses", |chat, model| {
        let request = json!({"instructions": "Be brief.", "tools": [], "max_output_tokens": 512});
        responses::from_chat(chat, &responses::Echo::of(&request, model), 0)
    });
}

#[test]
fn messages_answers() {
    answer_goldens("messages", messages::from_chat);
}

/// The chat chunks the chat path streams for a native stream (usage asked for).
fn chat_chunks(format: &str, input: &[u8]) -> Vec<Value> {
    let model = client_model(format);
    let mut outs: Vec<StreamOut> = Vec::new();
    if format == "bedrock" {
        let mut t = bedrock::StreamTranslator::new(&model, true);
        let mut decoder = Decoder::default();
        let mut failed = false;
        for frame in decoder.push(input) {
            match frame {
                Ok(frame) => outs.extend(t.push(&frame)),
                Err(_) => failed = true,
            }
        }
        if decoder.finish().is_err() {
            failed = true;
        }
        if !failed {
            outs.extend(t.finish());
        }
        return outs
            .iter()
            .map(|o| serde_json::from_str(&o.to_json()).unwrap())
            .collect();
    }
    let mut parser = SseParser::default();
    let mut events = parser.push(input);
    events.extend(parser.finish());
    if format == "openai" {
        return events
            .iter()
            .filter(|e| e.data.trim() != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
    }
    enum T {
        A(anthropic::StreamTranslator),
        G(gemini::StreamTranslator),
        C(cohere::StreamTranslator),
    }
    let mut t = match format {
        "anthropic" => T::A(anthropic::StreamTranslator::new(&model, true)),
        "gemini" => T::G(gemini::StreamTranslator::new(&model, true)),
        _ => T::C(cohere::StreamTranslator::new(&model, true)),
    };
    for e in &events {
        outs.extend(match &mut t {
            T::A(t) => t.push(e),
            T::G(t) => t.push(e),
            T::C(t) => t.push(e),
        });
    }
    outs.extend(match &mut t {
        T::A(t) => t.finish(),
        T::G(t) => t.finish(),
        T::C(t) => t.finish(),
    });
    outs.iter()
        .map(|o| serde_json::from_str(&o.to_json()).unwrap())
        .collect()
}

fn stream_goldens(api: &str, convert: impl Fn(&[Value], &str) -> Vec<Value>) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for format in FORMATS {
        let dir = fixtures().join("translate/streams").join(format);
        let out = fixtures().join(api).join("streams").join(format);
        let ext = if format == "bedrock" {
            "eventstream"
        } else {
            "sse"
        };
        for (case, path) in inputs(&dir, ext) {
            if case.contains("no_usage") {
                continue; // the router always asks for usage on these endpoints
            }
            checked += 1;
            let chunks = chat_chunks(format, &fs::read(&path).unwrap());
            let events = convert(&chunks, &client_model(format));
            check(
                &out.join(format!("{case}.json")),
                &Value::Array(events),
                &mut failures,
            );
        }
    }
    finish(&format!("{api} stream"), checked, failures);
}

#[test]
fn responses_streams() {
    stream_goldens("responses", |chunks, model| {
        let mut s = responses::StreamConverter::new(responses::Echo::of(&json!({}), model), 0);
        let mut out: Vec<Value> = chunks.iter().flat_map(|c| s.push(c)).collect();
        out.extend(s.finish());
        out
    });
}

#[test]
fn messages_streams() {
    stream_goldens("messages", |chunks, model| {
        let mut s = messages::StreamConverter::new(model);
        let mut out: Vec<(&str, Value)> = chunks.iter().flat_map(|c| s.push(c)).collect();
        out.extend(s.finish());
        out.into_iter()
            .map(|(name, data)| json!({"event": name, "data": data}))
            .collect()
    });
}

/// The bodies (one per upstream call) an embeddings request becomes for `format`.
fn embedding_calls(format: &str, body: &Value) -> Result<Vec<Value>, TranslateError> {
    let model = match format {
        "openai" => "text-embedding-3-small",
        "gemini" => "gemini-embedding-001",
        "cohere" => "embed-v4.0",
        _ => "amazon.titan-embed-text-v2:0",
    };
    if format == "openai" {
        oai_embeddings::check(body)?;
        return Ok(vec![oai_embeddings::forward_body(body, model)]);
    }
    let parsed = oai_embeddings::parse(body)?;
    Ok(match format {
        "gemini" => parsed
            .inputs
            .chunks(gemini::embeddings::BATCH)
            .map(|b| json!({"path": gemini::embeddings::path(model), "body": gemini::embeddings::request(model, b, &parsed)}))
            .collect(),
        "cohere" => parsed
            .inputs
            .chunks(cohere::embeddings::BATCH)
            .map(|b| json!({"path": cohere::embeddings::PATH, "body": cohere::embeddings::request(model, b, &parsed)}))
            .collect(),
        _ => {
            let family = bedrock::embeddings::Family::of(model).unwrap();
            parsed
                .inputs
                .chunks(family.batch())
                .map(|b| json!({"path": bedrock::embeddings::path(model), "body": bedrock::embeddings::request(family, b, &parsed)}))
                .collect()
        }
    })
}

#[test]
fn embeddings_requests() {
    let dir = fixtures().join("embeddings/requests");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, path) in inputs(&dir, "json") {
        let input = read_json(&path);
        for format in ["openai", "gemini", "cohere", "bedrock"] {
            checked += 1;
            let actual = match embedding_calls(format, &input) {
                Ok(calls) => Value::Array(calls),
                Err(e) => json!({"translate_error": e.to_string()}),
            };
            check(
                &dir.join(format!("{case}.{format}.json")),
                &actual,
                &mut failures,
            );
        }
    }
    finish("embeddings request", checked, failures);
}

#[test]
fn embeddings_answers() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for format in ["openai", "gemini", "cohere", "bedrock"] {
        let dir = fixtures().join("embeddings/answers").join(format);
        for (case, path) in inputs(&dir, "json") {
            checked += 1;
            let input = read_json(&path);
            let n = usize::try_from(input["inputs"].as_u64().unwrap()).unwrap();
            let base64 = input["base64"].as_bool().unwrap_or(false);
            let body = serde_json::to_vec(&input["body"]).unwrap();
            let model = format!("{format}:embedder");
            let result = match format {
                "openai" => Ok((Vec::new(), None)),
                "gemini" => gemini::embeddings::response(&body, n).map(|v| (v, None)),
                "cohere" => cohere::embeddings::response(&body, n),
                _ => {
                    let family = if case.starts_with("titan") {
                        bedrock::embeddings::Family::Titan
                    } else {
                        bedrock::embeddings::Family::Cohere
                    };
                    bedrock::embeddings::response(family, &body, n)
                }
            };
            let actual = match (format, result) {
                ("openai", _) => oai_embeddings::forward_answer(input["body"].clone(), &model),
                (_, Ok((vectors, tokens))) => {
                    let texts: Vec<String> = (0..n).map(|i| format!("text {i}")).collect();
                    let tokens = tokens.unwrap_or_else(|| oai_embeddings::estimate_tokens(&texts));
                    oai_embeddings::answer(&vectors, base64, &model, tokens)
                }
                (_, Err(e)) => json!({"translate_error": e.to_string()}),
            };
            check(
                &dir.join(format!("{case}.openai.json")),
                &actual,
                &mut failures,
            );
        }
    }
    finish("embeddings answer", checked, failures);
}
