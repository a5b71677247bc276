//! The two custom resources users write: [`LlmProvider`] (one upstream account and how to
//! authenticate to it) and [`LlmProxy`] (one endpoint that clients call, and which providers
//! it reaches).
//!
//! These types are the single source of the CRD schemas: `portcullis crds` serialises
//! [`crds()`] and the files under `crds/` are checked against it by a test. Validation the
//! schema can express (enums, "exactly one of" via CEL) lives here; everything else is a
//! problem reported by [`crate::config::compile`].

mod budget;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every Portcullis resource.
pub const GROUP: &str = "portcullis.dev";
/// API version of every Portcullis resource.
pub const VERSION: &str = "v1alpha1";

pub use budget::{
    BudgetLimit, BudgetStore, BudgetUsage, LlmBudget, LlmBudgetSpec, LlmBudgetStatus, ModelPrice,
    RedisStore, StoreUnavailable,
};

/// Namespace and name of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace (`default` when a manifest names none).
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Kubernetes object (`default` namespace when unset).
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self::new(
            meta.namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            meta.name.clone().unwrap_or_default(),
        )
    }

    /// The proxy ID used in URLs: `{namespace}.{name}`.
    pub fn proxy_id(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One upstream LLM account or endpoint and how the gateway authenticates to it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "LlmProvider",
    plural = "llmproviders",
    shortname = "llmp",
    namespaced,
    status = "LlmProviderStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"CredentialsReady\")].status"}"#,
    printcolumn = r#"{"name":"Models","type":"integer","jsonPath":".status.models"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.status==\"False\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.bedrock) || self.type == 'bedrock'", "message": "spec.bedrock is only allowed with type: bedrock"},
    {"rule": "!has(self.vertexai) || self.type == 'vertexai'", "message": "spec.vertexai is only allowed with type: vertexai"},
    {"rule": "!has(self.azure) || self.type == 'azure'", "message": "spec.azure is only allowed with type: azure"},
    {"rule": "!has(self.openrouter) || self.type == 'openrouter'", "message": "spec.openrouter is only allowed with type: openrouter"}
]))]
#[serde(rename_all = "camelCase")]
pub struct LlmProviderSpec {
    /// Provider type: selects the native protocol, the default base URL and the auth forms
    /// allowed. Also the default model-ID prefix (`openai:gpt-5.4`).
    #[serde(rename = "type")]
    pub provider_type: ProviderType,

    /// Base URL of the upstream API. Optional for types with a public default
    /// (e.g. `https://api.openai.com/v1`); required for `vllm`, `openai-compatible` and `azure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,

    /// How the gateway authenticates to the upstream. Exactly one form. Omitted means `none`,
    /// which only local types (`ollama`, `vllm`, `openai-compatible`) accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ProviderAuth>,

    /// Which models this provider serves: a fixed list, or a glob filter over the models
    /// discovered from the upstream's list API. Omitted means every discovered model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<ModelsSpec>,

    /// Upstream timeout, as a duration (`600s`, `10m`). Applies to connecting and to the wait
    /// for response headers, then to each gap between body chunks: a stream keeps going as
    /// long as bytes flow. Default `600s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,

    /// AWS Bedrock settings (type `bedrock` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockSpec>,

    /// Vertex AI settings (type `vertexai` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertexai: Option<VertexAiSpec>,

    /// Azure OpenAI / AI Foundry settings (type `azure` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSpec>,

    /// OpenRouter attribution settings (type `openrouter` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openrouter: Option<OpenRouterSpec>,

    /// Prices of the provider's models, for USD limits of `LlmBudget`s: the first entry whose
    /// glob matches a model prices it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Vec<ModelPrice>>,

    /// Native-route endpoints forwarded unread besides the ones the gateway knows for this
    /// type (`files/*`, say). Never served on a proxy with `spec.tools`, and only to callers
    /// whose access rules cover every model of the prefix (`prefix:*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<Vec<PassthroughRule>>,
}

/// One `spec.passthrough` rule: methods and a path glob, matched after percent-decoding.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassthroughRule {
    /// HTTP methods (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD`).
    pub methods: Vec<String>,
    /// Path glob relative to the native route's base (`files/*`, `batches/**`).
    pub path: String,
}

