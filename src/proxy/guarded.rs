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
        return axum::response::IntoResponse::into_response(ApiError::UpstreamInvalid {
            prefix: guard.sink.proxy.clone(),
            detail: "the answer is compressed although the gateway asked for `accept-encoding: identity`; tool-call guardrails cannot inspect it".to_owned(),
        });
    }
    if is_sse(&response) {
        return guard_stream(response, guard);
    }
    if !is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    use http_body_util::BodyExt;
    let bytes = match http_body_util::Limited::new(body, limit.max(64 << 20))
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let err = ApiError::UpstreamInvalid {
                prefix: String::new(),
                detail: format!("the answer could not be read: {e}"),
            };
            return axum::response::IntoResponse::into_response(err);
        }
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let mut usage = Usage::default();
    let mut decisions = Vec::new();
    match &mut value {
        // Gemini's non-SSE streamGenerateContent answers a JSON array of responses.
        Value::Array(items) => {
            for item in items {
                usage.read(guard.format, item);
                decisions.extend(guardrails::guard_json(
                    guard.format,
                    &guard.policy,
                    &guard.trust,
                    item,
                ));
            }
        }
        item => {
            usage.read(guard.format, item);
            decisions.extend(guardrails::guard_json(
                guard.format,
                &guard.policy,
                &guard.trust,
                item,
            ));
        }
    }
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
        return response;
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
            let (out, err) = match st.body.next().await {
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
