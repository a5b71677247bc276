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

use super::context::{Ctx, format_for, read_whole};
use super::error::ApiError;
use super::guarded;
use super::upstream::{self, Answer};
use super::{AppState, Exchange};
use crate::config::Upstream;
use crate::formats::Format;
use crate::formats::endpoints::{self, Matched, Mismatch, ModelAt, ToolCalls};

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

/// Gemini and Vertex paths name a model in the segment after `models/`: only a model ID
/// (letters, digits, `.`, `_`, `-`), optionally followed by `:method`, may stand there, so a
/// client cannot smuggle a query, a fragment or another resource into the upstream path.
pub fn check_gemini_path(rest: &str) -> Result<(), ApiError> {
    let mut segments = rest.split('/');
    while let Some(segment) = segments.next() {
        if segment != "models" {
            continue;
        }
        let Some(target) = segments.next() else {
            return Ok(());
        };
        let (model, method) = match target.split_once(':') {
            Some((model, method)) => (model, Some(method)),
            None => (target, None),
        };
        let model_ok = is_model_id(model);
        let method_ok =
            method.is_none_or(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()));
        if !model_ok || !method_ok {
            return Err(ApiError::InvalidPath(format!(
                "`{target}` is not a model ID (letters, digits, `.`, `_`, `-`) with an optional `:method`"
            )));
        }
    }
    Ok(())
}

/// A Vertex AI path that names a project and location (`v1/projects/{p}/locations/{l}/…`)
/// must name the provider's own: the gateway's Google identity is not lent to other projects.
pub fn check_vertex_scope(rest: &str, project: &str, location: &str) -> Result<(), ApiError> {
    let segments: Vec<&str> = rest.split('/').collect();
    let Some(i) = segments.iter().position(|s| *s == "projects") else {
        return Ok(());
    };
    let named_project = segments.get(i + 1).copied().unwrap_or("");
    let named_location = match segments.get(i + 2) {
        Some(&"locations") => segments.get(i + 3).copied().unwrap_or(""),
        _ => location,
    };
    if named_project != project || named_location != location {
        return Err(ApiError::InvalidPath(format!(
            "this route serves Vertex AI project `{project}` in `{location}` only, not \
             `{named_project}` in `{named_location}`; set the client's project and location to match"
        )));
    }
    Ok(())
}

/// Whether `model` can stand as a model ID in an upstream path segment (Gemini and Vertex put
/// the model in the URL): letters, digits, `.`, `_` and `-` only, so nothing can climb out of
/// the segment, start a query or fragment, or name another method.
pub fn is_model_id(model: &str) -> bool {
    crate::config::snapshot::is_model_segment(model)
}

/// A Bedrock `model/{modelId}/…` path whose model ID is an ARN: the ID may hold encoded
/// slashes (AWS SDKs encode the `/` of `…:inference-profile/{id}`), but none of its parts may
/// be `.` or `..` or hold a backslash or control character, and the rest of the path must pass
/// [`check_rest`] as it is.
pub fn check_bedrock_model_path(rest: &str) -> bool {
    let mut segments = rest.splitn(3, '/');
    let (Some("model"), Some(id), tail) = (segments.next(), segments.next(), segments.next())
    else {
        return false;
    };
    let decoded = percent_decode_str(id).decode_utf8_lossy();
    let id_ok = decoded.starts_with("arn:")
        && !decoded.contains('\\')
        && !decoded.chars().any(char::is_control)
        && decoded
            .split('/')
            .all(|part| !matches!(part, "" | "." | ".."));
    id_ok && tail.is_none_or(|t| check_rest(t).is_ok())
}