/// Declares [`ProviderType`]: each line is a variant, its doc and the name users write (also
/// the default model-ID prefix). Adding a provider type is one line here and one row in
/// `providers::info`; the enum, its serde names, [`ProviderType::ALL`] and
/// [`ProviderType::as_str`] all come from this list.
macro_rules! provider_types {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// The provider types Portcullis knows. Lowercase names, as users write them in model IDs.
        #[derive(
            Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
        )]
        pub enum ProviderType {
            $( $(#[$doc])* #[serde(rename = $name)] $variant, )*
        }

        impl ProviderType {
            /// Every type, in declaration order.
            pub const ALL: [ProviderType; [$($name),*].len()] = [$(Self::$variant),*];

            /// The name users write (`openai-compatible`), also the default model-ID prefix.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

provider_types! {
    /// OpenAI.
    Openai = "openai",
    /// Anthropic Messages API (also Claude on Azure AI Foundry).
    Anthropic = "anthropic",
    /// Gemini on Google AI Studio.
    Gemini = "gemini",
    /// Gemini on Google Cloud Vertex AI.
    Vertexai = "vertexai",
    /// Azure OpenAI / Azure AI Foundry.
    Azure = "azure",
    /// AWS Bedrock (Converse / ConverseStream).
    Bedrock = "bedrock",
    /// Cohere v2 Chat.
    Cohere = "cohere",
    /// Groq (OpenAI-compatible).
    Groq = "groq",
    /// xAI (OpenAI-compatible).
    Xai = "xai",
    /// OpenRouter (OpenAI-compatible).
    Openrouter = "openrouter",
    /// Cerebras (OpenAI-compatible).
    Cerebras = "cerebras",
    /// DeepSeek (OpenAI-compatible).
    Deepseek = "deepseek",
    /// Mistral (OpenAI-compatible).
    Mistral = "mistral",
    /// MiniMax (OpenAI-compatible).
    Minimax = "minimax",
    /// Perplexity (OpenAI-compatible; no tool calling).
    Perplexity = "perplexity",
    /// Zhipu AI (OpenAI-compatible).
    Zhipuai = "zhipuai",
    /// vLLM server (OpenAI-compatible; base URL required).
    Vllm = "vllm",
    /// Ollama (OpenAI-compatible).
    Ollama = "ollama",
    /// Any other OpenAI-compatible server (base URL required).
    OpenaiCompatible = "openai-compatible",
}

impl std::fmt::Display for ProviderType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to authenticate to the upstream: exactly one of the forms.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.apiKey), has(self.workloadIdentity), has(self.serviceAccountKey), has(self.none)].filter(x, x).size() == 1",
     "message": "auth takes exactly one of apiKey, workloadIdentity, serviceAccountKey, none"}
]))]
#[serde(rename_all = "camelCase")]
pub struct ProviderAuth {
    /// A static API key read from a Secret in the provider's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretKeySource>,

    /// Keyless cloud identity of the gateway's pod: the AWS credential chain (IRSA, EKS Pod
    /// Identity, instance role), GCP (GKE Workload Identity, ADC) or Azure (workload identity
    /// federation, managed identity), chosen by the provider type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<Empty>,

    /// A GCP service-account JSON key read from a Secret (Vertex AI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key: Option<SecretKeySource>,

    /// No authentication, e.g. a local Ollama or vLLM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<Empty>,
}

/// An empty object, used as a marker (`workloadIdentity: {}`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Empty {}

/// A value held in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySource {
    /// The Secret in the same namespace, and the key within it.
    pub secret_ref: SecretKeyRef,
}

/// A reference to one key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace of the referring resource.
    pub name: String,
    /// Key within the Secret's data. Defaults to `apiKey` (for `serviceAccountKey`: `key.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Which models a provider serves.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelsSpec {
    /// Serve exactly these model IDs, with no discovery from the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#static: Option<Vec<String>>,
    /// Glob patterns (`gpt-5*`) over the discovered models: only matching models are listed
    /// and reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
}

/// AWS Bedrock settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BedrockSpec {
    /// AWS region of the Bedrock runtime endpoint, e.g. `us-east-1`.
    pub region: String,
    /// Model providers to serve (`anthropic`, `amazon`, `meta`, `deepseek`, ...): the segment
    /// after the inference profile's region prefix. Omitted means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_providers: Option<Vec<String>>,
    /// Inference-profile region prefixes to serve (`us`, `eu`, `ap`, `global`). Omitted means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_inference_regions: Option<Vec<String>>,
    /// Bedrock control-plane URL used for discovery (for VPC endpoints). Defaults to
    /// `https://bedrock.{region}.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_url: Option<String>,
}

/// Vertex AI settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VertexAiSpec {
    /// Google Cloud project ID.
    pub project: String,
    /// Vertex AI location, e.g. `us-central1` or `global`.
    pub location: String,
}

/// Azure OpenAI / AI Foundry settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSpec {
    /// `api-version` query parameter for deployment-style URLs, e.g. `2024-10-21`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Entra ID scope override. By default chosen from the URL style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// OpenRouter app attribution, sent as the `HTTP-Referer` and `X-Title` headers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenRouterSpec {
    /// Your site URL, sent as `HTTP-Referer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_url: Option<String>,
    /// Your app's name, sent as `X-Title`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
}

