//! Micro-benchmark of the in-process budget store: CPU per request of what the request path
//! adds for an `LlmBudget` (parse the body for the model and its allowance, reserve in every
//! limit, settle with the reported usage). Run by `bench/run.sh`, or alone:
//!
//! ```sh
//! cargo run --release --example bench-budget -- 1000000
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use portcullis::budget::{Actual, Ask, Outcome, max_output};
use portcullis::config::{Defaults, Index, ObjectKey, Store, compile};

const CONFIG: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: k, namespace: default}
stringData: {apiKey: x}
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProvider
metadata: {name: mock, namespace: default}
spec:
  type: openai-compatible
  baseUrl: http://127.0.0.1:9/v1
  auth: {apiKey: {secretRef: {name: k}}}
  models: {static: [bench-model]}
  pricing: [{models: ["*"], input: "1.25", output: "10"}]
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProxy
metadata: {name: bench, namespace: default}
spec:
  providers: [{providerRef: {name: mock}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmBudget
metadata: {name: limits, namespace: default}
spec:
  limits:
    - {name: rpm, per: identity, requests: 1000000000, window: 1m}
    - {name: tokens, per: proxy, tokens: 1000000000000, window: 1d}
    - {name: spend, per: identityModel, usd: "100000000", window: month}
"#;

const BODY: &[u8] = br#"{"model":"openai-compatible:bench-model","max_tokens":256,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark, briefly."}]}"#;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let objects = portcullis::source::files::parse(CONFIG).expect("config parses");
    let compiled = compile(&Index::from_objects(objects), &Defaults::default());
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    let store = Store::default();
    store.apply(&compiled);
    let snapshot = store.load();
    let proxy = ObjectKey::new("default", "bench");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let identities: Vec<String> = (0..64).map(|i| format!("team-a-app-{i}")).collect();
    let run = |count: usize| {
        rt.block_on(async {
            for i in 0..count {
                let body: serde_json::Value = serde_json::from_slice(BODY).unwrap();
                let ask = Ask {
                    proxy: proxy.clone(),
                    identity: identities[i % identities.len()].clone(),
                    prefix: "openai-compatible".to_owned(),
                    model: "bench-model".to_owned(),
                    input_tokens: (BODY.len() as u64).div_ceil(4),
                    max_output: max_output(&body),
                };
                let reservation = snapshot.budgets.admit(ask, None).await.unwrap().unwrap();
                reservation.settle(Outcome {
                    reached_upstream: true,
                    usage: Some(Actual {
                        input: 30,
                        cached_input: 0,
                        output: 12,
                    }),
                    bytes_out: 400,
                });
            }
        })
    };
    run(n / 10);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    run(n);
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    // The body parse alone (the part of the above that is not the store).
    let cpu1 = cpu_time();
    let mut sum = 0u64;
    for _ in 0..n {
        let body: serde_json::Value = serde_json::from_slice(std::hint::black_box(BODY)).unwrap();
        sum += max_output(&body).unwrap_or(0);
    }
    let parse = cpu_time() - cpu1;
    std::hint::black_box(sum);
    println!(
        "{{\"label\":\"budget/in-process\",\"requests\":{n},\"limits\":3,\"cpu_ns_per_request\":{:.0},\"wall_ns_per_request\":{:.0},\"of_which_body_parse_ns\":{:.0}}}",
        cpu * 1e9 / n as f64,
        wall.as_nanos() as f64 / n as f64,
        parse * 1e9 / n as f64
    );
}

/// CPU time of this process (user + system), in seconds, from /proc/self/stat.
fn cpu_time() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0;
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / tick
}
