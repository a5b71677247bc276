//! Where the security policy meets the data plane: authentication before routing, and the
//! tool-call guardrails applied to answers (whole JSON bodies, or SSE streams event by event;
//! while a call is held back, the data plane's keep-alive wrapper keeps the stream open).

use std::sync::Arc;

use axum::body::Body;

use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{HeaderValue, header};
use serde_json::Value;

use super::error::ApiError;
use super::{AppState, Exchange};
use crate::formats::Format;
use crate::policy::audit;
use crate::policy::guardrails::{self, Decision, ToolPolicy, Trust};
use crate::policy::stream::{SseGuard, Usage};
use crate::telemetry::GuardrailLabels;

/// Count a 403 and build it.
pub fn forbidden(state: &AppState, exchange: &Exchange, target: String) -> ApiError {
    state
        .metrics
        .access_denials
        .get_or_create(&crate::telemetry::DenialLabels {
            proxy: exchange.proxy.clone(),
            route: exchange.route,
        })
        .inc();
    ApiError::Forbidden {
        identity: exchange.identity.clone(),
        target,
        proxy: exchange.proxy.clone(),
    }
}

/// Everything needed to guard one answer.
#[derive(Clone)]
pub struct Guard {
    /// The rules.
    pub policy: Arc<ToolPolicy>,
    /// The request's trust.
    pub trust: Trust,
    /// The answer's format.
    pub format: Format,
    /// Where decisions go.
    pub sink: Sink,
}

/// Where decisions and usage go: the audit cell and the metrics.
#[derive(Clone)]
pub struct Sink {
    cell: audit::Cell,
    metrics: Arc<crate::telemetry::Metrics>,
    proxy: String,
    /// The provider prefix, for error messages (the proxy ID until the route is known).
    provider: String,
    /// `false` when only usage is read (a proxy without `spec.tools` makes no decisions).
    decisions: bool,
}

impl Sink {
    /// A sink for the exchange.
    pub fn new(state: &AppState, exchange: &Exchange) -> Self {
        Self {
            cell: exchange.audit.clone(),
            metrics: state.metrics.clone(),
            proxy: exchange.proxy.clone(),
            provider: if exchange.provider.is_empty() {
                exchange.proxy.clone()
            } else {
                exchange.provider.clone()
            },
            decisions: true,
        }
    }

    fn record(&self, mut decisions: Vec<Decision>, usage: Option<Usage>) {
        if !self.decisions {
            decisions.clear();
        }
        for d in &decisions {
            self.metrics
                .guardrail_decisions
                .get_or_create(&GuardrailLabels {
                    proxy: self.proxy.clone(),
                    rule: d.rule.clone(),
                    action: d.action,
                })
                .inc();
            if d.blocked() {
                tracing::info!(proxy = %self.proxy, tool = %d.tool, rule = %d.rule, "tool call blocked");
            }
        }
        audit::update(&self.cell, |data| {
            data.decisions.extend(decisions);
            if let Some(u) = usage {
                data.usage = u;
            }
        });
    }
}

/// Read token usage from a Model Router answer of a proxy without `spec.tools`, for its
/// audit event. Nothing is held or changed; a stream still passes event by event.
pub async fn record_usage(state: &AppState, exchange: &Exchange, response: Response) -> Response {
    if response.status().is_success() && is_sse(&response) {
        let sink = Sink {
            decisions: false,
            ..Sink::new(state, exchange)
        };
        return tap_usage(response, sink);
    }
    let guard = Guard {
        policy: Arc::new(ToolPolicy::allow_all()),
        trust: Trust::default(),
        format: Format::OpenAi,
        sink: Sink {
            decisions: false,
            ..Sink::new(state, exchange)
        },
    };
    guard_response(response, guard, state.max_body_bytes).await
}

