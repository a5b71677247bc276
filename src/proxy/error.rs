//! The one error type of the request path and its one mapping to HTTP: OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}` with the matching status.
//!
//! Messages say what the caller can do, and never contain a credential.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::formats::{Format, GatewayError};

/// Something the gateway itself refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON.
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A required field is missing or has the wrong type.
    #[error("{message}")]
    InvalidField {
        /// The field.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The path is not one the gateway serves, or tries to leave the provider's base path.
    #[error("{0}")]
    InvalidPath(String),
    /// The provider cannot do what the request asks (tools on Perplexity, say).
    #[error("{0}")]
    Unsupported(String),
    /// No such route.
    #[error(
        "no route for {method} {path}; the gateway serves /v1/model-router/{{proxy}}/{{chat/completions,responses,embeddings,v1/messages,models}} and /v1/{{prefix}}/{{proxy}}/..."
    )]
    RouteNotFound {
        /// Method.
        method: String,
        /// Path (without query).
        path: String,
    },
    /// A native route was asked for an endpoint its format does not know (and no
    /// `spec.passthrough` rule of the provider admits it).
    #[error(
        "{method} {path} is not an endpoint the gateway forwards for provider prefix `{prefix}`; known endpoints: {known}. A provider can opt in to other paths with spec.passthrough"
    )]
    UnknownEndpoint {
        /// Method.
        method: String,
        /// The path after the proxy ID.
        path: String,
        /// The prefix.
        prefix: String,
        /// The known endpoints.
        known: String,
    },
    /// No such proxy.
    #[error(
        "proxy `{id}` not found; use `{{namespace}}.{{name}}` of an LlmProxy (a bare name works when it is unique)"
    )]
    ProxyNotFound {
        /// The ID in the URL.
        id: String,
    },
    /// A bare proxy name that more than one namespace has.
    #[error(
        "proxy name `{id}` is ambiguous: more than one namespace has an LlmProxy of that name; use its qualified ID, one of: {candidates}"
    )]
    AmbiguousProxy {
        /// The bare name in the URL.
        id: String,
        /// The qualified IDs (`{namespace}.{name}`), comma-separated.
        candidates: String,
    },
    /// The model's prefix is not one of the proxy's.
    #[error(
        "unknown provider prefix `{prefix}` in model `{model}`; this proxy serves: {available}"
    )]
    UnknownPrefix {
        /// The prefix asked for.
        prefix: String,
        /// The whole model ID.
        model: String,
        /// Valid prefixes.
        available: String,
    },
    /// The model cannot be resolved to a provider.
    #[error(
        "model `{model}` not found: name it `prefix:model` with one of this proxy's prefixes ({available})"
    )]
    ModelNotFound {
        /// The model ID.
        model: String,
        /// Valid prefixes.
        available: String,
    },
    /// The provider does not serve this model (static list or allow filter).
    #[error(
        "model `{model}` is not served by `{prefix}`; GET /models lists the models this proxy serves"
    )]
    ModelNotServed {
        /// Prefix.
        prefix: String,
        /// Model (without prefix).
        model: String,
    },
    /// Body over the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Reading the client's body failed.
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    /// The upstream could not be reached.
    #[error("provider `{prefix}` is unreachable: {detail}")]
    UpstreamUnreachable {
        /// Prefix.
        prefix: String,
        /// Cause (no credentials; URLs carry none).
        detail: String,
    },
    /// The upstream did not answer in time.
    #[error("provider `{prefix}` did not answer within {secs}s (spec.timeout)")]
    UpstreamTimeout {
        /// Prefix.
        prefix: String,
        /// Timeout in seconds.
        secs: u64,
    },
    /// The request cannot be expressed in the provider's format, or its answer in OpenAI's.
    #[error("{0}")]
    Translation(#[from] crate::formats::TranslateError),
    /// The gateway could not obtain or apply its own credential for the provider.
    #[error("provider `{prefix}`: {detail}")]
    Credential {
        /// Prefix of the provider.
        prefix: String,
        /// What went wrong (never the credential itself).
        detail: String,
    },
    /// The caller could not be authenticated (`spec.clientAuth`).
    #[error("{message}")]
    Unauthenticated {
        /// What is wrong and what to send (never the credential).
        message: String,
        /// A credential was sent but not accepted (`error="invalid_token"`).
        invalid: bool,
    },
    /// The caller may not use this model or prefix (`spec.access`).
    #[error("identity `{identity}` may not use {target} through proxy `{proxy}` (spec.access)")]
    Forbidden {
        /// Caller.
        identity: String,
        /// `model `openai:gpt-5`` or `the native route of prefix `anthropic``.
        target: String,
        /// Proxy ID.
        proxy: String,
    },
    /// A guardrail cannot be applied to this request.
    #[error("{0}")]
    GuardrailUnsupported(String),
    /// The upstream answered with something the gateway cannot use.
    #[error("provider `{prefix}` sent an invalid response: {detail}")]
    UpstreamInvalid {
        /// Prefix.
        prefix: String,
        /// What was wrong.
        detail: String,
    },
}

