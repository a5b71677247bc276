//! The Model Router: one OpenAI-compatible endpoint over every provider of a proxy.
//!
//! A model ID `prefix:model` is split at the first colon; an ID without a known prefix goes
//! to the single provider that lists it, else to `defaultModel`'s provider, else it is an
//! error naming the prefixes. The body is forwarded with `model` rewritten to the provider's
//! own name, and the answer (or every stream chunk) carries the ID the client asked for.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value, json};

use super::context::{Ctx, read_object};
use super::error::ApiError;
use super::guarded;
use super::translated::{self, Dialect};
use super::upstream::{self, Answer};
use super::{AppState, Exchange};
use crate::config::snapshot::ModelPolicy;
use crate::config::{ProxyTable, Route};
use crate::discovery::{CatalogState, Discovery, ModelEntry};
use crate::formats::openai::stream::ModelRewriter;
use crate::policy::guardrails::Format;

/// How long `/models` waits for a provider's first discovery.
const FIRST_DISCOVERY_WAIT: Duration = Duration::from_secs(5);

/// Where a model ID goes.
#[derive(Debug)]
pub struct Resolved<'a> {
    /// The route.
    pub route: &'a Route,
    /// The model as the provider names it.
    pub model: String,
}

/// Resolve a model ID against a proxy. `lists` answers which models a provider lists (for
/// IDs without a known prefix).
pub fn resolve<'a>(
    table: &'a ProxyTable,
    id: &str,
    lists: impl Fn(&Route) -> bool,
) -> Result<Resolved<'a>, ApiError> {
    if let Some((prefix, model)) = id.split_once(':')
        && let Some(route) = table.route(prefix)
    {
        if model.is_empty() {
            return Err(ApiError::InvalidField {
                param: "model",
                message: format!("model `{id}` names no model after the prefix"),
            });
        }
        return Ok(Resolved {
            route,
            model: model.to_owned(),
        });
    }
    let listing: Vec<&Route> = table.routes.iter().filter(|r| lists(r)).collect();
    if let [route] = listing.as_slice() {
        return Ok(Resolved {
            route,
            model: id.to_owned(),
        });
    }
    if let Some(route) = table
        .default_model
        .as_ref()
        .and_then(|(prefix, _)| table.route(prefix))
    {
        return Ok(Resolved {
            route,
            model: id.to_owned(),
        });
    }
    Err(match id.split_once(':') {
        // A provider entry with no good version (contract §5a).
        Some((prefix, _)) if let Some(entry) = table.not_ready(prefix) => {
            ApiError::ProviderNotReady {
                prefix: entry.prefix.clone(),
                proxy: table.key.proxy_id(),
                message: entry.message.clone(),
            }
        }
        Some((prefix, _)) => ApiError::UnknownPrefix {
            prefix: prefix.to_owned(),
            model: id.to_owned(),
            available: table.prefixes(),
        },
        None => ApiError::ModelNotFound {
            model: id.to_owned(),
            available: table.prefixes(),
        },
    })
}

/// Whether a provider is known to list a model (static list or discovered catalog).
pub fn lists(discovery: &Discovery, route: &Route, model: &str) -> bool {
    route.pool.iter().any(|u| lists_one(discovery, u, model))
}

fn lists_one(discovery: &Discovery, upstream: &crate::config::Upstream, model: &str) -> bool {
    match &upstream.models {
        ModelPolicy::Static(models) => models.iter().any(|m| m == model),
        policy => {
            policy.permits(model)
                && discovery
                    .catalog(upstream)
                    .is_some_and(|c| match c.state() {
                        CatalogState::Ready { models, .. } => models.iter().any(|m| m.id == model),
                        _ => false,
                    })
        }
    }
}