/// Drop `key=` parameters from a query: a Gemini client may send its own key there, and it
/// must never reach the upstream (the provider's key goes in `x-goog-api-key`).
pub fn strip_key_param(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("key"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Forward one request; errors the gateway raises are answered in the provider's own shape,
/// so its SDK raises its usual exception.
pub async fn forward(
    state: &Arc<AppState>,
    ctx: &Ctx,
    prefix: &str,
    rest: &str,
    request: Request,
    exchange: &mut Exchange,
) -> Response {
    let mut format = format_for(&ctx.table, prefix);
    match forward_inner(state, ctx, prefix, rest, request, exchange, &mut format).await {
        Ok(response) => response,
        Err(e) => e.into_response_for(format),
    }
}

async fn forward_inner(
    state: &Arc<AppState>,
    ctx: &Ctx,
    prefix: &str,
    rest: &str,
    mut request: Request,
    exchange: &mut Exchange,
    format: &mut Format,
) -> Result<Response, ApiError> {
    // A path error comes first, except where the provider's own rules admit the path.
    let path_checked = check_rest(rest);
    let table = &ctx.table;
    let Some(route) = table.route(prefix) else {
        path_checked?;
        return Err(ApiError::UnknownPrefix {
            prefix: prefix.to_owned(),
            model: format!("/v1/{prefix}/{}/", table.key.proxy_id()),
            available: table.prefixes(),
        });
    };
    exchange.provider = route.prefix.clone();
    let upstream = &route.upstream;
    *format = upstream.info.format;
    let format = *format;
    let bedrock_arn = format == Format::Bedrock && check_bedrock_model_path(rest);
    if let Err(e) = path_checked
        && !bedrock_arn
    {
        // Bedrock model IDs may be ARNs, which AWS SDKs send with `/` encoded as `%2F`.
        return Err(e);
    }
    let policy = &table.policy;
    let method_name = request.method().as_str().to_owned();

    // Which endpoint: a known one of the format's table (matched already by the budget gate,
    // when a budget applies), or a `spec.passthrough` rule.
    let known = request.extensions_mut().remove::<endpoints::Matched>();
    let matched = match known.map_or_else(
        || endpoints::match_path(upstream.endpoints(), &method_name, rest),
        Ok,
    ) {
        Ok(matched) => Some(matched),
        Err(Mismatch::Encoded(segment)) => {
            return Err(ApiError::InvalidPath(format!(
                "path segment `{segment}` is percent-encoded where the gateway expects fixed text; send it unencoded"
            )));
        }
        Err(Mismatch::BadModel(model)) => {
            return Err(ApiError::InvalidPath(format!(
                "`{model}` is not a model ID (letters, digits, `.`, `_`, `-`, `:`, `/`, `@`)"
            )));
        }
        Err(Mismatch::Unknown) => None,
    };
    let Some(matched) = matched else {
        return passthrough(state, table, route, prefix, rest, request, exchange).await;
    };
    if !crate::policy::access::permits_prefix(&policy.access, &exchange.identity, prefix) {
        return Err(guarded::forbidden(
            state,
            exchange,
            format!("the native route of prefix `{prefix}`"),
        ));
    }
    if let crate::config::Cloud::Vertex { project, location } = &upstream.cloud {
        check_vertex_scope(rest, project, location)?;
    }
    if policy.tools.is_some() && matched.endpoint.tool_calls == ToolCalls::Unreadable {
        return Err(ApiError::GuardrailUnsupported(format!(
            "this proxy has tool-call guardrails (spec.tools), and answers of `{} {}` can carry tool calls the guardrails cannot inspect yet; use the Model Router (/v1/model-router/{{proxy}}/chat/completions)",
            matched.endpoint.method, matched.endpoint.name
        )));
    }

    // The model: named in the path, or in the body (then the body is read once, and parsed
    // once, when a check, a guard or the audit needs it).
    let guarded_endpoint =
        policy.tools.is_some() && matched.endpoint.tool_calls == ToolCalls::Guarded;
    let restricted = !policy.access.is_empty()
        || !matches!(upstream.models, crate::config::snapshot::ModelPolicy::Any);
    let body_model = matches!(
        matched.endpoint.model,
        ModelAt::Body | ModelAt::BodyOptional | ModelAt::Multipart
    );
    let read = request.method() == http::Method::POST
        && (guarded_endpoint || policy.audit_content || (body_model && restricted));
    let mut guard = None;
    let mut whole_body = None;
    let mut model = matched.path_model.clone();
    let request = if read {
        let (parts, bytes) = read_whole(request, state.max_body_bytes).await?;
        // One parse: the whole JSON when a guard or the audit reads it, else only `model`.
        let multipart = matched.endpoint.model == ModelAt::Multipart;
        let value = if (guarded_endpoint || policy.audit_content) && !multipart {
            Some(parse_json_body(&bytes)?)
        } else {
            None
        };
        if multipart {
            model = multipart_model(&parts.headers, bytes.clone()).await?;
        } else if body_model {
            model = match &value {
                Some(value) => value
                    .get("model")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned),
                None => model_field(&bytes)?,
            };
        }
        if let Some(value) = &value {
            if let Some(tools) = &policy.tools
                && guarded_endpoint
            {
                guard = Some(guarded::Guard {
                    policy: tools.clone(),
                    trust: tools.trust(format, value),
                    format,
                    sink: guarded::Sink::new(state, exchange),
                });
            }
            if policy.audit_content {
                let content = guarded::content_of(format, value);
                crate::policy::audit::update(&exchange.audit, |d| d.content = content);
            }
        }
        whole_body = Some(bytes);
        Request::from_parts(parts, Body::empty())
    } else {
        request
    };
    check_model(
        state,
        exchange,
        &policy.access,
        &matched,
        upstream,
        prefix,
        model.as_deref(),
        read || !body_model,
    )?;
    if let Some(m) = &model {
        let qualified = format!("{prefix}:{m}");
        exchange.model = qualified.clone();
        crate::policy::audit::update(&exchange.audit, |d| d.model = Some(qualified));
    }

    // With access rules, a model list is filtered to what the caller may use.
    let filter_models = !policy.access.is_empty() && matched.endpoint.model_list;
    let relay = Relay {
        guard,
        whole_body,
        filter_models: filter_models.then_some(&policy.access[..]),
    };
    relay
        .send(state, route, prefix, rest, request, exchange, format)
        .await
}

/// How one native request goes upstream and its answer comes back.
struct Relay<'a> {
    /// The guard of the answer (tool-call guardrails).
    guard: Option<guarded::Guard>,
    /// The request body, when it was read.
    whole_body: Option<bytes::Bytes>,
    /// Filter a model list by these access rules.
    filter_models: Option<&'a [crate::policy::access::AccessRule]>,
}

