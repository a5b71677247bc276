//! Settling an attempt's HTTP answer for the attempt loop: an attempt counts as served only
//! once its first byte is ready for the client (for a stream, its first event), so a failure
//! or a silence before that can still be retried elsewhere.
//!
//! - the answer (headers and first body chunk) must arrive within `firstByteTimeout`;
//! - an error status is classified from its status, headers and (at most 64 KiB of) body;
//! - a stream whose first event is an error event failed before serving anything;
//! - after the first event nothing is retried: a stream that breaks off ends with an error
//!   event (OpenAI's shape) instead of a cut connection.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header;

use super::attempt::Attempt;
use super::policy::{ERROR_BODY_LIMIT, Failure, FailureKind, classify};
use crate::crd::ProviderType;
use crate::proxy::ApiError;

/// What the client gets from an attempt: an answer, or the gateway's error.
pub type Answer = Result<Response, ApiError>;

/// Await one attempt (`send`: resolve, translate, send) and settle it to its first byte.
pub async fn settle(
    send: impl Future<Output = Answer>,
    provider: ProviderType,
    prefix: &str,
    first_byte: Option<Duration>,
) -> Attempt<Answer> {
    let started = Instant::now();
    let work = async {
        match send.await {
            Err(e) => {
                let kind = match &e {
                    ApiError::UpstreamTimeout { .. } => FailureKind::Timeout,
                    ApiError::UpstreamUnreachable { .. } => FailureKind::ConnectError,
                    ApiError::UpstreamInvalid { .. } => FailureKind::ServerError,
                    _ => FailureKind::Rejected,
                };
                Attempt::Failed {
                    failure: Failure::of(kind),
                    value: Err(e),
                }
            }
            Ok(response) if !response.status().is_success() => {
                error_answer(response, provider).await
            }
            Ok(response) => first_chunk(response, prefix, started).await,
        }
    };
    match first_byte {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(settled) => settled,
            Err(_) => Attempt::Failed {
                failure: Failure::of(FailureKind::Timeout),
                value: Err(ApiError::UpstreamTimeout {
                    prefix: prefix.to_owned(),
                    secs: limit.as_secs().max(1),
                }),
            },
        },
    }
}

/// Read (part of) an error answer, classify it, and keep it whole for the client.
async fn error_answer(response: Response, provider: ProviderType) -> Attempt<Answer> {
    let (parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let mut head = BytesMut::new();
    let mut broken = false;
    while head.len() < ERROR_BODY_LIMIT {
        match stream.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(_)) => {
                broken = true;
                break;
            }
            None => break,
        }
    }
    let failure = classify(provider, parts.status, &parts.headers, &head);
    let head = head.freeze();
    let body = if broken || head.len() < ERROR_BODY_LIMIT {
        Body::from(head)
    } else {
        let first = futures_util::stream::once(async move { Ok::<_, axum::Error>(head) });
        Body::from_stream(first.chain(stream))
    };
    Attempt::Failed {
        failure,
        value: Ok(Response::from_parts(parts, body)),
    }
}

