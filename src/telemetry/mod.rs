//! Metrics (Prometheus text via `prometheus-client`), structured logs (`tracing`) and
//! OpenTelemetry traces ([`otel`]) with the GenAI conventions ([`genai`]).
//!
//! The `portcullis_*` metrics are the gateway's own; the `gen_ai_*` histograms follow the
//! OpenTelemetry GenAI metric conventions (names as a Prometheus exporter writes them), with
//! labels taken only from configuration: proxy, provider prefix, operation, and the model
//! when the provider lists it (else `other`).

pub mod genai;
pub mod otel;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Proxy ID (`ns.name`), empty when none matched.
    pub proxy: String,
    /// Provider prefix, empty when none matched.
    pub provider: String,
    /// Model as the client named it (router) or empty (native).
    pub model: String,
    /// `router` or `native`.
    pub route: &'static str,
    /// HTTP status returned.
    pub status: u16,
}

/// Labels of one upstream attempt of a failed-over request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Proxy ID.
    pub proxy: String,
    /// The target, as the configuration names it (`openai:gpt-5.4`, `azure@ai/az-east`).
    pub target: String,
    /// `served`, or the failure (`server_error`, `rate_limited`, `quota_exhausted`,
    /// `timeout`, `connect_error`, `rejected`).
    pub outcome: &'static str,
}

/// Labels of timings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Proxy ID.
    pub proxy: String,
    /// Provider prefix.
    pub provider: String,
    /// `router` or `native`.
    pub route: &'static str,
}

/// Labels of configuration reloads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `files`, `kubernetes` or `embedded`.
    pub source: &'static str,
    /// `applied` (clean), `partial` (some objects kept their last good version) or `rejected`.
    pub result: &'static str,
}

/// Labels of authentication failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    /// Proxy ID.
    pub proxy: String,
    /// `missing_credentials`, `invalid_credentials` or `verifier_unavailable`.
    pub reason: &'static str,
}

/// Labels of authorisation denials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// Proxy ID.
    pub proxy: String,
    /// `router` or `native`.
    pub route: &'static str,
}

/// Labels of guardrail decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardrailLabels {
    /// Proxy ID.
    pub proxy: String,
    /// The rule that decided (`default` when none matched).
    pub rule: String,
    /// `allow` or `block`.
    pub action: &'static str,
}

/// Labels of budget metrics: the `LlmBudget` (`namespace/name`) and the limit's name, both
/// from configuration (bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// `namespace/name` of the `LlmBudget`.
    pub budget: String,
    /// Limit name (`store` for store-unavailable refusals).
    pub limit: String,
}

/// Labels of the GenAI histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiLabels {
    /// Proxy ID.
    pub proxy: String,
    /// Provider prefix.
    pub provider: String,
    /// `gen_ai.operation.name` (`chat`, `embeddings`, …).
    pub operation: &'static str,
    /// The model asked, when the provider lists it; else `other`.
    pub model: String,
}

/// Labels of `gen_ai_client_token_usage`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Proxy ID.
    pub proxy: String,
    /// Provider prefix.
    pub provider: String,
    /// `gen_ai.operation.name`.
    pub operation: &'static str,
    /// The model asked, when the provider lists it; else `other`.
    pub model: String,
    /// `input` or `output`.
    pub token_type: &'static str,
}

/// The OpenTelemetry GenAI histograms (unprefixed names).
pub struct GenAiMetrics {
    registry: Registry,
    /// `gen_ai_client_token_usage`: tokens per request, by type.
    pub token_usage: Family<TokenLabels, Histogram>,
    /// `gen_ai_server_request_duration_seconds`: until the answer's last byte.
    pub request_duration: Family<GenAiLabels, Histogram>,
    /// `gen_ai_server_time_to_first_token_seconds`: until a stream's first chunk.
    pub time_to_first_token: Family<GenAiLabels, Histogram>,
}

