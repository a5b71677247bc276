//! Golden tests for the tool-call guardrails of each wire format, over native answers.
//!
//! Layout under `tests/fixtures/guard/<format>/`:
//!
//! - `<case>.json` (a whole answer) → `<case>.out.json`: `{"answer", "refused", "decisions"}`
//!   (`refused` holds the reason when the guard cannot read the answer's shape);
//! - `<case>.sse` (a native SSE answer) → `<case>.stream.out.json`: `{"events", "failed",
//!   "decisions"}`, the events the client receives (JSON data parsed). The stream is fed in
//!   several chunk sizes, which must all give the same output;
//! - `<case>.request.json` (optional): the request's conversation, from which the trust is
//!   read; without it the context holds `web_fetch` output (untrusted).
//!
//! The policy is [`policy`]: `send_email` / `http_post` blocked in an untrusted context,
//! `delete_*` always, `shell` only for `ls`, `apply_patch` (a custom tool) only under `docs/`.
//!
//! `UPDATE_GOLDEN=1 cargo test --test guard_golden` rewrites the expected files; review every
//! change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis::crd::{ToolAction, ToolCondition, ToolPolicySpec, ToolsSpec};
use portcullis::formats::Format;
use portcullis::formats::sse::SseParser;
use portcullis::policy::guardrails::{self, ToolPolicy, Trust};
use portcullis::policy::stream::SseGuard;
use serde_json::{Value, json};

const FORMATS: [(&str, Format); 5] = [
    ("openai", Format::OpenAi),
    ("anthropic", Format::Anthropic),
    ("gemini", Format::Gemini),
    ("cohere", Format::Cohere),
    ("bedrock", Format::Bedrock),
];

fn policy() -> ToolPolicy {
    let rule = |name: &str, tools: &[&str], action, when: Option<(&str, &str)>| ToolPolicySpec {
        name: Some(name.to_owned()),
        tools: tools.iter().map(|t| (*t).to_owned()).collect(),
        action,
        when: when.map(|(argument, matches)| ToolCondition {
            argument: argument.to_owned(),
            matches: matches.to_owned(),
        }),
    };
    let spec = ToolsSpec {
        untrusted: Some(vec!["web_fetch".into(), "read_*".into()]),
        policies: Some(vec![
            rule(
                "no-exfiltration",
                &["send_email", "http_post"],
                ToolAction::BlockWhenUntrusted,
                None,
            ),
            rule("no-deletes", &["delete_*"], ToolAction::Block, None),
            rule(
                "only-ls",
                &["shell"],
                ToolAction::Allow,
                Some(("/cmd", "^ls( |$)")),
            ),
            rule(
                "only-ls-custom",
                &["shell"],
                ToolAction::Allow,
                Some(("", "^ls( |$)")),
            ),
            rule("no-shell", &["shell"], ToolAction::Block, None),
            rule(
                "docs-patches",
                &["apply_patch"],
                ToolAction::Allow,
                Some(("", r"^\*\*\* docs/")),
            ),
            rule("no-patches", &["apply_patch"], ToolAction::Block, None),
        ]),
        default_action: None,
    };
    let mut problems = Vec::new();
    let p = guardrails::compile(&spec, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    p
}

fn updating() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guard")
}

fn trust_for(policy: &ToolPolicy, format: Format, case: &Path) -> Trust {
    let request = case.with_extension("request.json");
    if request.exists() {
        let body: Value = serde_json::from_str(&fs::read_to_string(&request).unwrap()).unwrap();
        return policy.trust(format, &body);
    }
    Trust {
        sources: vec!["web_fetch".into()],
    }
}

fn whole(policy: &ToolPolicy, format: Format, case: &Path) -> Value {
    let trust = trust_for(policy, format, case);
    let mut answer: Value = serde_json::from_str(&fs::read_to_string(case).unwrap()).unwrap();
    match guardrails::guard_json(format, policy, &trust, &mut answer) {
        Ok(decisions) => json!({"answer": answer, "refused": null, "decisions": decisions}),
        Err(fault) => json!({"answer": null, "refused": fault.0, "decisions": []}),
    }
}

fn streamed(policy: &Arc<ToolPolicy>, format: Format, case: &Path, chunk: usize) -> Value {
    let trust = trust_for(policy, format, case);
    let bytes = fs::read(case).unwrap();
    let mut guard = SseGuard::new(format, policy.clone(), trust).expect("a stream guard");
    let mut out = Vec::new();
    let mut decisions = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        out.extend(guard.push(piece));
        decisions.extend(guard.take_decisions());
    }
    out.extend(guard.finish());
    decisions.extend(guard.take_decisions());
    assert!(!guard.holding(), "{case:?}: still holding at the end");
    let mut parser = SseParser::default();
    let mut events = parser.push(&out);
    events.extend(parser.finish());
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            let data = serde_json::from_str::<Value>(&e.data).unwrap_or(Value::String(e.data));
            json!({"event": e.event, "data": data})
        })
        .collect();
    json!({"events": events, "failed": guard.failed(), "decisions": decisions})
}

fn check(expected_path: &Path, got: &Value) {
    if updating() {
        fs::write(
            expected_path,
            serde_json::to_string_pretty(got).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let expected: Value = match fs::read_to_string(expected_path) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(_) => panic!("{expected_path:?} is missing; run with UPDATE_GOLDEN=1 and review it"),
    };
    assert_eq!(
        &expected,
        got,
        "{expected_path:?} differs:\n{}",
        serde_json::to_string_pretty(got).unwrap()
    );
}

fn cases(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.ends_with(&format!(".{ext}"))
            && !name.ends_with(".out.json")
            && !name.ends_with(".request.json")
    });
    out.sort();
    out
}

/// `<case>.json` → `<case>.out.json`; `<case>.sse` → `<case>.stream.out.json` (a case may
/// have both, and their results must not share a file).
fn expected(case: &Path) -> PathBuf {
    let stem = case.file_stem().and_then(|s| s.to_str()).unwrap();
    let kind = match case.extension().and_then(|e| e.to_str()) {
        Some("sse") => ".stream",
        _ => "",
    };
    case.with_file_name(format!("{stem}{kind}.out.json"))
}

#[test]
fn whole_answers_of_every_format() {
    let policy = policy();
    let mut seen = 0;
    for (dir, format) in FORMATS {
        for case in cases(&fixtures().join(dir), "json") {
            check(&expected(&case), &whole(&policy, format, &case));
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} cases");
}

#[test]
fn streamed_answers_of_every_format() {
    let policy = Arc::new(policy());
    let mut seen = 0;
    for (dir, format) in FORMATS {
        for case in cases(&fixtures().join(dir), "sse") {
            let got = streamed(&policy, format, &case, usize::MAX);
            for chunk in [1, 7, 64] {
                assert_eq!(
                    streamed(&policy, format, &case, chunk),
                    got,
                    "{case:?} in chunks of {chunk}"
                );
            }
            check(&expected(&case), &got);
            seen += 1;
        }
    }
    assert!(seen >= 15, "only {seen} cases");
}

/// The guard's claims, beside the golden files: no blocked tool's arguments reach the client.
#[test]
fn nothing_blocked_reaches_the_client() {
    let policy = Arc::new(policy());
    for (dir, format) in FORMATS {
        for ext in ["json", "sse"] {
            for case in cases(&fixtures().join(dir), ext) {
                let got = if ext == "json" {
                    whole(&policy, format, &case)
                } else {
                    streamed(&policy, format, &case, 5)
                };
                let text = got.to_string();
                assert!(!text.contains("evil@example.net"), "{case:?}: {text}");
            }
        }
    }
}
