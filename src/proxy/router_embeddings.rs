//! `POST /v1/model-router/{proxy}/embeddings`: OpenAI embeddings to any provider of the proxy
//! that has an embeddings API. The model is resolved and checked as on chat ([`pick`]); an
//! OpenAI-family target gets the client's body with `model` rewritten, the others get their
//! own requests (`formats::<format>::embeddings`), split into batches where the provider takes
//! fewer texts than the client sent, and their vectors come back as OpenAI's `list`, `float` or
//! `base64`, with usage (the provider's count, else an estimate of about four characters a
//! token, for Gemini).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::Value;

use super::context::Ctx;
use super::error::ApiError;
use super::upstream::{self, Answer};
use super::{AppState, Exchange, guarded, model_router, router_bridge};
use crate::config::{Cloud, Route};
use crate::formats::openai::embeddings as oai;
use crate::formats::{Format, TranslateError, bedrock, cohere, gemini};

/// Upstream calls of one request in flight at once (Titan embeds one text a call).
const CONCURRENCY: usize = 4;

/// The route a request's `model` resolves to, after the same checks as on chat.
pub struct Picked {
    /// The provider's route.
    pub route: Route,
    /// The model as the provider names it.
    pub model: String,
    /// The model as the client asked.
    pub asked: String,
}

/// Resolve and check the `model` of a router request: `models.static` / `models.allow` (404)
/// and `spec.access` (403). Records provider and model on the exchange.
pub fn pick(
    state: &AppState,
    ctx: &Ctx,
    body: &Value,
    exchange: &mut Exchange,
) -> Result<Picked, ApiError> {
    let table = &ctx.table;
    let asked = match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_owned(),
        None | Some(Value::Null) if let Some(asked) = table.default_asked(false) => asked,
        _ => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: "`model` is required: name it `prefix:model` (GET /models lists them)"
                    .to_owned(),
            });
        }
    };
    let resolved = model_router::resolve(table, &asked, |r| {
        model_router::lists(&state.discovery, r, &asked)
    })?;
    let route = resolved.route.clone();
    exchange.provider = route.prefix.clone();
    if !route.upstream.models.permits(&resolved.model) {
        return Err(ApiError::ModelNotServed {
            prefix: route.prefix.clone(),
            model: resolved.model,
        });
    }
    exchange.model = asked.clone();
    exchange.model_listed = model_router::lists(&state.discovery, &route, &resolved.model);
    let qualified = format!("{}:{}", route.prefix, resolved.model);
    if !crate::policy::access::permits_model(&table.policy.access, &exchange.identity, &qualified) {
        return Err(guarded::forbidden(
            state,
            exchange,
            format!("model `{qualified}`"),
        ));
    }
    Ok(Picked {
        route,
        model: resolved.model,
        asked,
    })
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn record_usage(exchange: &Exchange, tokens: u64) {
    crate::policy::audit::update(&exchange.audit, |d| {
        d.usage.input_tokens = Some(tokens);
        d.usage.output_tokens = Some(0);
    });
}

