//! Header hygiene between client and upstream, by allow-list in both directions.
//!
//! Client → upstream: only headers the providers' SDKs send for content negotiation,
//! versioning, betas, tracing and telemetry ([`TO_UPSTREAM`], [`TO_UPSTREAM_PREFIXES`]).
//! Everything else stays at the gateway: client credentials, the organisation and project
//! selectors (`OpenAI-Organization`, `OpenAI-Project`, `x-goog-user-project`: the provider's
//! own account decides), `Metadata-Flavor` / `Metadata` and any `metadata-*` (so a provider
//! pointed at a metadata address cannot read it), cookies, forwarding headers.
//!
//! Upstream → client: only the answer's content headers, request IDs, rate-limit and retry
//! hints the SDKs read ([`TO_CLIENT`], [`TO_CLIENT_PREFIXES`]). `set-cookie`, the account's
//! organisation IDs (`openai-organization`, `anthropic-organization-id`), `alt-svc`,
//! `location` and every other header stay behind. Hop-by-hop headers never cross either way.

use http::header::{self, HeaderMap, HeaderName};

/// Client credential headers: removed before the provider's own credential is injected.
pub const CLIENT_CREDENTIALS: [&str; 4] =
    ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Client headers forwarded upstream (lowercase, exact).
pub const TO_UPSTREAM: [&str; 23] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "content-type",
    "content-length",
    "content-encoding",
    "user-agent",
    "x-request-id",
    "idempotency-key",
    "traceparent",
    "tracestate",
    // OpenAI and Azure
    "openai-beta",
    "x-ms-client-request-id",
    "x-ms-useragent",
    // Anthropic
    "anthropic-version",
    "anthropic-beta",
    // Gemini and Vertex AI
    "x-goog-api-client",
    "x-goog-request-params",
    "x-server-timeout",
    // Bedrock (the gateway signs; these are the SDK's own bookkeeping)
    "amz-sdk-invocation-id",
    "amz-sdk-request",
    "x-amz-user-agent",
    // Cohere
    "x-client-name",
];

/// Client header prefixes forwarded upstream: SDK telemetry (`x-stainless-*` of the OpenAI and
/// Anthropic SDKs, `x-fern-*` of Cohere's) and Bedrock's documented request options
/// (`x-amzn-bedrock-*`: guardrails, trace, performance configuration).
pub const TO_UPSTREAM_PREFIXES: [&str; 3] = ["x-stainless-", "x-fern-", "x-amzn-bedrock-"];

/// Upstream headers passed to the client (lowercase, exact).
pub const TO_CLIENT: [&str; 22] = [
    "content-type",
    "content-length",
    "content-encoding",
    "content-disposition",
    "cache-control",
    "etag",
    "last-modified",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "x-request-id",
    "request-id",
    // OpenAI and Azure
    "openai-processing-ms",
    "openai-version",
    "openai-model",
    "apim-request-id",
    "x-ms-region",
    "x-ms-client-request-id",
    // Bedrock (botocore reads the error type from `x-amzn-errortype`)
    "x-amzn-requestid",
    "x-amzn-errortype",
    "x-amz-request-id",
    // Cohere
    "x-api-warning",
];

/// Upstream header prefixes passed to the client: rate-limit state (OpenAI's
/// `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`), Bedrock's token counts and Cohere's
/// trial limits.
pub const TO_CLIENT_PREFIXES: [&str; 5] = [
    "x-ratelimit-",
    "anthropic-ratelimit-",
    "x-amzn-bedrock-",
    "x-trial-endpoint-",
    "x-endpoint-monthly-",
];

fn allowed(name: &HeaderName, exact: &[&str], prefixes: &[&str]) -> bool {
    let name = name.as_str();
    exact.contains(&name) || prefixes.iter().any(|p| name.starts_with(p))
}

/// Keep only the allowed headers (after the hop-by-hop ones are gone).
fn retain_allowed(headers: &HeaderMap, exact: &[&str], prefixes: &[&str]) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        if allowed(name, exact, prefixes) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The client's headers as they may be sent upstream: the allowed ones only (never a
/// hop-by-hop header, `Host`, a client credential or a `Metadata*` header).
pub fn to_upstream(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    let mut headers = retain_allowed(&headers, &TO_UPSTREAM, &TO_UPSTREAM_PREFIXES);
    // Defence in depth: the allow-list holds none of these.
    headers.remove(header::HOST);
    for name in CLIENT_CREDENTIALS.iter().chain(&CLIENT_SIGNATURE) {
        headers.remove(*name);
    }
    headers
}

/// What an AWS SDK's own SigV4 signature adds besides `authorization`: a client's session
/// token is a credential too, and the gateway signs with its own.
pub const CLIENT_SIGNATURE: [&str; 3] =
    ["x-amz-security-token", "x-amz-date", "x-amz-content-sha256"];

/// The upstream's headers as they may be sent to the client: the allowed ones only.
pub fn to_client(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    strip_hop_by_hop(&mut headers);
    retain_allowed(&headers, &TO_CLIENT, &TO_CLIENT_PREFIXES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn client_credentials_and_hop_by_hop_are_removed() {
        let h = to_upstream(&map(&[
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("api-key", "client"),
            ("x-goog-api-key", "client"),
            ("host", "gateway"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("openai-beta", "assistants=v2"),
        ]));
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "openai-beta"]);
    }

    #[test]
    fn selectors_metadata_and_unknown_headers_stay_at_the_gateway() {
        let h = to_upstream(&map(&[
            ("openai-organization", "org-client"),
            ("openai-project", "proj-client"),
            ("x-goog-user-project", "someone-elses"),
            ("metadata-flavor", "Google"),
            ("metadata", "true"),
            ("metadata-extra", "1"),
            ("cookie", "a=b"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-amz-security-token", "client-session"),
            ("x-stainless-lang", "python"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools-2024"),
            ("x-goog-api-client", "genai-py"),
            ("x-amzn-bedrock-guardrailidentifier", "g1"),
            ("user-agent", "sdk/1"),
        ]));
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-stainless-lang",
                "anthropic-version",
                "anthropic-beta",
                "x-goog-api-client",
                "x-amzn-bedrock-guardrailidentifier",
                "user-agent"
            ]
        );
        let h = to_client(&map(&[
            ("set-cookie", "session=1"),
            ("openai-organization", "org-upstream"),
            ("anthropic-organization-id", "org-upstream"),
            ("alt-svc", "h3=\":443\""),
            ("server", "upstream"),
            ("x-ratelimit-remaining-requests", "99"),
            ("anthropic-ratelimit-tokens-remaining", "1000"),
            ("request-id", "req_1"),
            ("openai-processing-ms", "12"),
            ("x-amzn-errortype", "ValidationException"),
            ("retry-after", "3"),
        ]));
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-ratelimit-remaining-requests",
                "anthropic-ratelimit-tokens-remaining",
                "request-id",
                "openai-processing-ms",
                "x-amzn-errortype",
                "retry-after"
            ]
        );
    }

    #[test]
    fn upstream_hop_by_hop_is_removed() {
        let h = to_client(&map(&[
            ("transfer-encoding", "chunked"),
            ("content-type", "text/event-stream"),
            ("x-request-id", "abc"),
        ]));
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.len(), 2);
    }
}
