//! Metrics (Prometheus text via `prometheus-client`) and structured logs (`tracing`).

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
        Self {
            budget_refusals,
            budget_consumed,
            registry,
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
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
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
/// JSON object it carries, one per line, whatever the log format.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_client=off"));
    let not_audit = filter_fn(|m| m.target() != crate::policy::audit::TARGET);
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
    let _ = tracing_subscriber::registry()
        .with(main)
        .with(audit)
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
