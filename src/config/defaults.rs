//! The embedded default configuration: what `portcullis serve` runs with no `--config` and no
//! cluster. A proxy `default` (namespace `default`) with the local Ollama provider, plus one
//! provider per `*_API_KEY` variable found in the environment, plus Vertex AI when
//! `PORTCULLIS_VERTEX_PROJECT` and `PORTCULLIS_VERTEX_LOCATION` are set, Azure OpenAI when
//! `PORTCULLIS_AZURE_OPENAI_BASE_URL` is (keyless, or `AZURE_OPENAI_API_KEY`), and Bedrock with
//! the ambient AWS credentials when `PORTCULLIS_BEDROCK_REGION` is.
//!
//! It is built as ordinary objects and goes through the same `compile()` as any manifest.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Object, ObjectKey, SecretData};
/// Adds a Bedrock provider (AWS default credential chain) in this region.
pub const BEDROCK_REGION_ENV: &str = "PORTCULLIS_BEDROCK_REGION";

use crate::crd::{
    BedrockSpec, Empty, LlmProvider, LlmProviderSpec, LlmProxy, LlmProxySpec, LocalObjectRef,
    ProviderAuth, ProviderType, ProxyProvider, SecretKeyRef, SecretKeySource, VertexAiSpec,
};
use crate::providers;

/// Namespace and name of the embedded proxy.
pub const NAMESPACE: &str = "default";
/// Name of the embedded proxy.
pub const PROXY: &str = "default";

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

fn provider(t: ProviderType, auth: ProviderAuth) -> LlmProvider {
    LlmProvider::new(
        t.as_str(),
        LlmProviderSpec {
            provider_type: t,
            base_url: None,
            auth: Some(auth),
            models: None,
            timeout: None,
            bedrock: None,
            vertexai: None,
            azure: None,
            openrouter: None,
            pricing: None,
            passthrough: None,
        },
    )
}

