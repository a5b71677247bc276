//! The compile rules of the cloud provider types (part of the pure `compile()`): Vertex AI
//! project/location and default base URL, Azure URL styles and Entra scopes, Claude on
//! Foundry, and the keyless credentials they use.
//!
//! Nothing here does I/O: a credential is only described (source, scope) and shares the token
//! cache of an unchanged credential of the running configuration; tokens are minted on first
//! use by `crate::credentials`.

use url::Url;

use super::compile::Problems;
use super::snapshot::Cloud;
use super::{Index, ObjectKey};
use crate::crd::{LlmProviderSpec, ProviderAuth, ProviderType};
use crate::credentials::Credential;
use crate::credentials::azure::{AI_FOUNDRY_SCOPE, COGNITIVE_SERVICES_SCOPE, EntraToken};
use crate::credentials::gcp::{GcpSource, GcpToken, parse_service_account_key};
use crate::providers::AuthForm;

/// `api-version` for Azure deployment URLs when `spec.azure.apiVersion` is not set.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

/// Whether an Azure base URL is a Foundry v1 URL (path ends in `/openai/v1`).
pub fn is_azure_v1(base: &Url) -> bool {
    base.path().trim_end_matches('/').ends_with("/openai/v1")
}

/// Whether an Anthropic base URL is a Claude-on-Foundry URL (path ends in `/anthropic`, as
/// `https://{resource}.services.ai.azure.com/anthropic` does).
pub fn is_foundry_anthropic(base: &Url) -> bool {
    base.path().trim_end_matches('/').ends_with("/anthropic")
}

/// Vertex AI's regional endpoint for `spec.vertexai.location` (the `global` location has no
/// region prefix).
pub fn default_base_url(spec: &LlmProviderSpec) -> Option<String> {
    if spec.provider_type != ProviderType::Vertexai {
        return None;
    }
    let location = spec.vertexai.as_ref()?.location.trim();
    if !valid_gcp_name(location) {
        return None;
    }
    Some(if location == "global" {
        "https://aiplatform.googleapis.com".to_owned()
    } else {
        format!("https://{location}-aiplatform.googleapis.com")
    })
}

/// Lowercase letters, digits and `-` (GCP project IDs and locations).
fn valid_gcp_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The cloud addressing of a provider; problems for missing or malformed settings.
pub(super) fn settings(p: &mut Problems, spec: &LlmProviderSpec, base: &Url) -> Cloud {
    match spec.provider_type {
        ProviderType::Vertexai => match &spec.vertexai {
            None => {
                p.add(
                    "spec.vertexai",
                    "InvalidSpec",
                    "type vertexai needs spec.vertexai.project and spec.vertexai.location",
                );
                Cloud::None
            }
            Some(v) => {
                let (project, location) = (v.project.trim(), v.location.trim());
                let mut ok = true;
                for (value, field, what) in [
                    (
                        project,
                        "spec.vertexai.project",
                        "a project ID such as `my-project`",
                    ),
                    (
                        location,
                        "spec.vertexai.location",
                        "a location such as `us-central1` or `global`",
                    ),
                ] {
                    if !valid_gcp_name(value) {
                        ok = false;
                        p.add(
                            field,
                            "InvalidSpec",
                            format!("`{value}` is not {what} (lowercase letters, digits, `-`)"),
                        );
                    }
                }
                if ok {
                    Cloud::Vertex {
                        project: project.to_owned(),
                        location: location.to_owned(),
                    }
                } else {
                    Cloud::None
                }
            }
        },
        ProviderType::Azure => {
            let azure = spec.azure.clone().unwrap_or_default();
            let api_version = azure
                .api_version
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .unwrap_or(DEFAULT_AZURE_API_VERSION)
                .to_owned();
            if !api_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
            {
                p.add(
                    "spec.azure.apiVersion",
                    "InvalidSpec",
                    format!("`{api_version}` is not an api-version such as `2024-10-21`"),
                );
            }
            Cloud::Azure {
                v1: is_azure_v1(base),
                api_version,
            }
        }
        _ => Cloud::None,
    }
}

