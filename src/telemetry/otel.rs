//! OpenTelemetry traces, exported with OTLP over HTTP/protobuf.
//!
//! ```text
//! dispatch ── server span "chat {model}" (parent: the client's traceparent) ── Exchange owns it
//!   └─ upstream::send ── client span "POST" per attempt ── traceparent → upstream
//! Exchange drop (last byte sent) ── attributes, events, end ── batch processor ── OTLP/HTTP
//! ```
//!
//! Spans are `tracing` spans on the target [`TARGET`], turned into OpenTelemetry spans by
//! `tracing-opentelemetry`; attributes, events and names are set on the OpenTelemetry span
//! itself once it is known to be recording (sampled). Tracing is on only when an OTLP
//! endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); otherwise no layer is installed and every span here
//! is `Span::none()`: one relaxed atomic load per request.
//!
//! The standard variables are read by the OpenTelemetry SDK: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` / `TIMEOUT`. Only `http/protobuf` is spoken.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of the gateway's OpenTelemetry spans (and only of them).
pub const TARGET: &str = "portcullis::otel";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured and the layer is installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the environment asks for traces: an OTLP endpoint is set, the SDK is not disabled
/// (`OTEL_SDK_DISABLED=true`) and the traces exporter is not `none`. Refuses a protocol other
/// than `http/protobuf`, so a misconfiguration is an error at startup rather than silence.
pub fn wanted() -> Result<bool, String> {
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some();
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    if !endpoint || disabled {
        return Ok(false);
    }
    if let Some(exporter) = env("OTEL_TRACES_EXPORTER")
        && !exporter.eq_ignore_ascii_case("otlp")
    {
        return Err(format!(
            "OTEL_TRACES_EXPORTER={exporter} is not supported: use otlp (or none)"
        ));
    }
    let protocol =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref() {
        None | Some("http/protobuf") => Ok(true),
        Some(other) => Err(format!(
            "OTLP protocol {other} is not supported: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
             (the collector's port 4318)"
        )),
    }
}

/// The exporter's HTTP client: the gateway's reqwest stack, driven on the gateway's runtime
/// (the batch processor exports from its own thread, outside any runtime).
#[derive(Debug)]
struct Client {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    timeout: std::time::Duration,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .timeout(timeout)
                .body(body)
                .send()
                .await?;
            let mut out = http::Response::builder().status(response.status());
            if let Some(headers) = out.headers_mut() {
                *headers = response.headers().clone();
            }
            // A collector answers a few bytes (a partial-success message at most).
            let body = crate::net::read_limited(response, 64 * 1024)
                .await
                .map_err(|e| match e {
                    crate::net::CappedRead::TooBig => {
                        "the collector's answer is larger than 64 KiB".to_owned()
                    }
                    crate::net::CappedRead::Transport(e) => e.to_string(),
                })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out.body(body)?)
        });
        task.await?
    }
}

/// The installed pipeline; flushes and stops the exporter when shut down.
pub struct Pipeline {
    provider: SdkTracerProvider,
}

impl Pipeline {
    /// Export what is queued and stop (at exit, outside the runtime, while it still runs).
    pub fn shutdown(self) {
        let _ = self.provider.shutdown();
    }
}

/// Build the exporter and the tracer provider: spans are batched and exported over
/// OTLP/HTTP by the gateway's HTTP stack (trusting `extra_ca_certs` too) on `runtime`, each
/// export bounded by `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` (milliseconds, default 10 s).
pub fn pipeline(
    runtime: tokio::runtime::Handle,
    extra_ca_certs: Option<&std::path::Path>,
) -> anyhow::Result<Pipeline> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let timeout = env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis,
        );
    let client = Client {
        client: crate::net::http_client(extra_ca_certs)?,
        runtime,
        timeout,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(client)
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name("portcullis");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            resource
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    Ok(Pipeline { provider })
}