/// The embedded objects, given a way to read environment variables.
pub fn objects(env: impl Fn(&str) -> Option<String>) -> Vec<Object> {
    let mut objects = Vec::new();
    let mut entries = Vec::new();
    let mut keys = BTreeMap::new();

    let mut ollama = provider(
        ProviderType::Ollama,
        ProviderAuth {
            none: Some(Empty {}),
            ..ProviderAuth::default()
        },
    );
    ollama.metadata = meta("ollama");
    objects.push(Object::Provider(std::sync::Arc::new(ollama)));
    entries.push("ollama");

    for t in ProviderType::ALL {
        let info = providers::info(t);
        let (Some(var), true) = (info.key_env, info.implemented) else {
            continue;
        };
        let Some(value) = env(var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let name = t.as_str();
        keys.insert(name.to_owned(), value.into_bytes());
        let mut p = provider(
            t,
            ProviderAuth {
                api_key: Some(SecretKeySource {
                    secret_ref: SecretKeyRef {
                        name: "portcullis-env-keys".to_owned(),
                        key: Some(name.to_owned()),
                    },
                }),
                ..ProviderAuth::default()
            },
        );
        p.metadata = meta(name);
        objects.push(Object::Provider(std::sync::Arc::new(p)));
        entries.push(name);
    }
    // Cloud providers only when asked: ambient cloud identity is never picked up by itself.
    if let (Some(project), Some(location)) = (
        env("PORTCULLIS_VERTEX_PROJECT").filter(|v| !v.trim().is_empty()),
        env("PORTCULLIS_VERTEX_LOCATION").filter(|v| !v.trim().is_empty()),
    ) {
        let mut p = provider(
            ProviderType::Vertexai,
            ProviderAuth {
                workload_identity: Some(Empty {}),
                ..ProviderAuth::default()
            },
        );
        p.spec.vertexai = Some(VertexAiSpec {
            project: project.trim().to_owned(),
            location: location.trim().to_owned(),
        });
        p.metadata = meta("vertexai");
        objects.push(Object::Provider(std::sync::Arc::new(p)));
        entries.push("vertexai");
    }
    if env("PORTCULLIS_AZURE_OPENAI_BASE_URL").is_some_and(|v| !v.trim().is_empty()) {
        // The base URL itself comes from the same variable through `Defaults`.
        let auth = match env("AZURE_OPENAI_API_KEY").filter(|v| !v.trim().is_empty()) {
            Some(key) => {
                keys.insert("azure".to_owned(), key.into_bytes());
                ProviderAuth {
                    api_key: Some(SecretKeySource {
                        secret_ref: SecretKeyRef {
                            name: "portcullis-env-keys".to_owned(),
                            key: Some("azure".to_owned()),
                        },
                    }),
                    ..ProviderAuth::default()
                }
            }
            None => ProviderAuth {
                workload_identity: Some(Empty {}),
                ..ProviderAuth::default()
            },
        };
        let mut p = provider(ProviderType::Azure, auth);
        p.metadata = meta("azure");
        objects.push(Object::Provider(std::sync::Arc::new(p)));
        entries.push("azure");
    }
    if let Some(region) = env(BEDROCK_REGION_ENV).filter(|v| !v.trim().is_empty()) {
        let mut p = provider(
            ProviderType::Bedrock,
            ProviderAuth {
                workload_identity: Some(Empty {}),
                ..ProviderAuth::default()
            },
        );
        p.spec.bedrock = Some(BedrockSpec {
            region: region.trim().to_owned(),
            ..BedrockSpec::default()
        });
        p.metadata = meta("bedrock");
        objects.push(Object::Provider(std::sync::Arc::new(p)));
        entries.push("bedrock");
    }
    objects.push(Object::Secret(
        ObjectKey::new(NAMESPACE, "portcullis-env-keys"),
        SecretData(keys),
    ));

    let mut proxy = LlmProxy::new(
        PROXY,
        LlmProxySpec {
            providers: entries
                .into_iter()
                .map(|name| ProxyProvider {
                    provider_ref: LocalObjectRef {
                        name: name.to_owned(),
                    },
                    prefix: None,
                })
                .collect(),
            default_model: None,
            models: None,
            retry: None,
            client_auth: None,
            access: None,
            tools: None,
            audit: None,
        },
    );
    proxy.metadata = meta(PROXY);
    objects.push(Object::Proxy(std::sync::Arc::new(proxy)));
    objects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Defaults, Index, compile};

    #[test]
    fn default_serves_ollama_and_each_key_found() {
        let env = |k: &str| match k {
            "OPENAI_API_KEY" => Some("sk-1".to_owned()),
            "GROQ_API_KEY" => Some("gsk".to_owned()),
            "MISTRAL_API_KEY" => Some("  ".to_owned()),
            _ => None,
        };
        let compiled = compile(&Index::from_objects(objects(env)), &Defaults::default());
        assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        let table = &compiled.proxies[&ObjectKey::new("default", "default")];
        let prefixes: Vec<_> = table.routes.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, ["ollama", "openai", "groq"]);
        assert_eq!(
            table.routes[0].upstream.base_url.as_str(),
            "http://localhost:11434/v1"
        );
    }

    #[test]
    fn cloud_providers_only_when_asked() {
        let env = |k: &str| match k {
            "PORTCULLIS_VERTEX_PROJECT" => Some("proj".to_owned()),
            "PORTCULLIS_VERTEX_LOCATION" => Some("global".to_owned()),
            "PORTCULLIS_AZURE_OPENAI_BASE_URL" => Some("https://r.openai.azure.com".to_owned()),
            _ => None,
        };
        let mut defaults = Defaults::default();
        defaults
            .base_urls
            .insert(ProviderType::Azure, "https://r.openai.azure.com".to_owned());
        let compiled = compile(&Index::from_objects(objects(env)), &defaults);
        assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        let table = &compiled.proxies[&ObjectKey::new("default", "default")];
        let prefixes: Vec<_> = table.routes.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, ["ollama", "vertexai", "azure"]);
        assert_eq!(
            table.routes[1].upstream.base_url.as_str(),
            "https://aiplatform.googleapis.com/"
        );
        let only_project = |k: &str| (k == "PORTCULLIS_VERTEX_PROJECT").then(|| "p".to_owned());
        let compiled = compile(
            &Index::from_objects(objects(only_project)),
            &Defaults::default(),
        );
        assert_eq!(
            compiled.proxies[&ObjectKey::new("default", "default")]
                .routes
                .len(),
            1
        );
    }

    #[test]
    fn anthropic_gemini_and_cohere_keys_become_providers() {
        let env = |k: &str| match k {
            "ANTHROPIC_API_KEY" => Some("sk-ant-1".to_owned()),
            "GEMINI_API_KEY" => Some("AIza-1".to_owned()),
            "COHERE_API_KEY" => Some("co-1".to_owned()),
            _ => None,
        };
        let compiled = compile(&Index::from_objects(objects(env)), &Defaults::default());
        assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        let table = &compiled.proxies[&ObjectKey::new("default", "default")];
        let routes: Vec<_> = table
            .routes
            .iter()
            .map(|r| {
                (
                    r.prefix.as_str(),
                    r.upstream.base_url.as_str().trim_end_matches('/'),
                    format!("{:?}", r.upstream.credential),
                )
            })
            .collect();
        assert_eq!(
            routes,
            [
                ("ollama", "http://localhost:11434/v1", "None".to_owned()),
                (
                    "anthropic",
                    "https://api.anthropic.com",
                    "Header(x-api-key: <redacted>)".to_owned()
                ),
                (
                    "gemini",
                    "https://generativelanguage.googleapis.com",
                    "Header(x-goog-api-key: <redacted>)".to_owned()
                ),
                (
                    "cohere",
                    "https://api.cohere.com",
                    "Header(authorization: <redacted>)".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn bedrock_region_adds_a_keyless_bedrock_provider() {
        let env = |k: &str| (k == BEDROCK_REGION_ENV).then(|| "eu-central-1".to_owned());
        let compiled = compile(&Index::from_objects(objects(env)), &Defaults::default());
        assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        let table = &compiled.proxies[&ObjectKey::new("default", "default")];
        let route = table.route("bedrock").map(|r| r.upstream.clone());
        let upstream = route.unwrap_or_else(|| panic!("no bedrock route"));
        assert_eq!(
            upstream.base_url.as_str(),
            "https://bedrock-runtime.eu-central-1.amazonaws.com/"
        );
        assert!(upstream.credential.needs_body());
    }

    #[test]
    fn ollama_url_override() {
        let mut defaults = Defaults::default();
        defaults
            .base_urls
            .insert(ProviderType::Ollama, "http://127.0.0.1:9/v1".to_owned());
        let compiled = compile(&Index::from_objects(objects(|_| None)), &defaults);
        let table = &compiled.proxies[&ObjectKey::new("default", "default")];
        assert_eq!(
            table.routes[0].upstream.base_url.as_str(),
            "http://127.0.0.1:9/v1"
        );
    }
}