impl Default for GenAiMetrics {
    fn default() -> Self {
        // Bucket boundaries advised by the GenAI metric conventions.
        const TOKENS: [f64; 14] = [
            1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
            4194304.0, 16777216.0, 67108864.0,
        ];
        const DURATION: [f64; 14] = [
            0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
        ];
        const TTFT: [f64; 16] = [
            0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0,
        ];
        let mut registry = Registry::default();
        let token_usage =
            Family::<TokenLabels, Histogram>::new_with_constructor(|| Histogram::new(TOKENS));
        registry.register(
            "gen_ai_client_token_usage",
            "Input and output tokens per GenAI request, as the provider reported them",
            token_usage.clone(),
        );
        let request_duration =
            Family::<GenAiLabels, Histogram>::new_with_constructor(|| Histogram::new(DURATION));
        registry.register(
            "gen_ai_server_request_duration_seconds",
            "Time from a GenAI request to the last byte of its answer",
            request_duration.clone(),
        );
        let time_to_first_token =
            Family::<GenAiLabels, Histogram>::new_with_constructor(|| Histogram::new(TTFT));
        registry.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from a streamed GenAI request to the first chunk of its answer",
            time_to_first_token.clone(),
        );
        Self {
            registry,
            token_usage,
            request_duration,
            time_to_first_token,
        }
    }
}

