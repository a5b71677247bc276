//! The `LlmBudget` resource (limits reserved before admission) and the prices an
//! `LlmProvider` declares for USD limits.
//!
//! A separate kind from `LlmProxy` so that a platform team can own limits through RBAC while
//! app teams own their proxies. Compiled by [`crate::config::budget::compile`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Limits on the requests, tokens or dollars that callers of some `LlmProxy`s may spend,
/// reserved before a request goes upstream and reconciled with the usage the provider reports.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "LlmBudget",
    plural = "llmbudgets",
    shortname = "llmb",
    namespaced,
    status = "LlmBudgetStatus",
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Limits","type":"integer","jsonPath":".status.limits"}"#,
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".status.store"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.status==\"False\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LlmBudgetSpec {
    /// The `LlmProxy`s of this namespace whose requests these limits count. Omitted: every
    /// proxy of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_refs: Option<Vec<super::LocalObjectRef>>,
    /// The limits; a request is admitted only when every limit that counts it has room.
    #[schemars(length(min = 1))]
    pub limits: Vec<BudgetLimit>,
    /// Where the counters live. Omitted: in the gateway process (exact for one replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<BudgetStore>,
    /// What happens while the shared store cannot be reached: `deny` (default) answers 503
    /// `budget_store_unavailable`; `allow` admits and counts in the process meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_unavailable: Option<StoreUnavailable>,
}

/// One limit: one counter per key (`per`), over a window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.requests), has(self.tokens), has(self.usd)].filter(x, x).size() == 1",
     "message": "a limit takes exactly one of requests, tokens, usd"}
]))]
#[serde(rename_all = "camelCase")]
pub struct BudgetLimit {
    /// Name of the limit in status, metrics, audit events and refusals. Unique in the budget.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// What one counter is kept for: `identity` (each caller), `proxy` (the whole proxy),
    /// `model` (each provider-qualified model) or `identityModel` (each caller and model).
    pub per: String,
    /// Requests admitted per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<i64>,
    /// Tokens (input + output, cached input included) per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
    /// US dollars per window, as a decimal string (`"500.00"`). Every model the limit counts
    /// needs a price (`LlmProvider.spec.pricing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<String>,
    /// Rolling window `1s`..`30d` (units s, m, h, d), or a calendar `day` / `month` (UTC).
    pub window: String,
    /// Provider-qualified model globs (`openai:*`) this limit counts. Omitted: every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Identity globs (`apps/*`, `system:serviceaccount:ai:*`) this limit counts. Omitted:
    /// every caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<String>>,
    /// Output tokens reserved for a request that names no `max_tokens` (or the format's
    /// equivalent). Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_output_tokens: Option<i64>,
}

/// Where the counters of a budget live.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStore {
    /// A Redis server shared by every replica: one budget for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStore>,
}

/// A Redis server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisStore {
    /// The Secret (in the budget's namespace) and key holding the URL,
    /// `redis://[:password@]host:port[/db]` (TLS, `rediss://`, is not supported yet).
    pub url_secret_ref: SecretKeyRef,
}

/// What happens while the shared store cannot be reached.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StoreUnavailable {
    /// Refuse with 503 `budget_store_unavailable`.
    #[default]
    Deny,
    /// Admit, counting in this process until the store is back.
    Allow,
}

/// Observed state of an [`LlmBudget`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LlmBudgetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of limits served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<i64>,
    /// `inProcess` or `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The most-used keys of each limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<BudgetUsage>,
}

/// How much of one limit one key has used.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetUsage {
    /// The limit's name.
    pub limit: String,
    /// The counter's key: an identity, a proxy ID, a model, or `identity/model`.
    pub key: String,
    /// Used in the current window (requests, tokens, or dollars as a decimal string).
    pub used: String,
    /// The limit.
    pub max: String,
    /// When the window resets (RFC 3339); for rolling windows, when the current usage has
    /// rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// Prices of some of a provider's models, in US dollars per million tokens.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    /// Model globs (the provider's own model names, without the prefix: `gpt-5.4*`).
    #[schemars(length(min = 1))]
    pub models: Vec<String>,
    /// Input tokens, e.g. `"1.25"`.
    pub input: String,
    /// Cached input tokens. Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<String>,
    /// Output tokens, e.g. `"10.00"`.
    pub output: String,
}
