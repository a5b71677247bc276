//! Header hygiene between client and upstream: hop-by-hop headers never cross the gateway,
//! client credentials never reach the upstream.

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

/// The client's headers as they may be sent upstream: no hop-by-hop headers, no `Host`, no
/// client credentials.
pub fn to_upstream(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
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

/// The upstream's headers as they may be sent to the client.
pub fn to_client(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    strip_hop_by_hop(&mut headers);
    headers
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