fn is_sse(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Whether an SSE chunk starts with an error event (the Model Router's streams report an
/// upstream failure as `data: {"error": …}`).
fn starts_with_error_event(chunk: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&chunk[..chunk.len().min(64)]);
    let text = text.trim_start();
    text.strip_prefix("data:")
        .map(str::trim_start)
        .is_some_and(|rest| rest.starts_with("{\"error\""))
}

/// Wait for a successful answer's first body chunk.
async fn first_chunk(response: Response, prefix: &str, started: Instant) -> Attempt<Answer> {
    let sse = is_sse(&response);
    let (parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    // Skip empty chunks: they carry nothing for the client.
    let first = loop {
        match stream.next().await {
            Some(Ok(chunk)) if chunk.is_empty() => continue,
            other => break other,
        }
    };
    let ttfb = started.elapsed();
    match first {
        None => Attempt::Served {
            value: Ok(Response::from_parts(parts, Body::empty())),
            ttfb,
        },
        Some(Err(e)) => Attempt::Failed {
            failure: Failure::of(FailureKind::ConnectError),
            value: Err(ApiError::UpstreamUnreachable {
                prefix: prefix.to_owned(),
                detail: format!("the answer broke off before its first byte: {e}"),
            }),
        },
        Some(Ok(chunk)) if sse && starts_with_error_event(&chunk) => {
            let rest = stream.map(|r| r.map_err(std::io::Error::other));
            let body = futures_util::stream::once(async move { Ok(chunk) }).chain(rest);
            Attempt::Failed {
                failure: Failure::of(FailureKind::ServerError),
                value: Ok(Response::from_parts(parts, Body::from_stream(body))),
            }
        }
        Some(Ok(chunk)) => {
            let rest = stream.map(|r| r.map_err(std::io::Error::other));
            let body = futures_util::stream::once(async move { Ok(chunk) }).chain(rest);
            let body = if sse {
                Body::from_stream(end_with_error_event(body))
            } else {
                Body::from_stream(body)
            };
            Attempt::Served {
                value: Ok(Response::from_parts(parts, body)),
                ttfb,
            }
        }
    }
}

/// A stream that ends with an OpenAI-shaped error event, instead of a cut connection, when
/// its source fails (after its first event: no retry any more).
pub fn end_with_error_event(
    body: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    body.boxed()
        .scan(false, |failed, item| {
            if *failed {
                return std::future::ready(None);
            }
            let out = match item {
                Ok(bytes) => Ok(bytes),
                Err(e) => {
                    *failed = true;
                    let body = serde_json::json!({"error": {
                        "message": format!("the upstream stream broke off after it started, so it was not retried: {e}"),
                        "type": "api_error", "param": null, "code": "upstream_stream_error"
                    }});
                    Ok(Bytes::from(format!("data: {body}\n\n")))
                }
            };
            std::future::ready(Some(out))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn sse(chunks: Vec<Result<Bytes, std::io::Error>>) -> Response {
        let mut r = Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        r
    }

    async fn body_text(r: Response) -> String {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_stream_that_breaks_after_its_first_event_ends_with_an_error_event() {
        let r = sse(vec![
            Ok(Bytes::from_static(b"data: {\"choices\":[]}\n\n")),
            Err(std::io::Error::other("reset")),
        ]);
        let settled = settle(async { Ok(r) }, ProviderType::Openai, "openai", None).await;
        let Attempt::Served { value: Ok(r), .. } = settled else {
            panic!("not served")
        };
        let text = body_text(r).await;
        assert!(text.starts_with("data: {\"choices\""), "{text}");
        assert!(text.contains("upstream_stream_error"), "{text}");
    }

    #[tokio::test]
    async fn failures_before_the_first_byte_are_failures() {
        let r = sse(vec![Err(std::io::Error::other("reset"))]);
        let settled = settle(async { Ok(r) }, ProviderType::Openai, "openai", None).await;
        assert!(
            matches!(settled, Attempt::Failed { failure, .. } if failure.kind == FailureKind::ConnectError)
        );

        let r = sse(vec![Ok(Bytes::from_static(
            b"data: {\"error\":{\"message\":\"x\"}}\n\n",
        ))]);
        let settled = settle(async { Ok(r) }, ProviderType::Anthropic, "anthropic", None).await;
        assert!(
            matches!(settled, Attempt::Failed { failure, .. } if failure.kind == FailureKind::ServerError)
        );

        let hang = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let mut r = Response::new(Body::from_stream(hang));
        *r.status_mut() = StatusCode::OK;
        let settled = settle(
            async { Ok(r) },
            ProviderType::Openai,
            "openai",
            Some(Duration::from_millis(50)),
        )
        .await;
        assert!(
            matches!(settled, Attempt::Failed { failure, value: Err(ApiError::UpstreamTimeout { .. }) } if failure.kind == FailureKind::Timeout)
        );
    }

    #[tokio::test]
    async fn error_answers_are_classified_and_kept_whole() {
        let body = r#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let settled = settle(async { Ok(r) }, ProviderType::Openai, "openai", None).await;
        let Attempt::Failed {
            failure,
            value: Ok(r),
        } = settled
        else {
            panic!("not failed")
        };
        assert_eq!(failure.kind, FailureKind::QuotaExhausted);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body_text(r).await, body);
    }
}
