//! Authorisation: which identities reach which provider-qualified models (Model Router) and
//! which prefixes (native routes). Pure.

use globset::{Glob, GlobMatcher, GlobSet};

use super::PolicyProblem;
use crate::crd::AccessRuleSpec;

/// One compiled `spec.access` rule.
#[derive(Clone, Debug)]
pub struct AccessRule {
    identities: GlobSet,
    models: GlobSet,
    /// For native routes: the prefix part of each model pattern (before the first `:`; the
    /// whole pattern when it has none).
    prefixes: Vec<GlobMatcher>,
}

/// Compile one rule.
pub fn compile(
    rule: &AccessRuleSpec,
    field: &str,
    problems: &mut Vec<PolicyProblem>,
) -> AccessRule {
    if rule.identities.is_empty() || rule.models.is_empty() {
        problems.push((
            field.to_owned(),
            "InvalidSpec",
            "an access rule needs at least one pattern in `identities` and in `models`".to_owned(),
        ));
    }
    let identities = super::globs(&rule.identities, &format!("{field}.identities"), problems);
    let models = super::globs(&rule.models, &format!("{field}.models"), problems);
    let prefixes = rule
        .models
        .iter()
        .filter_map(|m| {
            let m = m.trim();
            let prefix = m.split_once(':').map_or(m, |(p, _)| p);
            Glob::new(prefix).ok().map(|g| g.compile_matcher())
        })
        .collect();
    AccessRule {
        identities,
        models,
        prefixes,
    }
}

/// Whether `identity` may use the provider-qualified `model` (`prefix:model`).
pub fn permits_model(rules: &[AccessRule], identity: &str, model: &str) -> bool {
    rules.is_empty()
        || rules
            .iter()
            .any(|r| r.identities.is_match(identity) && r.models.is_match(model))
}

/// Whether `identity` may use the native route of `prefix`.
pub fn permits_prefix(rules: &[AccessRule], identity: &str, prefix: &str) -> bool {
    rules.is_empty()
        || rules.iter().any(|r| {
            r.identities.is_match(identity) && r.prefixes.iter().any(|p| p.is_match(prefix))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(specs: &[(&[&str], &[&str])]) -> Vec<AccessRule> {
        let mut problems = Vec::new();
        let out = specs
            .iter()
            .map(|(ids, models)| {
                compile(
                    &AccessRuleSpec {
                        identities: ids.iter().map(|s| s.to_string()).collect(),
                        models: models.iter().map(|s| s.to_string()).collect(),
                    },
                    "spec.access[0]",
                    &mut problems,
                )
            })
            .collect();
        assert!(problems.is_empty(), "{problems:?}");
        out
    }

    #[test]
    fn no_rules_permit_everything() {
        assert!(permits_model(&[], "anyone", "openai:gpt-5"));
        assert!(permits_prefix(&[], "anyone", "openai"));
    }

    #[test]
    fn identities_reach_only_their_models_and_prefixes() {
        let r = rules(&[
            (&["team-a-*"], &["openai:gpt-5*", "anthropic:*"]),
            (&["system:serviceaccount:ai:*"], &["*"]),
        ]);
        assert!(permits_model(&r, "team-a-bot", "openai:gpt-5-mini"));
        assert!(!permits_model(&r, "team-a-bot", "openai:o3"));
        assert!(!permits_model(&r, "team-b", "openai:gpt-5-mini"));
        assert!(permits_model(
            &r,
            "system:serviceaccount:ai:agent",
            "bedrock:amazon.nova-pro-v1:0"
        ));
        assert!(permits_prefix(&r, "team-a-bot", "anthropic"));
        assert!(permits_prefix(&r, "team-a-bot", "openai"));
        assert!(!permits_prefix(&r, "team-a-bot", "gemini"));
        assert!(!permits_prefix(&r, "team-b", "openai"));
        assert!(permits_prefix(&r, "system:serviceaccount:ai:x", "gemini"));
    }

    #[test]
    fn bad_globs_and_empty_rules_name_the_field() {
        let mut problems = Vec::new();
        compile(
            &AccessRuleSpec {
                identities: vec!["a[".into()],
                models: vec![],
            },
            "spec.access[2]",
            &mut problems,
        );
        let fields: Vec<_> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(fields, ["spec.access[2]", "spec.access[2].identities[0]"]);
    }
}