impl ApiError {
    /// The HTTP status of each variant.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidField { .. }
            | ApiError::InvalidPath(_)
            | ApiError::Unsupported(_)
            | ApiError::ClientBody(_)
            | ApiError::GuardrailUnsupported(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::RouteNotFound { .. }
            | ApiError::UnknownEndpoint { .. }
            | ApiError::ProxyNotFound { .. }
            | ApiError::AmbiguousProxy { .. }
            | ApiError::UnknownPrefix { .. }
            | ApiError::ModelNotFound { .. }
            | ApiError::ModelNotServed { .. } => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UpstreamUnreachable { .. }
            | ApiError::UpstreamInvalid { .. }
            | ApiError::Credential { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Translation(e) => {
                StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// OpenAI's `error.type`.
    fn error_type(&self) -> &'static str {
        match self.status_code().as_u16() {
            400 | 404 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            _ => "api_error",
        }
    }

    /// OpenAI's `error.code`.
    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidField { .. } => "invalid_value",
            ApiError::InvalidPath(_) => "invalid_path",
            ApiError::Unsupported(_) => "unsupported_parameter",
            ApiError::ClientBody(_) => "invalid_body",
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::UnknownEndpoint { .. } => "unknown_endpoint",
            ApiError::ProxyNotFound { .. } | ApiError::AmbiguousProxy { .. } => "proxy_not_found",
            ApiError::UnknownPrefix { .. }
            | ApiError::ModelNotFound { .. }
            | ApiError::ModelNotServed { .. } => "model_not_found",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ApiError::UpstreamTimeout { .. } => "upstream_timeout",
            ApiError::UpstreamInvalid { .. } => "upstream_invalid_response",
            ApiError::Credential { .. } => "upstream_credential_unavailable",
            ApiError::Translation(_) => "translation_error",
            ApiError::Unauthenticated { .. } => "invalid_api_key",
            ApiError::Forbidden { .. } => "permission_denied",
            ApiError::GuardrailUnsupported(_) => "guardrail_unsupported",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidField { param, .. } => Some(param),
            ApiError::UnknownPrefix { .. }
            | ApiError::ModelNotFound { .. }
            | ApiError::ModelNotServed { .. } => Some("model"),
            _ => None,
        }
    }

    /// The JSON body, in OpenAI's shape.
    pub fn body(&self) -> serde_json::Value {
        self.body_for(Format::OpenAi)
    }
}

impl ApiError {
    /// This error as every format renders it.
    pub fn gateway_error(&self) -> GatewayError {
        if let ApiError::Translation(e) = self {
            let body = e.to_error_body().error;
            return GatewayError {
                status: self.status_code().as_u16(),
                message: body.message,
                kind: body.kind,
                code: body.code.unwrap_or_else(|| self.code().to_owned()),
                param: body.param,
            };
        }
        GatewayError {
            status: self.status_code().as_u16(),
            message: self.to_string(),
            kind: self.error_type().to_owned(),
            code: self.code().to_owned(),
            param: self.param().map(str::to_owned),
        }
    }

    /// The body in the error shape of a format, for native routes: the provider's SDK then
    /// raises its usual exception.
    pub fn body_for(&self, format: Format) -> serde_json::Value {
        format.error_body(&self.gateway_error())
    }

    /// A response in a format's own error shape.
    pub fn into_response_for(self, format: Format) -> Response {
        let error = self.gateway_error();
        let body = format.error_body(&error).to_string();
        let mut response = (self.status_code(), body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.add_challenge(&mut response);
        if let Some((name, value)) = format.error_header(&error) {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }

    /// `WWW-Authenticate` on 401s (RFC 6750).
    fn add_challenge(&self, response: &mut Response) {
        if let ApiError::Unauthenticated { invalid, .. } = self {
            let value = if *invalid {
                "Bearer realm=\"portcullis\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"portcullis\""
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_for(Format::OpenAi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_prefix_lists_the_valid_ones() {
        let e = ApiError::UnknownPrefix {
            prefix: "nosuch".into(),
            model: "nosuch:model".into(),
            available: "openai, groq".into(),
        };
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        let body = e.body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("openai, groq"), "{msg}");
    }

    #[test]
    fn native_shapes() {
        let e = ApiError::UpstreamTimeout {
            prefix: "a".into(),
            secs: 3,
        };
        let a = e.body_for(Format::Anthropic);
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "timeout_error");
        let g = e.body_for(Format::Gemini);
        assert_eq!(g["error"]["code"], 504);
        assert_eq!(g["error"]["status"], "DEADLINE_EXCEEDED");
        assert!(e.body_for(Format::Cohere)["message"].is_string());
        assert_eq!(
            e.body_for(Format::OpenAi)["error"]["code"],
            "upstream_timeout"
        );
    }

    #[test]
    fn translation_errors_keep_their_param() {
        let e = ApiError::Translation(crate::formats::TranslateError::Unsupported {
            param: "response_format".to_owned(),
            reason: "json_schema has no Converse equivalent".to_owned(),
        });
        assert_eq!(e.body()["error"]["param"], "response_format");
        assert_eq!(e.body()["error"]["code"], "unsupported_request");
        let e = ApiError::Translation(crate::formats::TranslateError::Unsupported {
            param: "tools[0].type".to_owned(),
            reason: "x".to_owned(),
        });
        assert_eq!(e.body()["error"]["param"], "tools");
    }

    #[test]
    fn statuses() {
        assert_eq!(ApiError::BodyTooLarge { limit: 1 }.status_code(), 413);
        let t = ApiError::UpstreamTimeout {
            prefix: "x".into(),
            secs: 1,
        };
        assert_eq!(t.status_code(), 504);
        let u = ApiError::UpstreamUnreachable {
            prefix: "x".into(),
            detail: "refused".into(),
        };
        assert_eq!(u.status_code(), 502);
        assert_eq!(ApiError::InvalidJson("x".into()).status_code(), 400);
    }
}