/// Observed state of an [`LlmProvider`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LlmProviderStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `CredentialsReady`, `ModelsDiscovered`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of models currently served after discovery and filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<i64>,
}

/// One endpoint that clients call, and the providers it may reach.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "LlmProxy",
    plural = "llmproxies",
    shortname = "llmx",
    namespaced,
    status = "LlmProxyStatus",
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.status==\"False\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LlmProxySpec {
    /// The providers this proxy reaches, each under a model-ID prefix. Two or more entries
    /// with the same prefix form a pool (providers of one type, e.g. two Azure regions),
    /// balanced and failed over.
    #[schemars(length(min = 1))]
    pub providers: Vec<ProxyProvider>,
    /// Model used when a request names a model without a known prefix that no single provider
    /// lists, written `prefix:model` (e.g. `openai:gpt-5-mini`), or the name of a virtual
    /// model. Omitted on a proxy with an OpenRouter provider: `openrouter:openrouter/free`
    /// (with that provider's prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// Who may call this proxy. Any combination of API keys, Kubernetes ServiceAccount tokens
    /// and JWTs from an external identity provider; a request is accepted when one of them
    /// accepts it. Omitted means anonymous callers are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthSpec>,
    /// Which identities reach which models. Each rule grants the identities matching
    /// `identities` the provider-qualified models matching `models` (on native routes: the
    /// prefixes those patterns name). Omitted or empty means every authenticated caller
    /// reaches every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Vec<AccessRuleSpec>>,
    /// Tool-call guardrails: decide, per request and from the conversation alone, whether each
    /// tool call the model returns reaches the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolsSpec>,
    /// Audit events (one JSON line per request on the `portcullis::audit` log target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSpec>,
    /// Virtual models: names clients ask for, served by weighted targets and ordered
    /// fallbacks in any provider's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<VirtualModelSpec>>,
    /// Retries and failover before the first byte reached the client: the proxy's default
    /// for its virtual models, its provider pools and every other model it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// A model name clients ask for, served by other models.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualModelSpec {
    /// The name clients ask for (`smart`). No colon, and no model a prefix of the proxy serves.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Provider-qualified models (`openai:gpt-5.4`) sharing the traffic by weight.
    #[schemars(length(min = 1))]
    pub targets: Vec<ModelTargetSpec>,
    /// Provider-qualified models tried in order, once each, after the targets failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<Vec<String>>,
    /// Overrides the proxy's `retry` for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// One target of a virtual model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelTargetSpec {
    /// Provider-qualified model (`azure:gpt-5.4`): the prefix names a provider (or a pool) of
    /// the proxy, the rest is the model as that provider names it.
    pub model: String,
    /// Share of the traffic, relative to the other targets. Default 1; 0 takes no traffic
    /// while another target is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub weight: Option<u32>,
}

/// When a request is tried again, before the first byte reached the client.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Tries in all, across targets (the first included). Default 3 for virtual models and
    /// pools, 1 for a model served by a single provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: Option<i32>,
    /// Which failures are tried again. Default: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<RetryOn>>,
    /// How long an attempt may take to its first byte (for a stream: its first event), as a
    /// duration (`30s`). Omitted: the provider's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<String>,
}

/// A kind of failure that is tried again.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum RetryOn {
    /// 429 (and the providers' throttling errors). Quota exhaustion moves to another target.
    RateLimited,
    /// 5xx from the upstream (500, 502, 503, 504, 529).
    ServerError,
    /// No first byte within `firstByteTimeout` (or the provider's timeout).
    Timeout,
    /// The connection failed or was reset before the first byte.
    ConnectError,
}

/// How callers prove who they are. A request is accepted when any configured method accepts it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuthSpec {
    /// Static client keys: each entry of the Secret's data is one key, and the entry's name is
    /// the caller's identity. Sent as `Authorization: Bearer`, `x-api-key`, `api-key` or
    /// `x-goog-api-key`, whichever the SDK uses. Held only as SHA-256 hashes in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeysAuthSpec>,
    /// In-cluster workloads sending their projected ServiceAccount token, validated with the
    /// `TokenReview` API. The identity is `system:serviceaccount:{namespace}:{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuthSpec>,
    /// JWTs from an external identity provider, verified against its JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthSpec>,
}

/// Client API keys held in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysAuthSpec {
    /// The Secret, in the proxy's namespace: every data entry is `identity: key`.
    pub secret_ref: LocalObjectRef,
}