/// `POST /v1/model-router/{proxy}/chat/completions`: the request's conversation is read for
/// the tool-call guardrails (when the proxy has `spec.tools`), and the answer guarded.
pub async fn chat(
    state: &Arc<AppState>,
    ctx: &Ctx,
    request: Request,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    // The body is read once and parsed once (by the budget gate, when a budget applies); the
    // guard, the audit and the handler share it.
    let (_, body) = read_object(request, state.max_body_bytes).await?;
    let policy = &ctx.table.policy;
    let mut guard = None;
    if policy.tools.is_some() || policy.audit_content {
        let value = Value::Object(body);
        if policy.audit_content {
            let content = guarded::content_of(Format::OpenAi, &value);
            crate::policy::audit::update(&exchange.audit, |d| d.content = content);
        }
        if let Some(tools) = &policy.tools {
            guard = Some(guarded::Guard {
                policy: tools.clone(),
                trust: tools.trust(Format::OpenAi, &value),
                format: Format::OpenAi,
                sink: guarded::Sink::new(state, exchange),
            });
        }
        let Value::Object(map) = value else {
            return Err(ApiError::InvalidJson("expected a JSON object".to_owned()));
        };
        let response = chat_unguarded(state, &ctx.table, map, exchange).await?;
        return Ok(match guard {
            Some(guard) => guarded::guard_response(response, guard, state.max_body_bytes).await,
            None => guarded::record_usage(state, exchange, response).await,
        });
    }
    let response = chat_unguarded(state, &ctx.table, body, exchange).await?;
    Ok(guarded::record_usage(state, exchange, response).await)
}

async fn chat_unguarded(
    state: &Arc<AppState>,
    table: &ProxyTable,
    body: Map<String, Value>,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let asked = match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_owned(),
        None | Some(Value::Null) if let Some(asked) = table.default_asked(true) => asked,
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: "`model` is required: name it `prefix:model` (GET /models lists them)"
                    .to_owned(),
            });
        }
        Some(_) => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: "`model` must be a string".to_owned(),
            });
        }
    };
    // A virtual model, a pool, or a proxy with `spec.retry`: the failover loop sends each
    // attempt through `send_one` (crate::proxy::failover::router).
    if let Some(vm) = table.failover.model(&asked) {
        let plan = crate::proxy::failover::router::plan_virtual(table, vm, &exchange.identity)
            .map_err(|what| guarded::forbidden(state, exchange, what))?;
        exchange.model = asked.clone();
        exchange.model_listed = true;
        return failover(state, table, &plan, &asked, body, exchange).await;
    }
    let resolved = resolve(table, &asked, |r| lists(&state.discovery, r, &asked))?;
    let route = resolved.route;
    exchange.provider = route.prefix.clone();
    exchange.model = asked.clone();
    exchange.model_listed = lists(&state.discovery, route, &resolved.model);
    if let Some(plan) = crate::proxy::failover::router::plan_route(table, route, &resolved.model) {
        return failover(state, table, &plan, &asked, body, exchange).await;
    }
    send_one(state, table, route, resolved.model, &asked, body, exchange).await
}

/// Serve a failover plan: each attempt goes through `send_one` (crate::proxy::failover::router).
async fn failover(
    state: &Arc<AppState>,
    table: &ProxyTable,
    plan: &crate::routing::Plan<crate::proxy::failover::router::Hop>,
    asked: &str,
    body: Map<String, Value>,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let cell = crate::proxy::failover::router::ExchangeCell::new(exchange);
    let serve = crate::proxy::failover::router::serve(state, plan, &cell, |hop| {
        let (cell, body) = (&cell, body.clone());
        async move {
            let mut exchange = cell.lock().await;
            // Boxed: an attempt's future is large, and the loop around it holds it.
            let send = send_one(
                state,
                table,
                &hop.route,
                hop.model,
                asked,
                body,
                &mut exchange,
            );
            Box::pin(send).await
        }
    });
    Box::pin(serve).await
}

