//! Outbound HTTP shared by every part that calls out (upstreams, identity endpoints, JWKS,
//! the OTLP exporter): the one client builder and a capped body read. No data-plane or
//! configuration types here, so every module may use it without an import cycle.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;

/// The upstream HTTP client: one pool, `TCP_NODELAY`, no redirects followed (a 3xx goes back
/// to the client as it is), extra CA certificates trusted when given.
pub fn http_client(extra_ca_certs: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(30));
    if let Some(path) = extra_ca_certs {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading extra CA certificates from {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM bundle of certificates", path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
        builder = builder.tls_certs_merge(certs);
        crate::credentials::aws::trust_extra_ca_certs(pem);
    }
    builder.build().context("building the HTTP client")
}

/// Why a capped read stopped.
#[derive(Debug)]
pub enum CappedRead {
    /// The answer is larger than the cap.
    TooBig,
    /// The transport failed.
    Transport(reqwest::Error),
}

/// Read an upstream answer whole, at most `limit` bytes (never an unbounded buffer).
pub async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Bytes, CappedRead> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(CappedRead::TooBig);
    }
    let mut stream = response.bytes_stream();
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(CappedRead::Transport)?;
        if out.len() + chunk.len() > limit {
            return Err(CappedRead::TooBig);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
