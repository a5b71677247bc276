//! Benchmark mock upstream: a minimal OpenAI-compatible and Anthropic Messages server on
//! 127.0.0.1.
//!
//! ```text
//! cargo run --release --example bench-mock-upstream -- PORT [--chunks N] [--chunk-delay-ms MS]
//! ```
//!
//! - `POST /v1/chat/completions` (OpenAI): a small fixed `chat.completion` JSON, or, when the
//!   body has `"stream": true`, an SSE stream of N `chat.completion.chunk` events (default 20)
//!   followed by `data: [DONE]`; the last chunk carries `usage`. With
//!   `"stream_options": {"include_usage": true}` the stream takes OpenAI's own shape for it
//!   instead: every chunk has `"usage": null` and one more chunk, `"choices": []` with the
//!   usage, comes before `data: [DONE]` (what the gateway's budget gate asks for).
//! - `POST /v1/messages` (Anthropic Messages): a small fixed `message` JSON, or, when the body
//!   has `"stream": true`, an SSE stream of N events in Anthropic's order: `message_start`,
//!   `content_block_start`, `ping`, N − 6 `content_block_delta`s (at least one),
//!   `content_block_stop`, `message_delta` (stop reason and usage), `message_stop`. The same N
//!   as the OpenAI stream, so the gateway handles as many upstream events on both.
//! - `GET /v1/models`: one model, `bench-model`.
//! - `POST /v1/traces`: an OTLP/HTTP trace sink (`OTEL=1 bench/run.sh` points the gateway's
//!   exporter here); the body is read and dropped, the answer is an empty
//!   `ExportTraceServiceResponse`.
//!
//! Responses are rendered once at startup so the mock spends as little CPU as possible per
//! request: it is the baseline the gateway's overhead is measured against. Part of the
//! benchmark harness in `bench/` (see `bench/README.md`); never run by the test suite.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

const MODEL: &str = "bench-model";
const CREATED: u64 = 1_700_000_000;

struct Canned {
    completion: Bytes,
    models: Bytes,
    /// One SSE event per chunk, the last one being `data: [DONE]`.
    events: Vec<Bytes>,
    /// The same stream as OpenAI sends it for `stream_options.include_usage`: `"usage": null`
    /// in every chunk, then a usage-only chunk (`"choices": []`), then `data: [DONE]`.
    events_with_usage: Vec<Bytes>,
    /// Anthropic Messages: the non-streamed `message`.
    message: Bytes,
    /// Anthropic Messages: one SSE event (`event:` and `data:` lines) per item.
    message_events: Vec<Bytes>,
    chunk_delay: Duration,
}

struct Args {
    port: u16,
    chunks: usize,
    chunk_delay_ms: u64,
}

fn usage() -> String {
    "usage: bench-mock-upstream PORT [--chunks N] [--chunk-delay-ms MS]".to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut port = None;
    let mut chunks = 20usize;
    let mut chunk_delay_ms = 0u64;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--chunks" => {
                chunks = value("--chunks")?
                    .parse()
                    .map_err(|e| format!("--chunks: {e}"))?;
            }
            "--chunk-delay-ms" => {
                chunk_delay_ms = value("--chunk-delay-ms")?
                    .parse()
                    .map_err(|e| format!("--chunk-delay-ms: {e}"))?;
            }
            "-h" | "--help" => return Err(usage()),
            other if port.is_none() && !other.starts_with('-') => {
                port = Some(other.parse().map_err(|e| format!("PORT {other:?}: {e}"))?);
            }
            other => return Err(format!("unexpected argument {other:?}\n{}", usage())),
        }
    }
    let port = port.ok_or_else(usage)?;
    if chunks == 0 {
        return Err("--chunks must be at least 1".to_owned());
    }
    Ok(Args {
        port,
        chunks,
        chunk_delay_ms,
    })
}

