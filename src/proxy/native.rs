//! Native pass-through: `ANY /v1/{prefix}/{proxy}/{rest…}` → `{baseUrl}/{rest…}`.
//!
//! Method, query, headers and body go upstream as they are (minus hop-by-hop headers and the
//! client's credentials; plus the provider's credential), and the answer streams back chunk
//! by chunk. The upstream host comes only from configuration, and `rest` cannot climb out of
//! the provider's base path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures_util::StreamExt;
use http::{HeaderValue, header};
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use super::upstream::{self, Answer};
use super::{AppState, Exchange};

/// Refuse a `rest` path that could leave the base path or change the host: empty segments
/// (`//`, a leading `/`), `.` and `..` (also percent-encoded), encoded slashes and
/// backslashes, control characters, and absolute URLs.
pub fn check_rest(rest: &str) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::InvalidPath(format!(
            "path `{rest}` refused: {why}"
        )))
    };
    if rest.is_empty() {
        return Ok(());
    }
    if rest.contains("://") {
        return refuse("absolute URLs are not allowed; the upstream comes from the LlmProvider");
    }
    for segment in rest.split('/') {
        if segment.is_empty() {
            return refuse("empty path segment");
        }
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        if decoded == "." || decoded == ".." {
            return refuse("`.` and `..` segments are not allowed");
        }
        if decoded.contains(['/', '\\']) {
            return refuse("encoded slashes and backslashes are not allowed");
        }
        if decoded.chars().any(char::is_control) {
            return refuse("control characters are not allowed");
        }
    }
    Ok(())
}

/// Forward one request.
pub async fn forward(
    state: &Arc<AppState>,
    prefix: &str,
    proxy_id: &str,
    rest: &str,
    request: Request,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    check_rest(rest)?;
    let snapshot = state.store.load();
    let table = snapshot
        .proxy(proxy_id)
        .ok_or_else(|| ApiError::ProxyNotFound {
            id: proxy_id.to_owned(),
        })?;
    exchange.proxy = table.key.proxy_id();
    let route = table.route(prefix).ok_or_else(|| ApiError::UnknownPrefix {
        prefix: prefix.to_owned(),
        model: format!("/v1/{prefix}/{proxy_id}/"),
        available: table.prefixes(),
    })?;
    exchange.provider = route.prefix.clone();
    let upstream = &route.upstream;

    let limit = state.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }

    let mut url = upstream.url(rest);
    if let Some(query) = request.uri().query() {
        url.push('?');
        url.push_str(query);
    }
    let method = request.method().clone();
    let mut headers = super::headers::to_upstream(request.headers());
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        headers.insert("x-request-id", id);
    }

    // Stream the body upstream, counting bytes against the limit.
    let over_limit = Arc::new(AtomicBool::new(false));
    let flag = over_limit.clone();
    let mut seen = 0usize;
    let body = request.into_body().into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len();
        if seen > limit {
            flag.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("request body over the limit"));
        }
        Ok(chunk)
    });
    let sent = upstream::send(
        &state.client,
        upstream,
        &route.prefix,
        method,
        &url,
        headers,
        reqwest::Body::wrap_stream(body),
    )
    .await;
    let Answer { response, ttfb } = match sent {
        Ok(answer) => answer,
        Err(_) if over_limit.load(Ordering::Relaxed) => {
            return Err(ApiError::BodyTooLarge { limit });
        }
        Err(e) => return Err(e),
    };
    exchange.ttfb = Some(ttfb);
    let status = response.status();
    let headers = super::headers::to_client(response.headers());
    let body = upstream::body_stream(response, upstream.timeout);
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for ok in [
            "chat/completions",
            "models",
            "models/gemini-2.5-pro:generateContent",
            "model/amazon.nova-pro-v1:0/converse",
            "files/abc%20def",
            "",
        ] {
            assert!(check_rest(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn climbing_paths_are_refused() {
        for bad in [
            "../secrets",
            "a/../../b",
            "a/%2e%2e/b",
            "%2E%2E/x",
            "a%2Fb",
            "a%2fb",
            "a%5cb",
            "a\\b",
            "/etc/passwd",
            "a//b",
            "http://evil.example/x",
            "./x",
            "a%00b",
        ] {
            assert!(check_rest(bad).is_err(), "{bad}");
        }
    }
}