/// Send one Model Router request to one provider (`route.upstream`) as `model`, answering with
/// `asked` as the model.
async fn send_one(
    state: &Arc<AppState>,
    table: &ProxyTable,
    route: &Route,
    model: String,
    asked: &str,
    mut body: Map<String, Value>,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let resolved = Resolved { route, model };
    let asked = asked.to_owned();
    let upstream = &route.upstream;
    exchange.provider = route.prefix.clone();
    if !upstream.models.permits(&resolved.model) {
        return Err(ApiError::ModelNotServed {
            prefix: route.prefix.clone(),
            model: resolved.model,
        });
    }
    let qualified = format!("{}:{}", route.prefix, resolved.model);
    if !crate::policy::access::permits_model(&table.policy.access, &exchange.identity, &qualified) {
        return Err(guarded::forbidden(
            state,
            exchange,
            format!("model `{qualified}`"),
        ));
    }
    let has_tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if has_tools && !upstream.info.supports_tools {
        return Err(ApiError::Unsupported(format!(
            "provider `{}` ({}) does not support tool calling; remove `tools` or choose another model",
            route.prefix, upstream.provider_type
        )));
    }
    if let Some(dialect) = Dialect::of(upstream.info.format) {
        return translated::chat(
            state,
            dialect,
            route,
            &resolved.model,
            &asked,
            body,
            exchange,
        )
        .await;
    }
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let url = upstream
        .chat_url(&resolved.model)
        .ok_or_else(|| ApiError::InvalidField {
            param: "model",
            message: format!(
                "`{}` is not a deployment name (letters, digits, `.`, `_`, `-`)",
                resolved.model
            ),
        })?;
    body.insert("model".to_owned(), Value::String(resolved.model));
    let payload = serde_json::to_vec(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;

    let accept = if streaming {
        "text/event-stream"
    } else {
        "application/json"
    };
    let headers = upstream::json_headers(Some(accept), &exchange.request_id);
    let Answer { response, ttfb } = upstream::send(
        &state.client,
        upstream,
        &route.prefix,
        Method::POST,
        &url,
        headers,
        payload.into(),
    )
    .await?;
    exchange.ttfb = Some(ttfb);

    let status = response.status();
    let mut out_headers = super::headers::to_client(response.headers());
    out_headers.remove(header::CONTENT_LENGTH);
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    if !status.is_success() {
        // Upstream errors pass through with their status and body.
        let body = upstream::body_stream(response, upstream.timeout);
        return Ok(build(status, out_headers, Body::from_stream(body)));
    }
    if is_sse {
        out_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let mut rewriter = ModelRewriter::new(asked);
        let mut finished = false;
        let stream = upstream::body_stream(response, upstream.timeout)
            .map(Some)
            .chain(futures_util::stream::once(async { None }))
            .filter_map(move |item| {
                let out = match item {
                    Some(Ok(bytes)) => Some(Ok(rewriter.push(&bytes))),
                    Some(Err(e)) => {
                        finished = true;
                        Some(Err(e))
                    }
                    None if !finished => Some(Ok(rewriter.finish())),
                    None => None,
                };
                let out = out.filter(|r| r.as_ref().map_or(true, |b| !b.is_empty()));
                async move { out }
            });
        return Ok(build(status, out_headers, Body::from_stream(stream)));
    }
    let prefix = route.prefix.clone();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| upstream::classify(&prefix, upstream.timeout, &e))?;
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut map)) => {
            map.insert("model".to_owned(), Value::String(asked));
            serde_json::to_vec(&map).map(Bytes::from).unwrap_or(bytes)
        }
        _ => bytes,
    };
    Ok(build(status, out_headers, Body::from(body)))
}