fn canned(args: &Args) -> Canned {
    let completion = json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! This is a benchmark reply."},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}
    });
    let models = json!({
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}]
    });
    let usage = json!({
        "prompt_tokens": 9,
        "completion_tokens": args.chunks,
        "total_tokens": 9 + args.chunks
    });
    let mut events = Vec::with_capacity(args.chunks + 1);
    let mut events_with_usage = Vec::with_capacity(args.chunks + 2);
    for i in 0..args.chunks {
        let last = i + 1 == args.chunks;
        let delta = if i == 0 {
            json!({"role": "assistant", "content": ""})
        } else {
            json!({"content": format!("tok{i} ")})
        };
        let mut chunk = json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{
                "index": 0,
                "delta": if last { json!({}) } else { delta },
                "logprobs": null,
                "finish_reason": if last { json!("stop") } else { Value::Null }
            }]
        });
        chunk["usage"] = Value::Null;
        events_with_usage.push(Bytes::from(format!("data: {chunk}\n\n")));
        if last {
            chunk["usage"] = usage.clone();
        } else if let Some(map) = chunk.as_object_mut() {
            map.remove("usage");
        }
        events.push(Bytes::from(format!("data: {chunk}\n\n")));
    }
    let usage_chunk = json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": usage
    });
    events_with_usage.push(Bytes::from(format!("data: {usage_chunk}\n\n")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events_with_usage.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let (message, message_events) = canned_anthropic(args.chunks);
    Canned {
        completion: Bytes::from(completion.to_string()),
        models: Bytes::from(models.to_string()),
        events,
        events_with_usage,
        message,
        message_events,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
    }
}

/// Anthropic Messages answers: the `message` body and the `chunks` SSE events of a stream
/// (six framing events around `chunks - 6` text deltas, at least one delta).
fn canned_anthropic(chunks: usize) -> (Bytes, Vec<Bytes>) {
    let message = json!({
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello! This is a benchmark reply."}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 9, "output_tokens": 8}
    });
    let deltas = chunks.saturating_sub(6).max(1);
    let sse = |kind: &str, data: Value| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
    let mut events = Vec::with_capacity(deltas + 6);
    events.push(sse(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": "msg_bench", "type": "message", "role": "assistant", "model": MODEL,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 9, "output_tokens": 1}
        }}),
    ));
    events.push(sse(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(sse("ping", json!({"type": "ping"})));
    for i in 0..deltas {
        events.push(sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": format!("tok{i} ")}}),
        ));
    }
    events.push(sse(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(sse(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": deltas}}),
    ));
    events.push(sse("message_stop", json!({"type": "message_stop"})));
    (Bytes::from(message.to_string()), events)
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error",
                                "param": null, "code": null}});
    respond(status, "application/json", Body::from(body.to_string()))
}

/// How the request body asks to be answered.
#[derive(PartialEq)]
enum Answer {
    Json,
    Stream,
    /// A stream with `stream_options.include_usage`.
    StreamWithUsage,
}

/// The request body's `"stream"` (and `stream_options.include_usage`), or why the body is not
/// JSON.
fn wants_stream(body: &[u8]) -> Result<Answer, String> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return Ok(Answer::Json);
    }
    let usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool);
    Ok(if usage == Some(true) {
        Answer::StreamWithUsage
    } else {
        Answer::Stream
    })
}

/// An SSE response sending `events` (paced by `delay` when it is not zero).
fn sse(events: Vec<Bytes>, delay: Duration) -> Response {
    let body = if delay.is_zero() {
        Body::from_stream(futures_util::stream::iter(
            events.into_iter().map(Ok::<_, std::io::Error>),
        ))
    } else {
        Body::from_stream(
            futures_util::stream::iter(events).then(move |event| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, std::io::Error>(event)
            }),
        )
    };
    let mut response = respond(StatusCode::OK, "text/event-stream", body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn chat(State(canned): State<Arc<Canned>>, body: Bytes) -> Response {
    match wants_stream(&body) {
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
        Ok(Answer::Json) => respond(
            StatusCode::OK,
            "application/json",
            Body::from(canned.completion.clone()),
        ),
        Ok(Answer::Stream) => sse(canned.events.clone(), canned.chunk_delay),
        Ok(Answer::StreamWithUsage) => sse(canned.events_with_usage.clone(), canned.chunk_delay),
    }
}

async fn messages(State(canned): State<Arc<Canned>>, body: Bytes) -> Response {
    match wants_stream(&body) {
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
        Ok(Answer::Json) => respond(
            StatusCode::OK,
            "application/json",
            Body::from(canned.message.clone()),
        ),
        Ok(Answer::Stream | Answer::StreamWithUsage) => {
            sse(canned.message_events.clone(), canned.chunk_delay)
        }
    }
}

async fn traces(body: Bytes) -> Response {
    drop(body);
    respond(StatusCode::OK, "application/x-protobuf", Body::empty())
}

async fn models(State(canned): State<Arc<Canned>>) -> Response {
    respond(
        StatusCode::OK,
        "application/json",
        Body::from(canned.models.clone()),
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let state = Arc::new(canned(&args));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .route("/v1/traces", post(traces))
        .with_state(state);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("bench-mock-upstream: cannot bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().map_or(addr, |a| a);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!(
        "bench-mock-upstream: listening on http://{local}/v1 (OpenAI and Anthropic Messages, {} chunks per stream, {} ms apart)",
        args.chunks, args.chunk_delay_ms
    );
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("bench-mock-upstream: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