/// Handle one embeddings request.
pub async fn handle(
    state: &Arc<AppState>,
    ctx: &Ctx,
    request: Request,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let (_, body) = router_bridge::read_json(state, request).await?;
    let picked = pick(state, ctx, &body, exchange)?;
    let upstream = picked.route.upstream.clone();
    let format = upstream.info.format;
    let vertex = matches!(upstream.cloud, Cloud::Vertex { .. });
    match format {
        Format::OpenAi => return forward(state, &picked, body, exchange).await,
        Format::Anthropic => {
            return Err(ApiError::Unsupported(format!(
                "provider `{}` ({}) has no embeddings API; choose an embedding model of another prefix",
                picked.route.prefix, upstream.provider_type
            )));
        }
        Format::Gemini if vertex => {
            return Err(ApiError::Unsupported(format!(
                "embeddings on Vertex AI (`{}`) are not served by the Model Router yet; use the native route's `:predict`",
                picked.route.prefix
            )));
        }
        Format::Gemini | Format::Cohere | Format::Bedrock => {}
    }
    let parsed = oai::parse(&body)?;
    if format == Format::Gemini && !crate::config::snapshot::is_model_segment(&picked.model) {
        return Err(ApiError::InvalidField {
            param: "model",
            message: format!(
                "`{}` does not name a model: after `{}:` only letters, digits, `.`, `_` and `-` may follow",
                picked.asked, picked.route.prefix
            ),
        });
    }
    let bedrock_family = if format == Format::Bedrock {
        Some(bedrock::embeddings::Family::of(&picked.model).ok_or_else(|| {
            ApiError::Unsupported(format!(
                "`{}` is not a Bedrock embedding model the router knows: use Amazon Titan Text Embeddings (amazon.titan-embed-text-*) or Cohere Embed (cohere.embed-*)",
                picked.model
            ))
        })?)
    } else {
        None
    };
    let batch = match (format, bedrock_family) {
        (Format::Gemini, _) => gemini::embeddings::BATCH,
        (Format::Cohere, _) => cohere::embeddings::BATCH,
        (_, Some(family)) => family.batch(),
        _ => 1,
    };
    let prefix = picked.route.prefix.clone();
    let batches: Vec<Vec<String>> = parsed
        .inputs
        .chunks(batch)
        .map(<[String]>::to_vec)
        .collect();
    let started = std::time::Instant::now();
    let results: Result<Vec<Batch>, Failure> = futures_util::stream::iter(batches)
        .map(|texts: Vec<String>| {
            let (path, payload) = match (format, bedrock_family) {
                (Format::Gemini, _) => (
                    gemini::embeddings::path(&picked.model),
                    gemini::embeddings::request(&picked.model, &texts, &parsed),
                ),
                (Format::Cohere, _) => (
                    cohere::embeddings::PATH.to_owned(),
                    cohere::embeddings::request(&picked.model, &texts, &parsed),
                ),
                (_, Some(family)) => (
                    bedrock::embeddings::path(&picked.model),
                    bedrock::embeddings::request(family, &texts, &parsed),
                ),
                _ => (String::new(), Value::Null),
            };
            let upstream = upstream.clone();
            let prefix = prefix.clone();
            let client = state.client.clone();
            let request_id = exchange.request_id.clone();
            async move {
                let headers = upstream::json_headers(Some("application/json"), &request_id);
                let payload = serde_json::to_vec(&payload).unwrap_or_default();
                let Answer { response, .. } = upstream::send(
                    &client,
                    &upstream,
                    &prefix,
                    Method::POST,
                    &upstream.url(&path),
                    headers,
                    payload.into(),
                )
                .await?;
                let status = response.status();
                let header_tokens = response
                    .headers()
                    .get("x-amzn-bedrock-input-token-count")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| upstream::classify(&prefix, upstream.timeout, &e))?;
                if !status.is_success() {
                    return Err(Failure::Upstream(status.as_u16(), bytes));
                }
                let n = texts.len();
                let (vectors, tokens) = match (format, bedrock_family) {
                    (Format::Gemini, _) => (gemini::embeddings::response(&bytes, n)?, None),
                    (Format::Cohere, _) => cohere::embeddings::response(&bytes, n)?,
                    (_, Some(family)) => bedrock::embeddings::response(family, &bytes, n)?,
                    _ => (Vec::new(), None),
                };
                Ok::<_, Failure>((vectors, tokens.or(header_tokens)))
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await;
    let results = match results {
        Ok(results) => results,
        Err(Failure::Gateway(e)) => return Err(e),
        Err(Failure::Upstream(status, body)) => {
            let (code, body) = match format {
                Format::Gemini => gemini::error(status, &body),
                Format::Cohere => cohere::error(status, &body),
                Format::Bedrock => bedrock::error(status, &body),
                // Never reached: these formats were answered above.
                Format::Anthropic | Format::OpenAi => {
                    crate::formats::anthropic::error(status, &body)
                }
            };
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            return Ok(json_response(
                status,
                serde_json::to_vec(&body).unwrap_or_default(),
            ));
        }
    };
    exchange.ttfb = Some(started.elapsed());
    let mut vectors = Vec::with_capacity(parsed.inputs.len());
    let mut tokens = 0;
    let mut counted = true;
    for (v, t) in results {
        vectors.extend(v);
        match t {
            Some(t) => tokens += t,
            None => counted = false,
        }
    }
    if !counted {
        tokens = oai::estimate_tokens(&parsed.inputs);
    }
    record_usage(exchange, tokens);
    let answer = oai::answer(&vectors, parsed.base64, &picked.asked, tokens);
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&answer).unwrap_or_default(),
    ))
}

/// One batch's vectors and the input tokens the provider counted.
type Batch = (Vec<Vec<f64>>, Option<u64>);

/// Why one batch failed.
enum Failure {
    Gateway(ApiError),
    Upstream(u16, Bytes),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Gateway(e)
    }
}

impl From<TranslateError> for Failure {
    fn from(e: TranslateError) -> Self {
        Failure::Gateway(ApiError::Translation(e))
    }
}

/// An OpenAI-family target: the body goes on with `model` rewritten; the answer's `model`
/// says what the client asked for.
async fn forward(
    state: &Arc<AppState>,
    picked: &Picked,
    body: Value,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    oai::check(&body)?;
    let upstream = &picked.route.upstream;
    let url = match &upstream.cloud {
        Cloud::Azure {
            v1: false,
            api_version,
        } => {
            if !crate::config::snapshot::is_model_segment(&picked.model) {
                return Err(ApiError::InvalidField {
                    param: "model",
                    message: format!(
                        "`{}` is not a deployment name (letters, digits, `.`, `_`, `-`)",
                        picked.model
                    ),
                });
            }
            upstream.url(&format!(
                "openai/deployments/{}/embeddings?api-version={api_version}",
                picked.model
            ))
        }
        Cloud::Azure { v1: true, .. } | Cloud::None | Cloud::Vertex { .. } => {
            upstream.url("embeddings")
        }
    };
    let payload = serde_json::to_vec(&oai::forward_body(&body, &picked.model))
        .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let headers = upstream::json_headers(Some("application/json"), &exchange.request_id);
    let Answer { response, ttfb } = upstream::send(
        &state.client,
        upstream,
        &picked.route.prefix,
        Method::POST,
        &url,
        headers,
        payload.into(),
    )
    .await?;
    exchange.ttfb = Some(ttfb);
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| upstream::classify(&picked.route.prefix, upstream.timeout, &e))?;
    let mut value = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => v,
        Err(_) if !status.is_success() => {
            return Ok(json_response(status, bytes.to_vec()));
        }
        Err(e) => {
            return Err(ApiError::UpstreamInvalid {
                prefix: picked.route.prefix.clone(),
                detail: e.to_string(),
            });
        }
    };
    if status.is_success() {
        if let Some(tokens) = value
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
        {
            record_usage(exchange, tokens);
        }
        value = oai::forward_answer(value, &picked.asked);
    }
    Ok(json_response(
        status,
        serde_json::to_vec(&value).unwrap_or_default(),
    ))
}
