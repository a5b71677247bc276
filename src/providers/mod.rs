//! What the gateway knows about each provider type: default base URL, how its key is sent,
//! which auth forms it accepts, and which wire format it speaks.
//!
//! The OpenAI-compatible family shares one protocol and differs only in the data of its
//! [`ProviderInfo`] row; adding a provider of that family is a row in [`info`], not a module.

pub mod bedrock;

use crate::crd::ProviderType;
use crate::formats::Format;

/// Auth forms a provider type may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthForm {
    /// `auth.apiKey`.
    ApiKey,
    /// `auth.workloadIdentity`.
    WorkloadIdentity,
    /// `auth.serviceAccountKey`.
    ServiceAccountKey,
    /// `auth.none` (or no `auth` at all).
    None,
}

impl AuthForm {
    /// The field name users write.
    pub fn field(self) -> &'static str {
        match self {
            AuthForm::ApiKey => "apiKey",
            AuthForm::WorkloadIdentity => "workloadIdentity",
            AuthForm::ServiceAccountKey => "serviceAccountKey",
            AuthForm::None => "none",
        }
    }
}

/// How a static API key is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyHeader {
    /// `Authorization: Bearer {key}`.
    Bearer,
    /// `{name}: {key}` (`x-api-key`, `x-goog-api-key`, `api-key`).
    Named(&'static str),
}

/// The static facts of one provider type.
#[derive(Clone, Copy, Debug)]
pub struct ProviderInfo {
    /// Native wire format.
    pub format: Format,
    /// Public default base URL, if the type has one.
    pub default_base_url: Option<&'static str>,
    /// Environment variable that overrides the default base URL.
    pub base_url_env: Option<&'static str>,
    /// Auth forms accepted.
    pub auth_forms: &'static [AuthForm],
    /// How its API key is sent.
    pub key_header: KeyHeader,
    /// Environment variable holding an API key, for the embedded default configuration.
    pub key_env: Option<&'static str>,
    /// Whether the provider supports tool calling through chat completions.
    pub supports_tools: bool,
    /// Whether this build of the gateway can route to the type yet.
    pub implemented: bool,
}

const KEY: &[AuthForm] = &[AuthForm::ApiKey];
const KEY_OR_NONE: &[AuthForm] = &[AuthForm::None, AuthForm::ApiKey];

const fn openai_compatible(
    default_base_url: Option<&'static str>,
    key_env: Option<&'static str>,
) -> ProviderInfo {
    ProviderInfo {
        format: Format::OpenAi,
        default_base_url,
        base_url_env: None,
        auth_forms: KEY,
        key_header: KeyHeader::Bearer,
        key_env,
        supports_tools: true,
        implemented: true,
    }
}