impl GenAiMetrics {
    /// Record a finished GenAI request.
    pub fn observe(
        &self,
        labels: GenAiLabels,
        usage: crate::policy::stream::Usage,
        took: Duration,
        ttft: Option<Duration>,
    ) {
        for (token_type, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            if let Some(count) = count {
                self.token_usage
                    .get_or_create(&TokenLabels {
                        proxy: labels.proxy.clone(),
                        provider: labels.provider.clone(),
                        operation: labels.operation,
                        model: labels.model.clone(),
                        token_type,
                    })
                    .observe(count as f64);
            }
        }
        if let Some(ttft) = ttft {
            self.time_to_first_token
                .get_or_create(&labels)
                .observe(ttft.as_secs_f64());
        }
        self.request_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `portcullis_request_duration_seconds` (until the last byte of the response).
    pub request_duration: Family<RouteLabels, Histogram>,
    /// `portcullis_upstream_ttfb_seconds` (until the upstream's response headers).
    pub upstream_ttfb: Family<RouteLabels, Histogram>,
    /// `portcullis_config_reloads_total`.
    pub reloads: Family<ReloadLabels, Counter>,
    /// `portcullis_config_apply_seconds`: from a change being seen to the swap that serves it.
    pub config_apply: Histogram,
    /// `portcullis_auth_failures_total`.
    pub auth_failures: Family<AuthFailureLabels, Counter>,
    /// `portcullis_access_denials_total`.
    pub access_denials: Family<DenialLabels, Counter>,
    /// `portcullis_guardrail_decisions_total`.
    pub guardrail_decisions: Family<GuardrailLabels, Counter>,
    /// `portcullis_budget_refusals_total`.
    pub budget_refusals: Family<BudgetLabels, Counter>,
    /// `portcullis_budget_consumed_total`: settled usage, in each limit's unit (requests,
    /// tokens, millionths of a dollar).
    pub budget_consumed: Family<BudgetLabels, Counter>,
    /// `portcullis_upstream_attempts_total`: attempts of failed-over requests.
    pub upstream_attempts: Family<AttemptLabels, Counter>,
    /// `portcullis_upstream_attempt_duration_seconds`: from send to first byte or failure.
    pub upstream_attempt_duration: Family<AttemptLabels, Histogram>,
    /// The GenAI histograms.
    pub genai: GenAiMetrics,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 18)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by proxy, provider, model, route and status",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to the last byte of the response",
            request_duration.clone(),
        );
        let upstream_ttfb = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "upstream_ttfb_seconds",
            "Time from sending upstream to the upstream's response headers",
            upstream_ttfb.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by source and result",
            reloads.clone(),
        );
        let config_apply = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "config_apply_seconds",
            "Time from a configuration change being seen to the data plane serving it",
            config_apply.clone(),
        );
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused because the caller could not be authenticated, by proxy and reason",
            auth_failures.clone(),
        );
        let access_denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "access_denials",
            "Requests refused by spec.access, by proxy and route",
            access_denials.clone(),
        );
        let guardrail_decisions = Family::<GuardrailLabels, Counter>::default();
        registry.register(
            "guardrail_decisions",
            "Tool-call guardrail decisions by proxy, rule and action",
            guardrail_decisions.clone(),
        );
        let budget_refusals = Family::<BudgetLabels, Counter>::default();
        registry.register(
            "budget_refusals",
            "Requests refused by an LlmBudget, by budget and limit",
            budget_refusals.clone(),
        );
        let budget_consumed = Family::<BudgetLabels, Counter>::default();
        registry.register(
            "budget_consumed",
            "Settled usage counted by an LlmBudget, by budget and limit, in the limit's unit (requests, tokens, micro-USD)",
            budget_consumed.clone(),
        );
        let upstream_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Upstream attempts of virtual models, pools and retried requests, by proxy, target and outcome",
            upstream_attempts.clone(),
        );
        let upstream_attempt_duration =
            Family::<AttemptLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(latency_buckets())
            });
        registry.register(
            "upstream_attempt_duration_seconds",
            "Time from sending an attempt to its first byte or its failure",
            upstream_attempt_duration.clone(),
        );
        Self {
            budget_refusals,
            budget_consumed,
            registry,
            upstream_attempts,
            upstream_attempt_duration,
            genai: GenAiMetrics::default(),
            auth_failures,
            access_denials,
            guardrail_decisions,
            requests,
            request_duration,
            upstream_ttfb,
            reloads,
            config_apply,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        if encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.genai.registry))
            .and_then(|()| encode_eof(&mut out))
            .is_err()
        {
            out.clear();
        }
        out
    }

    /// Count a reload.
    pub fn reload(&self, source: &'static str, result: &'static str, took: Duration) {
        self.reloads
            .get_or_create(&ReloadLabels { source, result })
            .inc();
        if result != "rejected" {
            self.config_apply.observe(took.as_secs_f64());
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global `tracing` subscriber (stderr; `RUST_LOG` filters, default `info`, with
/// `kube_client`'s per-request errors off: the Kubernetes source logs watch failures itself).
///
/// Audit events (target `portcullis::audit`) bypass the format: each is written as the bare
/// JSON object it carries, one per line, whatever the log format. With an OpenTelemetry
/// pipeline, the spans of [`otel::TARGET`] go to it, and only there.
pub fn init_logging(format: LogFormat, traces: Option<&otel::Pipeline>) {
    use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_client=off"));
    let not_audit =
        filter_fn(|m| m.target() != crate::policy::audit::TARGET && m.target() != otel::TARGET);
    let main = fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let main = match format {
        LogFormat::Text => main.with_filter(filter.and(not_audit)).boxed(),
        LogFormat::Json => main
            .json()
            .flatten_event(true)
            .with_filter(filter.and(not_audit))
            .boxed(),
    };
    let audit = fmt::layer()
        .event_format(AuditLine)
        .with_writer(std::io::stderr)
        .with_filter(filter_fn(|m| m.target() == crate::policy::audit::TARGET));
    let traces = traces.map(|pipeline| {
        otel::layer(pipeline).with_filter(filter_fn(|m| m.target() == otel::TARGET))
    });
    let _ = tracing_subscriber::registry()
        .with(main)
        .with(audit)
        .with(traces)
        .try_init();
}

/// Writes an event's message alone: audit events carry a whole JSON object as their message.
struct AuditLine;

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for AuditLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut message = Message(String::new());
        event.record(&mut message);
        writeln!(writer, "{}", message.0)
    }
}