/// An OpenAI-shaped SSE answer passes through byte for byte while the events that carry
/// `usage` (the last chunk, with `stream_options.include_usage`) are read on the side; the
/// usage goes to the audit event when the body ends or the client goes away. Other events are
/// only framed, never parsed as JSON, so an unguarded stream costs little more than a copy.
fn tap_usage(response: Response, sink: Sink) -> Response {
    struct Tap {
        parser: crate::formats::sse::SseParser,
        usage: Usage,
        sink: Sink,
    }
    impl Tap {
        fn read(&mut self, events: Vec<crate::formats::sse::SseEvent>) {
            for event in events {
                if carries_usage(&event.data)
                    && let Ok(value) = serde_json::from_str::<Value>(&event.data)
                {
                    self.usage.read(Format::OpenAi, &value);
                }
            }
        }
    }
    impl Drop for Tap {
        fn drop(&mut self) {
            let events = self.parser.finish();
            self.read(events);
            self.sink.record(Vec::new(), Some(self.usage));
        }
    }
    let (parts, body) = response.into_parts();
    let mut tap = Tap {
        parser: crate::formats::sse::SseParser::default(),
        usage: Usage::default(),
        sink,
    };
    let body = body.into_data_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            let events = tap.parser.push(bytes);
            tap.read(events);
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// Whether an event's JSON has a non-null `usage` object (`"usage": {`), without parsing it.
fn carries_usage(data: &str) -> bool {
    data.match_indices("\"usage\"").any(|(i, key)| {
        data[i + key.len()..]
            .trim_start()
            .strip_prefix(':')
            .is_some_and(|rest| rest.trim_start().starts_with('{'))
    })
}

/// The request's messages, for audit events with `includeContent`.
pub fn content_of(format: Format, body: &Value) -> Option<Value> {
    let key = match format {
        Format::Gemini => "contents",
        _ => "messages",
    };
    body.get(key).cloned()
}

fn is_sse(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

/// The refusal of an answer the guardrails cannot read, in the route's shape (502
/// `upstream_invalid_response`): never passed on unguarded.
fn unreadable(guard: &Guard, detail: String) -> Response {
    ApiError::UpstreamInvalid {
        prefix: guard.sink.provider.clone(),
        detail,
    }
    .into_response_for(guard.format)
}

/// Apply the guardrails to an answer (a successful one; errors pass as they are).
pub async fn guard_response(response: Response, guard: Guard, limit: usize) -> Response {
    if !response.status().is_success() {
        return response;
    }
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        // The gateway asked for an uncompressed answer; one it cannot read is not passed
        // on unguarded.
        return unreadable(
            &guard,
            "the answer is compressed although the gateway asked for `accept-encoding: identity`; tool-call guardrails cannot inspect it".to_owned(),
        );
    }
    if is_sse(&response) {
        return guard_stream(response, guard);
    }
    if !guard.sink.decisions && !is_json(&response) {
        // Only usage is read (no `spec.tools`): other answers pass as they are.
        return response;
    }
    // With guardrails, every other answer is read as JSON whatever its content type says
    // (a client's SDK may parse it anyway); one that is not JSON is refused below.
    let (mut parts, body) = response.into_parts();
    use http_body_util::BodyExt;
    let bytes = match http_body_util::Limited::new(body, limit.max(64 << 20))
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => return unreadable(&guard, format!("the answer could not be read: {e}")),
    };
    let mut value = match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => value,
        Err(_) if !guard.sink.decisions => return Response::from_parts(parts, Body::from(bytes)),
        Err(e) => {
            return unreadable(
                &guard,
                format!(
                    "the answer is not JSON the tool-call guardrails can read ({e}; JSON nested deeper than 128 levels is refused)"
                ),
            );
        }
    };
    let mut usage = Usage::default();
    match &value {
        // Gemini's non-SSE streamGenerateContent answers a JSON array of responses.
        Value::Array(items) => items.iter().for_each(|item| usage.read(guard.format, item)),
        item => usage.read(guard.format, item),
    }
    let decisions =
        match guardrails::guard_json(guard.format, &guard.policy, &guard.trust, &mut value) {
            Ok(decisions) => decisions,
            Err(fault) => return unreadable(&guard, fault.0),
        };
    let changed = decisions.iter().any(Decision::blocked);
    guard.sink.record(decisions, Some(usage));
    if !changed {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let body = value.to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

struct StreamState {
    body: BoxStream<'static, Result<Bytes, axum::Error>>,
    guard: SseGuard,
    sink: Sink,
    done: bool,
}

fn guard_stream(response: Response, guard: Guard) -> Response {
    let Some(sse) = SseGuard::new(guard.format, guard.policy.clone(), guard.trust.clone()) else {
        // A format whose SSE answers the guard cannot read (Bedrock speaks event streams):
        // refused, never passed unguarded.
        return unreadable(
            &guard,
            "the answer is an SSE stream, which the tool-call guardrails cannot read in this format".to_owned(),
        );
    };
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let state = StreamState {
        body: body.into_data_stream().boxed(),
        guard: sse,
        sink: guard.sink,
        done: false,
    };
    // While a call is held the client gets nothing: the data plane's keep-alive wrapper
    // (`--sse-keepalive`, see `keepalive.rs`) sends comments between events then, as on any
    // idle stream, and never on Gemini streams, whose SDK parses every line as JSON.
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let (out, mut err) = match st.body.next().await {
                Some(Ok(bytes)) => (st.guard.push(&bytes), None),
                Some(Err(e)) => {
                    st.done = true;
                    (st.guard.finish(), Some(std::io::Error::other(e)))
                }
                None => {
                    st.done = true;
                    (st.guard.finish(), None)
                }
            };
            if st.guard.failed() {
                // The guard ended the stream with an error event: read no more upstream.
                st.done = true;
                err = None;
            }
            let decisions = st.guard.take_decisions();
            let usage = st.guard.usage;
            if !decisions.is_empty() || st.done {
                st.sink.record(decisions, Some(usage));
            }
            if let Some(e) = err {
                if out.is_empty() {
                    return Some((Err(e), st));
                }
                // Send what was decided, then the error on the next poll.
                st.body =
                    futures_util::stream::once(async move { Err(axum::Error::new(e)) }).boxed();
                st.done = false;
                return Some((Ok(Bytes::from(out)), st));
            }
            if !out.is_empty() {
                return Some((Ok::<_, std::io::Error>(Bytes::from(out)), st));
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    fn guard(format: Format, decisions: bool) -> Guard {
        Guard {
            policy: Arc::new(crate::policy::guardrails::tests::policy()),
            trust: Trust {
                sources: vec!["web_fetch".into()],
            },
            format,
            sink: Sink {
                cell: Arc::default(),
                metrics: Arc::default(),
                proxy: "ai.team-a".into(),
                provider: "up".into(),
                decisions,
            },
        }
    }

    fn answer(content_type: &str, body: &str) -> Response {
        let mut r = Response::new(Body::from(body.to_owned()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("x")),
        );
        r
    }

    async fn body_of(r: Response) -> Value {
        use http_body_util::BodyExt;
        let bytes = match r.into_body().collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => panic!("{e}"),
        };
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn answers_the_guard_cannot_read_are_refused_in_the_route_shape() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let call = r#"{"choices":[{"index":0,"message":{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"delete_repo","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#;
        for (format, content_type, body) in [
            (Format::OpenAi, "application/json", deep.as_str()),
            (Format::OpenAi, "text/plain", "hello"),
            (Format::Anthropic, "application/json", "{\"content\": 5}"),
            (Format::Bedrock, "text/event-stream", "data: {}\n\n"),
            (Format::Gemini, "application/octet-stream", "\u{1}"),
        ] {
            let r = guard_response(answer(content_type, body), guard(format, true), 1 << 20).await;
            assert_eq!(
                r.status(),
                http::StatusCode::BAD_GATEWAY,
                "{format:?} {content_type}"
            );
            let v = body_of(r).await;
            let message = match format {
                Format::OpenAi => {
                    assert_eq!(v["error"]["code"], "upstream_invalid_response");
                    v["error"]["message"].clone()
                }
                Format::Anthropic => v["error"]["message"].clone(),
                Format::Gemini => v["error"]["message"].clone(),
                Format::Cohere | Format::Bedrock => v["message"].clone(),
            };
            assert!(
                message.as_str().unwrap_or("").contains("provider `up`"),
                "{v}"
            );
        }
        // Usage-only reading (no spec.tools) leaves such answers alone.
        let r = guard_response(
            answer("text/plain", "hello"),
            guard(Format::OpenAi, false),
            1 << 20,
        )
        .await;
        assert_eq!(r.status(), http::StatusCode::OK);
        // A readable answer in a lax content type is guarded, not passed.
        let r = guard_response(
            answer("text/plain", call),
            guard(Format::OpenAi, true),
            1 << 20,
        )
        .await;
        assert_eq!(r.status(), http::StatusCode::OK);
        let v = body_of(r).await;
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn usage_events_are_found_without_parsing_the_others() {
        assert!(carries_usage(
            r#"{"choices":[],"usage":{"prompt_tokens":3}}"#
        ));
        assert!(carries_usage(r#"{"usage" : { "prompt_tokens":3}}"#));
        assert!(!carries_usage(
            r#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#
        ));
        assert!(!carries_usage(
            r#"{"choices":[{"delta":{"content":"\"usage\" is a word"}}]}"#
        ));
    }

    use super::*;
}