impl Relay<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn send(
        self,
        state: &Arc<AppState>,
        route: &crate::config::Route,
        prefix: &str,
        rest: &str,
        request: Request,
        exchange: &mut Exchange,
        format: Format,
    ) -> Result<Response, ApiError> {
        let upstream = &route.upstream;
        let Relay {
            guard,
            whole_body,
            filter_models,
        } = self;
        let limit = state.max_body_bytes;
        super::context::check_declared_length(request.headers(), limit)?;

        // The URL of this request at a provider (a pool's members each have their own).
        let base_url = |upstream: &crate::config::Upstream| match &upstream.bedrock {
            Some(b) if crate::providers::bedrock::is_control_plane(rest) => {
                format!(
                    "{}/{rest}",
                    b.control_plane_url.as_str().trim_end_matches('/')
                )
            }
            _ => upstream.url(rest),
        };
        let mut query = String::new();
        if let Some(raw) = request.uri().query() {
            let kept = match format {
                Format::Gemini => strip_key_param(raw),
                Format::OpenAi | Format::Anthropic | Format::Cohere | Format::Bedrock => {
                    raw.to_owned()
                }
            };
            if !kept.is_empty() {
                query.push('?');
                query.push_str(&kept);
            }
        }
        let method = request.method().clone();
        let mut headers = super::headers::to_upstream(request.headers());
        if format == Format::Anthropic && !headers.contains_key("anthropic-version") {
            headers.insert(
                "anthropic-version",
                HeaderValue::from_static(crate::formats::anthropic::ANTHROPIC_VERSION),
            );
        }
        if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
            headers.insert("x-request-id", id);
        }
        if guard.is_some() || filter_models.is_some() {
            // The guard (or the model-list filter) reads the answer: ask for it uncompressed.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }

        // Stream the body upstream, counting bytes against the limit; a credential that signs
        // the body (SigV4) needs it whole first (requests only: answers still stream), and so
        // does a pool, which may send it more than once.
        let over_limit = Arc::new(AtomicBool::new(false));
        let body = if let Some(bytes) = whole_body {
            reqwest::Body::from(bytes)
        } else if upstream.credential.needs_body() || route.is_pool() {
            reqwest::Body::from(super::context::read_body(request, limit).await?)
        } else {
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
            reqwest::Body::wrap_stream(body)
        };
        let (sent, upstream) = match body.as_bytes() {
            // A pool: balanced and failed over (crate::proxy::failover::pool).
            Some(bytes) if route.is_pool() => {
                let bytes = bytes::Bytes::copy_from_slice(bytes);
                let url_for = |u: &crate::config::Upstream| format!("{}{query}", base_url(u));
                let send = crate::proxy::failover::pool::send(
                    state, exchange, route, url_for, method, headers, bytes,
                );
                match Box::pin(send).await {
                    Ok((answer, member)) => (Ok(answer), member),
                    Err(e) => (Err(e), upstream.clone()),
                }
            }
            _ => {
                let url = format!("{}{query}", base_url(upstream));
                let sent = upstream::send(
                    &state.client,
                    upstream,
                    &route.prefix,
                    method,
                    &url,
                    headers,
                    body,
                )
                .await;
                (sent, upstream.clone())
            }
        };
        let upstream = &upstream;
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
        if route.is_pool()
            && status.is_success()
            && let Ok(v) = HeaderValue::from_str(&crate::proxy::failover::pool::member_label(
                prefix, upstream,
            ))
        {
            out.headers_mut()
                .insert(crate::proxy::failover::router::SERVED_BY, v);
        }
        let mut out = match guard {
            Some(guard) => guarded::guard_response(out, guard, state.max_body_bytes).await,
            None => out,
        };
        if let Some(access) = filter_models {
            out = filter_model_list(
                out,
                format,
                access,
                &exchange.identity,
                prefix,
                state.max_body_bytes,
            )
            .await?;
        }
        if !format.sse_comments_safe() {
            out.extensions_mut().insert(super::keepalive::NoKeepAlive);
        }
        Ok(out)
    }
}