/// The `tracing` layer that turns the spans of [`TARGET`] into OpenTelemetry spans, and marks
/// tracing as on. Nothing else reaches it (the caller filters it to [`TARGET`]).
pub fn layer<S>(pipeline: &Pipeline) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    ENABLED.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer()
        .with_tracer(pipeline.provider.tracer("portcullis"))
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The OpenTelemetry context of a span, when it is one of ours and sampled.
fn recording(span: &Span) -> Option<Context> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    cx.span().is_recording().then_some(cx)
}

/// A traced request: its server span, and what its upstream attempts learn for it (the last
/// attempt's provider and request parameters). Exists only while tracing is on.
pub struct Trace {
    /// The server span.
    pub span: Span,
    attempts: std::sync::Arc<tokio::sync::Mutex<Attempt>>,
}

/// What the last upstream attempt of a request knew.
#[derive(Debug, Default, Clone)]
pub struct Attempt {
    /// `gen_ai.provider.name`.
    pub provider: Option<&'static str>,
    /// Request parameters read from the upstream body.
    pub params: super::genai::RequestParams,
}

tokio::task_local! {
    static REQUEST: (Span, std::sync::Arc<tokio::sync::Mutex<Attempt>>);
}

impl Trace {
    /// Start the server span of a request (`None` with tracing off), continuing the client's
    /// W3C `traceparent` / `tracestate` when it sent a valid one.
    pub fn start(headers: &HeaderMap) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let span = tracing::info_span!(target: TARGET, "request", otel.kind = "server");
        if headers.contains_key("traceparent") {
            let parent = TraceContextPropagator::new().extract(&Headers(headers));
            if parent.span().span_context().is_valid() {
                let _ = span.set_parent(parent);
            }
        }
        Some(Self {
            span,
            attempts: std::sync::Arc::default(),
        })
    }

    /// Run the request's handler, its upstream attempts becoming client spans of this one.
    pub async fn run<F: std::future::Future>(&self, handler: F) -> F::Output {
        REQUEST
            .scope((self.span.clone(), self.attempts.clone()), handler)
            .await
    }

    /// Whether the server span is sampled (only then is the answer read for it).
    pub fn recording(&self) -> bool {
        recording(&self.span).is_some()
    }

    /// What the last upstream attempt knew.
    pub fn attempt(&self) -> Attempt {
        self.attempts
            .try_lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

/// One upstream attempt: a client span under the request's server span, and its
/// `traceparent` / `tracestate` in `headers` (replacing any the client sent). Outside a
/// traced request nothing happens.
pub fn client_span(
    provider: &'static str,
    base_url: &url::Url,
    method: &http::Method,
    url: &str,
    body: Option<&[u8]>,
    headers: &mut HeaderMap,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let Ok(span) = REQUEST.try_with(|(parent, attempt)| {
        let span =
            tracing::info_span!(target: TARGET, parent: parent, "upstream", otel.kind = "client");
        let cx = span.context();
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
        let otel = cx.span();
        if otel.is_recording() {
            let params = body
                .map(super::genai::RequestParams::read)
                .unwrap_or_default();
            otel.update_name(method_name(method));
            let mut a = Vec::with_capacity(8);
            a.push(KeyValue::new(
                "http.request.method",
                opentelemetry::Value::String(method_name(method).into()),
            ));
            a.push(KeyValue::new("gen_ai.provider.name", provider));
            params.attributes(&mut a);
            // The upstream URL is the provider's base URL and a path: its host and port are
            // the base URL's (parsed once, at configuration time).
            if let Some(host) = base_url.host_str() {
                a.push(KeyValue::new("server.address", host.to_owned()));
            }
            if let Some(port) = base_url.port_or_known_default() {
                a.push(KeyValue::new("server.port", i64::from(port)));
            }
            // Scheme, host and path only: a query may carry a key.
            let path_end = url.find(['?', '#']).unwrap_or(url.len());
            a.push(KeyValue::new("url.full", url[..path_end].to_owned()));
            otel.set_attributes(a);
            if let Ok(mut last) = attempt.try_lock() {
                *last = Attempt {
                    provider: Some(provider),
                    params,
                };
            }
        }
        span
    }) else {
        return Span::none();
    };
    span
}

/// A method's name without allocating for the common ones.
fn method_name(method: &http::Method) -> std::borrow::Cow<'static, str> {
    match *method {
        http::Method::POST => "POST".into(),
        http::Method::GET => "GET".into(),
        _ => method.as_str().to_owned().into(),
    }
}