/// Kubernetes ServiceAccount tokens, checked with `TokenReview`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuthSpec {
    /// Audiences the token must be issued for (the `audiences` of the projected token
    /// volume). Omitted means the API server's own audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// ServiceAccounts allowed to call, as `namespace/name` globs (`ai/agent`, `ai/*`).
    #[schemars(length(min = 1))]
    pub service_accounts: Vec<String>,
}

/// JWTs from an external identity provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuthSpec {
    /// Required `iss` claim.
    pub issuer: String,
    /// URL of the issuer's JSON Web Key Set; fetched, cached, and fetched again when a token
    /// names a key ID the cache does not hold (key rotation).
    pub jwks_uri: String,
    /// Accepted `aud` values; the token must carry one of them. Omitted means `aud` is not
    /// checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// Claim holding the caller's identity. Default `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_claim: Option<String>,
}

/// One access rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRuleSpec {
    /// Identity globs (`team-a-*`, `system:serviceaccount:ai:*`).
    pub identities: Vec<String>,
    /// Provider-qualified model globs (`openai:gpt-5*`, `anthropic:*`, `*`).
    pub models: Vec<String>,
}

/// Tool-call guardrails.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolsSpec {
    /// Globs of tool names whose results are untrusted data (web fetch, email, tickets). When
    /// a request's conversation holds a result of such a tool (matched through the tool-call
    /// ID to the assistant's call), the context of that request is untrusted. A tool result
    /// whose ID matches no call counts as untrusted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted: Option<Vec<String>>,
    /// Rules evaluated on every tool call the model returns; the first match wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<ToolPolicySpec>>,
    /// Action when no rule matches. Default `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<ToolAction>,
}

/// One tool-call rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolPolicySpec {
    /// Name of the rule in audit events and metrics. Default `policies[i]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool-name globs this rule applies to.
    pub tools: Vec<String>,
    /// What happens to a matching call.
    pub action: ToolAction,
    /// Narrow the rule to calls whose arguments match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<ToolCondition>,
}

/// What happens to a tool call.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ToolAction {
    /// The call reaches the client.
    #[default]
    Allow,
    /// The call is replaced by a refusal.
    Block,
    /// The call is replaced by a refusal when the conversation holds an untrusted tool result.
    BlockWhenUntrusted,
}

/// A condition on a tool call's arguments.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolCondition {
    /// JSON pointer into the arguments (`/to`, `/recipients/0`).
    pub argument: String,
    /// Regular expression the value must match (strings as they are, other values as JSON).
    /// Arguments that are not valid JSON count as matching for `block` rules and as not
    /// matching for `allow` rules.
    pub matches: String,
}

/// Audit settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// Also record the request's messages. Default `false`: audit events hold no content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_content: Option<bool>,
}

/// One provider reachable through a proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProvider {
    /// The `LlmProvider` in the proxy's namespace.
    pub provider_ref: LocalObjectRef,
    /// Model-ID prefix (`prefix:model`) and native-route segment (`/v1/{prefix}/{proxy}/`).
    /// Defaults to the provider's type. Lowercase letters, digits and `-`. Entries sharing a
    /// prefix form a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub prefix: Option<String>,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the object.
    pub name: String,
}

/// Observed state of an [`LlmProxy`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LlmProxyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The Model Router URL in-cluster clients use as their OpenAI base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The CustomResourceDefinitions of every Portcullis kind.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![LlmProvider::crd(), LlmProxy::crd(), LlmBudget::crd()]
}

/// The CRDs as YAML: one file per CRD, keyed by file name (`llmproviders.portcullis.dev.yaml`).
pub fn crd_files() -> Result<BTreeMap<String, String>, serde_yaml::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            serde_yaml::to_string(&crd).map(|yaml| (name, quote_yaml11_keys(&yaml)))
        })
        .collect()
}

/// Quote mapping keys that a YAML 1.1 parser reads as booleans (`on`, `off`, `yes`, `no`,
/// `y`, `n`): kubectl and the API server parse YAML 1.1-style, so an unquoted `on:` (the
/// LlmProxy `retry.on` property) would become the key `true` there. serde_yaml writes YAML
/// 1.2, which leaves them bare.
fn quote_yaml11_keys(yaml: &str) -> String {
    const BOOLISH: [&str; 6] = ["on", "off", "yes", "no", "y", "n"];
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let quoted = BOOLISH.iter().find_map(|key| {
            body.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(':'))
                .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\n']))
                .map(|rest| format!("{indent}'{key}':{rest}"))
        });
        out.push_str(quoted.as_deref().unwrap_or(line));
    }
    out
}

/// The CRDs as one multi-document YAML stream, as `portcullis crds` prints it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(crd_files()?
        .into_values()
        .map(|yaml| format!("---\n{yaml}"))
        .collect())
}