/// Parse a JSON request body once. A body the gateway must read (to check its model or guard
/// its answer) and cannot is refused, never forwarded unread: that includes JSON nested
/// deeper than the parser's recursion limit.
fn parse_json_body(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::InvalidJson(format!(
            "{e}; this endpoint's body must be a JSON object the gateway can read"
        ))
    })
}

/// The `model` field of a JSON body, read without building the rest of the document (other
/// fields are skipped, not allocated). A body that is not such a JSON object is refused.
fn model_field(bytes: &[u8]) -> Result<Option<String>, ApiError> {
    #[derive(serde::Deserialize)]
    struct ModelOnly<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<ModelOnly<'_>>(bytes)
        .map(|m| m.model.map(std::borrow::Cow::into_owned))
        .map_err(|e| {
            ApiError::InvalidJson(format!(
                "{e}; this endpoint's body must be a JSON object naming its `model`"
            ))
        })
}

/// The `model` field of a `multipart/form-data` body (audio and image-edit uploads), read
/// with `multer`; file parts are skipped.
pub(super) async fn multipart_model(
    headers: &http::HeaderMap,
    body: bytes::Bytes,
) -> Result<Option<String>, ApiError> {
    let invalid = |why: String| ApiError::InvalidField {
        param: "model",
        message: format!("the multipart body could not be read for its `model` field: {why}"),
    };
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| invalid("no multipart/form-data boundary".to_owned()))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut found = None;
    while let Some(field) = parts
        .next_field()
        .await
        .map_err(|e| invalid(e.to_string()))?
    {
        if field.name() != Some("model") {
            continue;
        }
        let text = field.text().await.map_err(|e| invalid(e.to_string()))?;
        if found.replace(text.trim().to_owned()).is_some() {
            return Err(invalid("`model` is given twice".to_owned()));
        }
    }
    Ok(found)
}