/// The facts of a provider type.
pub fn info(provider_type: ProviderType) -> ProviderInfo {
    use ProviderType as T;
    match provider_type {
        T::Openai => openai_compatible(Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY")),
        T::Groq => openai_compatible(Some("https://api.groq.com/openai/v1"), Some("GROQ_API_KEY")),
        T::Xai => openai_compatible(Some("https://api.x.ai/v1"), Some("XAI_API_KEY")),
        T::Openrouter => openai_compatible(
            Some("https://openrouter.ai/api/v1"),
            Some("OPENROUTER_API_KEY"),
        ),
        T::Cerebras => {
            openai_compatible(Some("https://api.cerebras.ai/v1"), Some("CEREBRAS_API_KEY"))
        }
        T::Deepseek => openai_compatible(
            Some("https://api.deepseek.com/v1"),
            Some("DEEPSEEK_API_KEY"),
        ),
        T::Mistral => openai_compatible(Some("https://api.mistral.ai/v1"), Some("MISTRAL_API_KEY")),
        T::Minimax => openai_compatible(Some("https://api.minimax.io/v1"), Some("MINIMAX_API_KEY")),
        T::Perplexity => ProviderInfo {
            supports_tools: false,
            ..openai_compatible(
                Some("https://api.perplexity.ai"),
                Some("PERPLEXITY_API_KEY"),
            )
        },
        T::Zhipuai => openai_compatible(
            Some("https://open.bigmodel.cn/api/paas/v4"),
            Some("ZHIPUAI_API_KEY"),
        ),
        T::Vllm => ProviderInfo {
            base_url_env: Some("PORTCULLIS_VLLM_BASE_URL"),
            auth_forms: KEY_OR_NONE,
            ..openai_compatible(None, None)
        },
        T::Ollama => ProviderInfo {
            base_url_env: Some("PORTCULLIS_OLLAMA_BASE_URL"),
            auth_forms: KEY_OR_NONE,
            ..openai_compatible(Some("http://localhost:11434/v1"), None)
        },
        T::OpenaiCompatible => ProviderInfo {
            auth_forms: KEY_OR_NONE,
            ..openai_compatible(None, None)
        },
        T::Anthropic => ProviderInfo {
            format: Format::Anthropic,
            default_base_url: Some("https://api.anthropic.com"),
            base_url_env: None,
            auth_forms: &[AuthForm::ApiKey, AuthForm::WorkloadIdentity],
            key_header: KeyHeader::Named("x-api-key"),
            key_env: Some("ANTHROPIC_API_KEY"),
            supports_tools: true,
            implemented: true,
        },
        T::Gemini => ProviderInfo {
            format: Format::Gemini,
            default_base_url: Some("https://generativelanguage.googleapis.com"),
            base_url_env: None,
            auth_forms: KEY,
            key_header: KeyHeader::Named("x-goog-api-key"),
            key_env: Some("GEMINI_API_KEY"),
            supports_tools: true,
            implemented: true,
        },
        T::Vertexai => ProviderInfo {
            format: Format::Gemini,
            default_base_url: None,
            base_url_env: None,
            auth_forms: &[AuthForm::WorkloadIdentity, AuthForm::ServiceAccountKey],
            key_header: KeyHeader::Bearer,
            key_env: None,
            supports_tools: true,
            implemented: true,
        },
        T::Azure => ProviderInfo {
            format: Format::OpenAi,
            default_base_url: None,
            base_url_env: Some("PORTCULLIS_AZURE_OPENAI_BASE_URL"),
            auth_forms: &[AuthForm::ApiKey, AuthForm::WorkloadIdentity],
            key_header: KeyHeader::Named("api-key"),
            key_env: None,
            supports_tools: true,
            implemented: true,
        },
        T::Bedrock => ProviderInfo {
            format: Format::Bedrock,
            default_base_url: None,
            base_url_env: None,
            auth_forms: &[AuthForm::WorkloadIdentity, AuthForm::ApiKey],
            key_header: KeyHeader::Bearer,
            key_env: None,
            supports_tools: true,
            implemented: true,
        },
        T::Cohere => ProviderInfo {
            format: Format::Cohere,
            default_base_url: Some("https://api.cohere.com"),
            base_url_env: None,
            auth_forms: KEY,
            key_header: KeyHeader::Bearer,
            key_env: Some("COHERE_API_KEY"),
            supports_tools: true,
            implemented: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_implemented_type_has_a_base_url_source_or_requires_one() {
        for t in ProviderType::ALL {
            let i = info(t);
            assert!(!i.auth_forms.is_empty(), "{t} accepts no auth form");
            if i.implemented && i.format == Format::OpenAi && !matches!(t, ProviderType::Azure) {
                let required = matches!(t, ProviderType::Vllm | ProviderType::OpenaiCompatible);
                assert_eq!(i.default_base_url.is_none(), required, "{t}");
            }
        }
    }

    #[test]
    fn perplexity_has_no_tools() {
        assert!(!info(ProviderType::Perplexity).supports_tools);
        assert!(info(ProviderType::Groq).supports_tools);
    }
}
