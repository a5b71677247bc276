//! Audit events: one JSON line per request on the log target `portcullis::audit`, written
//! when the response's last byte has gone (so streamed guardrail decisions are in it).
//!
//! Fields: `time`, `request_id`, `proxy`, `identity`, `auth`, `route`, `endpoint` (Model
//! Router only), `provider`, `model`, `status`, `usage`, `decisions` (tool, action, rule,
//! reason), `budget_limit` (the `LlmBudget` limit that refused it, if one did) and, only with
//! `spec.audit.includeContent: true`, `content` (the request's messages). Never a credential.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::guardrails::Decision;
use super::stream::Usage;

/// Log target of audit events.
pub const TARGET: &str = "portcullis::audit";

/// What the request path learns about a request, shared with the response body (stream
/// guards add their decisions as they make them).
#[derive(Debug, Default)]
pub struct Data {
    /// Caller identity (empty when the request never got that far).
    pub identity: String,
    /// How the caller was identified, or why it was refused.
    pub auth: &'static str,
    /// Guardrail decisions.
    pub decisions: Vec<Decision>,
    /// Token usage, when the gateway parsed the answer.
    pub usage: Usage,
    /// Request messages (only with `includeContent`).
    pub content: Option<Value>,
    /// The model a native request named (body `model`), when the gateway read the body.
    pub model: Option<String>,
    /// The budget limit that refused the request (`namespace/budget/limit`).
    pub budget: Option<String>,
    /// Upstream attempts of a failed-over request (target, outcome, duration), in order.
    pub attempts: Vec<crate::routing::AttemptRecord>,
    /// The Model Router endpoint (`chat/completions`, `responses`, `messages`, `embeddings`,
    /// …); empty on native routes.
    pub endpoint: &'static str,
}

/// Shared, lock-light cell for one request's audit data. Writers never contend (one request
/// is handled by one task at a time), so `try_lock` always succeeds in practice.
pub type Cell = Arc<tokio::sync::Mutex<Data>>;

/// Update the cell, without waiting.
pub fn update(cell: &Cell, f: impl FnOnce(&mut Data)) {
    if let Ok(mut data) = cell.try_lock() {
        f(&mut data);
    }
}

/// One audit event.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339 time of the request's end.
    pub time: String,
    /// Request ID.
    pub request_id: &'a str,
    /// Proxy ID.
    pub proxy: &'a str,
    /// Caller.
    pub identity: &'a str,
    /// `anonymous`, `apiKey`, `jwt`, `kubernetes` or a failure reason.
    pub auth: &'a str,
    /// `router` or `native`.
    pub route: &'a str,
    /// The Model Router endpoint; absent on native routes.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub endpoint: &'a str,
    /// Provider prefix.
    pub provider: &'a str,
    /// Model as asked.
    pub model: &'a str,
    /// HTTP status.
    pub status: u16,
    /// Token usage.
    pub usage: Usage,
    /// Guardrail decisions.
    pub decisions: &'a [Decision],
    /// Upstream attempts, when the request went through failover.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub attempts: &'a [crate::routing::AttemptRecord],
    /// The request's messages, with `includeContent` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a Value>,
    /// The `LlmBudget` limit that refused the request (`namespace/budget/limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_limit: Option<&'a str>,
}

impl Record<'_> {
    /// Write the event.
    pub fn emit(&self) {
        if let Ok(line) = serde_json::to_string(self) {
            tracing::info!(target: TARGET, "{line}");
        }
    }
}

/// Current time in RFC 3339 (UTC, seconds and milliseconds).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn records_hold_no_content_unless_asked() {
        let r = Record {
            time: now_rfc3339(),
            request_id: "r",
            proxy: "ai.p",
            identity: "alice",
            auth: "apiKey",
            route: "router",
            endpoint: "chat/completions",
            provider: "openai",
            model: "openai:m",
            status: 200,
            usage: Usage::default(),
            decisions: &[],
            attempts: &[],
            content: None,
            budget_limit: None,
        };
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert!(v.get("content").is_none());
        assert_eq!(v["identity"], "alice");
        assert_eq!(v["endpoint"], "chat/completions");
    }
}
