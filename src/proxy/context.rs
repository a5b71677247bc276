//! The request context: what is decided about a request before a handler runs, once and in
//! one direction.
//!
//! ```text
//! path ─▶ (prefix, proxy, rest) ─▶ snapshot.load() (once) ─▶ ProxyTable ─▶ authenticate ─▶ Ctx
//!                                                                                         │
//!                       Model Router handlers (model_router, translated) ◀────────────────┤
//!                       native handler (native)                          ◀────────────────┘
//! ```
//!
//! Handlers take the [`Ctx`] and never load the snapshot again; the body is read once
//! ([`read_body`]) by the handler that needs it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use bytes::Bytes;
use http::HeaderValue;
use http::{HeaderMap, header};

use super::error::ApiError;
use super::{AppState, Exchange};
use crate::config::ProxyTable;
use crate::crd::ProviderType;
use crate::formats::Format;
use crate::policy::audit;
use crate::policy::identity::AuthFailure;
use crate::telemetry::AuthFailureLabels;

/// A request's context: the proxy it names, from the one snapshot load of the request.
pub struct Ctx {
    /// The proxy's routing table and policy.
    pub table: Arc<ProxyTable>,
}

/// The format whose error shape a native route answers in before its route is known: the
/// format of the provider type named like the prefix (`/v1/anthropic/...`), else OpenAI's.
pub fn format_hint(prefix: &str) -> Format {
    ProviderType::ALL
        .into_iter()
        .find(|t| t.as_str() == prefix)
        .map_or(Format::OpenAi, |t| crate::providers::info(t).format)
}

/// The format whose error shape a native route of `table` answers in.
pub fn format_for(table: &crate::config::ProxyTable, prefix: &str) -> Format {
    table
        .route(prefix)
        .map_or_else(|| format_hint(prefix), |r| r.upstream.info.format)
}

/// The client's address, when the server recorded it.
pub fn peer(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The headers that carry the client's credential. Gemini clients may also send their key
/// as the `key=` query parameter (which never goes upstream): it counts as `x-goog-api-key`.
pub fn credential_headers<'a>(
    table: &ProxyTable,
    prefix: &str,
    request: &'a Request,
) -> std::borrow::Cow<'a, http::HeaderMap> {
    let headers = request.headers();
    let gemini = prefix != "model-router" && format_for(table, prefix) == Format::Gemini;
    if !gemini || crate::policy::identity::presented(headers).is_some() {
        return std::borrow::Cow::Borrowed(headers);
    }
    let key = request.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "key")
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    });
    match key.and_then(|k| HeaderValue::from_str(&k).ok()) {
        Some(mut value) => {
            value.set_sensitive(true);
            let mut owned = headers.clone();
            owned.insert("x-goog-api-key", value);
            std::borrow::Cow::Owned(owned)
        }
        None => std::borrow::Cow::Borrowed(headers),
    }
}

/// Identify the caller of `table` (or refuse). Sets the exchange's identity.
pub async fn authenticate(
    state: &AppState,
    table: &ProxyTable,
    headers: &http::HeaderMap,
    peer: Option<std::net::IpAddr>,
    exchange: &mut Exchange,
) -> Result<(), ApiError> {
    let Some(auth) = &table.policy.auth else {
        exchange.identity = "anonymous".to_owned();
        audit::update(&exchange.audit, |d| {
            d.identity = "anonymous".to_owned();
            d.auth = "anonymous";
        });
        return Ok(());
    };
    match state.security.authenticate(auth, headers).await {
        Ok(identity) => {
            audit::update(&exchange.audit, |d| {
                d.identity = identity.name.clone();
                d.auth = identity.method;
            });
            exchange.identity = identity.name;
            Ok(())
        }
        Err(failure) => {
            let proxy = table.key.proxy_id();
            state
                .metrics
                .auth_failures
                .get_or_create(&AuthFailureLabels {
                    proxy: proxy.clone(),
                    reason: failure.reason(),
                })
                .inc();
            audit::update(&exchange.audit, |d| d.auth = failure.reason());
            let addr = peer;
            let delay = state.security.failed(addr).await;
            tracing::info!(
                proxy = %proxy,
                reason = failure.reason(),
                peer = ?addr,
                delay_ms = delay.as_millis() as u64,
                "client authentication failed"
            );
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let methods = table.policy.describe_auth();
            let message = match failure {
                AuthFailure::Missing => format!(
                    "proxy `{proxy}` requires client authentication ({methods}): send your key or token as `Authorization: Bearer …` (or `x-api-key` / `api-key` / `x-goog-api-key`)"
                ),
                AuthFailure::Invalid => format!(
                    "the credential sent to proxy `{proxy}` was not accepted ({methods}); check the key or token"
                ),
                AuthFailure::Unavailable => format!(
                    "the credential sent to proxy `{proxy}` could not be verified right now (identity provider or Kubernetes API unreachable); retry later"
                ),
            };
            Err(ApiError::Unauthenticated {
                message,
                invalid: failure != AuthFailure::Missing,
            })
        }
    }
}

/// Refuse a body whose declared `content-length` is over the limit, before reading any of it.
pub fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(())
}

/// Read a body up to the limit.
pub async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let (parts, body) = request.into_parts();
    read_body_of(&parts.headers, body, limit).await
}

/// [`read_body`] of a request taken apart (its head stays with the caller, uncopied).
pub async fn read_body_of(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    check_declared_length(headers, limit)?;
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::ClientBody(e.to_string())),
    }
}

/// A Model Router request body the budget gate has already parsed (a JSON object), handed to
/// the handler in the request's extensions so that the body is parsed once.
#[derive(Clone, Debug)]
pub struct Parsed(pub serde_json::Map<String, serde_json::Value>);

/// Read a JSON-object body (bounded), keeping the request head: the gate's [`Parsed`] body
/// when there is one, else the body read and parsed here.
pub async fn read_object(
    request: Request,
    limit: usize,
) -> Result<
    (
        http::request::Parts,
        serde_json::Map<String, serde_json::Value>,
    ),
    ApiError,
> {
    let (mut parts, body) = request.into_parts();
    if let Some(Parsed(map)) = parts.extensions.remove::<Parsed>() {
        return Ok((parts, map));
    }
    let bytes = read_body_of(&parts.headers, body, limit).await?;
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok((parts, map)),
        Ok(_) => Err(ApiError::InvalidJson("expected a JSON object".to_owned())),
        Err(e) => Err(ApiError::InvalidJson(e.to_string())),
    }
}

/// Read a request body whole (up to the limit), keeping its head.
pub async fn read_whole(
    request: Request,
    limit: usize,
) -> Result<(http::request::Parts, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = read_body_of(&parts.headers, body, limit).await?;
    Ok((parts, bytes))
}