/// A minted credential goes only to its cloud's own service domains or to a host the operator
/// trusts (`defaults.identity`), and an Entra token only for an allowed scope: otherwise the
/// provider is a problem, so it is never served (the credential layer checks the host again
/// at send time). Bedrock's control-plane URL (discovery) is held to the same rule.
pub(super) fn guard_identity(
    p: &mut Problems,
    credential: &Credential,
    base: &Url,
    bedrock: Option<&crate::providers::bedrock::Settings>,
    defaults: &super::Defaults,
) {
    let Some(cloud) = credential.cloud() else {
        return;
    };
    let policy = &defaults.identity;
    let mut urls = vec![("spec.baseUrl", base)];
    if let Some(b) = bedrock {
        urls.push(("spec.bedrock.controlPlaneUrl", &b.control_plane_url));
    }
    for (field, url) in urls {
        if !policy.allows(cloud, url) {
            p.add(
                field,
                "UntrustedIdentityHost",
                format!(
                    "`{}` is not a host of the cloud's own service ({}, over https) nor one the operator                      trusts (--trusted-identity-hosts / PORTCULLIS_TRUSTED_IDENTITY_HOSTS: {}); the                      gateway's {} identity is never sent there. Point {field} at the cloud's endpoint,                      use auth.apiKey, or ask the operator to trust the host",
                    url.host_str().unwrap_or_default(),
                    cloud.describe(),
                    policy.describe_hosts(),
                    cloud.name(),
                ),
            );
        }
    }
    if let Credential::Entra(token) = credential
        && !policy.allows_azure_scope(token.scope())
    {
        p.add(
            "spec.azure.scope",
            "UntrustedIdentityScope",
            format!(
                "the Entra scope `{}` is not allowed: the gateway mints tokens only for {}                  (the operator can allow more with --allowed-azure-scopes)",
                token.scope(),
                policy.describe_azure_scopes(),
            ),
        );
    }
}