fn build(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `GET /v1/model-router/{proxy}/models`: every model the proxy reaches, provider-qualified.
pub async fn models(
    state: &Arc<AppState>,
    ctx: &Ctx,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let table = &ctx.table;
    let mut data = Vec::new();
    // A pool's members each list their models; the prefix lists each model once.
    let mut listed = std::collections::HashSet::new();
    let mut members = Vec::new();
    for route in &table.routes {
        for upstream in route.pool.iter() {
            members.push((route, upstream.clone()));
        }
    }
    for (route, upstream) in members {
        let upstream = &upstream;
        let entries: Vec<ModelEntry> = match &upstream.models {
            ModelPolicy::Static(models) => models
                .iter()
                .map(|id| ModelEntry {
                    id: id.clone(),
                    created: None,
                    owned_by: None,
                })
                .collect(),
            policy => match state.discovery.catalog(upstream) {
                Some(catalog) => match catalog.settled(FIRST_DISCOVERY_WAIT).await {
                    CatalogState::Ready { models, .. } => models
                        .iter()
                        .filter(|m| policy.permits(&m.id))
                        .cloned()
                        .collect(),
                    CatalogState::Pending | CatalogState::Failed(_) => Vec::new(),
                },
                None => Vec::new(),
            },
        };
        for entry in entries {
            let qualified = format!("{}:{}", route.prefix, entry.id);
            if listed.contains(&qualified) {
                continue;
            }
            if !crate::policy::access::permits_model(
                &table.policy.access,
                &exchange.identity,
                &qualified,
            ) {
                continue;
            }
            let mut model = json!({
                "id": qualified,
                "object": "model",
                "created": entry.created.unwrap_or(0),
                "owned_by": entry.owned_by.unwrap_or_else(|| upstream.provider_type.to_string()),
            });
            if !upstream.info.supports_tools {
                model["capabilities"] = json!({"tool_calling": false});
            }
            listed.insert(qualified);
            data.push(model);
        }
    }
    // Virtual models, under the names clients ask for.
    for name in table.failover.models.keys() {
        if crate::policy::access::permits_model(&table.policy.access, &exchange.identity, name) {
            data.push(
                json!({"id": name, "object": "model", "created": 0, "owned_by": "portcullis"}),
            );
        }
    }
    let body = json!({"object": "list", "data": data});
    let mut response = Response::new(Body::from(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Defaults, Index, ObjectKey, compile};
    use crate::source::files::parse;

    fn table(yaml: &str) -> Arc<ProxyTable> {
        let objects = parse(yaml).unwrap_or_default();
        let compiled = compile(&Index::from_objects(objects), &Defaults::default());
        assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        compiled.proxies[&ObjectKey::new("default", "p")].clone()
    }

    const TWO: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: LlmProvider
metadata: {name: a}
spec: {type: openai-compatible, baseUrl: "http://127.0.0.1:1/v1", models: {static: [m1]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProvider
metadata: {name: b}
spec: {type: openrouter, auth: {none: {}}}
"#;

    fn two(extra: &str) -> Arc<ProxyTable> {
        // openrouter requires a key; use a second openai-compatible provider instead.
        let yaml = TWO.replace(
            "spec: {type: openrouter, auth: {none: {}}}",
            "spec: {type: openai-compatible, baseUrl: \"http://127.0.0.1:2/v1\"}",
        );
        table(&format!(
            "{yaml}---\napiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {{name: p}}\nspec:\n  providers: [{{providerRef: {{name: a}}, prefix: one}}, {{providerRef: {{name: b}}, prefix: bedrock}}]\n{extra}"
        ))
    }

    #[test]
    fn splits_at_the_first_colon() {
        let t = two("");
        let r = resolve(&t, "bedrock:amazon.nova-pro-v1:0", |_| false).ok();
        let r = r.map(|r| (r.route.prefix.clone(), r.model));
        assert_eq!(r, Some(("bedrock".into(), "amazon.nova-pro-v1:0".into())));
        let r = resolve(&t, "bedrock:openrouter/free", |_| false).map(|r| r.model);
        assert_eq!(r.ok().as_deref(), Some("openrouter/free"));
    }

    #[test]
    fn unknown_prefix_names_the_valid_ones() {
        let t = two("");
        match resolve(&t, "nosuch:model", |_| false) {
            Err(ApiError::UnknownPrefix { available, .. }) => assert_eq!(available, "one, bedrock"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolve(&t, "plain", |_| false),
            Err(ApiError::ModelNotFound { .. })
        ));
    }

    #[test]
    fn unqualified_ids_go_to_the_single_provider_listing_them_else_the_default() {
        let t = two("");
        let r = resolve(&t, "m1", |r| r.prefix == "one").map(|r| r.route.prefix.clone());
        assert_eq!(r.ok().as_deref(), Some("one"));
        // Listed by both: ambiguous, no default → error.
        assert!(resolve(&t, "m1", |_| true).is_err());
        let t = two("  defaultModel: bedrock:x\n");
        let r = resolve(&t, "m1", |_| true).map(|r| (r.route.prefix.clone(), r.model));
        assert_eq!(r.ok(), Some(("bedrock".into(), "m1".into())));
        let r = resolve(&t, "other:thing", |_| false).map(|r| r.model);
        assert_eq!(r.ok().as_deref(), Some("other:thing"));
    }

    #[test]
    fn empty_model_after_prefix_is_invalid() {
        let t = two("");
        assert!(matches!(
            resolve(&t, "one:", |_| false),
            Err(ApiError::InvalidField { .. })
        ));
    }
}
