//! AWS Bedrock facts: endpoint URLs per region, and which inference profiles a provider
//! serves after its `allowedProviders` / `allowedInferenceRegions` filters.
//!
//! A system-defined inference profile ID is `{region prefix}.{model provider}.{model}`
//! (`us.anthropic.claude-sonnet-4-20250514-v1:0`, `apac.amazon.nova-pro-v1:0`,
//! `global.anthropic.…`). The first segment is a region prefix unless it is itself a model
//! provider, so prefixes AWS adds later are recognised without a code change.

use url::Url;

/// Model providers on Bedrock (the segment after the region prefix of a profile ID).
pub const MODEL_PROVIDERS: &[&str] = &[
    "ai21",
    "amazon",
    "anthropic",
    "cohere",
    "deepseek",
    "google",
    "luma",
    "meta",
    "minimax",
    "mistral",
    "moonshot",
    "moonshotai",
    "nvidia",
    "openai",
    "qwen",
    "stability",
    "twelvelabs",
    "writer",
];

/// The Bedrock settings of one provider, compiled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Settings {
    /// AWS region (signing region and default endpoints).
    pub region: String,
    /// Control-plane base URL (`ListInferenceProfiles`, `ListFoundationModels`).
    pub control_plane_url: Url,
    /// Model providers served (lowercase); `None` = all.
    pub allowed_providers: Option<Vec<String>>,
    /// Inference-profile region prefixes served (lowercase); `None` = all.
    pub allowed_inference_regions: Option<Vec<String>>,
}

/// `https://bedrock-runtime.{region}.amazonaws.com`.
pub fn runtime_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// `https://bedrock.{region}.amazonaws.com`.
pub fn control_plane_url(region: &str) -> String {
    format!("https://bedrock.{region}.amazonaws.com")
}

/// Whether a native path belongs to the control plane (`GET /inference-profiles`,
/// `GET /foundation-models`) rather than the runtime.
pub fn is_control_plane(rest: &str) -> bool {
    matches!(
        rest.split('/').next(),
        Some("inference-profiles" | "foundation-models")
    )
}

/// An AWS region name: lowercase letters, digits and dashes (`us-east-1`, `eu-central-2`).
pub fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

/// `(region prefix, model provider)` of a profile (or model) ID.
pub fn split_profile_id(id: &str) -> (Option<String>, String) {
    let mut segments = id.split('.');
    let first = segments.next().unwrap_or("").to_ascii_lowercase();
    if MODEL_PROVIDERS.contains(&first.as_str()) {
        return (None, first);
    }
    match segments.next() {
        Some(provider) => (Some(first), provider.to_ascii_lowercase()),
        None => (None, first),
    }
}

/// Whether an allowed region matches a profile's region prefix: equal, or `ap` for `apac`.
fn region_matches(allowed: &str, prefix: &str) -> bool {
    allowed == prefix || (allowed == "ap" && prefix == "apac")
}

impl Settings {
    /// Whether a profile passes the provider and region filters.
    pub fn admits(&self, profile_id: &str) -> bool {
        let (region, provider) = split_profile_id(profile_id);
        let provider_ok = self
            .allowed_providers
            .as_ref()
            .is_none_or(|allowed| allowed.contains(&provider));
        let region_ok = self
            .allowed_inference_regions
            .as_ref()
            .is_none_or(|allowed| {
                region
                    .as_deref()
                    .is_some_and(|r| allowed.iter().any(|a| region_matches(a, r)))
            });
        provider_ok && region_ok
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(providers: Option<&[&str]>, regions: Option<&[&str]>) -> Settings {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        Settings {
            region: "us-east-1".into(),
            control_plane_url: Url::parse(&control_plane_url("us-east-1")).unwrap(),
            allowed_providers: list(providers),
            allowed_inference_regions: list(regions),
        }
    }

    #[test]
    fn splits_region_prefixes_known_and_new() {
        assert_eq!(
            split_profile_id("us.anthropic.claude-sonnet-4-20250514-v1:0"),
            (Some("us".into()), "anthropic".into())
        );
        assert_eq!(
            split_profile_id("apac.amazon.nova-pro-v1:0"),
            (Some("apac".into()), "amazon".into())
        );
        assert_eq!(
            split_profile_id("mars.deepseek.r1-v1:0"),
            (Some("mars".into()), "deepseek".into())
        );
        assert_eq!(
            split_profile_id("amazon.nova-pro-v1:0"),
            (None, "amazon".into())
        );
    }

    #[test]
    fn filters() {
        let s = settings(
            Some(&["anthropic", "amazon"]),
            Some(&["us", "ap", "global"]),
        );
        assert!(s.admits("us.anthropic.claude-3-haiku-20240307-v1:0"));
        assert!(s.admits("apac.amazon.nova-lite-v1:0"));
        assert!(s.admits("global.anthropic.claude-sonnet-4-5-20250929-v1:0"));
        assert!(!s.admits("eu.anthropic.claude-3-haiku-20240307-v1:0"));
        assert!(!s.admits("us.meta.llama3-2-90b-instruct-v1:0"));
        assert!(!s.admits("amazon.nova-pro-v1:0"), "no region prefix");
        let all = settings(None, None);
        assert!(all.admits("eu.meta.llama3-2-90b-instruct-v1:0"));
    }

    #[test]
    fn regions() {
        assert!(valid_region("us-east-1"));
        assert!(!valid_region("us-east-1.evil.com/"));
        assert!(!valid_region(""));
        assert!(!valid_region("US-EAST-1"));
    }
}
