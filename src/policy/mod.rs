//! The security proxy: who may call a proxy, which models they reach, which tool calls the
//! model's answers may carry, and the audit trail of each request.
//!
//! ```text
//!  LlmProxy.spec.{clientAuth, access, tools, audit}
//!        │  compile_policy()   (pure; keys hashed, globs / regexes / pointers checked)
//!        ▼
//!  ProxyPolicy (in the ProxyTable of the snapshot)
//!        │
//!  request ──identity::Runtime::authenticate──▶ Identity ──access::permits──▶ route
//!        │                                                           │
//!        │  guardrails::trust(conversation)                         ▼
//!        └────────────────────────────────▶ Guard ◀── upstream answer (JSON or SSE, per format)
//!                                              │  decisions (allow / block, rule)
//!                                              ▼
//!                                   client  +  audit::Record (one JSON line)  +  metrics
//! ```
//!
//! [`guardrails`] and [`access`] are pure and synchronous; only [`identity`] does I/O (JWKS
//! fetches, `TokenReview`), with its caches in [`identity::Runtime`], which lives for the whole
//! process (reloads keep it).

pub mod access;
pub mod audit;
pub mod guardrails;
pub mod identity;
pub mod stream;

use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::crd::LlmProxySpec;

pub use access::AccessRule;
pub use guardrails::{Action, Decision, ToolPolicy};
pub use identity::{ClientAuth, Identity};

/// Everything security-related of one proxy, compiled.
#[derive(Clone, Debug, Default)]
pub struct ProxyPolicy {
    /// `None`: anonymous callers are accepted.
    pub auth: Option<ClientAuth>,
    /// Empty: every caller reaches every model.
    pub access: Vec<AccessRule>,
    /// Tool-call guardrails, when configured.
    pub tools: Option<Arc<ToolPolicy>>,
    /// Record the request's messages in audit events.
    pub audit_content: bool,
}

impl ProxyPolicy {
    /// One line saying how callers are identified, for `portcullis check` and status messages.
    pub fn describe_auth(&self) -> String {
        match &self.auth {
            None => "anonymous: no spec.clientAuth, every caller is accepted".to_owned(),
            Some(auth) => {
                let mut methods = Vec::new();
                if let Some(keys) = &auth.api_keys {
                    methods.push(format!("apiKeys ({} key(s))", keys.len()));
                }
                if auth.kubernetes.is_some() {
                    methods.push("kubernetes (TokenReview)".to_owned());
                }
                if let Some(jwt) = &auth.jwt {
                    methods.push(format!("jwt (issuer {})", jwt.issuer));
                }
                methods.join(", ")
            }
        }
    }
}

/// A problem found while compiling the policy fields: field, reason, message.
pub type PolicyProblem = (String, &'static str, String);

/// Compile globs, naming the field of each bad one.
pub(crate) fn globs(
    patterns: &[String],
    field: &str,
    problems: &mut Vec<PolicyProblem>,
) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for (i, pattern) in patterns.iter().enumerate() {
        match Glob::new(pattern.trim()) {
            Ok(g) => {
                builder.add(g);
            }
            Err(e) => problems.push((
                format!("{field}[{i}]"),
                "InvalidSpec",
                format!("`{pattern}` is not a valid glob: {}", e.kind()),
            )),
        }
    }
    builder.build().unwrap_or_else(|_| GlobSet::empty())
}

/// The data of a Secret in the proxy's namespace, by name (entries decoded to bytes). The
/// caller (`config::compile`) looks Secrets up; policy never reaches into the index.
pub type SecretLookup<'a> =
    &'a dyn Fn(&str) -> Option<&'a std::collections::BTreeMap<String, Vec<u8>>>;

/// Compile `clientAuth`, `access`, `tools` and `audit` of a proxy in `namespace`.
pub fn compile_policy(
    namespace: &str,
    spec: &LlmProxySpec,
    secrets: SecretLookup<'_>,
) -> Result<ProxyPolicy, Vec<PolicyProblem>> {
    let mut problems = Vec::new();
    let auth = spec
        .client_auth
        .as_ref()
        .map(|auth| identity::compile(namespace, auth, secrets, &mut problems));
    let access = spec
        .access
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, rule)| access::compile(rule, &format!("spec.access[{i}]"), &mut problems))
        .collect();
    let tools = spec
        .tools
        .as_ref()
        .map(|tools| Arc::new(guardrails::compile(tools, &mut problems)));
    let audit_content = spec
        .audit
        .as_ref()
        .and_then(|a| a.include_content)
        .unwrap_or(false);
    if problems.is_empty() {
        Ok(ProxyPolicy {
            auth,
            access,
            tools,
            audit_content,
        })
    } else {
        Err(problems)
    }
}
