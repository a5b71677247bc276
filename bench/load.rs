//! Benchmark load generator: a bounded closed-loop load against one loopback URL.
//!
//! ```text
//! cargo run --release --example bench-load -- --url http://127.0.0.1:PORT/v1/chat/completions \
//!     [--api openai|anthropic] [--stream] [--model M] [--requests 2000] [--warmup 200] \
//!     [--concurrency 8] [--max-seconds 120] [--timeout-ms 10000] [--label NAME]
//! ```
//!
//! `--concurrency` workers share one reqwest client (keep-alive pool, `TCP_NODELAY`) and send
//! requests back to back: first `--warmup` requests whose timings are thrown away, then
//! `--requests` measured ones. With `--api openai` (the default) they are OpenAI Chat
//! Completions requests, and each answer must be a `chat.completion` or, for `--stream`, an
//! SSE stream ending with `data: [DONE]`; with `--api anthropic` they are Anthropic Messages
//! requests, and each answer must be a `message` or an SSE stream ending with `message_stop`.
//! Each response is read to its end. One JSON object is printed on stdout: latency
//! percentiles (µs), requests/s, errors.
//!
//! It stops by itself: after the requested count, or at `--max-seconds` (then the output says
//! `"truncated": true` and the exit code is 3). Any failed request makes the exit code 2, so a
//! broken setup is never reported as a fast one. Only `http://127.0.0.1` URLs are accepted.
//! Part of the benchmark harness in `bench/` (see `bench/README.md`); never run by the tests.

// The result is the JSON line printed on stdout: this is a command-line tool, so the
// crate-wide ban on printing to stdout (meant for the gateway, which logs) does not apply.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// The request and answer shape the load speaks.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    /// OpenAI Chat Completions.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

struct Args {
    url: reqwest::Url,
    api: Api,
    stream: bool,
    model: String,
    requests: usize,
    warmup: usize,
    concurrency: usize,
    max_seconds: u64,
    timeout_ms: u64,
    label: String,
}

const USAGE: &str = "usage: bench-load --url http://127.0.0.1:PORT/... [--api openai|anthropic] \
[--stream] [--model M] \
[--requests N] [--warmup N] [--concurrency C] [--max-seconds S] [--timeout-ms MS] [--label NAME]";

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut args = Args {
        url: reqwest::Url::parse("http://127.0.0.1/").map_err(|e| e.to_string())?,
        api: Api::OpenAi,
        stream: false,
        model: "bench-model".to_owned(),
        requests: 2000,
        warmup: 200,
        concurrency: 8,
        max_seconds: 120,
        timeout_ms: 10_000,
        label: String::new(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        if flag == "--stream" {
            args.stream = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| format!("{flag} {v:?}: {e}\n{USAGE}"))
        };
        match flag.as_str() {
            "--url" => url = Some(value),
            "--model" => args.model = value,
            "--api" => {
                args.api = match value.as_str() {
                    "openai" => Api::OpenAi,
                    "anthropic" => Api::Anthropic,
                    other => return Err(format!("--api {other:?}: openai or anthropic\n{USAGE}")),
                }
            }
            "--label" => args.label = value,
            "--requests" => args.requests = number(&value)? as usize,
            "--warmup" => args.warmup = number(&value)? as usize,
            "--concurrency" => args.concurrency = number(&value)? as usize,
            "--max-seconds" => args.max_seconds = number(&value)?,
            "--timeout-ms" => args.timeout_ms = number(&value)?,
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
    args.url = reqwest::Url::parse(&url).map_err(|e| format!("--url {url:?}: {e}"))?;
    if args.url.scheme() != "http" || args.url.host_str() != Some("127.0.0.1") {
        return Err(format!(
            "--url {url:?}: only http://127.0.0.1 targets are allowed (this is a local benchmark)"
        ));
    }
    if args.requests == 0 || args.concurrency == 0 {
        return Err("--requests and --concurrency must be at least 1".to_owned());
    }
    if args.max_seconds == 0 || args.timeout_ms == 0 {
        return Err("--max-seconds and --timeout-ms must be at least 1".to_owned());
    }
    Ok(args)
}

/// One completed request.
struct Sample {
    total: Duration,
    /// Time to the first body bytes.
    first_byte: Duration,
    bytes: usize,
    events: usize,
}

/// What one phase (warmup or measured) produced.
struct Phase {
    samples: Vec<Sample>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    truncated: bool,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Count SSE `data:` lines.
fn count_events(body: &[u8]) -> usize {
    body.split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"data:"))
        .count()
}

async fn one(client: &reqwest::Client, args: &Args, body: &Bytes) -> Result<Sample, String> {
    let started = Instant::now();
    let request = client
        .post(args.url.clone())
        .header(http::header::CONTENT_TYPE, "application/json");
    let request = match args.api {
        Api::OpenAi => request.header(http::header::AUTHORIZATION, "Bearer bench-client-key"),
        Api::Anthropic => request
            .header("x-api-key", "bench-client-key")
            .header("anthropic-version", "2023-06-01"),
    };
    let response = request
        .body(body.clone())
        .send()
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let status = response.status();
    let mut stream = response.bytes_stream();
    let mut first_byte = None;
    let mut buf = Vec::with_capacity(8 * 1024);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading the body: {e}"))?;
        if first_byte.is_none() {
            first_byte = Some(started.elapsed());
        }
        buf.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&buf[..buf.len().min(500)]).into_owned();
        return Err(format!("HTTP {status}: {text}"));
    }
    let (stream_end, answer_key, answer) = match args.api {
        Api::OpenAi => (&b"data: [DONE]"[..], &b"\"choices\""[..], "chat.completion"),
        Api::Anthropic => (
            &b"data: {\"type\":\"message_stop\"}"[..],
            &b"\"content\""[..],
            "Messages `message`",
        ),
    };
    let events = if args.stream {
        let trimmed = buf.trim_ascii_end();
        if !trimmed.ends_with(stream_end) {
            let tail = String::from_utf8_lossy(&trimmed[trimmed.len().saturating_sub(200)..]);
            let end = String::from_utf8_lossy(stream_end);
            return Err(format!("stream did not end with `{end}`: ...{tail}"));
        }
        count_events(&buf)
    } else {
        if !contains(&buf, answer_key) {
            let text = String::from_utf8_lossy(&buf[..buf.len().min(500)]).into_owned();
            return Err(format!("not a {answer}: {text}"));
        }
        0
    };
    Ok(Sample {
        total,
        first_byte: first_byte.unwrap_or(total),
        bytes: buf.len(),
        events,
    })
}