/// The keyless credential of a Vertex AI, Azure or Claude-on-Foundry provider.
#[allow(clippy::too_many_arguments)]
pub(super) fn credential(
    p: &mut Problems,
    key: &ObjectKey,
    index: &Index,
    t: ProviderType,
    form: AuthForm,
    auth: &ProviderAuth,
    spec: &LlmProviderSpec,
    base: Option<&Url>,
) -> Credential {
    match (t, form) {
        (ProviderType::Vertexai, AuthForm::WorkloadIdentity) => {
            Credential::Gcp(GcpToken::shared(GcpSource::Adc))
        }
        (ProviderType::Vertexai, AuthForm::ServiceAccountKey) => {
            let Some(source) = &auth.service_account_key else {
                return Credential::None;
            };
            let field = "spec.auth.serviceAccountKey.secretRef";
            let secret_key = ObjectKey::new(&key.namespace, &source.secret_ref.name);
            let data_key = source.secret_ref.key.as_deref().unwrap_or("key.json");
            let Some(data) = index.secret(&secret_key) else {
                p.add(
                    field,
                    "SecretNotFound",
                    format!(
                        "Secret {secret_key} not found; create it with the key `{data_key}` holding the JSON key file"
                    ),
                );
                return Credential::None;
            };
            let Some(bytes) = data.0.get(data_key) else {
                p.add(
                    field,
                    "SecretKeyNotFound",
                    format!("Secret {secret_key} has no key `{data_key}`"),
                );
                return Credential::None;
            };
            match parse_service_account_key(bytes) {
                Ok(json) => Credential::Gcp(GcpToken::shared(GcpSource::ServiceAccountKey(json))),
                Err(e) => {
                    p.add(
                        field,
                        "InvalidSecret",
                        format!("key `{data_key}` of Secret {secret_key} {e}"),
                    );
                    Credential::None
                }
            }
        }
        (ProviderType::Azure, AuthForm::WorkloadIdentity) => {
            let scope = spec
                .azure
                .as_ref()
                .and_then(|a| a.scope.as_deref())
                .map(str::trim)
                .filter(|s| !s.is_empty());
            let scope = match (scope, base) {
                (Some(scope), _) => scope.to_owned(),
                (None, Some(base)) if is_azure_v1(base) => AI_FOUNDRY_SCOPE.to_owned(),
                (None, _) => COGNITIVE_SERVICES_SCOPE.to_owned(),
            };
            if scope.chars().any(char::is_whitespace) {
                p.add(
                    "spec.azure.scope",
                    "InvalidSpec",
                    "a scope is one URI such as `https://cognitiveservices.azure.com/.default`",
                );
            }
            Credential::Entra(EntraToken::shared(scope))
        }
        (ProviderType::Anthropic, AuthForm::WorkloadIdentity) => match base {
            Some(base) if is_foundry_anthropic(base) => {
                Credential::Entra(EntraToken::shared(AI_FOUNDRY_SCOPE))
            }
            Some(_) => {
                p.add(
                    "spec.auth.workloadIdentity",
                    "UnsupportedAuth",
                    "type anthropic takes workloadIdentity only for Claude on Azure AI Foundry: set \
                     spec.baseUrl to the resource's `/anthropic` URL \
                     (https://{resource}.services.ai.azure.com/anthropic), or use auth.apiKey",
                );
                Credential::None
            }
            None => Credential::None,
        },
        _ => {
            p.add(
                format!("spec.auth.{}", form.field()),
                "UnsupportedAuth",
                format!("type `{t}` does not take auth.{}", form.field()),
            );
            Credential::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compiled, Defaults, compile};
    use crate::source::files::parse;

    fn run(spec: &str, extra: &str) -> Compiled {
        run_with(spec, extra, &Defaults::default())
    }

    fn run_with(spec: &str, extra: &str, defaults: &Defaults) -> Compiled {
        let yaml = format!(
            "{extra}apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {{name: p, namespace: ai}}\nspec: {spec}\n---\napiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {{name: x, namespace: ai}}\nspec: {{providers: [{{providerRef: {{name: p}}}}]}}\n"
        );
        let objects = parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
        compile(&Index::from_objects(objects), defaults)
    }

    fn trusting(hosts: &[&str], scopes: &[&str]) -> Defaults {
        Defaults {
            identity: crate::credentials::trust::IdentityPolicy::new(hosts, scopes)
                .unwrap_or_else(|e| panic!("{e}")),
            ..Defaults::default()
        }
    }

    fn upstream(c: &Compiled) -> std::sync::Arc<crate::config::Upstream> {
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        c.proxies[&ObjectKey::new("ai", "x")].routes[0]
            .upstream
            .clone()
    }

    fn reasons(c: &Compiled) -> Vec<(&str, &str)> {
        c.problems
            .iter()
            .filter(|p| p.kind == "LlmProvider")
            .map(|p| (p.field.as_str(), p.reason))
            .collect()
    }

    #[test]
    fn vertex_needs_project_and_location_and_derives_its_url() {
        let u = upstream(&run(
            "{type: vertexai, vertexai: {project: proj, location: europe-west4}, auth: {workloadIdentity: {}}}",
            "",
        ));
        assert_eq!(
            u.base_url.as_str(),
            "https://europe-west4-aiplatform.googleapis.com/"
        );
        assert_eq!(
            u.vertex_path("gemini-2.5-pro", true),
            "v1/projects/proj/locations/europe-west4/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert!(matches!(u.credential, Credential::Gcp(_)));
        let c = run(
            "{type: vertexai, baseUrl: \"http://127.0.0.1:1\", auth: {workloadIdentity: {}}}",
            "",
        );
        assert_eq!(reasons(&c)[0], ("spec.vertexai", "InvalidSpec"));
        let c = run(
            "{type: vertexai, baseUrl: \"http://127.0.0.1:1\", vertexai: {project: \"a/b\", location: x}, auth: {workloadIdentity: {}}}",
            "",
        );
        assert_eq!(reasons(&c)[0], ("spec.vertexai.project", "InvalidSpec"));
        let c = run(
            "{type: vertexai, vertexai: {project: p, location: global}, auth: {apiKey: {secretRef: {name: k}}}}",
            "",
        );
        assert_eq!(reasons(&c)[0], ("spec.auth.apiKey", "UnsupportedAuth"));
    }

    #[test]
    fn service_account_keys_come_from_secrets() {
        let c = run(
            "{type: vertexai, vertexai: {project: p, location: global}, auth: {serviceAccountKey: {secretRef: {name: sa}}}}",
            "",
        );
        assert_eq!(
            reasons(&c)[0],
            ("spec.auth.serviceAccountKey.secretRef", "SecretNotFound")
        );
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: sa, namespace: ai}\nstringData:\n  key.json: '{\"type\": \"service_account\", \"client_email\": \"a@b\", \"private_key\": \"k\"}'\n---\n";
        let u = upstream(&run(
            "{type: vertexai, vertexai: {project: p, location: global}, auth: {serviceAccountKey: {secretRef: {name: sa}}}}",
            secret,
        ));
        assert_eq!(u.base_url.as_str(), "https://aiplatform.googleapis.com/");
        assert!(matches!(u.credential, Credential::Gcp(_)));
    }

    #[test]
    fn azure_scopes_and_urls_follow_the_url_style() {
        let u = upstream(&run(
            "{type: azure, baseUrl: \"https://r.openai.azure.com\", auth: {workloadIdentity: {}}}",
            "",
        ));
        match &u.credential {
            Credential::Entra(t) => assert_eq!(t.scope(), COGNITIVE_SERVICES_SCOPE),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            u.chat_url("gpt-4o").as_deref(),
            Some(
                "https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
            )
        );
        assert_eq!(u.chat_url("../x"), None);
        let u = upstream(&run(
            "{type: azure, baseUrl: \"https://r.services.ai.azure.com/openai/v1\", auth: {workloadIdentity: {}}}",
            "",
        ));
        match &u.credential {
            Credential::Entra(t) => assert_eq!(t.scope(), AI_FOUNDRY_SCOPE),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            u.chat_url("gpt-4o").as_deref(),
            Some("https://r.services.ai.azure.com/openai/v1/chat/completions")
        );
        let custom = "{type: azure, baseUrl: \"https://r.openai.azure.com\", azure: {apiVersion: 2025-01-01-preview, scope: \"api://custom/.default\"}, auth: {workloadIdentity: {}}}";
        let c = run(custom, "");
        assert_eq!(
            reasons(&c),
            [("spec.azure.scope", "UntrustedIdentityScope")]
        );
        assert!(c.problems[0].message.contains("--allowed-azure-scopes"));
        let u = upstream(&run_with(
            custom,
            "",
            &trusting(&[], &["api://custom/.default"]),
        ));
        match &u.credential {
            Credential::Entra(t) => assert_eq!(t.scope(), "api://custom/.default"),
            other => panic!("{other:?}"),
        }
        assert!(
            u.chat_url("d")
                .is_some_and(|x| x.ends_with("api-version=2025-01-01-preview"))
        );
        let c = run("{type: azure, auth: {workloadIdentity: {}}}", "");
        assert_eq!(reasons(&c)[0], ("spec.baseUrl", "InvalidBaseUrl"));
    }

    #[test]
    fn claude_on_foundry_is_recognised_by_its_url() {
        let u = upstream(&run(
            "{type: anthropic, baseUrl: \"https://r.services.ai.azure.com/anthropic\", auth: {workloadIdentity: {}}}",
            "",
        ));
        match &u.credential {
            Credential::Entra(t) => assert_eq!(t.scope(), AI_FOUNDRY_SCOPE),
            other => panic!("{other:?}"),
        }
        let c = run("{type: anthropic, auth: {workloadIdentity: {}}}", "");
        assert_eq!(
            reasons(&c)[0],
            ("spec.auth.workloadIdentity", "UnsupportedAuth")
        );
    }

    #[test]
    fn minted_credentials_only_to_their_cloud_or_trusted_hosts() {
        let cases = [
            "{type: vertexai, baseUrl: \"https://anywhere.example\", vertexai: {project: p, location: global}, auth: {workloadIdentity: {}}}",
            "{type: vertexai, baseUrl: \"http://127.0.0.1:8080\", vertexai: {project: p, location: global}, auth: {workloadIdentity: {}}}",
            "{type: azure, baseUrl: \"https://r.openai.azure.com.evil.example\", auth: {workloadIdentity: {}}}",
            "{type: azure, baseUrl: \"https://aiplatform.googleapis.com\", auth: {workloadIdentity: {}}}",
            "{type: anthropic, baseUrl: \"http://127.0.0.1:9/anthropic\", auth: {workloadIdentity: {}}}",
            "{type: bedrock, baseUrl: \"http://127.0.0.1:9\", bedrock: {region: us-east-1}, auth: {workloadIdentity: {}}}",
        ];
        for spec in cases {
            let c = run(spec, "");
            assert_eq!(
                reasons(&c),
                [("spec.baseUrl", "UntrustedIdentityHost")],
                "{spec}"
            );
            let m = &c.problems[0].message;
            assert!(
                m.contains("--trusted-identity-hosts") && m.contains("never sent"),
                "{m}"
            );
            assert!(c.proxies.is_empty(), "{spec}");
        }
        let c = run(
            "{type: bedrock, bedrock: {region: us-east-1, controlPlaneUrl: \"https://evil.example\"}, auth: {workloadIdentity: {}}}",
            "",
        );
        assert_eq!(
            reasons(&c),
            [("spec.bedrock.controlPlaneUrl", "UntrustedIdentityHost")]
        );
        // The operator can name a host (here any port of 127.0.0.1).
        let trusted = trusting(&["127.0.0.1"], &[]);
        for spec in &cases[1..] {
            if spec.contains("evil") || spec.contains("googleapis") {
                continue;
            }
            let c = run_with(spec, "", &trusted);
            assert!(c.problems.is_empty(), "{spec}: {:?}", c.problems);
        }
        // API keys go wherever their provider points.
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: k, namespace: ai}\nstringData: {apiKey: sk-1}\n---\n";
        for spec in [
            "{type: azure, baseUrl: \"https://anywhere.example\", auth: {apiKey: {secretRef: {name: k}}}}",
            "{type: vllm, baseUrl: \"http://10.0.0.1:8000/v1\", auth: {apiKey: {secretRef: {name: k}}}}",
            "{type: openai-compatible, baseUrl: \"https://llm.example/v1\", auth: {apiKey: {secretRef: {name: k}}}}",
        ] {
            let c = run(spec, secret);
            assert!(c.problems.is_empty(), "{spec}: {:?}", c.problems);
        }
    }

    #[test]
    fn url_styles() {
        let u = |s: &str| Url::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(is_azure_v1(&u("https://r.openai.azure.com/openai/v1")));
        assert!(is_azure_v1(&u(
            "https://r.services.ai.azure.com/openai/v1/"
        )));
        assert!(!is_azure_v1(&u("https://r.openai.azure.com")));
        assert!(is_foundry_anthropic(&u(
            "https://r.services.ai.azure.com/anthropic"
        )));
        assert!(!is_foundry_anthropic(&u("https://api.anthropic.com")));
    }
}
