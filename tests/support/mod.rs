//! Test support: the real `portcullis` binary on free ports, and a fake OpenAI upstream on
//! 127.0.0.1 whose streams the test paces chunk by chunk.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};

/// An HTTP client for tests (the product's own builder: it installs the TLS provider).
pub fn client() -> reqwest::Client {
    portcullis::server::http_client(None).unwrap()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running gateway process.
pub struct Gateway {
    pub child: tokio::process::Child,
    pub port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Start `portcullis serve --config <config>` with extra args; waits for `/readyz`.
    pub async fn start(config: &Path, extra: &[&str]) -> Gateway {
        let port = free_port();
        let admin_port = free_port();
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("gateway.log");
        let logfile = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(logfile)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let gw = Gateway {
            child,
            port,
            admin_port,
            log,
            _dir: Some(logdir),
        };
        gw.wait_ready().await;
        gw
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        while Instant::now() < deadline {
            if let Ok(r) = client().get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway not ready; log:\n{}", self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().unwrap();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    }
}

/// What the fake upstream saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the fake answers chat completions.
#[derive(Clone, Debug)]
pub enum Mode {
    /// A `chat.completion` JSON after an optional delay.
    Json { delay: Duration },
    /// An SSE stream whose chunks the test sends through `FakeUpstream::chunks`.
    Paced,
}

#[derive(Clone)]
struct FakeState {
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<Mutex<Mode>>,
    stream_rx: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
}

/// A fake OpenAI upstream on 127.0.0.1.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: FakeState,
    stream_tx: Option<mpsc::Sender<Bytes>>,
}

/// One `chat.completion.chunk` SSE event, as OpenAI documents it.
pub fn chunk_event(model: &str, content: &str) -> Bytes {
    let json = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    });
    Bytes::from(format!("data: {json}\n\n"))
}

async fn chat(State(s): State<FakeState>, headers: HeaderMap, body: Bytes) -> Response {
    record(&s, "POST", "/v1/chat/completions", headers, body.clone()).await;
    let streaming = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("stream").and_then(|s| s.as_bool()))
        .unwrap_or(false);
    let mode = s.mode.lock().await.clone();
    match (mode, streaming) {
        (Mode::Paced, true) => {
            let rx = s
                .stream_rx
                .lock()
                .await
                .take()
                .expect("one paced stream per fake");
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        (mode, _) => {
            if let Mode::Json { delay } = mode {
                tokio::time::sleep(delay).await;
            }
            let model = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["model"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let json = serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(json.to_string()))
                .unwrap()
        }
    }
}

async fn record(s: &FakeState, method: &str, path: &str, headers: HeaderMap, body: Bytes) {
    s.seen.lock().await.push(Seen {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body,
    });
}

async fn echo(
    State(s): State<FakeState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&s, method.as_str(), &uri.to_string(), headers, body.clone()).await;
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::json!({"path": uri.to_string(), "len": body.len()}).to_string(),
        ))
        .unwrap()
}

impl FakeUpstream {
    pub async fn start(mode: Mode) -> FakeUpstream {
        let (tx, rx) = mpsc::channel(16);
        let state = FakeState {
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
            stream_rx: Arc::new(Mutex::new(Some(rx))),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route(
                "/v1/models",
                get(|| async {
                    axum::Json(serde_json::json!({"object": "list", "data": [
                        {"id": "gpt-test", "object": "model", "created": 1, "owned_by": "fake"}
                    ]}))
                }),
            )
            .fallback(echo)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeUpstream {
            addr,
            state,
            stream_tx: Some(tx),
        }
    }

    /// Send the next chunk of the paced stream.
    pub async fn send(&self, bytes: Bytes) {
        self.stream_tx.as_ref().unwrap().send(bytes).await.unwrap();
    }

    /// End the paced stream.
    pub fn close(&mut self) {
        self.stream_tx = None;
    }

    pub async fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().await.clone()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

/// Write a config dir with one openai provider pointing at `base_url` and proxy `ai.team-a`.
pub fn write_config(dir: &Path, base_url: &str, extra_provider_spec: &str) {
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: openai-key, namespace: ai}}
stringData: {{apiKey: sk-upstream-SECRET}}
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProvider
metadata: {{name: openai, namespace: ai}}
spec:
  type: openai
  baseUrl: {base_url}
  auth: {{apiKey: {{secretRef: {{name: openai-key}}}}}}
  models: {{static: [gpt-test]}}
{extra_provider_spec}
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProxy
metadata: {{name: team-a, namespace: ai}}
spec:
  providers: [{{providerRef: {{name: openai}}}}]
"#
        ),
    )
    .unwrap();
}