async fn phase(
    client: &reqwest::Client,
    args: &Arc<Args>,
    body: &Bytes,
    count: usize,
    deadline: Instant,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let truncated = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency.min(count) {
        let (client, args, body) = (client.clone(), args.clone(), body.clone());
        let (next, truncated) = (next.clone(), truncated.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(count / args.concurrency + 1);
            let mut errors = 0usize;
            let mut first_error = None;
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if Instant::now() >= deadline {
                    truncated.store(true, Ordering::Relaxed);
                    break;
                }
                match one(&client, &args, &body).await {
                    Ok(sample) => samples.push(sample),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (samples, errors, first_error)
        }));
    }
    let mut out = Phase {
        samples: Vec::with_capacity(count),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        truncated: false,
    };
    for worker in workers {
        match worker.await {
            Ok((samples, errors, first_error)) => {
                out.samples.extend(samples);
                out.errors += errors;
                if out.first_error.is_none() {
                    out.first_error = first_error;
                }
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("worker failed: {e}"));
            }
        }
    }
    out.elapsed = started.elapsed();
    out.truncated = truncated.load(Ordering::Relaxed);
    out
}

fn micros(d: Duration) -> f64 {
    (d.as_nanos() as f64 / 100.0).round() / 10.0
}

/// Nearest-rank percentiles of already sorted durations, in µs.
fn summary(sorted: &[Duration]) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let pct = |p: f64| {
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        micros(sorted[rank.clamp(1, sorted.len()) - 1])
    };
    let sum: Duration = sorted.iter().sum();
    json!({
        "min": micros(sorted[0]),
        "p50": pct(50.0),
        "p90": pct(90.0),
        "p99": pct(99.0),
        "max": micros(sorted[sorted.len() - 1]),
        "mean": micros(sum / sorted.len() as u32),
    })
}

async fn run(args: Args) -> Result<ExitCode, String> {
    // reqwest is built with `rustls-no-provider`: a provider must be installed before a
    // client is built, even though only plain http:// is used here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    // The same conversation in both shapes (Anthropic has a top-level `system`).
    let mut request = match args.api {
        Api::OpenAi => json!({
            "model": args.model,
            "messages": [
                {"role": "system", "content": "You are a benchmark."},
                {"role": "user", "content": "Say hello."}
            ],
            "max_tokens": 32,
        }),
        Api::Anthropic => json!({
            "model": args.model,
            "system": "You are a benchmark.",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 32,
        }),
    };
    if args.stream {
        request["stream"] = Value::Bool(true);
    }
    let body = Bytes::from(request.to_string());
    let args = Arc::new(args);
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);

    let warmup = if args.warmup > 0 {
        Some(phase(&client, &args, &body, args.warmup, deadline).await)
    } else {
        None
    };
    if let Some(w) = &warmup
        && w.errors > 0
    {
        let first = w.first_error.clone().unwrap_or_default();
        return Err(format!(
            "{} of {} warmup requests to {} failed; first error: {first}",
            w.errors, args.warmup, args.url
        ));
    }
    let measured = phase(&client, &args, &body, args.requests, deadline).await;

    let mut totals: Vec<Duration> = measured.samples.iter().map(|s| s.total).collect();
    totals.sort_unstable();
    let mut firsts: Vec<Duration> = measured.samples.iter().map(|s| s.first_byte).collect();
    firsts.sort_unstable();
    let ok = measured.samples.len();
    let secs = measured.elapsed.as_secs_f64();
    let (bytes, events) = measured
        .samples
        .first()
        .map_or((0, 0), |s| (s.bytes, s.events));
    let truncated = measured.truncated || warmup.as_ref().is_some_and(|w| w.truncated);
    let out = json!({
        "label": args.label,
        "url": args.url.as_str(),
        "api": match args.api { Api::OpenAi => "openai", Api::Anthropic => "anthropic" },
        "stream": args.stream,
        "model": args.model,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "requests": args.requests,
        "ok": ok,
        "errors": measured.errors,
        "first_error": measured.first_error,
        "truncated": truncated,
        "elapsed_s": (secs * 1e4).round() / 1e4,
        "rps": if secs > 0.0 { ((ok as f64 / secs) * 10.0).round() / 10.0 } else { 0.0 },
        "latency_us": summary(&totals),
        "first_byte_us": summary(&firsts),
        "response_bytes": bytes,
        "sse_events": events,
    });
    println!("{out}");
    Ok(if measured.errors > 0 {
        ExitCode::from(2)
    } else if truncated {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("bench-load: {message}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("bench-load: {message}");
            ExitCode::FAILURE
        }
    }
}