/// Record the upstream's answer (status) or failure (`error.type`) on a client span.
pub fn client_result(span: &Span, status: Option<u16>, error: Option<&'static str>) {
    let Some(cx) = recording(span) else {
        return;
    };
    let otel = cx.span();
    if let Some(status) = status {
        otel.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 400 {
            otel.set_attribute(KeyValue::new("error.type", status.to_string()));
            otel.set_status(Status::error(""));
        }
    }
    if let Some(error) = error {
        otel.set_attribute(KeyValue::new("error.type", error));
        otel.set_status(Status::error(error));
    }
}

/// What the request path learnt about a request, for its server span.
pub struct Summary<'a> {
    /// GenAI operation (`chat`, `embeddings`, …), when the request is one.
    pub operation: Option<&'static str>,
    /// HTTP method (the span name of a request that is no GenAI operation).
    pub method: &'a str,
    /// Model as asked.
    pub model: &'a str,
    /// Proxy ID.
    pub proxy: &'a str,
    /// Caller identity.
    pub identity: &'a str,
    /// `router` or `native`.
    pub route: &'static str,
    /// Provider prefix.
    pub prefix: &'a str,
    /// HTTP status returned.
    pub status: u16,
    /// Token usage.
    pub usage: crate::policy::stream::Usage,
    /// Guardrail decisions.
    pub decisions: &'a [crate::policy::guardrails::Decision],
    /// What the answer said about itself.
    pub response: &'a super::genai::ResponseMeta,
    /// What the last upstream attempt knew.
    pub attempt: Attempt,
    /// Time to the first streamed chunk.
    pub ttft: Option<std::time::Duration>,
    /// The request's messages, with `spec.audit.includeContent` only.
    pub content: Option<&'a serde_json::Value>,
    /// The `LlmBudget` limit that refused the request (`namespace/budget/limit`).
    pub budget_limit: Option<&'a str>,
}