/// The model a native request names goes through the same checks as on the Model Router:
/// the provider's `models.static` / `models.allow` (404), then `spec.access` (403). `known`
/// is false when the body was not read because no rule restricts models.
#[allow(clippy::too_many_arguments)]
fn check_model(
    state: &AppState,
    exchange: &Exchange,
    table_access: &[crate::policy::access::AccessRule],
    matched: &Matched,
    upstream: &Upstream,
    prefix: &str,
    model: Option<&str>,
    known: bool,
) -> Result<(), ApiError> {
    let model = match (matched.endpoint.model, model) {
        (_, Some(m)) if !m.trim().is_empty() => m.trim(),
        (ModelAt::Nowhere, _) => return Ok(()),
        (ModelAt::Body | ModelAt::BodyOptional | ModelAt::Multipart, _) if !known => {
            return Ok(());
        }
        (ModelAt::BodyOptional, _) => {
            // The provider picks its default model: only for callers who may use them all.
            if crate::policy::access::permits_model(
                table_access,
                &exchange.identity,
                &format!("{prefix}:*"),
            ) {
                return Ok(());
            }
            return Err(ApiError::InvalidField {
                param: "model",
                message: format!(
                    "name the model of `{}`: this proxy's access rules allow you only some models of prefix `{prefix}`",
                    matched.endpoint.name
                ),
            });
        }
        (ModelAt::Body | ModelAt::Multipart | ModelAt::Path, _) => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: format!("`{}` requires a `model`", matched.endpoint.name),
            });
        }
    };
    if !upstream.models.permits(model) {
        return Err(ApiError::ModelNotServed {
            prefix: prefix.to_owned(),
            model: model.to_owned(),
        });
    }
    let qualified = format!("{prefix}:{model}");
    if !crate::policy::access::permits_model(table_access, &exchange.identity, &qualified) {
        return Err(guarded::forbidden(
            state,
            exchange,
            format!("model `{qualified}`"),
        ));
    }
    Ok(())
}

/// A path that no known endpoint matches: forwarded unread only where the provider's
/// `spec.passthrough` admits it, never under `spec.tools`, and only to callers whose access
/// covers every model of the prefix. Otherwise 404 `unknown_endpoint`.
async fn passthrough(
    state: &Arc<AppState>,
    table: &crate::config::ProxyTable,
    route: &crate::config::Route,
    prefix: &str,
    rest: &str,
    request: Request,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let upstream = &route.upstream;
    let method = request.method().as_str().to_owned();
    let unknown = || ApiError::UnknownEndpoint {
        method: method.clone(),
        path: rest.to_owned(),
        prefix: prefix.to_owned(),
        known: endpoints::describe(upstream.endpoints()),
    };
    if !upstream.passes_through(&method, rest) {
        return Err(unknown());
    }
    if table.policy.tools.is_some() {
        return Err(ApiError::GuardrailUnsupported(format!(
            "{method} {rest} is a spec.passthrough endpoint, which is never served on a proxy with tool-call guardrails (spec.tools)"
        )));
    }
    if !crate::policy::access::permits_model(
        &table.policy.access,
        &exchange.identity,
        &format!("{prefix}:*"),
    ) {
        return Err(guarded::forbidden(
            state,
            exchange,
            format!(
                "pass-through endpoint `{method} {rest}` of prefix `{prefix}` (it needs access to `{prefix}:*`)"
            ),
        ));
    }
    let relay = Relay {
        guard: None,
        whole_body: None,
        filter_models: None,
    };
    relay
        .send(
            state,
            route,
            prefix,
            rest,
            request,
            exchange,
            upstream.info.format,
        )
        .await
}

