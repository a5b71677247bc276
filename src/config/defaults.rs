//! The embedded default configuration: what `portcullis serve` runs with no `--config` and no
//! cluster. A proxy `default` (namespace `default`) with the local Ollama provider, plus one
//! provider per `*_API_KEY` variable found in the environment.
//!
//! It is built as ordinary objects and goes through the same `compile()` as any manifest.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Object, ObjectKey, SecretData};
use crate::crd::{
    Empty, LlmProvider, LlmProviderSpec, LlmProxy, LlmProxySpec, LocalObjectRef, ProviderAuth,
    ProviderType, ProxyProvider, SecretKeyRef, SecretKeySource,
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
    objects.push(Object::Provider(Box::new(ollama)));
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
        objects.push(Object::Provider(Box::new(p)));
        entries.push(name);
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
            client_auth: None,
            access: None,
            tools: None,
            audit: None,
        },
    );
    proxy.metadata = meta(PROXY);
    objects.push(Object::Proxy(Box::new(proxy)));
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
