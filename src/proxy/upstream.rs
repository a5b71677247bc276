//! Sending a request to an upstream and streaming its answer back, with the provider's
//! timeout applied to connecting, to the response headers, and to every gap between body
//! chunks (so a long stream lives as long as bytes flow). With tracing on, each call of
//! [`send`] is one client span (see `telemetry::otel`), ended when the answer's body ends.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, header};

use super::error::ApiError;
use crate::config::Upstream;

/// A response whose headers have arrived.
pub struct Answer {
    /// The response.
    pub response: reqwest::Response,
    /// Time to the response headers.
    pub ttfb: Duration,
}

/// Send one request upstream. `headers` must already be clean (see `headers::to_upstream`);
/// the provider's credential and extra headers are added here.
/// The headers of a JSON `POST` upstream: the JSON body, an unencoded answer (`identity`, so
/// a stream passes through as it arrives), `accept` when given, and the request id.
pub fn json_headers(accept: Option<&'static str>, request_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(accept) = accept {
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", id);
    }
    headers
}

pub async fn send(
    client: &reqwest::Client,
    upstream: &Upstream,
    prefix: &str,
    method: Method,
    url: &str,
    mut headers: HeaderMap,
    body: reqwest::Body,
) -> Result<Answer, ApiError> {
    for (name, value) in &upstream.extra_headers {
        headers.insert(name.clone(), value.clone());
    }
    let span = crate::telemetry::otel::client_span(
        crate::telemetry::otel::provider_name(upstream.provider_type),
        &upstream.base_url,
        &method,
        url,
        body.as_bytes(),
        &mut headers,
    );
    let out = crate::credentials::Outgoing {
        method: &method,
        url,
        headers: &mut headers,
        body: body.as_bytes(),
    };
    upstream.credential.apply(out).await.map_err(|e| {
        crate::telemetry::otel::client_result(&span, None, Some("credential"));
        ApiError::Credential {
            prefix: prefix.to_owned(),
            detail: e.to_string(),
        }
    })?;
    let request = client
        .request(method, url)
        .headers(headers)
        .body(body)
        .send();
    let started = Instant::now();
    let answer = match tokio::time::timeout(upstream.timeout, request).await {
        Err(_) => Err(timeout(prefix, upstream.timeout)),
        Ok(Err(e)) => Err(classify(prefix, upstream.timeout, &e)),
        Ok(Ok(response)) => Ok(Answer {
            response,
            ttfb: started.elapsed(),
        }),
    };
    if !span.is_none() {
        match &answer {
            Ok(a) => crate::telemetry::otel::client_result(
                &span,
                Some(a.response.status().as_u16()),
                None,
            ),
            Err(ApiError::UpstreamTimeout { .. }) => {
                crate::telemetry::otel::client_result(&span, None, Some("timeout"))
            }
            Err(_) => crate::telemetry::otel::client_result(&span, None, Some("unreachable")),
        }
    }
    answer.map(|mut a| {
        // The attempt's span ends with the answer's body (see `body_stream`), or with the
        // response when it is read whole.
        if !span.is_none() {
            a.response
                .extensions_mut()
                .insert(AttemptSpan { _held: span });
        }
        a
    })
}

/// Largest upstream error answer read into memory (to translate it into the client's shape).
pub const MAX_ERROR_BODY_BYTES: usize = 1024 * 1024;

pub use crate::net::{CappedRead, read_limited};

/// [`read_limited`] for an upstream error answer: a bigger one is a clear 502.
pub async fn read_capped(
    response: reqwest::Response,
    limit: usize,
    prefix: &str,
    after: Duration,
) -> Result<Bytes, ApiError> {
    read_limited(response, limit).await.map_err(|e| match e {
        CappedRead::TooBig => too_big(prefix, limit),
        CappedRead::Transport(e) => classify(prefix, after, &e),
    })
}

fn too_big(prefix: &str, limit: usize) -> ApiError {
    ApiError::UpstreamInvalid {
        prefix: prefix.to_owned(),
        detail: format!(
            "its error answer is larger than {} KiB, more than the gateway reads; check the provider's base URL",
            limit / 1024
        ),
    }
}

fn timeout(prefix: &str, after: Duration) -> ApiError {
    ApiError::UpstreamTimeout {
        prefix: prefix.to_owned(),
        secs: after.as_secs().max(1),
    }
}

/// Map a transport error to the gateway's error, without the URL's query (none is allowed
/// in base URLs, and native queries never carry gateway credentials) or any header.
pub fn classify(prefix: &str, after: Duration, e: &reqwest::Error) -> ApiError {
    if e.is_timeout() {
        return timeout(prefix, after);
    }
    let mut detail = if e.is_connect() {
        "connection failed".to_owned()
    } else if e.is_body() {
        "the request body could not be sent".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::UpstreamUnreachable {
        prefix: prefix.to_owned(),
        detail,
    }
}

/// The client span of the attempt that got a response.
#[derive(Clone)]
struct AttemptSpan {
    _held: tracing::Span,
}

/// The response body as a stream of chunks, ending with an error when the upstream goes
/// quiet for longer than `idle`.
pub fn body_stream(
    mut response: reqwest::Response,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let span = response.extensions_mut().remove::<AttemptSpan>();
    futures_util::stream::unfold(
        Some((response.bytes_stream().boxed(), span)),
        move |state| async move {
            let (mut stream, span) = state?;
            match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "upstream went quiet for longer than its timeout",
                    )),
                    None,
                )),
                Ok(None) => None,
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some((stream, span)))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(chunks: Vec<&'static [u8]>) -> reqwest::Response {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        reqwest::Response::from(http::Response::new(reqwest::Body::wrap_stream(stream)))
    }

    #[tokio::test]
    async fn reads_are_capped_with_a_clear_error() {
        let ok = read_limited(response(vec![b"abc", b"def"]), 6).await;
        assert_eq!(ok.ok().as_deref(), Some(&b"abcdef"[..]));
        let big = read_limited(response(vec![b"abc", b"defg"]), 6).await;
        assert!(matches!(big, Err(CappedRead::TooBig)));
        let e = read_capped(
            response(vec![&[b'x'; 2048]]),
            1024,
            "openai",
            Duration::from_secs(1),
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("larger than 1 KiB"), "{e}");
    }
}