/// Keep in a model list's `data` only the models `identity` may use (`{prefix}:{id}` against
/// `spec.access`). Other fields (Anthropic's paging cursors) stay; an error answer, or one that
/// is not such a list, passes untouched. A list that cannot be read is refused rather than
/// passed on unfiltered.
async fn filter_model_list(
    response: Response,
    format: Format,
    access: &[crate::policy::access::AccessRule],
    identity: &str,
    prefix: &str,
    limit: usize,
) -> Result<Response, ApiError> {
    if !response.status().is_success() {
        return Ok(response);
    }
    let invalid = |detail: String| ApiError::UpstreamInvalid {
        prefix: prefix.to_owned(),
        detail,
    };
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(invalid(
            "the model list is compressed although the gateway asked for `accept-encoding: identity`; it cannot be filtered by the proxy's access rules".to_owned(),
        ));
    }
    let (mut parts, body) = response.into_parts();
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| invalid(format!("the model list could not be read: {e}")))?
        .to_bytes();
    let unreadable = || {
        invalid(
            "the model list is not in the provider's list shape; it is not passed on unfiltered"
                .to_owned(),
        )
    };
    let mut value =
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|_| unreadable())?;
    let Some((key, field)) = format
        .model_list_keys()
        .iter()
        .find(|(key, _)| value.get(key).is_some_and(serde_json::Value::is_array))
    else {
        return Err(unreadable());
    };
    if let Some(data) = value.get_mut(key).and_then(serde_json::Value::as_array_mut) {
        data.retain(|m| {
            m.get(field)
                .and_then(serde_json::Value::as_str)
                .is_some_and(|name| {
                    let id = format.model_id_of(name);
                    crate::policy::access::permits_model(
                        access,
                        identity,
                        &format!("{prefix}:{id}"),
                    )
                })
        });
    }
    let body = serde_json::to_vec(&value)
        .map_err(|e| invalid(format!("the filtered model list could not be written: {e}")))?;
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_model_segments_hold_only_model_ids() {
        for ok in [
            "v1beta/models/gemini-2.5-flash:generateContent",
            "v1/models/gemini-2.5-pro:streamGenerateContent",
            "v1beta/models",
            "v1beta/models/gemini-2.0-flash-001",
            "v1beta/files",
        ] {
            assert!(check_gemini_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "v1beta/models/gemini%3Fx:generateContent",
            "v1beta/models/:generateContent",
            "v1beta/models/gemini:gen%2Fx",
            "v1beta/models/a b:generateContent",
        ] {
            assert!(check_gemini_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vertex_paths_stay_in_their_project() {
        let ok =
            "v1beta1/projects/p1/locations/us-central1/publishers/google/models/g:generateContent";
        assert!(check_vertex_scope(ok, "p1", "us-central1").is_ok());
        assert!(
            check_vertex_scope("v1beta1/publishers/google/models", "p1", "us-central1").is_ok()
        );
        assert!(check_vertex_scope(ok, "p2", "us-central1").is_err());
        assert!(check_vertex_scope(ok, "p1", "europe-west4").is_err());
        assert!(check_vertex_scope("v1/projects/p1", "p2", "x").is_err());
    }

    #[test]
    fn model_ids_for_url_paths() {
        for ok in ["gemini-2.5-flash", "gemini-2.0-flash-001", "learnlm_2.0"] {
            assert!(is_model_id(ok), "{ok}");
        }
        for bad in [
            "",
            "../files/x",
            "a/b",
            "m:countTokens",
            "m?key=x",
            "m#f",
            "m%2F",
            "m n",
        ] {
            assert!(!is_model_id(bad), "{bad}");
        }
    }

    #[test]
    fn bedrock_arn_model_ids_may_hold_encoded_slashes_only_there() {
        assert!(check_bedrock_model_path(
            "model/arn%3Aaws%3Abedrock%3Aus-east-1%3A111122223333%3Aapplication-inference-profile%2Fabc123/converse"
        ));
        for bad in [
            "model/arn%3Ax%2F..%2F..%2Fadmin/converse",
            "model/arn%3Ax%2F%2Fy/converse",
            "model/not-an-arn%2Fx/converse",
            "model/arn%3Ax%2Fy/a%2Fb",
            "model/arn%3Ax%5Cy/converse",
            "models/arn%3Ax%2Fy/converse",
        ] {
            assert!(!check_bedrock_model_path(bad), "{bad}");
        }
    }

    #[test]
    fn client_keys_are_dropped_from_queries() {
        assert_eq!(strip_key_param("alt=sse&key=AIza-client"), "alt=sse");
        assert_eq!(strip_key_param("key=x"), "");
        assert_eq!(
            strip_key_param("keyword=1&pageSize=5"),
            "keyword=1&pageSize=5"
        );
    }

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