/// Largest prompt content recorded on a span, in bytes (the rest is cut).
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// Name and fill in the server span when the request ends (it ends when dropped).
pub fn finish_server(span: &Span, s: &Summary<'_>) {
    let Some(cx) = recording(span) else {
        return;
    };
    let otel = cx.span();
    otel.update_name(match s.operation {
        Some(op) if !s.model.is_empty() => format!("{op} {}", s.model),
        Some(op) => op.to_owned(),
        None => s.method.to_owned(),
    });
    let mut a = Vec::with_capacity(20);
    if let Some(op) = s.operation {
        a.push(KeyValue::new("gen_ai.operation.name", op));
    }
    if !s.model.is_empty() {
        a.push(KeyValue::new("gen_ai.request.model", s.model.to_owned()));
    }
    if let Some(provider) = s.attempt.provider {
        a.push(KeyValue::new("gen_ai.provider.name", provider));
    }
    s.attempt.params.attributes(&mut a);
    if let Some(v) = &s.response.model {
        a.push(KeyValue::new("gen_ai.response.model", v.clone()));
    }
    if let Some(v) = &s.response.id {
        a.push(KeyValue::new("gen_ai.response.id", v.clone()));
    }
    if !s.response.finish_reasons.is_empty() {
        a.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(
                s.response
                    .finish_reasons
                    .iter()
                    .map(|r| opentelemetry::StringValue::from(r.clone()))
                    .collect::<Vec<_>>()
                    .into(),
            ),
        ));
    }
    if let Some(v) = s.usage.input_tokens {
        a.push(KeyValue::new("gen_ai.usage.input_tokens", v as i64));
    }
    if let Some(v) = s.usage.output_tokens {
        a.push(KeyValue::new("gen_ai.usage.output_tokens", v as i64));
    }
    if let Some(t) = s.ttft {
        a.push(KeyValue::new(
            "gen_ai.server.time_to_first_token",
            t.as_secs_f64(),
        ));
    }
    a.push(KeyValue::new(
        "http.response.status_code",
        i64::from(s.status),
    ));
    if s.status >= 400 || s.status == 0 {
        a.push(KeyValue::new("error.type", s.status.to_string()));
    }
    if s.status >= 500 || s.status == 0 {
        otel.set_status(Status::error(""));
    }
    a.push(KeyValue::new("portcullis.route", s.route));
    for (key, value) in [
        ("portcullis.proxy", s.proxy),
        ("portcullis.identity", s.identity),
        ("portcullis.provider", s.prefix),
    ] {
        if !value.is_empty() {
            a.push(KeyValue::new(key, value.to_owned()));
        }
    }
    if let Some(content) = s.content {
        let mut text = content.to_string();
        if text.len() > MAX_CONTENT_BYTES {
            let mut end = MAX_CONTENT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        a.push(KeyValue::new("gen_ai.input.messages", text));
    }
    otel.set_attributes(a);
    for d in s.decisions {
        let mut attributes = vec![
            KeyValue::new("portcullis.guardrail.tool", d.tool.clone()),
            KeyValue::new("portcullis.guardrail.action", d.action),
            KeyValue::new("portcullis.guardrail.rule", d.rule.clone()),
        ];
        if let Some(reason) = &d.reason {
            attributes.push(KeyValue::new("portcullis.guardrail.reason", reason.clone()));
        }
        otel.add_event("portcullis.guardrail", attributes);
    }
    if let Some(limit) = s.budget_limit {
        otel.add_event(
            "portcullis.budget.refused",
            vec![KeyValue::new("portcullis.budget.limit", limit.to_owned())],
        );
    }
}

/// Add an event (a refusal, a decision) to a request's server span, when it is recording.
pub fn event(span: &Span, name: &'static str, attributes: Vec<KeyValue>) {
    if let Some(cx) = recording(span) {
        cx.span().add_event(name, attributes);
    }
}

/// The GenAI convention's `gen_ai.provider.name` of a provider type.
pub fn provider_name(t: crate::crd::ProviderType) -> &'static str {
    use crate::crd::ProviderType as T;
    match t {
        T::Openai => "openai",
        T::Anthropic => "anthropic",
        T::Gemini => "gcp.gemini",
        T::Vertexai => "gcp.vertex_ai",
        T::Azure => "azure.ai.openai",
        T::Bedrock => "aws.bedrock",
        T::Cohere => "cohere",
        T::Groq => "groq",
        T::Xai => "x_ai",
        T::Deepseek => "deepseek",
        T::Mistral => "mistral_ai",
        T::Perplexity => "perplexity",
        T::Openrouter
        | T::Cerebras
        | T::Minimax
        | T::Zhipuai
        | T::Vllm
        | T::Ollama
        | T::OpenaiCompatible => t.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_an_endpoint() {
        // The test environment sets no OTEL_* variable.
        assert!(!enabled());
        assert!(Trace::start(&HeaderMap::new()).is_none());
        let mut headers = HeaderMap::new();
        let base = url::Url::parse("http://x/v1").unwrap_or_else(|e| panic!("{e}"));
        let span = client_span(
            "openai",
            &base,
            &http::Method::POST,
            "http://x/v1",
            None,
            &mut headers,
        );
        assert!(span.is_none());
        assert!(headers.is_empty());
    }

    #[test]
    fn provider_names_follow_the_convention() {
        use crate::crd::ProviderType as T;
        assert_eq!(provider_name(T::Bedrock), "aws.bedrock");
        assert_eq!(provider_name(T::Vertexai), "gcp.vertex_ai");
        assert_eq!(provider_name(T::OpenaiCompatible), "openai-compatible");
    }
}
