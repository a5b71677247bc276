//! The budgets' request-path hook ([`crate::budget`]): before a request goes upstream, read what it asks (model, input
//! estimate, output allowance), reserve it in every budget of the proxy or answer the refusal
//! in the route's error shape; afterwards, wrap the response so the reservation settles when
//! its body ends.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderValue, Method, header};
use serde_json::Value;

use super::AppState;
use crate::budget::{Ask, BudgetTable, Facts, Reservation};
use crate::config::ProxyTable;
use crate::formats::Format;
use crate::formats::endpoints::{self, Mismatch, ModelAt};
use crate::policy::access::permits_model;

/// A reservation on its way to the response.
pub struct Gate {
    reservation: Reservation,
    hide: bool,
}

impl Gate {
    /// Settle the reservation when the response's body ends. `reached`: the upstream answered.
    pub fn wrap(self, response: Response, reached: bool) -> Response {
        crate::budget::tap::wrap(response, self.reservation, reached, self.hide)
    }
}

/// Endpoints that cost nothing upstream (token counting), which no budget counts.
fn free(rest: &str) -> bool {
    rest.ends_with("count_tokens") || rest.ends_with(":countTokens")
}

/// A request that does not go on.
pub struct Refused {
    /// The answer, in the route's error shape.
    pub response: Response,
    /// The limit that refused (`namespace/budget/limit`), for the audit event.
    pub limit: Option<String>,
    /// Provider prefix and provider-qualified model asked for, for the audit event.
    pub target: Option<(String, String)>,
}

