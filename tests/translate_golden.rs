//! Golden tests for `portcullis::formats`.
//!
//! Layout under `tests/fixtures/translate/`:
//!
//! - `requests/<case>.json` (OpenAI request) → `requests/<case>.<provider>.json`
//!   (the native body; `{"translate_error": "…"}` when translation refuses),
//!   plus `requests/<case>.dropped` holding the expected `dropped_parts` when
//!   it is not 0 (`<case>.bedrock.dropped` for Bedrock, which keeps images).
//! - `responses/<provider>/<case>.json` (native) → `<case>.openai.json`.
//! - `streams/<provider>/<case>.sse` (native SSE) → `<case>.openai.json`, the
//!   JSON payloads the gateway writes, in order. The stream is fed in several
//!   chunk sizes, which must all give the same output. A case named
//!   `*no_usage*` runs without `include_usage`.
//! - `streams/bedrock/<case>.eventstream` (AWS event-stream frames, built from
//!   `<case>.events.json` by `streams/bedrock/build.py`, an encoder independent
//!   of the gateway's decoder) → `<case>.openai.json`, fed in the same chunk
//!   sizes.
//! - `errors/<provider>/<case>.json` (`{"status", "body"}`, body as JSON or
//!   as a raw string) → `<case>.openai.json`.
//!
//! `UPDATE_GOLDEN=1 cargo test --test translate_golden` rewrites the expected
//! files; review every change against the provider's API reference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use portcullis::formats::bedrock::eventstream::Decoder;
use portcullis::formats::openai::{ChatRequest, ChatResponse, ErrorBody};
use portcullis::formats::sse::SseParser;
use portcullis::formats::{
    StreamOut, TranslateError, Translated, anthropic, bedrock, cohere, gemini,
};
use serde_json::{Value, json};

const PROVIDERS: [&str; 4] = ["anthropic", "gemini", "cohere", "bedrock"];

fn upstream_model(provider: &str) -> &'static str {
    match provider {
        "anthropic" => "claude-sonnet-4-5",
        "gemini" => "gemini-2.5-flash",
        "bedrock" => "us.anthropic.claude-sonnet-4-20250514-v1:0",
        _ => "command-a-03-2025",
    }
}

fn client_model(provider: &str) -> String {
    format!("{provider}:{}", upstream_model(provider))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

fn updating() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

fn translate_request(provider: &str, req: &ChatRequest) -> Result<Translated, TranslateError> {
    let model = upstream_model(provider);
    match provider {
        "anthropic" => anthropic::request(req, model),
        "gemini" => gemini::request(req, model),
        "bedrock" => bedrock::request(req, model),
        _ => cohere::request(req, model),
    }
}

fn translate_response(provider: &str, body: &[u8]) -> Result<ChatResponse, TranslateError> {
    let model = client_model(provider);
    match provider {
        "anthropic" => anthropic::response(body, &model),
        "gemini" => gemini::response(body, &model),
        "bedrock" => bedrock::response(body, &model),
        _ => cohere::response(body, &model),
    }
}

fn translate_error(provider: &str, status: u16, body: &[u8]) -> (u16, ErrorBody) {
    match provider {
        "anthropic" => anthropic::error(status, body),
        "gemini" => gemini::error(status, body),
        "bedrock" => bedrock::error(status, body),
        _ => cohere::error(status, body),
    }
}

/// Feed `input` to a fresh parser and translator in chunks of `size` bytes.
fn translate_stream(provider: &str, input: &[u8], size: usize, include_usage: bool) -> Vec<Value> {
    enum T {
        A(anthropic::StreamTranslator),
        G(gemini::StreamTranslator),
        C(cohere::StreamTranslator),
    }
    let model = client_model(provider);
    let mut t = match provider {
        "anthropic" => T::A(anthropic::StreamTranslator::new(&model, include_usage)),
        "gemini" => T::G(gemini::StreamTranslator::new(&model, include_usage)),
        _ => T::C(cohere::StreamTranslator::new(&model, include_usage)),
    };
    let mut parser = SseParser::default();
    let mut outs: Vec<StreamOut> = Vec::new();
    let mut feed = |t: &mut T, events: Vec<portcullis::formats::sse::SseEvent>| {
        for e in &events {
            outs.extend(match t {
                T::A(t) => t.push(e),
                T::G(t) => t.push(e),
                T::C(t) => t.push(e),
            });
        }
    };
    for chunk in input.chunks(size.max(1)) {
        let events = parser.push(chunk);
        feed(&mut t, events);
    }
    let events = parser.finish();
    feed(&mut t, events);
    outs.extend(match &mut t {
        T::A(t) => t.finish(),
        T::G(t) => t.finish(),
        T::C(t) => t.finish(),
    });
    outs.iter()
        .map(|o| serde_json::from_str(&o.to_json()).unwrap())
        .collect()
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compare `actual` with the expected file (or rewrite it when updating).
fn check(path: &Path, actual: &Value, failures: &mut Vec<String>) {
    let pretty = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if updating() {
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
    let expected = read_json(path);
    if &expected != actual {
        failures.push(format!(
            "{}: differs\n--- expected\n{}\n--- actual\n{pretty}",
            path.display(),
            serde_json::to_string_pretty(&expected).unwrap()
        ));
    }
}

/// `(case, path)` of the input files in `dir` with extension `ext`, skipping
/// expected files (`*.openai.json`, `*.<provider>.json`).
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

#[test]
fn requests() {
    let dir = fixtures().join("requests");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, path) in inputs(&dir, "json") {
        let req: ChatRequest = serde_json::from_value(read_json(&path))
            .unwrap_or_else(|e| panic!("{}: not an OpenAI request: {e}", path.display()));
        for provider in PROVIDERS {
            // Bedrock keeps `data:` URL images, so it has its own count.
            let dropped_path = match provider {
                "bedrock" => dir.join(format!("{case}.bedrock.dropped")),
                _ => dir.join(format!("{case}.dropped")),
            };
            let expected_dropped: usize = fs::read_to_string(&dropped_path)
                .map(|s| s.trim().parse().unwrap())
                .unwrap_or(0);
            checked += 1;
            let actual = match translate_request(provider, &req) {
                Ok(t) => {
                    if updating() && t.dropped_parts > 0 {
                        fs::write(&dropped_path, format!("{}\n", t.dropped_parts)).unwrap();
                    } else if t.dropped_parts != expected_dropped {
                        failures.push(format!(
                            "{case}.{provider}: dropped_parts {} != expected {expected_dropped}",
                            t.dropped_parts
                        ));
                    }
                    t.body
                }
                Err(e) => json!({"translate_error": e.to_string()}),
            };
            check(
                &dir.join(format!("{case}.{provider}.json")),
                &actual,
                &mut failures,
            );
        }
    }
    finish("request", checked, failures);
}

#[test]
fn responses() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for provider in PROVIDERS {
        let dir = fixtures().join("responses").join(provider);
        for (case, path) in inputs(&dir, "json") {
            checked += 1;
            let body = fs::read(&path).unwrap();
            let actual = match translate_response(provider, &body) {
                Ok(r) => serde_json::to_value(r).unwrap(),
                Err(e) => json!({"translate_error": e.to_string()}),
            };
            check(
                &dir.join(format!("{case}.openai.json")),
                &actual,
                &mut failures,
            );
        }
    }
    finish("response", checked, failures);
}

#[test]
fn streams() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for provider in PROVIDERS.into_iter().filter(|p| *p != "bedrock") {
        let dir = fixtures().join("streams").join(provider);
        for (case, path) in inputs(&dir, "sse") {
            checked += 1;
            let input = fs::read(&path).unwrap();
            let include_usage = !case.contains("no_usage");
            let whole = translate_stream(provider, &input, input.len(), include_usage);
            for size in [1, 2, 7, 64] {
                let split = translate_stream(provider, &input, size, include_usage);
                if split != whole {
                    failures.push(format!(
                        "{provider}/{case}: output differs when fed in {size}-byte chunks"
                    ));
                }
            }
            check(
                &dir.join(format!("{case}.openai.json")),
                &Value::Array(whole),
                &mut failures,
            );
        }
    }
    finish("stream", checked, failures);
}