/// Reserve before the request goes on. `Ok((request, None))`: no budget counts it.
/// `Err(refused)`: refused (or unreadable), in the route's error shape.
pub async fn admit(
    state: &AppState,
    budgets: &BudgetTable,
    table: &ProxyTable,
    prefix: &str,
    rest: &str,
    request: Request,
    identity: &str,
) -> Result<(Request, Option<Gate>), Box<Refused>> {
    if !budgets.applies(&table.key) || request.method() != Method::POST || free(rest) {
        return Ok((request, None));
    }
    let router = prefix == "model-router";
    // The route's error shape.
    let format = if router {
        super::router_format(rest)
    } else {
        super::context::format_for(table, prefix)
    };
    // On a native route, the endpoint the request names (and the model in its path). A path
    // the route will refuse is left to the handler: nothing goes upstream.
    let matched = match table.route(prefix).filter(|_| !router) {
        None => None,
        Some(route) => {
            match endpoints::match_path(route.upstream.endpoints(), request.method().as_str(), rest)
            {
                Ok(m) => Some(Some(m)),
                // `spec.passthrough` (or refused): counted as a request without a model.
                Err(Mismatch::Unknown) => Some(None),
                Err(Mismatch::Encoded(_) | Mismatch::BadModel(_)) => {
                    return Ok((request, None));
                }
            }
        }
    };
    let (mut parts, body) = request.into_parts();
    let bytes = match super::context::read_body_of(&parts.headers, body, state.max_body_bytes).await
    {
        Ok(b) => b,
        Err(e) => {
            return Err(Box::new(Refused {
                response: e.into_response_for(format),
                limit: None,
                target: None,
            }));
        }
    };
    // What the request asks. A native body is read without being built (its handler reads
    // it again); the Model Router's is parsed whole, once, and handed on to its handler.
    let parse = |bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .filter(Value::is_object)
    };
    let mut json: Option<Value> = None;
    let facts = match (!router).then(|| Facts::peek(&bytes)).flatten() {
        Some(facts) => Some(facts),
        None => {
            json = parse(&bytes);
            json.as_ref().map(Facts::of)
        }
    };
    // The model and its provider prefix.
    let mut named = facts.as_ref().and_then(|f| f.model.clone());
    if named.is_none()
        && matched
            .as_ref()
            .and_then(Option::as_ref)
            .is_some_and(|m| m.endpoint.model == ModelAt::Multipart)
    {
        // Audio and image-edit uploads name their model in a form field.
        named = super::native::multipart_model(&parts.headers, bytes.clone())
            .await
            .ok()
            .flatten()
            .filter(|m| !m.is_empty());
    }
    let target = if router {
        router_target(state, table, rest, named, identity)
    } else {
        table.route(prefix).and_then(|route| {
            let path_model = matched
                .as_ref()
                .and_then(|m| m.as_ref()?.path_model.clone());
            let model = path_model.or(named).unwrap_or_default();
            // A model the route will refuse (404 / 403) is left to the handler: nothing goes
            // upstream, and a caller cannot grow the counters with names it may not use.
            let refused = !model.is_empty()
                && (!route.upstream.models.permits(&model)
                    || !permits_model(
                        &table.policy.access,
                        identity,
                        &format!("{}:{model}", route.prefix),
                    ));
            (!refused).then(|| (route.prefix.clone(), model))
        })
    };
    // Unresolvable: the handler answers its own 404; nothing goes upstream.
    let Some((route_prefix, model)) = target else {
        return Ok((Request::from_parts(parts, Body::from(bytes)), None));
    };
    // Streams in OpenAI's format: ask for usage when the client did not, and hide it.
    let openai_chat = router && rest == "chat/completions"
        || format == Format::OpenAi
            && matched
                .as_ref()
                .and_then(Option::as_ref)
                .is_some_and(|m| m.endpoint.name == "chat/completions");
    let mut hide = false;
    let mut bytes = bytes;
    let wants_usage = openai_chat && facts.as_ref().is_some_and(|f| f.stream && !f.include_usage);
    if wants_usage && json.is_none() {
        // Only here does a native body get built: to add `stream_options`.
        json = parse(&bytes);
    }
    if wants_usage && let Some(Value::Object(map)) = json.as_mut() {
        let options = map
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(o) = options {
            o.insert("include_usage".to_owned(), Value::Bool(true));
            if router {
                // The handler takes the parsed body (below).
                hide = true;
            } else if let Ok(v) = serde_json::to_vec(map) {
                bytes = v.into();
                hide = true;
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            }
        }
    }
    // The tap reads usage from the answer: ask the upstream for it uncompressed.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let embeddings = if router {
        rest == "embeddings"
    } else {
        rest.ends_with(":embedContent")
            || rest.ends_with(":batchEmbedContents")
            || matched
                .as_ref()
                .and_then(Option::as_ref)
                .is_some_and(|m| matches!(m.endpoint.name, "embeddings" | "v2/embed" | "v1/embed"))
            // Bedrock InvokeModel of an embedding model (Titan, Cohere Embed).
            || (format == Format::Bedrock && model.contains("embed"))
    };
    let target = Some((route_prefix.clone(), format!("{route_prefix}:{model}")));
    let ask = Ask {
        proxy: table.key.clone(),
        identity: identity.to_owned(),
        prefix: route_prefix,
        model,
        input_tokens: if facts.is_some() {
            (bytes.len() as u64).div_ceil(4)
        } else {
            0
        },
        max_output: facts.as_ref().and_then(|f| f.max_output),
        embeddings,
    };
    match budgets.admit(ask, Some(state.metrics.clone())).await {
        Ok(reservation) => {
            // The Model Router's handlers take the body parsed here instead of parsing it again.
            let body = match json {
                Some(Value::Object(map)) if router => {
                    parts.extensions.insert(super::context::Parsed(map));
                    Body::empty()
                }
                _ => Body::from(bytes),
            };
            // The native handler takes the endpoint matched here instead of matching again.
            if let Some(Some(matched)) = matched {
                parts.extensions.insert(matched);
            }
            Ok((
                Request::from_parts(parts, body),
                reservation.map(|reservation| Gate { reservation, hide }),
            ))
        }
        Err(refusal) => Err(Box::new(Refused {
            response: refusal.response(format),
            limit: Some(refusal.limit()),
            target,
        })),
    }
}

/// The model a Model Router request is counted under, as the handler will resolve it: a
/// virtual model counts as its first target the caller may use (its usage is priced as that
/// target even when failover serves another). `None`: the handler refuses it (unknown,
/// not served, forbidden), so nothing goes upstream and nothing is counted.
fn router_target(
    state: &AppState,
    table: &ProxyTable,
    rest: &str,
    named: Option<String>,
    identity: &str,
) -> Option<(String, String)> {
    // As the endpoint's handler picks it (embeddings serve no virtual models).
    let asked = named.or_else(|| table.default_asked(rest != "embeddings"))?;
    let access = &table.policy.access;
    if let Some(vm) = table.failover.model(&asked) {
        if !permits_model(access, identity, &vm.name) {
            return None;
        }
        return vm
            .targets
            .iter()
            .map(|t| &t.model)
            .chain(&vm.fallbacks)
            .find(|m| {
                table.route(&m.prefix).is_some() && permits_model(access, identity, &m.to_string())
            })
            .map(|m| (m.prefix.clone(), m.model.clone()));
    }
    let resolved = super::model_router::resolve(table, &asked, |r| {
        super::model_router::lists(&state.discovery, r, &asked)
    })
    .ok()?;
    let qualified = format!("{}:{}", resolved.route.prefix, resolved.model);
    (resolved.route.upstream.models.permits(&resolved.model)
        && permits_model(access, identity, &qualified))
    .then(|| (resolved.route.prefix.clone(), resolved.model))
}