#[test]
fn errors() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for provider in PROVIDERS {
        let dir = fixtures().join("errors").join(provider);
        for (case, path) in inputs(&dir, "json") {
            checked += 1;
            let input = read_json(&path);
            let status = u16::try_from(input["status"].as_u64().unwrap()).unwrap();
            let body = match &input["body"] {
                Value::String(raw) => raw.clone().into_bytes(),
                v => serde_json::to_vec(v).unwrap(),
            };
            let (status, err) = translate_error(provider, status, &body);
            let actual = json!({"status": status, "body": err});
            check(
                &dir.join(format!("{case}.openai.json")),
                &actual,
                &mut failures,
            );
        }
    }
    finish("error", checked, failures);
}

/// Feed an event stream to a fresh decoder and Bedrock translator in chunks of `size` bytes.
fn translate_event_stream(input: &[u8], size: usize, include_usage: bool) -> Vec<Value> {
    let mut t = bedrock::StreamTranslator::new(&client_model("bedrock"), include_usage);
    let mut decoder = Decoder::default();
    let mut outs: Vec<StreamOut> = Vec::new();
    let mut failed = false;
    for chunk in input.chunks(size.max(1)) {
        for frame in decoder.push(chunk) {
            match frame {
                Ok(frame) => outs.extend(t.push(&frame)),
                Err(e) => {
                    failed = true;
                    outs.push(StreamOut::Error(ErrorBody::new(
                        e.to_string(),
                        "server_error",
                        None,
                    )));
                }
            }
        }
    }
    if let Err(e) = decoder.finish() {
        outs.push(StreamOut::Error(ErrorBody::new(
            e.to_string(),
            "server_error",
            None,
        )));
        failed = true;
    }
    if !failed {
        outs.extend(t.finish());
    }
    outs.iter()
        .map(|o| serde_json::from_str(&o.to_json()).unwrap())
        .collect()
}

#[test]
fn bedrock_streams() {
    let mut failures = Vec::new();
    let mut checked = 0;
    let dir = fixtures().join("streams").join("bedrock");
    for (case, path) in inputs(&dir, "eventstream") {
        checked += 1;
        let input = fs::read(&path).unwrap();
        let include_usage = !case.contains("no_usage");
        let whole = translate_event_stream(&input, input.len(), include_usage);
        for size in [1, 2, 7, 64] {
            if translate_event_stream(&input, size, include_usage) != whole {
                failures.push(format!(
                    "bedrock/{case}: output differs when fed in {size}-byte chunks"
                ));
            }
        }
        check(
            &dir.join(format!("{case}.openai.json")),
            &Value::Array(whole),
            &mut failures,
        );
    }
    finish("bedrock stream", checked, failures);
}
